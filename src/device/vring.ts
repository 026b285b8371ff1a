/**
 * One virtqueue as the framework runs it: the protocol state the frontend set (size, addresses, base, fds,
 * enable), the started split queue, the kick watcher, completion batching and the inflight count.
 */
import { native, closeQuietly, Readiness, type FdWatcher } from '../native/index.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { SingleBuffer, type DescriptorChain } from '../virtqueue/chain.js';
import { SplitQueue } from '../virtqueue/split-queue.js';
import type { InflightQueue } from '../virtqueue/inflight.js';
import type { Logger } from '../util/log.js';

/** SIGBUS faults contained in guest-memory mappings, process-wide (see the addon's faultCounter). */
const faultCounter = new Int32Array(native.faultCounter());

/** Ring addresses in the frontend's virtual address space. */
export interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

/** Callbacks from a ring to its owner. */
export interface VringOwner {
  /** New buffers may be available (kick, start, enable). */
  available(vring: Vring): void;
  /** The ring hit a malformed chain or could not be set up; the device needs a reset. */
  broken(vring: Vring, error: Error): void;
  /**
   * Close an fd the ring is done with (default: close it here). A queue worker hands its fds back to the thread
   * that gave them, which closes them, and closes those a dead worker still had.
   */
  closeFd?(fd: number): void;
}

/**
 * Completions published to the driver (used.idx) every this many within a pass, not only at its end: a driver
 * that polls the used ring then refills while the pass goes on, instead of both sides taking turns. The
 * interrupt decision still happens once per pass (flush).
 */
const PUBLISH_EVERY = 8;

/** A virtqueue's state and its device-facing operations. */
export class Vring {
  /** Queue index. */
  readonly index: number;
  /** Ring size set by SET_VRING_NUM (0 until then). */
  size = 0;
  /** Addresses set by SET_VRING_ADDR. */
  addresses: RingAddresses | undefined;
  /** Next avail index to process, as set by SET_VRING_BASE (used when the ring starts). */
  base = 0;
  /** May the ring have side effects? (SET_VRING_ENABLE, or at once without PROTOCOL_FEATURES.) */
  enabled = false;
  /** Negotiated ring features. */
  eventIdx = false;
  indirect = false;
  /** Inflight area for this queue, when the frontend gave one. */
  inflight: InflightQueue | undefined;
  /** Free for the device to keep per-ring state. */
  deviceState: unknown;

  readonly #owner: VringOwner;
  readonly #log: Logger;
  #kickFd = -1;
  #callFd = -1;
  #errFd = -1;
  #watcher: FdWatcher | undefined;
  #queue: SplitQueue | undefined;
  #error: Error | undefined;
  #inflightCount = 0;
  #idleWaiters: (() => void)[] = [];
  #flushScheduled = false;
  #pendingCompletions = 0;
  /** Completions pushed since used.idx was last published. */
  #unpublished = 0;
  #processing = false;
  #stopping = false;
  #resubmit: DescriptorChain[] = [];
  /** Bound once: completions of asynchronous work are flushed a microtask later. */
  readonly #flushTask = (): void => {
    this.#flushScheduled = false;
    this.flush();
  };

  constructor(index: number, owner: VringOwner, log: Logger) {
    this.index = index;
    this.#owner = owner;
    this.#log = log;
    // Written with its other value once now: the compiler takes a field written only once for a constant, and the
    // first stop (the end of the first connection) dropped the poll loop's and the ring's compiled code.
    this.#stopping = true;
    this.#stopping = false;
  }

  /** Started: kick fd set and the rings translated. */
  get started(): boolean {
    return this.#queue !== undefined;
  }

  /** The split queue while started. */
  get queue(): SplitQueue | undefined {
    return this.#queue;
  }

  /** Set when a malformed chain stopped the ring. */
  get error(): Error | undefined {
    return this.#error;
  }

  #closeFd(fd: number): void {
    if (fd < 0) return;
    const owner = this.#owner;
    if (owner.closeFd !== undefined) owner.closeFd(fd);
    else closeQuietly(fd);
  }

  /** Chains popped and not yet completed. */
  get inflightCount(): number {
    return this.#inflightCount;
  }

  /** Replace the call fd (ours to close). */
  setCallFd(fd: number | undefined): void {
    this.#closeFd(this.#callFd);
    this.#callFd = fd ?? -1;
  }

  /** Replace the error fd (ours to close). */
  setErrFd(fd: number | undefined): void {
    this.#closeFd(this.#errFd);
    this.#errFd = fd ?? -1;
  }

  /**
   * Start the ring with this kick fd: translate the ring addresses and begin watching kicks.
   * Ring-setup problems (addresses outside memory, misalignment) mark the ring broken rather than throwing:
   * they come from the guest.
   */
  start(kickFd: number, memory: GuestMemory, maxChainLength?: number): void {
    this.stopWatching();
    this.#closeFd(this.#kickFd);
    this.#kickFd = kickFd;
    this.#error = undefined;
    this.#stopping = false;
    if (this.size === 0 || this.addresses === undefined) {
      this.fail(new Error(`queue ${this.index} kicked before its size and addresses were set`));
      return;
    }
    const queue = new SplitQueue(this.index, this.size);
    try {
      // Features first: with EVENT_IDX the rings must have room for the event fields.
      queue.eventIdx = this.eventIdx;
      queue.indirect = this.indirect;
      // Set before any chain is walked, including chains recovered from the inflight area below.
      if (maxChainLength !== undefined && maxChainLength > queue.maxChainLength) queue.maxChainLength = maxChainLength;
      queue.configure(memory, this.addresses);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    queue.lastAvailIdx = this.base;
    if (this.inflight) {
      try {
        const n = queue.attachInflight(this.inflight);
        if (n > 0) {
          this.#log.info(`queue ${this.index}: resubmitting ${n} request(s) left in flight by the previous backend`);
          this.#resubmit = queue.resubmitInflight();
        }
      } catch (err) {
        this.fail(err as Error);
        return;
      }
    }
    // A previous backend may have left kicks suppressed (it was polling when it died): ask for them again.
    queue.setNotification(true);
    this.#queue = queue;
    this.#watcher = native.watch(kickFd, () => this.#onKick());
    this.#watcher.start(Readiness.READABLE);
  }

  /** Re-translate ring addresses after the memory table changed. */
  remap(memory: GuestMemory): void {
    const queue = this.#queue;
    if (!queue || !this.addresses) return;
    try {
      const a = queue.addresses;
      const same = a && a.desc === this.addresses.desc && a.avail === this.addresses.avail && a.used === this.addresses.used;
      if (same) queue.remap(memory);
      else queue.configure(memory, this.addresses);
    } catch (err) {
      this.fail(err as Error);
    }
  }

  /** Stop reacting to kicks (the queue stays as it is). */
  stopWatching(): void {
    this.#watcher?.close();
    this.#watcher = undefined;
  }

  /**
   * Stop the ring: no more kicks, wait until every popped chain was completed, and return the next avail index
   * (GET_VRING_BASE).
   */
  async stop(): Promise<number> {
    this.stopWatching();
    // Nothing more is popped, whoever asks (a poll loop, a device's own schedule): only completions.
    this.#stopping = true;
    await this.whenIdle();
    this.flush();
    const queue = this.#queue;
    const base = queue ? queue.lastAvailIdx : this.base;
    this.#queue = undefined;
    if (this.#resubmit.length !== 0) this.#resubmit = [];
    this.#stopping = false;
    this.base = base;
    this.#closeFd(this.#kickFd);
    this.#kickFd = -1;
    return base;
  }

  /** Resolves when no chain popped from this ring is still in flight. */
  whenIdle(): Promise<void> {
    if (this.#inflightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Close every fd; the ring is unusable afterwards until set up again. */
  dispose(): void {
    this.stopWatching();
    this.#queue = undefined;
    if (this.#resubmit.length !== 0) this.#resubmit = [];
    this.#closeFd(this.#kickFd);
    this.#kickFd = -1;
    this.setCallFd(undefined);
    this.setErrFd(undefined);
  }

  /**
   * Take the next available chain, or null (none, not started, or broken). A malformed chain breaks the ring.
   */
  pop(): DescriptorChain | null {
    const queue = this.#queue;
    // Explicit comparisons: a bare truthiness test on a maybe-object compiles to a generic check.
    if (queue === undefined || this.#error !== undefined || this.#stopping === true) return null;
    let chain: DescriptorChain | null | undefined;
    if (this.#resubmit.length > 0) {
      chain = this.#resubmit.shift()!;
      this.#inflightCount++;
      return chain;
    }
    try {
      chain = queue.pop();
    } catch (err) {
      this.fail(err as Error);
      return null;
    }
    if (chain !== null) this.#inflightCount++;
    return chain;
  }

  /**
   * Completions between used-index publications within a pass (default 8; at least 1). Each publication is an
   * `Atomics.store` (a call, and a full fence on a cache line the driver reads): a device whose completions are
   * cheap and whose driver reclaims buffers in bursts (a network sender) publishes less often.
   */
  publishEvery = PUBLISH_EVERY;

  /** Where the buffer {@link popSingle} took is (valid until the next popSingle). */
  readonly single = new SingleBuffer();

  /**
   * {@link pop} without a chain object or views, for the most common transmit layout: when the next chain is one
   * device-readable buffer inside one memory region, take it, put where it is into {@link single}, and return
   * its head; complete it with {@link completeHead}. Returns -1 when there is nothing to take (as pop's null),
   * and -2, having taken nothing, when the next chain is anything else: then {@link pop} it.
   */
  popSingle(): number {
    const queue = this.#queue;
    if (queue === undefined || this.#error !== undefined || this.#stopping === true) return -1;
    // Chains a previous backend left in flight go first, as chain objects.
    if (this.#resubmit.length > 0) return -2;
    let head: number;
    try {
      head = queue.popSingle(this.single);
    } catch (err) {
      this.fail(err as Error);
      return -1;
    }
    if (head >= 0) this.#inflightCount++;
    return head;
  }

  /**
   * The driver's avail.idx (u16), or -1 when the ring cannot be processed (not started, broken, stopping).
   * Chains the previous backend left in flight count as one more change so they are not overlooked.
   */
  availIdx(): number {
    const queue = this.#queue;
    if (!queue || this.#error || this.#stopping) return -1;
    try {
      return (queue.lastAvailIdx + queue.pending() + (this.#resubmit.length > 0 ? 0x10000 : 0));
    } catch (err) {
      this.fail(err as Error);
      return -1;
    }
  }

  /** The {@link availIdx} the poll loop last processed the ring at (its business). */
  polledAvailIdx = -1;

  /** Are chains waiting (without taking any)? */
  hasAvailable(): boolean {
    const queue = this.#queue;
    if (!queue || this.#error || this.#stopping) return false;
    if (this.#resubmit.length > 0) return true;
    try {
      return queue.pending() > 0;
    } catch (err) {
      this.fail(err as Error);
      return false;
    }
  }

  /**
   * Complete a chain with `len` bytes written to its device-writable part. The used index is published and the
   * driver notified once per batch (end of the current processing pass, or a microtask later for async work).
   */
  complete(chain: DescriptorChain, len: number): void {
    this.completeHead(chain.head, len);
  }

  /** {@link complete} by head: for what {@link popSingle} took. */
  completeHead(head: number, len: number): void {
    const queue = this.#queue;
    this.#inflightCount--;
    if (queue !== undefined && this.#error === undefined) {
      queue.push(head, len);
      if (++this.#unpublished >= this.publishEvery) {
        this.#unpublished = 0;
        queue.publish();
      }
      this.#pendingCompletions++;
      if (this.#processing === false && this.#flushScheduled === false) {
        this.#flushScheduled = true;
        queueMicrotask(this.#flushTask);
      }
    }
    if (this.#inflightCount === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Publish completed entries now and notify the driver if it wants to be. */
  flush(): void {
    const queue = this.#queue;
    if (!queue || this.#pendingCompletions === 0) return;
    this.#pendingCompletions = 0;
    this.#unpublished = 0;
    if (queue.flush()) this.notify();
  }

  /**
   * Ask the driver to kick (or not) when it adds buffers (poll mode turns kicks off). Returns true when turning
   * them on found buffers already waiting: process them, no kick will come for those.
   */
  setNotification(enable: boolean): boolean {
    const queue = this.#queue;
    if (!queue || this.#error) return false;
    return queue.setNotification(enable) && !this.#stopping;
  }

  /** Signal the call fd. */
  notify(): void {
    if (this.#callFd < 0) return;
    try {
      native.eventfdWrite(this.#callFd, 1);
    } catch (err) {
      this.#log.warn(`queue ${this.index}: call notification failed: ${(err as Error).message}`);
    }
  }

  /** Mark the ring broken: log, signal the error fd, tell the owner (NEEDS_RESET). */
  fail(error: Error): void {
    if (this.#error) return;
    this.#error = error;
    this.stopWatching();
    this.#log.error(`queue ${this.index} stopped: ${error.message}`);
    if (this.#errFd >= 0) {
      try {
        native.eventfdWrite(this.#errFd, 1);
      } catch {
        // the frontend's error fd is advisory
      }
    }
    this.#owner.broken(this, error);
  }

  /**
   * Run `fn` as one processing pass: completions inside it are flushed once at the end. A guest-memory fault
   * contained during the pass (the frontend shrank a region's file) fails the ring.
   */
  batch(fn: () => void): void {
    const token = this.beginBatch();
    try {
      fn();
    } finally {
      this.endBatch(token);
    }
  }

  /**
   * Open a processing pass by hand (what {@link batch} does, without a closure): returns a token for
   * {@link endBatch}, which must run (in a `finally`) with it.
   */
  beginBatch(): number {
    if (this.#processing) return -1;
    this.#processing = true;
    // A plain read: the counter only has to be current at pass boundaries, which are calls apart (compiled code
    // does not carry typed-array loads across calls), and Atomics.load is an engine call, not an instruction.
    return faultCounter[0]!;
  }

  /** Close the pass {@link beginBatch} opened: check for contained faults, publish, notify. */
  endBatch(token: number): void {
    if (token < 0) return;
    this.#processing = false;
    if (faultCounter[0] !== token) {
      this.fail(new Error('guest memory vanished under a request (the frontend truncated a memory region\'s file); ' +
        'the pages now read as zeros'));
    }
    this.flush();
  }

  #onKick(): void {
    if (this.#kickFd < 0) return;
    try {
      native.eventfdRead(this.#kickFd);
    } catch (err) {
      this.fail(new Error(`reading the kick fd failed: ${(err as Error).message}`));
      return;
    }
    this.#owner.available(this);
  }
}
