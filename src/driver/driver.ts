/**
 * A virtio driver over vhost-user: connects to any backend, negotiates, shares memfd guest RAM, sets up split
 * rings and submits descriptor chains, resolving each when the backend completes it. Used by our tests,
 * benchmarks and the probe tool.
 */
import { native, closeQuietly, Readiness, type FdWatcher } from '../native/index.js';
import { DriverQueue } from '../virtqueue/driver-queue.js';
import { availRingBytes, descTableBytes, usedRingBytes } from '../virtqueue/layout.js';
import { FrontendConnection, type FrontendOptions } from '../protocol/frontend.js';
import { ProtocolFeature } from '../protocol/constants.js';
import { CommonFeature, DeviceStatus, featureMask, hasFeature } from '../virtio/constants.js';
import { GuestRam } from './guest-ram.js';

/** A buffer in guest RAM. */
export interface BufferRef {
  addr: number;
  len: number;
}

/** Options for {@link VirtioDriver.connect}. */
export interface DriverOptions extends FrontendOptions {
  socketPath: string;
  /** Guest RAM size in bytes (default 64 MiB). */
  ramSize?: number;
  /**
   * Virtio features to accept if offered (default: every offered bit). PROTOCOL_FEATURES is always taken when
   * offered.
   */
  features?: bigint;
  /** Protocol features to accept if offered (default: everything offered that we implement). */
  protocolFeatures?: bigint;
}

/** Protocol features our frontend implements. */
const FRONTEND_PROTOCOL_FEATURES = featureMask(
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
);

interface QueueState {
  queue: DriverQueue<number>;
  size: number;
  kickFd: number;
  callFd: number;
  watcher: FdWatcher;
  waiters: Map<number, { resolve: (len: number) => void; reject: (err: Error) => void }>;
  nextToken: number;
  kickScheduled: boolean;
}

/** Driver side of one virtio device reached over vhost-user. */
export class VirtioDriver {
  readonly frontend: FrontendConnection;
  readonly ram: GuestRam;
  /** Features offered by the backend. */
  offeredFeatures = 0n;
  /** Features negotiated. */
  features = 0n;
  /** Protocol features offered by the backend. */
  offeredProtocolFeatures = 0n;
  /** Protocol features negotiated. */
  protocolFeatures = 0n;
  /** Queues the backend supports (GET_QUEUE_NUM, or 1 without MQ). */
  maxQueues = 1;
  readonly #queues: QueueState[] = [];
  #closed = false;

  private constructor(frontend: FrontendConnection, ram: GuestRam) {
    this.frontend = frontend;
    this.ram = ram;
    frontend.connection.onClose(() => this.#teardown());
  }

  /** Connect and negotiate features (but do not set up queues yet). */
  static async connect(options: DriverOptions): Promise<VirtioDriver> {
    const frontend = FrontendConnection.connect(options.socketPath, options);
    const ram = new GuestRam({ size: options.ramSize ?? 64 * 1024 * 1024 });
    const driver = new VirtioDriver(frontend, ram);
    try {
      await driver.#negotiate(options);
    } catch (err) {
      driver.close();
      throw err;
    }
    return driver;
  }

  async #negotiate(options: DriverOptions): Promise<void> {
    const f = this.frontend;
    this.offeredFeatures = await f.getFeatures();
    if (hasFeature(this.offeredFeatures, CommonFeature.PROTOCOL_FEATURES)) {
      this.offeredProtocolFeatures = await f.getProtocolFeatures();
      this.protocolFeatures = this.offeredProtocolFeatures & (options.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
      await f.setProtocolFeatures(this.protocolFeatures);
      if (this.hasProtocolFeature(ProtocolFeature.MQ)) this.maxQueues = await f.getQueueNum();
    }
    await f.setOwner();
    if (this.hasProtocolFeature(ProtocolFeature.BACKEND_REQ)) await f.openBackendChannel();
    // LOG_ALL (dirty logging for migration) needs a log area we never set up: take it only when asked for.
    const wanted = (options.features ?? (this.offeredFeatures & ~featureMask(CommonFeature.LOG_ALL))) |
      featureMask(CommonFeature.PROTOCOL_FEATURES);
    this.features = this.offeredFeatures & wanted;
    await f.setFeatures(this.features);
    if (this.hasProtocolFeature(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      await f.addMemRegion(this.ram.description, this.ram.fd);
    } else {
      await f.setMemTable([this.ram.description], [this.ram.fd]);
    }
  }

  hasProtocolFeature(bit: number): boolean {
    return hasFeature(this.protocolFeatures, bit);
  }

  /** Read config space. */
  getConfig(offset: number, size: number): Promise<Uint8Array> {
    return this.frontend.getConfig(offset, size);
  }

  /**
   * Set up queues 0..count-1 with `size` entries each, start and enable them, and set DRIVER_OK when the
   * backend speaks STATUS. Called again (after {@link stopQueues}), it sets up fresh rings; requests still waiting
   * on the old ones are rejected.
   */
  async startQueues(count: number, size: number): Promise<void> {
    const f = this.frontend;
    const eventIdx = hasFeature(this.features, CommonFeature.EVENT_IDX);
    for (let i = 0; i < count; i++) {
      // Started again (after stopQueues): the old ring's requests will not complete, and its fds go.
      const old = this.#queues[i];
      if (old) this.#dropQueue(old, new Error(`queue ${i} was set up again before the request completed`));
      const desc = this.ram.alloc(descTableBytes(size), 16);
      // The driver's rings always have room for the EVENT_IDX fields.
      const avail = this.ram.alloc(availRingBytes(size, true), 2);
      const used = this.ram.alloc(usedRingBytes(size, true), 4);
      const queue = new DriverQueue<number>(this.ram.memory, size, { desc, avail, used }, { eventIdx });
      const kickFd = native.eventfd(0);
      const callFd = native.eventfd(0);
      const state: QueueState = {
        queue, size, kickFd, callFd, waiters: new Map(), nextToken: 1, kickScheduled: false,
        watcher: native.watch(callFd, () => this.#onCall(state)),
      };
      this.#queues[i] = state;
      state.watcher.start(Readiness.READABLE);
      await f.setVringNum(i, size);
      await f.setVringBase(i, 0);
      await f.setVringAddr({
        index: i, flags: 0, log: 0,
        desc: this.ram.userAddrOf(desc), avail: this.ram.userAddrOf(avail), used: this.ram.userAddrOf(used),
      });
      await f.setVringCall(i, callFd);
      await f.setVringKick(i, kickFd);
      if (hasFeature(this.features, CommonFeature.PROTOCOL_FEATURES)) await f.setVringEnable(i, true);
    }
    if (this.hasProtocolFeature(ProtocolFeature.STATUS)) {
      await f.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
    }
  }

  /** The driver-side ring of queue `index` (for tests that write rings by hand). */
  queue(index: number): DriverQueue<number> {
    const q = this.#queues[index];
    if (!q) throw new RangeError(`queue ${index} is not set up`);
    return q.queue;
  }

  /** The kick eventfd of a queue (for tests that kick by hand). */
  kickFd(index: number): number {
    return this.#queues[index]!.kickFd;
  }

  /**
   * Submit a chain of device-readable then device-writable buffers; resolves with the length the device wrote.
   * Kicks are batched to one per event-loop turn per queue.
   */
  submit(index: number, readable: BufferRef[], writable: BufferRef[]): Promise<number> {
    const q = this.#queues[index];
    if (!q) return Promise.reject(new RangeError(`queue ${index} is not set up`));
    if (this.#closed) return Promise.reject(new Error('driver is closed'));
    const token = q.nextToken++;
    const head = q.queue.add(readable, writable, token);
    if (head < 0) return Promise.reject(new Error(`queue ${index} is full`));
    const done = new Promise<number>((resolve, reject) => q.waiters.set(token, { resolve, reject }));
    if (!q.kickScheduled) {
      q.kickScheduled = true;
      queueMicrotask(() => this.#kick(q));
    }
    return done;
  }

  #kick(q: QueueState): void {
    q.kickScheduled = false;
    q.queue.publish();
    if (q.queue.needsKick()) native.eventfdWrite(q.kickFd, 1);
  }

  #onCall(q: QueueState): void {
    native.eventfdRead(q.callFd);
    this.reapCompletions(q);
  }

  /** Resolve every completed chain of a queue (also called on a call notification). */
  reapCompletions(q: QueueState | number): void {
    const state = typeof q === 'number' ? this.#queues[q]! : q;
    const queue = state.queue;
    for (;;) {
      for (let used = queue.popUsed(); used; used = queue.popUsed()) {
        const waiter = state.waiters.get(used.token);
        if (waiter) {
          state.waiters.delete(used.token);
          waiter.resolve(used.len);
        }
      }
      // EVENT_IDX: ask for the next interrupt, then look again for entries published before the device saw it.
      if (queue.eventIdx) queue.setUsedEvent(queue.lastUsedIdx);
      if (queue.usedPending() === 0) return;
    }
  }

  /** Stop every queue (GET_VRING_BASE) and return their next avail indexes. */
  async stopQueues(): Promise<number[]> {
    const bases: number[] = [];
    if (this.hasProtocolFeature(ProtocolFeature.STATUS)) await this.frontend.setStatus(0);
    for (let i = 0; i < this.#queues.length; i++) {
      if (hasFeature(this.features, CommonFeature.PROTOCOL_FEATURES)) await this.frontend.setVringEnable(i, false);
      bases.push(await this.frontend.getVringBase(i));
    }
    return bases;
  }

  /** Close the connection and release RAM and fds. */
  close(): void {
    this.frontend.close();
    this.#teardown();
  }

  #teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    const gone = new Error('vhost-user connection closed before the request completed');
    for (const q of this.#queues) this.#dropQueue(q, gone);
    this.ram.close();
  }

  /** Fail a queue's waiting requests and close its watcher and eventfds. */
  #dropQueue(q: QueueState, reason: Error): void {
    for (const w of q.waiters.values()) w.reject(reason);
    q.waiters.clear();
    q.watcher.close();
    closeQuietly(q.kickFd);
    closeQuietly(q.callFd);
  }
}
