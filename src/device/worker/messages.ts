/**
 * The messages between the connection's thread and a queue worker. Rings, fds and memory move by message; guest
 * memory and inflight areas are SharedArrayBuffers, so both threads use one mapping. Fds are numbers (one
 * process): ownership of each fd passes to the worker with the message that carries it.
 */
import type { RegionDescriptor } from '../../memory/region.js';
import type { LogLevelName } from '../../util/log.js';
import type { RingAddresses } from '../vring.js';

/** What a worker needs at start (its `workerData`). */
export interface WorkerInit {
  /** Index of this worker in the pool (for logs). */
  worker: number;
  /** URL of the module exporting `createQueueHandler`. */
  module: string;
  /** The device's data for `createQueueHandler`. */
  data: unknown;
  pollUs: number;
  logLevel: LogLevelName;
  /** Log component name. */
  name: string;
}

/** A guest memory region as a worker receives it. */
export interface SharedRegion {
  desc: RegionDescriptor;
  buffer: SharedArrayBuffer;
}

/** Requests to a worker. The ones with `seq` are answered by a {@link WorkerReply}. */
export type ToWorker =
  | { t: 'memory'; seq: number; regions: SharedRegion[]; quiesce: boolean }
  | {
    t: 'start'; index: number; size: number; addresses: RingAddresses; base: number; eventIdx: boolean;
    indirect: boolean; enabled: boolean; kickFd: number; maxChainLength?: number;
    inflight?: { buffer: SharedArrayBuffer; offset: number; queueSize: number };
  }
  | { t: 'call' | 'err'; index: number; fd: number }
  | { t: 'enable'; index: number; enabled: boolean }
  | { t: 'features'; eventIdx: boolean; indirect: boolean }
  | { t: 'addr'; index: number; addresses: RingAddresses }
  | { t: 'stop'; seq: number; index: number }
  | { t: 'reset'; seq: number }
  | { t: 'stats'; seq: number }
  | { t: 'update'; data: unknown };

/** The answer to a request with `seq`: a value or an error message. */
export interface WorkerReply {
  t: 'reply';
  seq: number;
  value?: unknown;
  error?: string;
}

/** Messages from a worker. */
export type FromWorker =
  | WorkerReply
  | { t: 'ready' }
  | { t: 'failed'; message: string }
  | { t: 'broken'; index: number; message: string }
  /** The worker is done with an fd it was given: the pool closes it (and closes those a dead worker kept). */
  | { t: 'release'; fd: number };
