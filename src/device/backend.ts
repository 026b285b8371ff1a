/**
 * The framework side of a vhost-user backend: implements every frontend request for any {@link VirtioDevice}
 * (features, memory table, ring life cycle, config, status, inflight tracking, reset) with the semantic checks
 * the protocol layer leaves to it. One per connection; the device object outlives connections.
 */
import { native, closeQuietly } from '../native/index.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { mapRegion } from '../memory/mapping.js';
import type { MemoryRegion } from '../memory/region.js';
import { InflightQueue, inflightQueueSize } from '../virtqueue/inflight.js';
import { ProtocolError, type InflightDescription, type RegionDescription, type VringAddress, type VringState } from '../protocol/message.js';
import { RequestRejected, type BackendHandler } from '../protocol/backend.js';
import { Connection } from '../protocol/connection.js';
import { BackendRequest, HeaderFlag, Limits, ProtocolFeature } from '../protocol/constants.js';
import { CommonFeature, DeviceStatus, featureMask, hasFeature } from '../virtio/constants.js';
import type { Logger } from '../util/log.js';
import type { VirtioDevice } from './device.js';
import { RingPoller } from './poller.js';
import { Vring, type VringOwner } from './vring.js';
import type { WorkerPool } from './worker/pool.js';

/** Largest mmap offset accepted for an inflight area (we map from the file's start). */
const MAX_INFLIGHT_OFFSET = 1 << 20;

/** Protocol features every device gets. */
const BASE_PROTOCOL_FEATURES = featureMask(
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
);

/** Ring features the framework implements for every device. */
const RING_FEATURES = featureMask(
  CommonFeature.VERSION_1,
  CommonFeature.EVENT_IDX,
  CommonFeature.INDIRECT_DESC,
  CommonFeature.PROTOCOL_FEATURES,
);

/** Everything the framework offers for `device`. */
export function offeredFeatures(device: VirtioDevice): bigint {
  return device.features | RING_FEATURES;
}

/** Every protocol feature offered for `device`. */
export function offeredProtocolFeatures(device: VirtioDevice): bigint {
  let features = BASE_PROTOCOL_FEATURES | (device.protocolFeatures ?? 0n);
  if (device.readConfig) features |= featureMask(ProtocolFeature.CONFIG);
  if (device.inflightTracking) features |= featureMask(ProtocolFeature.INFLIGHT_SHMFD);
  return features;
}

interface InflightArea {
  buffer: SharedArrayBuffer;
  description: InflightDescription;
}

/** Options for {@link DeviceBackend}. */
export interface DeviceBackendOptions {
  /**
   * Adaptive poll window in microseconds (default 0: notifications only): see {@link RingPoller}.
   */
  pollUs?: number;
  /** Queue workers: the device's queues that may go to workers are served there. */
  workers?: WorkerPool;
}

/** Serves one frontend connection for a device. */
export class DeviceBackend implements BackendHandler, VringOwner {
  readonly device: VirtioDevice;
  readonly memory = new GuestMemory({ maxRegions: Limits.MAX_MEM_SLOTS });
  readonly vrings: Vring[];
  readonly #log: Logger;
  #features = 0n;
  #featuresSet = false;
  #protocolFeatures = 0n;
  #status = 0;
  #backendChannel: Connection | undefined;
  #inflight: InflightArea | undefined;
  #closed = false;
  readonly #onClosed: ((reason: string | undefined) => void) | undefined;
  readonly #poller: RingPoller;
  readonly #workers: WorkerPool | undefined;
  /** Queues served by a worker (by index), and which of those the worker is running. */
  readonly #remote: boolean[];
  readonly #remoteRunning = new Set<number>();

  /** `onClosed` runs once the connection is gone and the device has been reset. */
  constructor(device: VirtioDevice, log: Logger, onClosed?: (reason: string | undefined) => void,
    options: DeviceBackendOptions = {}) {
    if (device.numQueues < 1 || device.numQueues > Limits.MAX_QUEUES) {
      throw new RangeError(`device has ${device.numQueues} queues (1..${Limits.MAX_QUEUES})`);
    }
    this.device = device;
    this.#log = log;
    this.#onClosed = onClosed;
    this.#poller = new RingPoller(device, options.pollUs ?? 0);
    this.#workers = options.workers;
    this.vrings = Array.from({ length: device.numQueues }, (_, i) => new Vring(i, this, log));
    this.#remote = this.vrings.map((v) => options.workers !== undefined && (device.workerQueue?.(v.index) ?? true));
    if (options.workers) {
      const workers = options.workers;
      workers.onBroken = (index, message) => {
        const v = this.vrings[index];
        if (v) this.broken(v, new Error(message));
      };
      workers.onWorkerDied = (worker, message) => {
        // Its rings are gone with it: GET_VRING_BASE answers their start base, and the device needs a reset.
        const lost = [...this.#remoteRunning].filter((index) => workers.workerOf(index) === worker);
        for (const index of lost) this.#remoteRunning.delete(index);
        this.#status |= DeviceStatus.NEEDS_RESET;
        this.#log.error(`device needs reset: ${message}${lost.length > 0 ? ` (queues ${lost.join(', ')} lost)` : ''}`);
        this.configChanged();
      };
    }
  }

  /** The poll loop of the rings served on this thread. */
  get poller(): RingPoller {
    return this.#poller;
  }

  /** Is queue `index` served by a worker? */
  isRemote(index: number): boolean {
    return this.#remote[index] ?? false;
  }

  /** Running: started here, or started on its worker. */
  #running(v: Vring): boolean {
    return v.started || this.#remoteRunning.has(v.index);
  }

  /** Features the driver accepted. */
  get features(): bigint {
    return this.#features;
  }

  /** Is the protocol feature negotiated? */
  hasProtocolFeature(bit: number): boolean {
    return hasFeature(this.#protocolFeatures, bit);
  }

  // ---- VringOwner ----

  available(vring: Vring): void {
    this.#poller.kicked(vring);
  }

  broken(vring: Vring, error: Error): void {
    this.#status |= DeviceStatus.NEEDS_RESET;
    this.#log.error(`device needs reset: queue ${vring.index}: ${error.message}`);
    this.configChanged();
  }

  /** Ask the frontend to re-read config space (and status), if it gave us a channel. */
  configChanged(): void {
    if (!this.#backendChannel || !this.hasProtocolFeature(ProtocolFeature.CONFIG)) return;
    this.#backendChannel.send(BackendRequest.CONFIG_CHANGE_MSG, HeaderFlag.VERSION);
  }

  // ---- BackendHandler ----

  getFeatures(): bigint {
    return offeredFeatures(this.device);
  }

  setFeatures(features: bigint): void {
    const offered = offeredFeatures(this.device);
    const extra = features & ~offered;
    // LOG_ALL may be set by a frontend that probes for migration; we never offer it.
    if (extra !== 0n) throw new ProtocolError(`SET_FEATURES: bits 0x${extra.toString(16)} were not offered`);
    this.#features = features;
    this.#featuresSet = true;
    const eventIdx = hasFeature(features, CommonFeature.EVENT_IDX);
    const indirect = hasFeature(features, CommonFeature.INDIRECT_DESC);
    const autoEnable = !hasFeature(features, CommonFeature.PROTOCOL_FEATURES);
    this.#workers?.broadcast({ t: 'features', eventIdx, indirect });
    for (const v of this.vrings) {
      v.eventIdx = eventIdx;
      v.indirect = indirect;
      if (v.queue) {
        try {
          v.queue.eventIdx = eventIdx;
          v.queue.indirect = indirect;
        } catch (err) {
          v.fail(err as Error);
        }
      }
      // Without PROTOCOL_FEATURES rings are enabled as soon as they start.
      if (autoEnable && !v.enabled) {
        v.enabled = true;
        if (this.#remote[v.index]) this.#workers!.post(v.index, { t: 'enable', index: v.index, enabled: true });
        else this.device.ringEnableChanged?.(v);
      }
    }
    this.device.featuresNegotiated?.(features);
  }

  getProtocolFeatures(): bigint {
    return offeredProtocolFeatures(this.device);
  }

  setProtocolFeatures(features: bigint): void {
    const extra = features & ~offeredProtocolFeatures(this.device);
    if (extra !== 0n) throw new ProtocolError(`SET_PROTOCOL_FEATURES: bits 0x${extra.toString(16)} were not offered`);
    this.#protocolFeatures = features;
  }

  setOwner(): void {
    // Ownership is the connection itself: one frontend per socket.
  }

  async resetOwner(): Promise<void> {
    await this.resetDevice();
  }

  getQueueNum(): number {
    return this.device.numQueues;
  }

  getMaxMemSlots(): number {
    return this.memory.maxRegions;
  }

  #ring(index: number, what: string): Vring {
    const v = this.vrings[index];
    if (!v) throw new ProtocolError(`${what}: queue ${index} does not exist (the device has ${this.vrings.length})`);
    return v;
  }

  #mapAll(regions: RegionDescription[], fds: number[]): MemoryRegion[] {
    const mapped: MemoryRegion[] = [];
    try {
      regions.forEach((r, i) => mapped.push(mapRegion(fds[i]!, r)));
    } catch (err) {
      for (const m of mapped) m.release();
      throw new ProtocolError(`memory region cannot be mapped: ${(err as Error).message}`);
    }
    return mapped;
  }

  async #quiesce(): Promise<void> {
    await Promise.all(this.vrings.map((v) => v.whenIdle()));
  }

  async setMemTable(regions: RegionDescription[], fds: number[]): Promise<void> {
    if (regions.length > this.memory.maxRegions) {
      throw new ProtocolError(`SET_MEM_TABLE: ${regions.length} regions over the limit of ${this.memory.maxRegions}`);
    }
    const mapped = this.#mapAll(regions, fds);
    // Requests in flight use views of the old table; let them finish before it goes.
    await this.#quiesce();
    let old: MemoryRegion[];
    try {
      old = this.memory.replace(mapped);
    } catch (err) {
      for (const m of mapped) m.release();
      throw new ProtocolError(`SET_MEM_TABLE: ${(err as Error).message}`);
    }
    // The fds are ours only once we return normally (on a throw the connection closes them): close them here.
    for (const fd of fds) closeQuietly(fd);
    for (const v of this.vrings) v.remap(this.memory);
    // Workers finish their requests on the old table and take the new one before the old goes.
    await this.#shareMemory(true);
    for (const r of old) r.release();
  }

  /** Give the workers the current table; with `quiesce` they first finish their requests in flight. */
  async #shareMemory(quiesce: boolean): Promise<void> {
    const workers = this.#workers;
    if (!workers) return;
    const regions = this.memory.regions.map((r) => ({
      desc: { guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset },
      buffer: r.buffer as SharedArrayBuffer,
    }));
    await workers.askAll({ t: 'memory', regions, quiesce });
  }

  async addMemRegion(region: RegionDescription, fd: number): Promise<void> {
    const [mapped] = this.#mapAll([region], [fd]);
    try {
      this.memory.add(mapped!);
    } catch (err) {
      mapped!.release();
      throw new ProtocolError(`ADD_MEM_REG: ${(err as Error).message}`);
    }
    closeQuietly(fd);
    for (const v of this.vrings) v.remap(this.memory);
    await this.#shareMemory(false);
  }

  async removeMemRegion(region: RegionDescription): Promise<void> {
    await this.#quiesce();
    let removed: MemoryRegion;
    try {
      removed = this.memory.remove(region);
    } catch (err) {
      throw new ProtocolError(`REM_MEM_REG: ${(err as Error).message}`);
    }
    for (const v of this.vrings) v.remap(this.memory);
    await this.#shareMemory(true);
    removed.release();
  }

  setVringNum(state: VringState): void {
    const v = this.#ring(state.index, 'SET_VRING_NUM');
    const n = state.num;
    if (n === 0 || n > this.device.maxQueueSize || (n & (n - 1)) !== 0) {
      throw new ProtocolError(`SET_VRING_NUM: size ${n} is not a power of two in 1..${this.device.maxQueueSize}`);
    }
    if (this.#running(v)) throw new ProtocolError(`SET_VRING_NUM: queue ${state.index} is running`);
    v.size = n;
  }

  setVringAddr(address: VringAddress): void {
    const v = this.#ring(address.index, 'SET_VRING_ADDR');
    v.addresses = { desc: address.desc, avail: address.avail, used: address.used };
    // A running ring gets new addresses when the frontend toggles logging; re-translate.
    if (v.started) v.remap(this.memory);
    else if (this.#remoteRunning.has(v.index)) this.#workers!.post(v.index, { t: 'addr', index: v.index, addresses: v.addresses });
  }

  setVringBase(state: VringState): void {
    const v = this.#ring(state.index, 'SET_VRING_BASE');
    if (state.num > 0xffff) throw new ProtocolError(`SET_VRING_BASE: ${state.num} is not a split-ring index`);
    if (this.#running(v)) throw new ProtocolError(`SET_VRING_BASE: queue ${state.index} is running`);
    v.base = state.num;
  }

  async getVringBase(index: number): Promise<number> {
    const v = this.#ring(index, 'GET_VRING_BASE');
    const base = await this.#stopRing(v);
    // After GET_VRING_BASE the ring is stopped and, with PROTOCOL_FEATURES, disabled.
    if (hasFeature(this.#features, CommonFeature.PROTOCOL_FEATURES)) v.enabled = false;
    return base;
  }

  setVringKick(index: number, fd: number | undefined): void {
    const v = this.#ring(index, 'SET_VRING_KICK');
    if (fd === undefined) {
      throw new ProtocolError('SET_VRING_KICK: polled rings (NOFD) are not supported; send a kick eventfd');
    }
    if (this.#running(v)) throw new ProtocolError(`SET_VRING_KICK: queue ${index} is already running`);
    if (this.#remote[index]) {
      this.#startRemote(v, fd);
      return;
    }
    if (this.#inflight && !v.inflight) v.inflight = this.#inflightQueue(index);
    v.start(fd, this.memory, this.device.maxChainLength);
    if (v.started) this.#poller.add(v);
    if (!v.started) return;
    this.device.ringStarted?.(v);
    // Buffers made available before the kick fd existed, or left in flight by a previous backend.
    this.available(v);
  }

  /** Hand queue `index`'s kick fd and state to its worker. */
  #startRemote(v: Vring, kickFd: number): void {
    if (v.size === 0 || v.addresses === undefined) {
      closeQuietly(kickFd);
      v.fail(new Error(`queue ${v.index} kicked before its size and addresses were set`));
      return;
    }
    const area = this.#inflight;
    let inflight: { buffer: SharedArrayBuffer; offset: number; queueSize: number } | undefined;
    if (area && v.index < area.description.numQueues) {
      const perQueue = inflightQueueSize(area.description.queueSize);
      inflight = { buffer: area.buffer, offset: area.description.mmapOffset + v.index * perQueue,
        queueSize: area.description.queueSize };
    }
    this.#workers!.post(v.index, {
      t: 'start', index: v.index, size: v.size, addresses: v.addresses, base: v.base, eventIdx: v.eventIdx,
      indirect: v.indirect, enabled: v.enabled, kickFd, maxChainLength: this.device.maxChainLength, inflight,
    });
    this.#remoteRunning.add(v.index);
  }

  /** Stop a ring wherever it runs; resolves with its next avail index once nothing of it is in flight. */
  async #stopRing(v: Vring): Promise<number> {
    if (this.#remoteRunning.has(v.index)) {
      const base = await this.#workers!.ask(v.index, { t: 'stop', index: v.index });
      this.#remoteRunning.delete(v.index);
      if (typeof base === 'number') v.base = base;
      return v.base;
    }
    this.#poller.remove(v);
    if (v.started) this.device.ringStopping?.(v);
    return v.stop();
  }

  setVringCall(index: number, fd: number | undefined): void {
    const v = this.#ring(index, 'SET_VRING_CALL');
    if (this.#remote[index]) this.#workers!.post(index, { t: 'call', index, fd: fd ?? -1 });
    else v.setCallFd(fd);
  }

  setVringErr(index: number, fd: number | undefined): void {
    const v = this.#ring(index, 'SET_VRING_ERR');
    if (this.#remote[index]) this.#workers!.post(index, { t: 'err', index, fd: fd ?? -1 });
    else v.setErrFd(fd);
  }

  setVringEnable(index: number, enable: boolean): void {
    const v = this.#ring(index, 'SET_VRING_ENABLE');
    if (!hasFeature(this.#features, CommonFeature.PROTOCOL_FEATURES) && this.#featuresSet) {
      throw new ProtocolError('SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated');
    }
    if (v.enabled === enable) return;
    v.enabled = enable;
    if (this.#remote[index]) {
      this.#workers!.post(index, { t: 'enable', index, enabled: enable });
      return;
    }
    this.device.ringEnableChanged?.(v);
    if (enable) this.available(v);
  }

  setBackendReqFd(fd: number): void {
    this.#backendChannel?.close();
    const channel = new Connection(fd, { name: 'backend-channel', logger: this.#log });
    // The frontend only sends replies here (to requests that asked for one); nothing to act on.
    channel.start((message) => {
      if (!(message.flags & HeaderFlag.REPLY)) {
        throw new ProtocolError(`backend channel: unexpected request ${message.request} from the frontend`);
      }
    });
    this.#backendChannel = channel;
  }

  getConfig(offset: number, size: number): Uint8Array {
    const read = this.device.readConfig;
    if (!read) throw new ProtocolError('GET_CONFIG: this device has no config space');
    const config = read.call(this.device);
    // Reads past the device's config return zeros, as a PCI config read would.
    const out = new Uint8Array(size);
    if (offset < config.byteLength) out.set(config.subarray(offset, Math.min(config.byteLength, offset + size)));
    return out;
  }

  async setConfig(offset: number, data: Uint8Array): Promise<void> {
    const write = this.device.writeConfig;
    if (!write) throw new RequestRejected('config space is read-only');
    await write.call(this.device, offset, data);
  }

  #inflightQueue(index: number): InflightQueue | undefined {
    const area = this.#inflight;
    if (!area || index >= area.description.numQueues) return undefined;
    const perQueue = inflightQueueSize(area.description.queueSize);
    return new InflightQueue(area.buffer, area.description.mmapOffset + index * perQueue, area.description.queueSize);
  }

  getInflightFd(numQueues: number, queueSize: number): { description: InflightDescription; fd: number } {
    if (!this.device.inflightTracking) throw new ProtocolError('GET_INFLIGHT_FD: inflight tracking was not offered');
    if (numQueues === 0 || numQueues > this.device.numQueues) {
      throw new ProtocolError(`GET_INFLIGHT_FD: ${numQueues} queues (the device has ${this.device.numQueues})`);
    }
    if (queueSize === 0 || queueSize > this.device.maxQueueSize || (queueSize & (queueSize - 1)) !== 0) {
      throw new ProtocolError(`GET_INFLIGHT_FD: queue size ${queueSize} is not a power of two up to ${this.device.maxQueueSize}`);
    }
    const perQueue = inflightQueueSize(queueSize);
    const size = perQueue * numQueues;
    const fd = native.memfdCreate('vhost-user-inflight', size);
    let buffer: SharedArrayBuffer;
    try {
      buffer = native.mmap(fd, size, true);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    const description = { mmapSize: size, mmapOffset: 0, numQueues, queueSize };
    // The area stays zeroed: a ring that starts on it initialises its part (a used area means recovery).
    this.#setInflight({ buffer, description });
    return { description, fd };
  }

  setInflightFd(description: InflightDescription, fd: number): void {
    if (!this.device.inflightTracking) throw new ProtocolError('SET_INFLIGHT_FD: inflight tracking was not offered');
    const { numQueues, queueSize, mmapOffset, mmapSize } = description;
    if (numQueues === 0 || numQueues > this.device.numQueues || queueSize === 0 || queueSize > this.device.maxQueueSize) {
      throw new ProtocolError(`SET_INFLIGHT_FD: ${numQueues} queues of ${queueSize} do not fit this device`);
    }
    const needed = inflightQueueSize(queueSize) * numQueues;
    if (mmapSize < needed) throw new ProtocolError(`SET_INFLIGHT_FD: area of ${mmapSize} bytes, ${needed} needed`);
    // We map [0, offset + size): bound both so a frontend cannot make us reserve address space at will.
    const pageAligned = Math.ceil(needed / 4096) * 4096;
    if (mmapSize > pageAligned || mmapOffset > MAX_INFLIGHT_OFFSET) {
      throw new ProtocolError(`SET_INFLIGHT_FD: area ${mmapOffset}+${mmapSize} is larger than the ${needed} bytes ` +
        `${numQueues} queues of ${queueSize} need`);
    }
    const { size } = native.fstat(fd);
    if (mmapOffset + mmapSize > size) {
      throw new ProtocolError(`SET_INFLIGHT_FD: ${mmapOffset}+${mmapSize} is past the end of the ${size}-byte file`);
    }
    const buffer = native.mmap(fd, mmapOffset + mmapSize, true);
    closeQuietly(fd);
    this.#setInflight({ buffer, description });
  }

  #setInflight(area: InflightArea): void {
    if (this.#inflight) native.unmapNow(this.#inflight.buffer);
    this.#inflight = area;
    for (const v of this.vrings) if (!v.started) v.inflight = undefined;
  }

  async resetDevice(): Promise<void> {
    await this.#stopAll();
    this.#features = 0n;
    this.#featuresSet = false;
    this.#status = 0;
    for (const v of this.vrings) {
      v.enabled = false;
      v.base = 0;
      v.size = 0;
      v.addresses = undefined;
      v.inflight = undefined;
    }
    await this.device.reset?.();
  }

  setStatus(status: number): void {
    this.#status = status & ~DeviceStatus.NEEDS_RESET | (this.#status & DeviceStatus.NEEDS_RESET);
    this.device.statusChanged?.(status);
  }

  getStatus(): number {
    return this.#status;
  }

  async #stopAll(): Promise<void> {
    await Promise.all(this.vrings.map(async (v) => {
      if (this.#running(v)) await this.#stopRing(v);
    }));
  }

  async disconnected(reason: string | undefined): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#stopAll();
      for (const v of this.vrings) v.dispose();
      // The workers close the fds they were given and drop their view of guest memory.
      if (this.#workers) {
        try {
          await this.#workers.askAll({ t: 'reset' });
        } catch (err) {
          this.#log.error(`queue workers did not reset: ${(err as Error).message}`);
        }
        this.#workers.onBroken = undefined;
        this.#workers.onWorkerDied = undefined;
      }
      this.#backendChannel?.close();
      this.#backendChannel = undefined;
      if (this.#inflight) native.unmapNow(this.#inflight.buffer);
      this.#inflight = undefined;
      for (const r of this.memory.clear()) r.release();
      await this.device.reset?.();
    } finally {
      this.#onClosed?.(reason);
    }
  }
}
