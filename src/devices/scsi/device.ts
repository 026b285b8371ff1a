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
import { RequestRejected } from '../../protocol/backend.js';
import { Limits } from '../../protocol/constants.js';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import { DeviceId, ScsiFeature, featureMask, hasFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { ScsiBus, type BusChange } from '../../scsi/bus.js';
import { NO_BUFFERS, emptyViewList, sliceViewsInto } from '../../util/views.js';
import { ScsiTask, TaskResponse } from '../../scsi/task.js';
import { TmfResponse, type TaskManagementFunction } from '../../scsi/target.js';
import type { LogicalUnit } from '../../scsi/logical-unit.js';
import {
  ControlType, EventType, ResetReason, ScsiQueue, ScsiResponse, TmfSubtype, VirtioScsi, decodeLun, encodeEvent, encodeLunField,
  encodeScsiConfig, lunTarget,
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

const TASK_RESPONSES: Readonly<Record<TaskResponse, number>> = {
  [TaskResponse.COMPLETE]: ScsiResponse.OK,
  [TaskResponse.OVERRUN]: ScsiResponse.OVERRUN,
  [TaskResponse.ABORTED]: ScsiResponse.ABORTED,
  [TaskResponse.RESET]: ScsiResponse.RESET,
};

const HOTPLUG = featureMask(ScsiFeature.HOTPLUG);
/** CDB bytes copied into a task: the longest CDB the target emulation decodes. */
const CDB_COPY = 16;
const INOUT = featureMask(ScsiFeature.INOUT);
const CHANGE = featureMask(ScsiFeature.CHANGE);

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

/** One request in flight on a request queue; pooled, with its task bound once. */
class ScsiRequest {
  readonly task: ScsiTask;
  vring: Vring | null = null;
  chain: DescriptorChain | null = null;
  /** The request header as read from the chain (copied: the guest may change it). */
  header: Uint8Array = new Uint8Array(VirtioScsi.REQUEST_HEADER_BASE + VirtioScsi.DEFAULT_CDB_SIZE);
  /** Bytes of the response header (12 + sense_size at the time of the request). */
  responseSize = 0;
  /** The data buffers, as views: reused from request to request (no allocation per request). */
  readonly dataOut: Uint8Array[] = emptyViewList();
  readonly dataIn: Uint8Array[] = emptyViewList();

  constructor(device: ScsiDevice) {
    this.task = new ScsiTask(() => device.finishRequest(this));
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
  readonly #pool: ScsiRequest[] = [];
  readonly #response = new Uint8Array(VirtioScsi.RESPONSE_HEADER_BASE + 256);
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
  }

  featuresNegotiated(features: bigint): void {
    this.#negotiated = features;
  }

  ringStarted(vring: Vring): void {
    if (vring.index === ScsiQueue.EVENT) this.#eventVring = vring;
    else if (vring.index >= ScsiQueue.FIRST_REQUEST) this.#requestVrings.add(vring);
  }

  ringStopping(vring: Vring): void {
    if (vring === this.#eventVring) this.#eventVring = undefined;
    this.#requestVrings.delete(vring);
  }

  reset(): void {
    this.#negotiated = 0n;
    this.#senseSize = VirtioScsi.DEFAULT_SENSE_SIZE;
    this.#cdbSize = VirtioScsi.DEFAULT_CDB_SIZE;
    this.#eventVring = undefined;
    this.#requestVrings.clear();
    this.#pendingEvents = [];
    this.#eventsMissed = false;
    // Pooled requests still hold views of the old guest memory.
    this.#pool.length = 0;
    // A new driver meets the units as after power-on.
    for (const { unit } of this.bus.units()) unit.powerOn();
  }

  onAvailable(vring: Vring): void {
    // Called for disabled rings too: every request here has side effects, so buffers wait for the enable.
    if (!vring.enabled) return;
    const index = vring.index;
    if (index === ScsiQueue.EVENT) {
      this.#deliverEvents();
      return;
    }
    for (let chain = vring.pop(); chain; chain = vring.pop()) {
      try {
        if (index === ScsiQueue.CONTROL) this.#controlRequest(vring, chain);
        else this.#request(vring, chain);
      } catch (err) {
        // A bug of ours: answer the chain so that the ring can still stop, and go on.
        this.#log.error(`queue ${index}: internal error on request ${chain.head}: ${(err as Error).stack ?? err}`);
        vring.complete(chain, 0);
      }
    }
  }

  // ---- request queues ----

  #request(vring: Vring, chain: DescriptorChain): void {
    const stats = this.stats;
    stats.requests++;
    stats.perQueue[vring.index - ScsiQueue.FIRST_REQUEST]!++;
    const responseSize = VirtioScsi.RESPONSE_HEADER_BASE + this.#senseSize;
    const headerSize = VirtioScsi.REQUEST_HEADER_BASE + this.#cdbSize;
    if (chain.writableLength < responseSize) {
      this.#guestError('short-response', `queue ${vring.index}: request ${chain.head} has ${chain.writableLength} writable ` +
        `bytes, less than the ${responseSize}-byte response`);
      return this.#answer(vring, chain, ScsiResponse.FAILURE);
    }
    if (chain.readableLength < headerSize) {
      this.#guestError('short-request', `queue ${vring.index}: request ${chain.head} has ${chain.readableLength} readable ` +
        `bytes, less than the ${headerSize}-byte header`);
      return this.#answer(vring, chain, ScsiResponse.FAILURE);
    }
    const dataOutLength = chain.readableLength - headerSize;
    const dataInLength = chain.writableLength - responseSize;
    if (dataOutLength > 0 && dataInLength > 0 && (this.#negotiated & INOUT) === 0n) {
      this.#guestError('inout', `queue ${vring.index}: request ${chain.head} has data both ways without INOUT`);
      return this.#answer(vring, chain, ScsiResponse.FAILURE);
    }
    const req = this.#pool.pop() ?? new ScsiRequest(this);
    // The header straight from the guest's buffer when one holds it all (else a copy); every field is read once,
    // so a guest rewriting it meanwhile cannot make us see two different values.
    let h = chain.readable[0]!;
    if (h.byteLength < headerSize) {
      if (req.header.byteLength !== headerSize) req.header = new Uint8Array(headerSize);
      chain.readInto(req.header);
      h = req.header;
    }
    const target = this.bus.target(lunTarget(h));
    if (!target) {
      this.#pool.push(req);
      stats.badTarget++;
      return this.#answer(vring, chain, ScsiResponse.BAD_TARGET, dataInLength > 0 ? dataInLength : dataOutLength);
    }
    const lun = decodeLun(h);
    const task = req.task;
    task.prepare();
    // No command the target knows is longer than 16 bytes; the task's bytes past 16 stay zero.
    const cdb = task.cdb;
    const cdbBytes = this.#cdbSize < CDB_COPY ? this.#cdbSize : CDB_COPY;
    for (let i = 0; i < cdbBytes; i++) cdb[i] = h[VirtioScsi.REQUEST_HEADER_BASE + i]!;
    if (cdbBytes < CDB_COPY) cdb.fill(0, cdbBytes, CDB_COPY);
    task.tagLo = u32(h, 8);
    task.tagHi = u32(h, 12);
    if (dataOutLength > 0) {
      task.dataOut = sliceViewsInto(req.dataOut, chain.readable, headerSize, chain.readableLength);
      task.dataOutLength = dataOutLength;
    }
    if (dataInLength > 0) {
      task.dataIn = sliceViewsInto(req.dataIn, chain.writable, responseSize, chain.writableLength);
      task.dataInLength = dataInLength;
    }
    req.vring = vring;
    req.chain = chain;
    req.responseSize = responseSize;
    target.execute(lun, task);
  }

  /** @internal A task ended: write the response header and sense, complete the chain. */
  finishRequest(req: ScsiRequest): void {
    const vring = req.vring;
    const chain = req.chain;
    if (!vring || !chain) return;
    req.vring = null;
    req.chain = null;
    const task = req.task;
    const senseLen = Math.min(task.senseLength, this.#senseSize, req.responseSize - VirtioScsi.RESPONSE_HEADER_BASE);
    const n = VirtioScsi.RESPONSE_HEADER_BASE + senseLen;
    const w = chain.writable[0]!;
    // In place when the first writable buffer holds the response (it always does for Linux), else scattered.
    const r = w.byteLength >= n ? w : this.#response;
    put32(r, 0, senseLen);
    put32(r, 4, task.residual);
    r[8] = 0;
    r[9] = 0;
    r[10] = task.status;
    r[11] = TASK_RESPONSES[task.response];
    const sense = task.sense;
    for (let i = 0; i < senseLen; i++) r[VirtioScsi.RESPONSE_HEADER_BASE + i] = sense[i]!;
    if (r !== w) chain.writeFrom(r.subarray(0, n));
    const len = req.responseSize + task.dataInTransferred;
    // The task lets go of the views; the request's own arrays keep them until its next use (or a device reset).
    task.dataIn = task.dataOut = NO_BUFFERS;
    this.#pool.push(req);
    vring.complete(chain, len);
  }

  /** Complete a request that did not reach a unit, with `response` and no sense. */
  #answer(vring: Vring, chain: DescriptorChain, response: number, residual = 0): void {
    if (chain.writableLength < VirtioScsi.RESPONSE_HEADER_BASE) {
      this.stats.noResponse++;
      this.#guestError('no-response', `queue ${vring.index}: request ${chain.head} has no room for a response; ` +
        'completed with length 0');
      vring.complete(chain, 0);
      return;
    }
    if (response === ScsiResponse.FAILURE) this.stats.failures++;
    const r = this.#response;
    r.fill(0, 0, VirtioScsi.RESPONSE_HEADER_BASE);
    put32(r, 4, residual);
    r[11] = response;
    chain.writeFrom(r.subarray(0, VirtioScsi.RESPONSE_HEADER_BASE));
    vring.complete(chain, Math.min(chain.writableLength, VirtioScsi.RESPONSE_HEADER_BASE + this.#senseSize));
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
