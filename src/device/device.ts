/**
 * The device interface: what a virtio device implements to be served over vhost-user. A device is mostly its
 * own logic; the framework ({@link DeviceBackend}) owns the protocol, memory, rings, inflight tracking and
 * notifications.
 */
import type { DescriptorChain } from '../virtqueue/chain.js';
import type { RingHandler } from './processing.js';
import type { Vring } from './vring.js';

/** A virtio device served by {@link DeviceBackend}. */
export interface VirtioDevice {
  /** Virtio device id (see `DeviceId`). */
  readonly deviceId: number;
  /** Device-specific feature bits offered. VERSION_1, EVENT_IDX, INDIRECT_DESC and the vhost-user bit are added. */
  readonly features: bigint;
  /** Number of virtqueues. */
  readonly numQueues: number;
  /** Largest ring size the device accepts (power of two). */
  readonly maxQueueSize: number;
  /**
   * Protocol features the device wants beyond the framework's base set (MQ, REPLY_ACK, BACKEND_REQ, RESET_DEVICE,
   * CONFIGURE_MEM_SLOTS, STATUS). CONFIG is added when {@link readConfig} exists.
   */
  readonly protocolFeatures?: bigint;
  /**
   * Most buffers one chain may have (direct plus indirect). Default: the ring size. Drivers such as Linux put
   * up to seg_max + 2 buffers in an indirect table even on a smaller ring.
   */
  readonly maxChainLength?: number;
  /** Track inflight requests in shared memory (INFLIGHT_SHMFD) so they survive a backend restart. */
  readonly inflightTracking?: boolean;

  /** The whole config space as the driver would read it now. */
  readConfig?(): Uint8Array;
  /** A driver write to config space; throw `RequestRejected` to refuse it. */
  writeConfig?(offset: number, data: Uint8Array): void | Promise<void>;

  /** Features the driver accepted (after SET_FEATURES). */
  featuresNegotiated?(features: bigint): void;

  /**
   * One available chain on a ring that is started and enabled. Complete it with `vring.complete(chain, len)`,
   * now or later (async I/O). Throwing marks the ring broken (NEEDS_RESET).
   */
  handleChain?(vring: Vring, chain: DescriptorChain): void;

  /**
   * The ring has new buffers (a kick, or the ring was just started or enabled). The default pops every chain
   * and hands each to {@link handleChain}; devices that consume buffers on their own schedule (network receive)
   * implement this instead. It is also called for a started ring that is disabled (`vring.enabled` false): the
   * device must then consume buffers without side effects (e.g. drop transmitted packets), as the protocol asks.
   * Throwing marks the ring broken. Return true when stopping with buffers left (after about `PASS_BUDGET`
   * chains, so that a guest keeping the ring full cannot keep the thread): another pass follows without a kick.
   */
  onAvailable?(vring: Vring): void | boolean;

  /**
   * May the framework's poll loop watch queue `index`? Default: yes with {@link handleChain}, no with
   * {@link onAvailable} (say yes for rings the device does not manage the notifications of itself).
   */
  pollQueue?(index: number): boolean;

  /** A ring started (kick fd set) with this state; `vring.enabled` tells whether it may have side effects. */
  ringStarted?(vring: Vring): void;
  /** A ring is stopping; the framework waits for the ring's inflight count to reach 0 after this. */
  ringStopping?(vring: Vring): void;
  /** A ring was enabled or disabled. */
  ringEnableChanged?(vring: Vring): void;

  /** The driver wrote the status byte (SET_STATUS); 0 means the driver reset the device. */
  statusChanged?(status: number): void;

  /** The frontend went away or reset the device: forget per-connection state. Storage stays. */
  reset?(): void | Promise<void>;

  /**
   * Serve queues on worker threads (`--workers N`): the module a worker imports and the data its
   * `createQueueHandler` export gets (structured-cloneable; SharedArrayBuffers are shared, fds are plain numbers
   * of this process). Undefined when this device, as configured, runs on the connection's thread only.
   */
  queueWorker?(): QueueWorkerSpec | undefined;
  /** May queue `index` go to a worker? (Default: every queue.) Control queues usually stay. */
  workerQueue?(index: number): boolean;
  /** Workers serve some queues: `broadcast` sends `data` to every worker's {@link QueueHandler.update}. */
  attachWorkers?(broadcast: (data: unknown) => void): void;
}

/** Where a worker finds a device's queue handler. */
export interface QueueWorkerSpec {
  /** URL (`import.meta.url`-relative) of a module exporting `createQueueHandler` ({@link CreateQueueHandler}). */
  module: string;
  /** Its argument. */
  data: unknown;
}

/** What a device's worker module exports as `createQueueHandler`. */
export type CreateQueueHandler = (data: unknown) => QueueHandler | Promise<QueueHandler>;

/** A device's ring processing on one worker thread (one per worker, for every queue the worker serves). */
export interface QueueHandler extends RingHandler {
  ringStarted?(vring: Vring): void;
  ringStopping?(vring: Vring): void;
  ringEnableChanged?(vring: Vring): void;
  /** Data the device broadcast (see {@link VirtioDevice.attachWorkers}). */
  update?(data: unknown): void;
  /** The frontend went away or reset the device. */
  reset?(): void | Promise<void>;
  /** Counters to report (structured-cloneable); the device sums the workers' (see `WorkerPool.stats`). */
  stats?(): unknown;
}

/** A hook for devices whose config changes at run time: the framework tells the frontend. */
export interface ConfigChangeNotifier {
  /** Ask the frontend to re-read the config space (CONFIG_CHANGE_MSG). */
  configChanged(): void;
}
