/**
 * The virtio-scsi device: a SCSI host whose targets and logical units come from a {@link ScsiBus} (the
 * transport-independent target emulation in src/scsi). Request queues carry SCSI commands to the units, the
 * control queue carries task management and asynchronous-notification queries, and the event queue reports
 * units added or removed at run time (HOTPLUG).
 *
 * Requests to a target that does not exist are answered BAD_TARGET (Linux's scan then moves on without a
 * retry); a target that exists answers for its missing LUNs itself (INQUIRY "not present", LOGICAL UNIT NOT
 * SUPPORTED), which is what Linux's sequential and REPORT LUNS scans expect. Task management on a missing LUN
 * is INCORRECT_LUN.
 *
 * Data buffers go to the units as views of guest memory (no copy). The event queue's buffers are taken only
 * when there is an event to put in them, so stopping that ring never waits.
 */
import type { VirtioDevice } from '../../device/device.js';
import type { Vring } from '../../device/vring.js';
import { PASS_BUDGET } from '../../device/processing.js';
import { RequestRejected } from '../../protocol/backend.js';
import { Limits } from '../../protocol/constants.js';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import { DeviceId, ScsiFeature, featureMask, hasFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { ScsiBus, type BusChange } from '../../scsi/bus.js';
import { refillableViewList, sliceViewsInto } from '../../util/views.js';
import { MAX_SENSE_SIZE, ScsiTask, TaskResponse } from '../../scsi/task.js';
import { TmfResponse, type ScsiTarget, type TaskManagementFunction } from '../../scsi/target.js';
import type { LogicalUnit } from '../../scsi/logical-unit.js';
import {
  ControlType, EventType, ResetReason, ScsiQueue, ScsiResponse, TmfSubtype, VirtioScsi, decodeLun, encodeEvent, encodeLunField,
  encodeScsiConfig, lunNumber, lunTarget,
} from './protocol.js';

/** Options for {@link ScsiDevice}. */
export interface ScsiDeviceOptions {
  /** The targets and units (default: an empty bus; add units with {@link ScsiDevice.addUnit}). */
  bus?: ScsiBus;
  /** Request queues (default 1). */
  numQueues?: number;
  /** Largest ring the device accepts (default 1024). */
  maxQueueSize?: number;
  /** Config hints: seg_max (default 254), max_sectors (default 0xFFFF), cmd_per_lun (default 128). */
  segMax?: number;
  maxSectors?: number;
  cmdPerLun?: number;
  /** Offer VIRTIO_SCSI_F_HOTPLUG (default true). VIRTIO_SCSI_F_CHANGE is always offered (no PARAM_CHANGE is ever sent). */
  hotplug?: boolean;
  /** Events kept while the driver has no event buffer; beyond this they are dropped and reported missed (default 64). */
  maxPendingEvents?: number;
  logger?: Logger;
}

/** Counters, for statistics and tests. */
export interface ScsiDeviceStats {
  /** Requests on the request queues, in total and per request queue. */
  requests: number;
  perQueue: number[];
  /** Answered BAD_TARGET. */
  badTarget: number;
  /** Answered FAILURE (malformed requests). */
  failures: number;
  /** Completed without a response (no room for one). */
  noResponse: number;
  tmfs: number;
  anQueries: number;
  events: number;
  /** Events dropped for want of event buffers (reported to the driver as EVENTS_MISSED). */
  eventsDropped: number;
}

const TMF_FUNCTIONS: Readonly<Record<number, TaskManagementFunction>> = {
  [TmfSubtype.ABORT_TASK]: 'abort-task',
  [TmfSubtype.ABORT_TASK_SET]: 'abort-task-set',
  [TmfSubtype.CLEAR_ACA]: 'clear-aca',
  [TmfSubtype.CLEAR_TASK_SET]: 'clear-task-set',
  [TmfSubtype.I_T_NEXUS_RESET]: 'i-t-nexus-reset',
  [TmfSubtype.LOGICAL_UNIT_RESET]: 'logical-unit-reset',
  [TmfSubtype.QUERY_TASK]: 'query-task',
  [TmfSubtype.QUERY_TASK_SET]: 'query-task-set',
};

const TMF_RESPONSES: Readonly<Record<TmfResponse, number>> = {
  [TmfResponse.FUNCTION_COMPLETE]: ScsiResponse.OK,
  [TmfResponse.FUNCTION_SUCCEEDED]: ScsiResponse.FUNCTION_SUCCEEDED,
  [TmfResponse.FUNCTION_REJECTED]: ScsiResponse.FUNCTION_REJECTED,
  [TmfResponse.INCORRECT_LUN]: ScsiResponse.INCORRECT_LUN,
};

/** The response byte for each TaskResponse, indexed by it (a lookup per request). */
const TASK_RESPONSES = new Uint8Array(4);
TASK_RESPONSES[TaskResponse.COMPLETE] = ScsiResponse.OK;
TASK_RESPONSES[TaskResponse.OVERRUN] = ScsiResponse.OVERRUN;
TASK_RESPONSES[TaskResponse.ABORTED] = ScsiResponse.ABORTED;
TASK_RESPONSES[TaskResponse.RESET] = ScsiResponse.RESET;

const HOTPLUG = featureMask(ScsiFeature.HOTPLUG);
/** CDB bytes copied into a task: the longest CDB the target emulation decodes. */
const CDB_COPY = 16;
/** Header bytes the word-wise read takes in (nine words: the CDB's 16th byte is in the ninth). */
const WORD_HEADER = 36;
// Module-local copies of the wire constants the per-request path uses: the compiler folds these, while every
// read of an imported object's property is a load and a check.
const REQUEST_HEADER_BASE = VirtioScsi.REQUEST_HEADER_BASE;
const RESPONSE_HEADER_BASE = VirtioScsi.RESPONSE_HEADER_BASE;
const FIRST_REQUEST = ScsiQueue.FIRST_REQUEST;
/** An imported binding is a cell load and a hole check per use; a module-local const is folded. */
const BUDGET = PASS_BUDGET;
const CONTROL = ScsiQueue.CONTROL;
const EVENT = ScsiQueue.EVENT;
const FAILURE = ScsiResponse.FAILURE;
const INOUT = featureMask(ScsiFeature.INOUT);
const CHANGE = featureMask(ScsiFeature.CHANGE);
const LUN_NUMBER = lunNumber;

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

function positiveInt(value: number | undefined, fallback: number, name: string, max: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > max) throw new RangeError(`${name} must be an integer in 1..${max}, got ${v}`);
  return v;
}

/** A pending event. */
interface PendingEvent {
  event: number;
  lun: Uint8Array;
  reason: number;
}

/**
 * One request in flight on a request queue: the SCSI task itself, with the transport's state. Pooled, so a
 * request allocates nothing.
 */
class ScsiRequest extends ScsiTask {
  readonly device: ScsiDevice;
  /** Where the device's pool keeps it. */
  readonly poolIndex: number;
  /** The pool it belongs to: the device's pool generation when it was made (a reset starts a new pool). */
  readonly generation: number;
  vring: Vring | null = null;
  chain: DescriptorChain | null = null;
  /** Bytes of the response header (12 + sense_size at the time of the request). */
  responseSize = 0;
  /** The data buffers, as views: reused from request to request (read only through viewsFrom, which fills them). */
  readonly dataOutViews: Uint8Array[] = refillableViewList();
  readonly dataInViews: Uint8Array[] = refillableViewList();

  constructor(device: ScsiDevice, poolIndex: number, generation: number) {
    super(requestDone);
    this.device = device;
    this.poolIndex = poolIndex;
    this.generation = generation;
  }
}

/** The completion of every request (one function: the call that reaches it stays monomorphic). */
function requestDone(task: ScsiTask): void {
  const req = task as ScsiRequest;
  req.device.finishRequest(req);
}

/**
 * `views` from byte `start` on into `out` (emptied first), like sliceViewsInto but with the common case first:
 * `start` falls on a view boundary (Linux puts the request and response headers in buffers of their own), so
 * the data buffers are the views as they are. `lengths` are the views' byte lengths (the chain keeps them as
 * numbers: a view's `byteLength` is a call into the engine).
 */
function viewsFrom(out: Uint8Array[], views: readonly Uint8Array[], lengths: readonly number[], start: number,
  end: number): Uint8Array[] {
  if (lengths[0] !== start) return sliceViewsInto(out, views, start, end);
  let n = 0;
  for (let i = 1; i < views.length; i++) out[n++] = views[i]!;
  // Trimmed rather than emptied first: emptying drops the array's storage and refilling it would allocate.
  if (out.length !== n) out.length = n;
  return out;
}

/** Copy the first `n` bytes of `src` into `views` (no sub-view of `src` per piece: this is for small headers). */
function writeHead(views: readonly Uint8Array[], src: Uint8Array, n: number): void {
  let at = 0;
  for (let i = 0; i < views.length && at < n; i++) {
    const v = views[i]!;
    const k = v.byteLength < n - at ? v.byteLength : n - at;
    for (let j = 0; j < k; j++) v[j] = src[at + j]!;
    at += k;
  }
}

/** A virtio-scsi host over a SCSI bus. */
export class ScsiDevice implements VirtioDevice {
  readonly deviceId = DeviceId.SCSI;
  readonly features: bigint;
  /** Control + event + request queues. */
  readonly numQueues: number;
  readonly requestQueues: number;
  readonly maxQueueSize: number;
  readonly maxChainLength: number;
  readonly inflightTracking = true;
  readonly bus: ScsiBus;
  readonly segMax: number;
  readonly maxSectors: number;
  readonly cmdPerLun: number;
  readonly maxPendingEvents: number;
  readonly stats: ScsiDeviceStats;

  #senseSize: number = VirtioScsi.DEFAULT_SENSE_SIZE;
  #cdbSize: number = VirtioScsi.DEFAULT_CDB_SIZE;
  #negotiated = 0n;
  #eventVring: Vring | undefined;
  readonly #requestVrings = new Set<Vring>();
  #pendingEvents: PendingEvent[] = [];
  #eventsMissed = false;
  /**
   * The request pool: every request made, and the indexes of the free ones as a stack. Indexes, not a linked
   * list: the pooled requests are young objects (nothing else allocates, so no scavenge ever promotes them), and
   * each store of one into the (old) device would take the write barrier's slow path, twice per request.
   */
  #requests: ScsiRequest[] = [];
  #freeIndexes = new Int32Array(64);
  #freeCount = 0;
  /** The pool's generation: a request of an earlier one (dropped by a reset) is not taken back. */
  #generation = 0;
  /** The index of the request being started by #request (for #internalError), -1 when none. */
  #starting = -1;
  /** Bytes of the request header before the data-out buffers (19 + cdb_size), and of the response (12 + sense_size). */
  #headerSize: number = VirtioScsi.REQUEST_HEADER_BASE + VirtioScsi.DEFAULT_CDB_SIZE;
  #responseSize: number = VirtioScsi.RESPONSE_HEADER_BASE + VirtioScsi.DEFAULT_SENSE_SIZE;
  /** The request header up to the last CDB byte we read, when the guest split it across buffers. */
  readonly #header = new Uint8Array(VirtioScsi.REQUEST_HEADER_BASE + CDB_COPY);
  /** A response header with sense, when the first writable buffer cannot hold it. */
  readonly #response = new Uint8Array(VirtioScsi.RESPONSE_HEADER_BASE + MAX_SENSE_SIZE);
  readonly #control = new Uint8Array(32);
  readonly #event = new Uint8Array(VirtioScsi.EVENT_SIZE);
  readonly #log: Logger;
  readonly #warned = new Set<string>();
  readonly #unsubscribe: () => void;

  constructor(options: ScsiDeviceOptions = {}) {
    this.#log = options.logger ?? makeLogger('scsi');
    this.bus = options.bus ?? new ScsiBus();
    // The framework serves at most Limits.MAX_QUEUES (256) virtqueues, control and event queues included.
    this.requestQueues = positiveInt(options.numQueues, 1, 'numQueues', Limits.MAX_QUEUES - ScsiQueue.FIRST_REQUEST);
    this.numQueues = ScsiQueue.FIRST_REQUEST + this.requestQueues;
    this.maxQueueSize = positiveInt(options.maxQueueSize, 1024, 'maxQueueSize', 32768);
    if ((this.maxQueueSize & (this.maxQueueSize - 1)) !== 0) throw new RangeError(`maxQueueSize ${this.maxQueueSize} is not a power of two`);
    this.segMax = positiveInt(options.segMax, 254, 'segMax', 0xffffffff);
    // Header, data-out segments, response, data-in segments.
    this.maxChainLength = this.segMax + 2;
    this.maxSectors = positiveInt(options.maxSectors, 0xffff, 'maxSectors', 0xffffffff);
    this.cmdPerLun = positiveInt(options.cmdPerLun, 128, 'cmdPerLun', 0xffffffff);
    this.maxPendingEvents = positiveInt(options.maxPendingEvents, 64, 'maxPendingEvents', 65536);
    // CHANGE is offered though no parameter ever changes: QEMU 7.2's vhost-user-scsi passes the guest's CHANGE bit
    // (its param_change property, on by default) through in SET_FEATURES whatever the backend offered.
    this.features = (options.hotplug === false ? 0n : HOTPLUG) | CHANGE;
    this.stats = {
      requests: 0, perQueue: new Array<number>(this.requestQueues).fill(0), badTarget: 0, failures: 0, noResponse: 0,
      tmfs: 0, anQueries: 0, events: 0, eventsDropped: 0,
    };
    this.#unsubscribe = this.bus.subscribe((change) => this.#busChanged(change));
    // Every field reset() writes is written a second time now: the compiler takes a field written only once
    // for a constant, and the first reset (the first reconnection) would drop every function compiled on that
    // assumption, the whole request path.
    this.reset();
  }

  /** sense_size as the driver set it (96 after reset). */
  get senseSize(): number {
    return this.#senseSize;
  }

  /** cdb_size as the driver set it (32 after reset). */
  get cdbSize(): number {
    return this.#cdbSize;
  }

  /** Is HOTPLUG offered? */
  get hotplugOffered(): boolean {
    return (this.features & HOTPLUG) !== 0n;
  }

  /** Was HOTPLUG negotiated (events for units coming and going)? */
  get hotplugNegotiated(): boolean {
    return (this.#negotiated & HOTPLUG) !== 0n;
  }

  /** Events waiting for event buffers. */
  get pendingEvents(): number {
    return this.#pendingEvents.length;
  }

  /** Put a unit on the bus at target:lun; the driver hears of it through the event queue. */
  addUnit(target: number, lun: number, unit: LogicalUnit): void {
    this.bus.add(target, lun, unit);
  }

  /**
   * Take the unit at target:lun off the bus (the driver hears of it) and resolve with it once its running
   * commands have ended; undefined when there is none. Closing its storage is the caller's business.
   */
  async removeUnit(target: number, lun: number): Promise<LogicalUnit | undefined> {
    const unit = this.bus.remove(target, lun);
    if (unit) await unit.whenIdle();
    return unit;
  }

  /** Stop listening to the bus (the device is being thrown away). */
  dispose(): void {
    this.#unsubscribe();
  }

  // ---- VirtioDevice ----

  readConfig(): Uint8Array {
    return encodeScsiConfig({
      numQueues: this.requestQueues,
      segMax: this.segMax,
      maxSectors: this.maxSectors,
      cmdPerLun: this.cmdPerLun,
      eventInfoSize: VirtioScsi.EVENT_SIZE,
      senseSize: this.#senseSize,
      cdbSize: this.#cdbSize,
      maxChannel: 0,
      maxTarget: this.bus.maxTargets - 1,
      maxLun: 16383,
    });
  }

  /** Only sense_size and cdb_size are writable (virtio 1.2, 5.6.4). */
  writeConfig(offset: number, data: Uint8Array): void {
    const config = this.readConfig();
    if (!Number.isInteger(offset) || offset < 0 || offset + data.byteLength > config.byteLength) {
      throw new RequestRejected(`virtio-scsi config: write of ${data.byteLength} bytes at ${offset} is outside the config space`);
    }
    const next = Uint8Array.from(config);
    next.set(data, offset);
    for (let i = 0; i < next.byteLength; i++) {
      const writable = i >= VirtioScsi.SENSE_SIZE_OFFSET && i < VirtioScsi.CDB_SIZE_OFFSET + 4;
      if (!writable && next[i] !== config[i]) {
        throw new RequestRejected(`virtio-scsi config: only sense_size and cdb_size are writable (byte ${i})`);
      }
    }
    const sense = u32(next, VirtioScsi.SENSE_SIZE_OFFSET);
    const cdb = u32(next, VirtioScsi.CDB_SIZE_OFFSET);
    if (sense > 0xffff) throw new RequestRejected(`virtio-scsi config: sense_size ${sense} is too large`);
    if (cdb > 0xff) throw new RequestRejected(`virtio-scsi config: cdb_size ${cdb} is too large`);
    this.#senseSize = sense;
    this.#cdbSize = cdb;
    this.#sizesChanged();
  }

  #sizesChanged(): void {
    this.#headerSize = VirtioScsi.REQUEST_HEADER_BASE + this.#cdbSize;
    this.#responseSize = VirtioScsi.RESPONSE_HEADER_BASE + this.#senseSize;
  }

  featuresNegotiated(features: bigint): void {
    this.#negotiated = features;
  }

  ringStarted(vring: Vring): void {
    if (vring.index === ScsiQueue.EVENT) this.#eventVring = vring;
    else if (vring.index >= ScsiQueue.FIRST_REQUEST) {
      this.#requestVrings.add(vring);
      // A first request for the pool now rather than on the first command: with a disk that completes within the
      // call that one serves every command, and making it is then a path the request path's compiled code has
      // never seen (no type feedback), which dropped that code at each new connection.
      if (this.#requests.length === 0) this.#newRequest();
    }
  }

  ringStopping(vring: Vring): void {
    if (vring === this.#eventVring) this.#eventVring = undefined;
    this.#requestVrings.delete(vring);
  }

  reset(): void {
    this.#negotiated = 0n;
    this.#senseSize = VirtioScsi.DEFAULT_SENSE_SIZE;
    this.#cdbSize = VirtioScsi.DEFAULT_CDB_SIZE;
    this.#sizesChanged();
    this.#eventVring = undefined;
    this.#requestVrings.clear();
    this.#pendingEvents = [];
    this.#eventsMissed = false;
    // Pooled requests still hold views of the old guest memory.
    this.#requests = [];
    this.#freeCount = 0;
    this.#generation++;
    // A new driver meets the units as after power-on.
    for (const { unit } of this.bus.units()) unit.powerOn();
  }

  /**
   * The framework's poll loop may watch the control and request queues. Not the event queue: its buffers wait,
   * unconsumed, for events of ours, and only their arrival is of interest.
   */
  pollQueue(index: number): boolean {
    return index !== ScsiQueue.EVENT;
  }

  onAvailable(vring: Vring): boolean {
    // Called for disabled rings too: every request here has side effects, so buffers wait for the enable.
    if (!vring.enabled) return false;
    const index = vring.index;
    if (index === EVENT) {
      this.#deliverEvents();
      return false;
    }
    // Request counts are added once per pass rather than per request. At most PASS_BUDGET per pass, so that a
    // guest keeping the ring full does not keep the thread (the framework runs the next pass at once).
    let n = 0;
    for (let chain = n < BUDGET ? vring.pop() : null; chain !== null; chain = n < BUDGET ? vring.pop() : null) {
      n++;
      try {
        if (index === CONTROL) this.#controlRequest(vring, chain);
        else this.#request(vring, chain);
      } catch (err) {
        this.#internalError(vring, chain, err as Error);
      }
    }
    if (n > 0 && index >= FIRST_REQUEST) {
      this.stats.requests += n;
      this.stats.perQueue[index - FIRST_REQUEST]! += n;
    }
    return n >= BUDGET;
  }

  /**
   * A bug of ours surfaced while a chain was being handled: answer it (length 0) so that the ring can still
   * stop, unless its request completed it already (a completed chain is never touched again), and go on.
   */
  #internalError(vring: Vring, chain: DescriptorChain, err: Error): void {
    this.#log.error(`queue ${vring.index}: internal error on request ${chain.head}: ${err.stack ?? err}`);
    const req = this.#starting >= 0 ? this.#requests[this.#starting] : undefined;
    this.#starting = -1;
    if (req !== undefined && req.chain !== chain) return;
    if (req !== undefined) {
      // Its task may still end later: finishRequest then finds no chain and leaves the request out of the pool.
      req.chain = null;
      req.vring = null;
    }
    vring.complete(chain, 0);
  }

  // ---- request queues ----

  /**
   * One request: checked, its header decoded straight from the guest's buffer into a pooled task, and handed to
   * the target. The rare cases (errors, split headers) are in other methods, to keep this one small.
   */
  #request(vring: Vring, chain: DescriptorChain): void {
    const responseSize = this.#responseSize;
    const headerSize = this.#headerSize;
    const writableLength = chain.writableLength;
    const readableLength = chain.readableLength;
    const dataOutLength = readableLength - headerSize;
    const dataInLength = writableLength - responseSize;
    if (dataInLength < 0 || dataOutLength < 0 || (dataOutLength > 0 && dataInLength > 0)) {
      if (!this.#layoutOk(vring, chain, dataOutLength, dataInLength)) return;
    }
    // The header is read a 32-bit word at a time from the guest's buffer when that buffer holds what we read of
    // it and starts on a word boundary (Linux's always do): nine loads instead of some thirty byte loads and the
    // byte-wise CDB copy. Otherwise byte by byte, from the buffer or from a copy when the header is split. Either
    // way every field is read once, so a guest rewriting it meanwhile cannot make us see two different values.
    const region = chain.readableRegions[0];
    const i = region !== null && region !== undefined && chain.readableLengths[0]! >= WORD_HEADER &&
      this.#cdbSize >= CDB_COPY ? region.wordIndex(chain.readableOffsets[0]!) : -1;
    if (i < 0) return this.#requestBytes(vring, chain, headerSize, responseSize, dataOutLength, dataInLength);
    const u = region!.u32!;
    const w0 = u[i]!;
    const target = this.bus.target((w0 & 0xff) === 1 ? (w0 >>> 8) & 0xff : -1);
    if (target === undefined) return this.#badTarget(vring, chain, dataOutLength, dataInLength);
    const req = this.#take(vring, chain);
    // Bytes 4-7 of the LUN field must be zero; the LUN is in bytes 2-3.
    const lun = u[i + 1] === 0 ? LUN_NUMBER((w0 >>> 16) & 0xff, w0 >>> 24) : -1;
    req.tagLo = u[i + 2]!;
    req.tagHi = u[i + 3]!;
    // The CDB starts at header byte 19, three bytes into word 4: each task word is the top byte of one header
    // word and the low three bytes of the next. No command the target knows is longer than 16 bytes: the task's
    // CDB words past the fourth stay zero.
    const w4 = u[i + 4]!;
    const w5 = u[i + 5]!;
    const w6 = u[i + 6]!;
    const w7 = u[i + 7]!;
    const w8 = u[i + 8]!;
    const cdb = req.cdbWords;
    cdb[0] = (w4 >>> 24) | (w5 << 8);
    cdb[1] = (w5 >>> 24) | (w6 << 8);
    cdb[2] = (w6 >>> 24) | (w7 << 8);
    cdb[3] = (w7 >>> 24) | (w8 << 8);
    this.#dispatch(req, chain, target, lun, headerSize, responseSize, dataOutLength, dataInLength);
  }

  /** BAD_TARGET: no target at that address. */
  #badTarget(vring: Vring, chain: DescriptorChain, dataOutLength: number, dataInLength: number): void {
    this.stats.badTarget++;
    this.#answer(vring, chain, ScsiResponse.BAD_TARGET, dataInLength > 0 ? dataInLength : dataOutLength);
  }

  /** A pooled request for `chain`, which it holds from here on (see #internalError). */
  #take(vring: Vring, chain: DescriptorChain): ScsiRequest {
    if (this.#freeCount === 0) this.#newRequest();
    const req = this.#requests[this.#freeIndexes[--this.#freeCount]!]!;
    this.#starting = req.poolIndex;
    req.vring = vring;
    req.chain = chain;
    req.prepare();
    return req;
  }

  /** #request's byte-wise header read: a header in an unaligned or short first buffer, or cdb_size below 16. */
  #requestBytes(vring: Vring, chain: DescriptorChain, headerSize: number, responseSize: number, dataOutLength: number,
    dataInLength: number): void {
    let h = chain.readable[0]!;
    if (chain.readableLengths[0]! < REQUEST_HEADER_BASE + CDB_COPY) h = this.#copyHeader(chain);
    const target = this.bus.target(h[0] === 1 ? h[1]! : -1);
    if (target === undefined) return this.#badTarget(vring, chain, dataOutLength, dataInLength);
    const req = this.#take(vring, chain);
    // No command the target knows is longer than 16 bytes: the task's CDB bytes past 16 stay zero. Copied
    // unrolled (header bytes 19-34, the CDB starting at REQUEST_HEADER_BASE): a loop costs several times more.
    const cdb = req.cdb;
    if (this.#cdbSize >= CDB_COPY) {
      cdb[0] = h[19]!; cdb[1] = h[20]!; cdb[2] = h[21]!; cdb[3] = h[22]!;
      cdb[4] = h[23]!; cdb[5] = h[24]!; cdb[6] = h[25]!; cdb[7] = h[26]!;
      cdb[8] = h[27]!; cdb[9] = h[28]!; cdb[10] = h[29]!; cdb[11] = h[30]!;
      cdb[12] = h[31]!; cdb[13] = h[32]!; cdb[14] = h[33]!; cdb[15] = h[34]!;
    } else {
      this.#shortCdb(cdb, h);
    }
    req.tagLo = (h[8]! | (h[9]! << 8) | (h[10]! << 16) | (h[11]! << 24)) >>> 0;
    req.tagHi = (h[12]! | (h[13]! << 8) | (h[14]! << 16) | (h[15]! << 24)) >>> 0;
    this.#dispatch(req, chain, target, decodeLun(h), headerSize, responseSize, dataOutLength, dataInLength);
  }

  /** The data buffers into the task, and the task to its target. */
  #dispatch(req: ScsiRequest, chain: DescriptorChain, target: ScsiTarget, lun: number, headerSize: number,
    responseSize: number, dataOutLength: number, dataInLength: number): void {
    if (dataOutLength > 0) {
      req.dataOut = viewsFrom(req.dataOutViews, chain.readable, chain.readableLengths, headerSize, chain.readableLength);
      req.dataOutLength = dataOutLength;
    }
    if (dataInLength > 0) {
      req.dataIn = viewsFrom(req.dataInViews, chain.writable, chain.writableLengths, responseSize, chain.writableLength);
      req.dataInLength = dataInLength;
    }
    req.responseSize = responseSize;
    target.execute(lun, req);
    this.#starting = -1;
  }

  /**
   * The buffers are too small for the header or the response, or carry data both ways: false, with the
   * request answered, unless data both ways is allowed (INOUT).
   */
  #layoutOk(vring: Vring, chain: DescriptorChain, dataOutLength: number, dataInLength: number): boolean {
    if (dataInLength < 0) {
      this.#guestError('short-response', `queue ${vring.index}: request ${chain.head} has ${chain.writableLength} writable ` +
        `bytes, less than the ${this.#responseSize}-byte response`);
      this.#answer(vring, chain, FAILURE);
      return false;
    }
    if (dataOutLength < 0) {
      this.#guestError('short-request', `queue ${vring.index}: request ${chain.head} has ${chain.readableLength} readable ` +
        `bytes, less than the ${this.#headerSize}-byte header`);
      this.#answer(vring, chain, FAILURE);
      return false;
    }
    if ((this.#negotiated & INOUT) === 0n) {
      this.#guestError('inout', `queue ${vring.index}: request ${chain.head} has data both ways without INOUT`);
      this.#answer(vring, chain, FAILURE);
      return false;
    }
    return true;
  }

  /** The header up to the 16th CDB byte, copied out of the chain (it starts with a buffer too short for it). */
  #copyHeader(chain: DescriptorChain): Uint8Array {
    const header = this.#header;
    // Bytes past the header (data-out bytes when cdb_size < 16) may come along; they are never read.
    header.fill(0);
    chain.readInto(header);
    return header;
  }

  /** cdb_size below 16: its bytes, the rest of the 16 zero. */
  #shortCdb(cdb: Uint8Array, h: Uint8Array): void {
    const n = this.#cdbSize;
    for (let i = 0; i < n; i++) cdb[i] = h[REQUEST_HEADER_BASE + i]!;
    cdb.fill(0, n, CDB_COPY);
  }

  /** @internal A task ended: write the response header (and sense, after an error), complete the chain. */
  finishRequest(req: ScsiRequest): void {
    const vring = req.vring;
    const chain = req.chain;
    if (vring === null || chain === null) return;
    req.vring = null;
    req.chain = null;
    const senseLength = req.senseLength;
    // ScsiTask.residual, written out: a getter that is not inlined is a call, and its result a tagged number.
    const dataInLength = req.dataInLength;
    const residual = dataInLength > 0 ? dataInLength - req.dataInTransferred : req.dataOutLength - req.dataOutTransferred;
    // COMPLETE is response OK (0): the lookup only for the others.
    const taskResponse = req.response;
    const response = taskResponse === 0 ? 0 : TASK_RESPONSES[taskResponse]!;
    // In place when the first writable buffer holds the response (it always does for Linux): three words when it
    // starts on a word boundary (sense_len 0, residual, then status_qualifier 0, status, response), else bytes.
    const region = chain.writableRegions[0];
    const i = senseLength === 0 && region !== null && region !== undefined && chain.writableLengths[0]! >= RESPONSE_HEADER_BASE
      ? region.wordIndex(chain.writableOffsets[0]!) : -1;
    if (i >= 0) {
      const u = region!.u32!;
      u[i] = 0;
      u[i + 1] = residual;
      u[i + 2] = (req.status << 16) | (response << 24);
    } else {
      // In a method of its own: the less bytecode here, the more of the completion the compiler inlines.
      this.#writeResponse(req, chain, residual, response);
    }
    const len = req.responseSize + req.dataInTransferred;
    // The views stay in the task (and the request's own arrays) until prepare() on its next use, or a device reset
    // drops the pool (a request of a dropped pool is not taken back).
    if (req.generation === this.#generation) {
      if (this.#freeCount === this.#freeIndexes.length) this.#growFree();
      this.#freeIndexes[this.#freeCount++] = req.poolIndex;
    }
    vring.complete(chain, len);
  }

  /** One more request in the pool, free. */
  #newRequest(): void {
    const index = this.#requests.length;
    this.#requests.push(new ScsiRequest(this, index, this.#generation));
    if (this.#freeCount === this.#freeIndexes.length) this.#growFree();
    this.#freeIndexes[this.#freeCount++] = index;
  }

  /** Room for every request made (the stack never holds more). */
  #growFree(): void {
    const grown = new Int32Array(this.#freeIndexes.length * 2);
    grown.set(this.#freeIndexes);
    this.#freeIndexes = grown;
  }

  /** The response byte by byte: with sense data, or into a first buffer that is unaligned or too small for it. */
  #writeResponse(req: ScsiRequest, chain: DescriptorChain, residual: number, response: number): void {
    if (req.senseLength === 0 && chain.writableLengths[0]! >= RESPONSE_HEADER_BASE) {
      const w = chain.writable[0]!;
      w[0] = 0; w[1] = 0; w[2] = 0; w[3] = 0;
      w[4] = residual; w[5] = residual >>> 8; w[6] = residual >>> 16; w[7] = residual >>> 24;
      w[8] = 0; w[9] = 0; w[10] = req.status; w[11] = response;
      return;
    }
    // sense_size and the response buffer may cut the sense short.
    const senseLen = Math.min(req.senseLength, this.#senseSize, req.responseSize - RESPONSE_HEADER_BASE);
    const n = RESPONSE_HEADER_BASE + senseLen;
    const w = chain.writable[0]!;
    const r = chain.writableLengths[0]! >= n ? w : this.#response;
    put32(r, 0, senseLen);
    put32(r, 4, residual);
    r[8] = 0;
    r[9] = 0;
    r[10] = req.status;
    r[11] = response;
    const sense = req.sense;
    for (let i = 0; i < senseLen; i++) r[RESPONSE_HEADER_BASE + i] = sense[i]!;
    if (r !== w) writeHead(chain.writable, r, n);
  }

  /** Complete a request that did not reach a unit, with `response` and no sense. */
  #answer(vring: Vring, chain: DescriptorChain, response: number, residual = 0): void {
    if (chain.writableLength < RESPONSE_HEADER_BASE) {
      this.stats.noResponse++;
      this.#guestError('no-response', `queue ${vring.index}: request ${chain.head} has no room for a response; ` +
        'completed with length 0');
      vring.complete(chain, 0);
      return;
    }
    if (response === FAILURE) this.stats.failures++;
    const r = this.#response;
    r.fill(0, 0, RESPONSE_HEADER_BASE);
    put32(r, 4, residual);
    r[11] = response;
    writeHead(chain.writable, r, RESPONSE_HEADER_BASE);
    vring.complete(chain, Math.min(chain.writableLength, RESPONSE_HEADER_BASE + this.#senseSize));
  }

  // ---- control queue ----

  #controlRequest(vring: Vring, chain: DescriptorChain): void {
    const c = this.#control;
    c.fill(0);
    const n = chain.readInto(c);
    const wlen = chain.writableLength;
    if (wlen === 0) {
      this.stats.noResponse++;
      this.#guestError('ctrl-no-response', `control request ${chain.head} has no writable byte; completed with length 0`);
      vring.complete(chain, 0);
      return;
    }
    const type = n >= 4 ? u32(c, 0) : -1;
    if (type === ControlType.TMF && n >= VirtioScsi.TMF_REQUEST_SIZE) return this.#tmf(vring, chain, c);
    if ((type === ControlType.AN_QUERY || type === ControlType.AN_SUBSCRIBE) && n >= VirtioScsi.AN_REQUEST_SIZE &&
      wlen >= VirtioScsi.AN_RESPONSE_SIZE) {
      return this.#asyncNotification(vring, chain, c);
    }
    this.stats.failures++;
    this.#guestError(`ctrl-${type}`, `control request ${chain.head}: type ${type} with ${chain.readableLength} readable and ` +
      `${wlen} writable bytes is not a request we know`);
    // Every control layout ends with the response byte.
    this.#controlResponse(vring, chain, wlen - 1, ScsiResponse.FAILURE, wlen);
  }

  #controlResponse(vring: Vring, chain: DescriptorChain, at: number, response: number, len: number): void {
    chain.writeFrom(Uint8Array.of(response), at);
    vring.complete(chain, len);
  }

  #tmf(vring: Vring, chain: DescriptorChain, c: Uint8Array): void {
    this.stats.tmfs++;
    const subtype = u32(c, 4);
    const target = this.bus.target(lunTarget(c, 8));
    if (!target) return this.#controlResponse(vring, chain, 0, ScsiResponse.BAD_TARGET, 1);
    const fn = TMF_FUNCTIONS[subtype];
    if (!fn) return this.#controlResponse(vring, chain, 0, ScsiResponse.FUNCTION_REJECTED, 1);
    const lun = decodeLun(c, 8);
    const tagLo = u32(c, 16);
    const tagHi = u32(c, 20);
    this.#log.debug(`task management ${fn} on ${target.id}:${lun} (tag ${tagHi * 2 ** 32 + tagLo})`);
    void target.taskManagement(fn, lun, tagLo, tagHi).then((result) => {
      // The commands it ended are completed; make them visible before the function's own completion.
      for (const v of this.#requestVrings) v.flush();
      this.#controlResponse(vring, chain, 0, TMF_RESPONSES[result], 1);
    }, (err: unknown) => {
      this.#log.error(`task management ${fn} failed: ${(err as Error).stack ?? err}`);
      this.#controlResponse(vring, chain, 0, ScsiResponse.FAILURE, 1);
    });
  }

  /** AN query / subscribe: no asynchronous events are supported, so event_actual is 0. */
  #asyncNotification(vring: Vring, chain: DescriptorChain, c: Uint8Array): void {
    this.stats.anQueries++;
    const target = this.bus.target(lunTarget(c, 4));
    let response: number = ScsiResponse.OK;
    if (!target) response = ScsiResponse.BAD_TARGET;
    else if (!target.unit(decodeLun(c, 4))) response = ScsiResponse.INCORRECT_LUN;
    const out = new Uint8Array(VirtioScsi.AN_RESPONSE_SIZE);
    out[4] = response;
    chain.writeFrom(out);
    vring.complete(chain, VirtioScsi.AN_RESPONSE_SIZE);
  }

  // ---- event queue ----

  #busChanged(change: BusChange): void {
    const added = change.kind === 'added';
    this.#log.info(`${added ? 'added' : 'removed'} ${change.target}:${change.lun}: ${change.unit.description}`);
    if (!this.hotplugNegotiated) return;
    this.#queueEvent(EventType.TRANSPORT_RESET, encodeLunField(change.target, change.lun),
      added ? ResetReason.RESCAN : ResetReason.REMOVED);
  }

  #queueEvent(event: number, lun: Uint8Array, reason: number): void {
    if (this.#pendingEvents.length >= this.maxPendingEvents) {
      this.#pendingEvents.shift();
      this.#eventsMissed = true;
      this.stats.eventsDropped++;
    }
    this.#pendingEvents.push({ event, lun, reason });
    this.#deliverEvents();
  }

  /** Put pending events (and a missed-events flag) into the driver's event buffers, as many as there are. */
  #deliverEvents(): void {
    const vring = this.#eventVring;
    if (!vring || !vring.started || !vring.enabled || vring.error) return;
    if (this.#pendingEvents.length === 0 && !this.#eventsMissed) return;
    vring.batch(() => {
      while (this.#pendingEvents.length > 0 || this.#eventsMissed) {
        const chain = vring.pop();
        if (!chain) return;
        const out = this.#event;
        if (chain.writableLength < VirtioScsi.EVENT_SIZE) {
          // Too small for an event: returned with NO_EVENT in what fits (virtio 1.2, 5.6.6.3).
          this.#guestError('short-event', `event buffer ${chain.head} has ${chain.writableLength} writable bytes`);
          out.fill(0);
          vring.complete(chain, chain.writeFrom(out));
          continue;
        }
        const next = this.#pendingEvents.shift();
        if (next) encodeEvent(next.event, next.lun, next.reason, out);
        else out.fill(0);
        if (this.#eventsMissed) {
          put32(out, 0, (u32(out, 0) | EventType.EVENTS_MISSED) >>> 0);
          this.#eventsMissed = false;
        }
        chain.writeFrom(out);
        this.stats.events++;
        vring.complete(chain, VirtioScsi.EVENT_SIZE);
      }
    });
  }

  /** A guest mistake: logged at warn once per kind, at debug after that. */
  #guestError(kind: string, message: string): void {
    if (this.#warned.has(kind)) {
      this.#log.debug(message);
    } else {
      this.#warned.add(kind);
      this.#log.warn(`${message} (further ones of this kind are logged at debug level)`);
    }
  }
}
