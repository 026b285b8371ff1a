/**
 * A SCSI disk (direct-access block device, SBC-3) over a {@link BlockStorage}: the commands Linux's sd driver
 * uses, with the sense data SPC-4 asks for. Independent of any transport: a transport fills a {@link ScsiTask}
 * with a CDB and data buffers, calls {@link LogicalUnit.execute}, and gets the task back through its
 * completion callback.
 *
 * READ and WRITE hand the transport's own views to the storage (no copy of ours); other commands build their
 * data in a scratch buffer. Errors are CHECK CONDITION with fixed-format sense: ILLEGAL REQUEST for bad CDBs
 * (with a field pointer), LBA OUT OF RANGE, WRITE PROTECTED on a read-only unit, MEDIUM ERROR when the storage
 * fails, UNIT ATTENTION after resets and LUN inventory changes, NOT READY after START STOP UNIT stopped it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { StorageError, StorageErrorCode, type BlockStorage } from '../devices/blk/storage/storage.js';
import { logger as makeLogger, type Logger } from '../util/log.js';
import { copyFromViews, copyToViews, isZero, sliceViewsInto } from '../util/views.js';
import { ModePage, Opcode, ScsiStatus, Sense, ServiceActionIn16, cdbLength, type SenseCode } from './constants.js';
import { standardInquiry, vpdPage, type InquiryProfile } from './inquiry.js';
import { MODE_PAGES, PageControl, modePage, parseModeSelect, type ModeProfile } from './mode.js';
import { describeSense, encodeFixedSense, type FieldPointer } from './sense.js';
import { MAX_CDB_SIZE, TaskResponse, taskIoDone, type ScsiTask, type TaskStep } from './task.js';

/** Options for {@link LogicalUnit}. */
export interface LogicalUnitOptions {
  storage: BlockStorage;
  /** Logical block size in bytes: a power of two from 512 to 65536 (default 512; Linux takes up to 4096). */
  blockSize?: number;
  /** Physical block size reported by READ CAPACITY(16): a power-of-two multiple of the block size (default: equal). */
  physicalBlockSize?: number;
  /** Refuse writes even if the storage allows them (a read-only storage always makes a read-only unit). */
  readOnly?: boolean;
  /** Unit serial number (VPD page 80h): printable ASCII, at most 64 characters. Without one, page 80h is absent. */
  serial?: string;
  /** T10 vendor identification (up to 8 ASCII characters, default `VHOSTUSR`). */
  vendor?: string;
  /** Product identification (up to 16, default `VIRTUAL-DISK`). */
  product?: string;
  /** Product revision level (up to 4, default `0001`). */
  revision?: string;
  /** Start with the write cache enabled (WCE, default true): writes are durable after SYNCHRONIZE CACHE. */
  writeCache?: boolean;
  /** Offer UNMAP and WRITE SAME with UNMAP (logical block provisioning; default true). */
  unmap?: boolean;
  /** Largest READ/WRITE/VERIFY transfer in bytes (default 32 MiB; rounded down to whole blocks). */
  maxTransferBytes?: number;
  /** Largest UNMAP / WRITE SAME range in bytes (default 1 GiB), and UNMAP descriptors per command (default 64). */
  maxUnmapBytes?: number;
  maxUnmapDescriptors?: number;
  logger?: Logger;
}

/** Counters, for statistics and tests. */
export interface LogicalUnitStats {
  commands: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
  unmaps: number;
  writeSames: number;
  verifies: number;
  /** Commands that ended in CHECK CONDITION. */
  checkConditions: number;
  /** Commands whose buffers were too small (transport overrun). */
  overruns: number;
  /** Commands ended by task management. */
  aborted: number;
  /** Storage operations that failed. */
  ioErrors: number;
}

/** Per-opcode attributes: supported, exempt from unit attention, refused while stopped. */
const SUPPORTED = 1;
const NO_UNIT_ATTENTION = 2;
const MEDIA_ACCESS = 4;
const OPCODES = new Uint8Array(256);
/**
 * Index of the control byte (the CDB's last) per opcode; for groups without a fixed length a byte past every CDB
 * we decode (always zero), though those opcodes are refused before the check.
 */
const CONTROL_BYTE = Uint8Array.from({ length: 256 }, (_, op) => (cdbLength(op) > 0 ? cdbLength(op) - 1 : MAX_CDB_SIZE - 1));
for (const op of [Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE]) OPCODES[op] = SUPPORTED | NO_UNIT_ATTENTION;
for (const op of [Opcode.MODE_SELECT_6, Opcode.MODE_SELECT_10, Opcode.MODE_SENSE_6, Opcode.MODE_SENSE_10,
  Opcode.START_STOP_UNIT]) {
  OPCODES[op] = SUPPORTED;
}
for (const op of [Opcode.TEST_UNIT_READY, Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16, Opcode.WRITE_6,
  Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16, Opcode.READ_CAPACITY_10, Opcode.SERVICE_ACTION_IN_16,
  Opcode.SYNCHRONIZE_CACHE_10, Opcode.SYNCHRONIZE_CACHE_16, Opcode.VERIFY_10, Opcode.VERIFY_16, Opcode.WRITE_SAME_10,
  Opcode.WRITE_SAME_16, Opcode.UNMAP]) {
  OPCODES[op] = SUPPORTED | MEDIA_ACCESS;
}

// Module-local copies of the constants the per-command path uses: the compiler folds these, while every read of
// an imported object's property is a load and a check.
const READ_10 = Opcode.READ_10;
const WRITE_10 = Opcode.WRITE_10;
const READ_16 = Opcode.READ_16;
const WRITE_16 = Opcode.WRITE_16;
const GOOD = ScsiStatus.GOOD;
const COMPLETE = TaskResponse.COMPLETE;

/** task.flags bits. */
const F_SYNC = 1;
const F_UNMAP = 2;

/** WRITE SAME writes a non-zero pattern from a buffer of at most this many bytes. */
const PATTERN_CHUNK = 1 << 20;
/** Pending unit attentions kept per unit (older ones are dropped beyond this). */
const MAX_UNIT_ATTENTIONS = 8;

const TWO_32 = 2 ** 32;

function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** A big-endian u64; inexact above 2^53, where it is far past any capacity anyway. */
function be64(b: Uint8Array, o: number): number {
  return be32(b, o) * TWO_32 + be32(b, o + 4);
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

function put64(b: Uint8Array, o: number, v: number): void {
  put32(b, o, Math.floor(v / TWO_32));
  put32(b, o + 4, v >>> 0);
}

function cdbField(byte: number, bit?: number): FieldPointer {
  return bit === undefined ? { inCdb: true, byte } : { inCdb: true, byte, bit };
}

function padded(value: string, length: number, name: string): Uint8Array {
  if (!/^[\x20-\x7e]*$/.test(value) || value.length > length) {
    throw new RangeError(`${name} '${value}' must be at most ${length} printable ASCII characters`);
  }
  return Buffer.from(value.padEnd(length, ' '), 'latin1');
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  return v;
}

/** A direct-access logical unit (a disk). */
export class LogicalUnit implements InquiryProfile, ModeProfile {
  readonly storage: BlockStorage;
  readonly blockSize: number;
  /** Capacity in logical blocks. */
  readonly capacity: number;
  /** Logical blocks per physical block, as a power of two. */
  readonly physicalBlockExponent: number;
  readonly readOnly: boolean;
  readonly serial: string;
  readonly vendor: string;
  readonly product: string;
  readonly revision: string;
  readonly vendorBytes: Uint8Array;
  readonly productBytes: Uint8Array;
  readonly revisionBytes: Uint8Array;
  readonly naa: Uint8Array;
  /** UNMAP and WRITE SAME with UNMAP are offered (the unit may still be read-only). */
  readonly unmapSupported: boolean;
  /** Logical block provisioning as reported: LBPME, VPD B2h (unmap supported and writable). */
  readonly thinProvisioning: boolean;
  readonly readsZerosAfterUnmap: boolean;
  readonly maxTransferBlocks: number;
  readonly optimalTransferBlocks = 0;
  readonly maxUnmapBlocks: number;
  readonly maxUnmapDescriptors: number;
  readonly unmapGranularity: number;
  readonly maxWriteSameBlocks: number;
  readonly rotationRate = 1;
  readonly defaultWriteCache: boolean;
  readonly stats: LogicalUnitStats = {
    commands: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, unmaps: 0, writeSames: 0, verifies: 0,
    checkConditions: 0, overruns: 0, aborted: 0, ioErrors: 0,
  };
  /** Where the unit is attached, for logs (`target:lun`), set by the target. */
  address = '-';

  #writeCache = true;
  #started = true;
  /** Running tasks: an intrusive list (no allocation or hashing per command), and its length. */
  #firstRunning: ScsiTask | null = null;
  #running = 0;
  readonly #unitAttentions: SenseCode[] = [];
  #drains: { pending: Set<ScsiTask>; resolve: () => void }[] = [];
  readonly #scratch = new Uint8Array(512);
  readonly #log: Logger;
  readonly #warned = new Set<string>();

  constructor(options: LogicalUnitOptions) {
    const storage = options.storage;
    this.storage = storage;
    this.#log = options.logger ?? makeLogger('scsi');
    const bs = options.blockSize ?? 512;
    if (!Number.isInteger(bs) || bs < 512 || bs > 65536 || (bs & (bs - 1)) !== 0) {
      throw new RangeError(`block size ${bs} is not a power of two from 512 to 65536`);
    }
    this.blockSize = bs;
    this.capacity = Math.floor(storage.size / bs);
    if (this.capacity === 0) throw new RangeError(`storage of ${storage.size} bytes is smaller than one ${bs}-byte block`);
    const pbs = options.physicalBlockSize ?? bs;
    const ratio = pbs / bs;
    if (!Number.isInteger(ratio) || ratio < 1 || ratio > 32768 || (ratio & (ratio - 1)) !== 0) {
      throw new RangeError(`physical block size ${pbs} is not a power-of-two multiple of the block size ${bs}`);
    }
    this.physicalBlockExponent = Math.log2(ratio);
    this.readOnly = storage.readOnly || options.readOnly === true;
    const serial = options.serial ?? '';
    if (!/^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$|^$/.test(serial) || serial.length > 64) {
      throw new RangeError(`serial '${serial}' must be at most 64 printable ASCII characters, not starting or ending with a space`);
    }
    this.serial = serial;
    this.vendor = options.vendor ?? 'VHOSTUSR';
    this.product = options.product ?? 'VIRTUAL-DISK';
    this.revision = options.revision ?? '0001';
    this.vendorBytes = padded(this.vendor, 8, 'vendor');
    this.productBytes = padded(this.product, 16, 'product');
    this.revisionBytes = padded(this.revision, 4, 'revision');
    // NAA 3h (locally assigned): stable for a given identity when there is a serial, unique per unit otherwise.
    const naa = serial.length > 0
      ? createHash('sha256').update(`${this.vendor}\0${this.product}\0${serial}`).digest().subarray(0, 8)
      : randomBytes(8);
    naa[0] = 0x30 | (naa[0]! & 0x0f);
    this.naa = Uint8Array.from(naa);
    this.unmapSupported = options.unmap ?? true;
    this.thinProvisioning = this.unmapSupported && !this.readOnly;
    // The null backend leaves read buffers as they were: it cannot promise zeros.
    this.readsZerosAfterUnmap = storage.kind !== 'null';
    this.maxTransferBlocks = Math.min(0xffffffff, Math.max(1, Math.floor(positive(options.maxTransferBytes, 32 << 20, 'maxTransferBytes') / bs)));
    this.maxUnmapBlocks = Math.min(0xffffffff, Math.max(1, Math.floor(positive(options.maxUnmapBytes, 1 << 30, 'maxUnmapBytes') / bs)));
    this.maxWriteSameBlocks = this.maxUnmapBlocks;
    this.maxUnmapDescriptors = positive(options.maxUnmapDescriptors, 64, 'maxUnmapDescriptors');
    if (this.maxUnmapDescriptors > 4095) throw new RangeError('maxUnmapDescriptors must be at most 4095');
    this.unmapGranularity = Math.max(1, 4096 / bs);
    this.defaultWriteCache = options.writeCache ?? true;
    // The power-on state, which a transport sets again at each reset: a field the compiler has seen written only
    // once is taken for a constant, and its next write (the first reconnection) drops every function compiled
    // on that assumption, the whole command path. Written twice here, no field powerOn() writes is one. (The
    // private method, not powerOn(): a subclass's override would run before the subclass's fields exist.)
    this.#powerOn();
  }

  /** WCE: writes complete before they are durable; SYNCHRONIZE CACHE makes them so. */
  get writeCache(): boolean {
    return this.#writeCache;
  }

  /** False after START STOP UNIT stopped the unit: media access fails with NOT READY. */
  get started(): boolean {
    return this.#started;
  }

  /** Number of tasks running on the unit. */
  get taskCount(): number {
    return this.#running;
  }

  /** The tasks running on the unit (a snapshot, for task management). */
  runningTasks(): ScsiTask[] {
    const out: ScsiTask[] = [];
    for (let t = this.#firstRunning; t; t = t.nextRunning) out.push(t);
    return out;
  }

  /** Unit attentions waiting to be reported, oldest first. */
  get unitAttentions(): readonly SenseCode[] {
    return this.#unitAttentions;
  }

  /** One line for logs. */
  get description(): string {
    return `${this.vendor.trim()} ${this.product.trim()} ${this.capacity} x ${this.blockSize} bytes` +
      `${this.readOnly ? ', read-only' : ''}${this.serial ? `, serial '${this.serial}'` : ''} on ${this.storage.description}`;
  }

  /**
   * Run a command. The task's `onComplete` is called exactly once, possibly before this returns (commands
   * without storage I/O, memory storage).
   */
  execute(task: ScsiTask): void {
    if (task.unit !== null) throw new Error('the task is already running');
    task.unit = this;
    this.stats.commands++;
    // The fast path is written out here rather than in a method of its own: this method is then larger than
    // anything V8 inlines (460 bytes of bytecode), so a transport's request handler always calls it and always
    // has the budget for the rest of its own work, and this method always inlines the transfer. Split in two, the
    // compiler placed those boundaries differently at each daemon start (bench/scsi/README.md).
    try {
      // READ/WRITE(10) and (16), nearly all I/O, go straight to the transfer when nothing stands in their way
      // (a unit attention, a stopped unit, NACA, an error of any kind): everything else, errors included, takes
      // the general dispatch, which checks in SPC-4's order. The fields are read through the task's DataView: a
      // big-endian getUint32 is one load and a byte swap, where four byte loads are four bounds checks and shifts.
      const v = task.cdbView;
      const op = v.getUint8(0);
      if ((op === READ_10 || op === WRITE_10) && (v.getUint8(9) & 0x04) === 0 && this.#ready()) {
        this.#transfer(task, op === WRITE_10 ? 1 : 0, v.getUint32(2), v.getUint16(7), v.getUint8(1));
      } else if ((op === READ_16 || op === WRITE_16) && v.getUint32(2) === 0 && (v.getUint8(15) & 0x04) === 0 &&
        this.#ready()) {
        // With an LBA below 2^32 (any other is out of range, for the general path to report).
        this.#transfer(task, op === WRITE_16 ? 1 : 0, v.getUint32(6), v.getUint32(10), v.getUint8(1));
      } else {
        this.#dispatch(task);
      }
    } catch (err) {
      this.#internalError(task, err as Error);
    }
    // Still running (waiting for storage): on the list that task management searches. A command that ended
    // within the call above never needs to be there (nothing else runs meanwhile), which saves most commands on
    // memory and null disks the list work. The flag keeps a task that was started again from its completion from
    // going on twice.
    if (task.unit === this && task.listed === false) {
      const first = this.#firstRunning;
      task.prevRunning = null;
      task.nextRunning = first;
      if (first !== null) first.prevRunning = task;
      this.#firstRunning = task;
      task.listed = true;
      this.#running++;
    }
  }

  /** No unit attention pending and the unit started: media-access commands may run as they are. */
  #ready(): boolean {
    // Explicit comparisons (here and below): a bare boolean field or parameter in a condition compiles to a
    // generic truthiness test.
    return this.#unitAttentions.length === 0 && this.#started === true;
  }

  /**
   * The fast path of READ/WRITE (`write` 1 for WRITE): start the transfer when every check passes, else hand
   * the command to the general path, which reports what is wrong.
   */
  #transfer(task: ScsiTask, write: number, lba: number, blocks: number, flags: number): void {
    const bytes = blocks * this.blockSize;
    // RDPROTECT / WRPROTECT, write protection, zero blocks, limits, range, buffers too small.
    if ((flags & 0xe0) !== 0 || blocks === 0 || blocks > this.maxTransferBlocks || lba + blocks > this.capacity ||
      (write === 1 ? this.readOnly === true || task.dataOutLength < bytes : task.dataInLength < bytes)) {
      return this.#dispatch(task);
    }
    this.#start(task, write, lba, bytes, flags);
  }

  /** Start the storage operation of a READ/WRITE that passed every check (`write` 1 for WRITE). */
  #start(task: ScsiTask, write: number, lba: number, bytes: number, flags: number): void {
    const stats = this.stats;
    task.lba = lba;
    // The buffers as they are when the transfer fills them (the usual case), else the part it fills, in the
    // task's reused list.
    if (write === 1) {
      stats.writes++;
      stats.bytesWritten += bytes;
      task.dataOutTransferred = bytes;
      // FUA, or no write cache: durable before GOOD.
      task.flags = (flags & 0x08) !== 0 || this.#writeCache === false ? F_SYNC : 0;
      task.step = Unit.#afterWrite;
      const views = bytes === task.dataOutLength ? task.dataOut : sliceViewsInto(task.ioViews, task.dataOut, 0, bytes);
      this.storage.write(views, lba * this.blockSize, taskIoDone, task);
    } else {
      stats.reads++;
      stats.bytesRead += bytes;
      task.dataInTransferred = bytes;
      task.step = Unit.#afterRead;
      const views = bytes === task.dataInLength ? task.dataIn : sliceViewsInto(task.ioViews, task.dataIn, 0, bytes);
      this.storage.read(views, lba * this.blockSize, taskIoDone, task);
    }
  }

  /** @internal Continue a task after its storage operation (called through the task's bound callback). */
  resume(step: TaskStep, task: ScsiTask, error: Error | null): void {
    if (task.unit !== this) return;
    try {
      // Task management ended it: stop between steps (the operation that just finished stays done).
      if (task.abortedWith !== COMPLETE) this.#finish(task);
      else step(this, task, error);
    } catch (err) {
      this.#internalError(task, err as Error);
    }
  }

  /** Establish a unit attention condition (reported once, on the next command that is not exempt). */
  addUnitAttention(code: SenseCode): void {
    const list = this.#unitAttentions;
    if (list.includes(code)) return;
    if (list.length >= MAX_UNIT_ATTENTIONS) list.shift();
    list.push(code);
  }

  /** Drop pending unit attentions with this code. */
  clearUnitAttention(code: SenseCode): void {
    // In place, as in powerOn().
    const list = this.#unitAttentions;
    let n = 0;
    for (let i = 0; i < list.length; i++) if (list[i] !== code) list[n++] = list[i]!;
    list.length = n;
  }

  /** The running task with this tag, if any. */
  findTask(tagLo: number, tagHi: number): ScsiTask | undefined {
    for (let t = this.#firstRunning; t; t = t.nextRunning) if (t.tagLo === tagLo && t.tagHi === tagHi) return t;
    return undefined;
  }

  /**
   * End the running tasks that `match` selects (all without it) with `response` (ABORTED or RESET). A task
   * whose storage operation is under way ends when the operation returns (I/O cannot be recalled); the promise
   * resolves, with the number of tasks, once every selected task has ended.
   */
  abortTasks(response: TaskResponse, match?: (task: ScsiTask) => boolean): Promise<number> {
    const pending = new Set<ScsiTask>();
    for (let t = this.#firstRunning; t; t = t.nextRunning) {
      if (match && !match(t)) continue;
      if (t.abortedWith === TaskResponse.COMPLETE) t.abortedWith = response;
      pending.add(t);
    }
    // Counted now: the set empties as the tasks end.
    const count = pending.size;
    return this.#waitFor(pending).then(() => count);
  }

  /** Resolves when no task is running. */
  whenIdle(): Promise<void> {
    return this.#waitFor(new Set(this.runningTasks()));
  }

  /** LOGICAL UNIT RESET: end every task with RESET, then report a reset unit attention. */
  async reset(): Promise<void> {
    await this.abortTasks(TaskResponse.RESET);
    this.addUnitAttention(Sense.LUN_RESET_OCCURRED);
  }

  /** Back to the state of a fresh unit (a new initiator after a device reset): default cache mode, started. */
  powerOn(): void {
    this.#powerOn();
  }

  #powerOn(): void {
    this.#writeCache = this.defaultWriteCache;
    this.#started = true;
    // Emptied in place: no new array for the fast path's checks to be compiled against again.
    this.#unitAttentions.length = 0;
  }

  #waitFor(pending: Set<ScsiTask>): Promise<void> {
    if (pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drains.push({ pending, resolve }));
  }

  // ---- completion ----

  #finish(task: ScsiTask): void {
    if (task.unit !== this) return;
    // The rarer parts in methods of their own: the less bytecode here, the more of the completion (the
    // transport's part included) the compiler inlines into the storage callback.
    if (task.listed === true) this.#unlist(task);
    if (task.abortedWith !== COMPLETE) this.#aborted(task);
    // The task's execution state goes with it (prepare() does not clear it: a task that is not running has none).
    task.step = null;
    task.buffer = null;
    task.unit = null;
    if (this.#drains.length > 0) this.#drained(task);
    task.onComplete(task);
  }

  /** Take a task off the list of running tasks. */
  #unlist(task: ScsiTask): void {
    const prev = task.prevRunning;
    const next = task.nextRunning;
    if (prev !== null) prev.nextRunning = next;
    else this.#firstRunning = next;
    if (next !== null) next.prevRunning = prev;
    task.prevRunning = task.nextRunning = null;
    task.listed = false;
    this.#running--;
  }

  /** A task that task management ended: it ends with the response it was given. */
  #aborted(task: ScsiTask): void {
    task.response = task.abortedWith;
    task.abortedWith = COMPLETE;
    this.stats.aborted++;
  }

  /** A task ended while task management or {@link whenIdle} waits for tasks: resolve the waits it completes. */
  #drained(task: ScsiTask): void {
    const drains = this.#drains;
    for (let i = drains.length - 1; i >= 0; i--) {
      const d = drains[i]!;
      if (d.pending.delete(task) && d.pending.size === 0) {
        drains.splice(i, 1);
        d.resolve();
      }
    }
  }

  #good(task: ScsiTask): void {
    task.status = GOOD;
    this.#finish(task);
  }

  #check(task: ScsiTask, code: SenseCode, information = -1, field?: FieldPointer): void {
    task.status = ScsiStatus.CHECK_CONDITION;
    task.senseLength = encodeFixedSense(task.sense, code, information, field);
    task.dataInTransferred = 0;
    this.stats.checkConditions++;
    if (this.#log.enabled('debug')) {
      this.#log.debug(`${this.address}: opcode 0x${task.opcode.toString(16)}: CHECK CONDITION ${describeSense(code)}`);
    }
    this.#finish(task);
  }

  #invalidField(task: ScsiTask, byte: number, bit?: number): void {
    this.#check(task, Sense.INVALID_FIELD_IN_CDB, -1, cdbField(byte, bit));
  }

  #overrun(task: ScsiTask): void {
    task.response = TaskResponse.OVERRUN;
    this.stats.overruns++;
    this.#finish(task);
  }

  /** Copy `length` bytes of the scratch buffer to the data-in buffers (at most `allocation`) and end GOOD. */
  #sendData(task: ScsiTask, length: number, allocation: number): void {
    const n = Math.min(length, allocation, task.dataInLength);
    task.dataInTransferred = copyToViews(task.dataIn, this.#scratch.subarray(0, n));
    this.#good(task);
  }

  #internalError(task: ScsiTask, err: Error): void {
    this.#log.error(`${this.address}: internal error on opcode 0x${task.opcode.toString(16)}: ${err.stack ?? err.message}`);
    if (task.unit === this) this.#check(task, Sense.INTERNAL_FAILURE);
  }

  /** A storage operation failed: the sense that describes it. */
  #ioError(task: ScsiTask, err: Error, write: boolean): void {
    this.stats.ioErrors++;
    const kind = `io-${write ? 'w' : 'r'}-${(err as NodeJS.ErrnoException).code ?? err.name}`;
    const message = `${this.address}: ${write ? 'write' : 'read'} error on opcode 0x${task.opcode.toString(16)}: ${err.message}`;
    if (this.#warned.has(kind)) this.#log.debug(message);
    else {
      this.#warned.add(kind);
      this.#log.warn(`${message} (further ones of this kind are logged at debug level)`);
    }
    const code = (err as NodeJS.ErrnoException).code;
    if (err instanceof StorageError && code === StorageErrorCode.READ_ONLY) return this.#check(task, Sense.WRITE_PROTECTED);
    if (err instanceof StorageError && code === StorageErrorCode.RANGE) return this.#check(task, Sense.LBA_OUT_OF_RANGE);
    if (code === 'ENOSPC' || code === 'EDQUOT') return this.#check(task, Sense.SPACE_ALLOCATION_FAILED);
    this.#check(task, write ? Sense.WRITE_ERROR : Sense.READ_ERROR, task.lba >= 0 && task.lba < TWO_32 ? task.lba : -1);
  }

  // ---- dispatch ----

  #dispatch(task: ScsiTask): void {
    const cdb = task.cdb;
    const op = cdb[0]!;
    const attributes = OPCODES[op]!;
    // A unit attention ends any command but INQUIRY, REPORT LUNS and REQUEST SENSE, unknown ones included.
    if ((attributes & NO_UNIT_ATTENTION) === 0 && this.#unitAttentions.length > 0) {
      return this.#check(task, this.#unitAttentions.shift()!);
    }
    if ((attributes & SUPPORTED) === 0) return this.#check(task, Sense.INVALID_OPCODE);
    // NACA (control byte, bit 2): auto contingent allegiance is not supported.
    const control = CONTROL_BYTE[op]!;
    if ((cdb[control]! & 0x04) !== 0) return this.#invalidField(task, control, 2);
    if ((attributes & MEDIA_ACCESS) !== 0 && !this.#started) return this.#check(task, Sense.NOT_READY_STOPPED);
    switch (op) {
      case Opcode.TEST_UNIT_READY: return this.#good(task);
      case Opcode.READ_6: return this.#readWrite(task, false, ((cdb[1]! & 0x1f) << 16) | be16(cdb, 2), cdb[4]! || 256, 4, false);
      case Opcode.WRITE_6: return this.#readWrite(task, true, ((cdb[1]! & 0x1f) << 16) | be16(cdb, 2), cdb[4]! || 256, 4, false);
      case Opcode.READ_10: return this.#readWrite(task, false, be32(cdb, 2), be16(cdb, 7), 7, true);
      case Opcode.WRITE_10: return this.#readWrite(task, true, be32(cdb, 2), be16(cdb, 7), 7, true);
      case Opcode.READ_12: return this.#readWrite(task, false, be32(cdb, 2), be32(cdb, 6), 6, true);
      case Opcode.WRITE_12: return this.#readWrite(task, true, be32(cdb, 2), be32(cdb, 6), 6, true);
      case Opcode.READ_16: return this.#readWrite(task, false, be64(cdb, 2), be32(cdb, 10), 10, true);
      case Opcode.WRITE_16: return this.#readWrite(task, true, be64(cdb, 2), be32(cdb, 10), 10, true);
      case Opcode.INQUIRY: return this.#inquiry(task);
      case Opcode.REQUEST_SENSE: return this.#requestSense(task);
      case Opcode.REPORT_LUNS:
        // The target answers REPORT LUNS; a unit on its own knows only itself.
        return this.#reportSelf(task);
      case Opcode.READ_CAPACITY_10: return this.#readCapacity10(task);
      case Opcode.SERVICE_ACTION_IN_16: return this.#serviceActionIn16(task);
      case Opcode.MODE_SENSE_6: return this.#modeSense(task, false);
      case Opcode.MODE_SENSE_10: return this.#modeSense(task, true);
      case Opcode.MODE_SELECT_6: return this.#modeSelect(task, false);
      case Opcode.MODE_SELECT_10: return this.#modeSelect(task, true);
      case Opcode.START_STOP_UNIT: return this.#startStop(task);
      case Opcode.SYNCHRONIZE_CACHE_10: return this.#synchronizeCache(task, be32(cdb, 2), be16(cdb, 7));
      case Opcode.SYNCHRONIZE_CACHE_16: return this.#synchronizeCache(task, be64(cdb, 2), be32(cdb, 10));
      case Opcode.VERIFY_10: return this.#verify(task, be32(cdb, 2), be16(cdb, 7), 7);
      case Opcode.VERIFY_16: return this.#verify(task, be64(cdb, 2), be32(cdb, 10), 10);
      case Opcode.WRITE_SAME_10: return this.#writeSame(task, be32(cdb, 2), be16(cdb, 7), 7, false);
      case Opcode.WRITE_SAME_16: return this.#writeSame(task, be64(cdb, 2), be32(cdb, 10), 10, true);
      case Opcode.UNMAP: return this.#unmap(task);
      default: return this.#check(task, Sense.INVALID_OPCODE);
    }
  }

  /** Is [lba, lba + blocks) on the medium? Reports LBA OUT OF RANGE when not. */
  #inRange(task: ScsiTask, lba: number, blocks: number): boolean {
    if (lba + blocks <= this.capacity && lba <= this.capacity) return true;
    this.#check(task, Sense.LBA_OUT_OF_RANGE);
    return false;
  }

  // ---- READ / WRITE ----

  #readWrite(task: ScsiTask, write: boolean, lba: number, blocks: number, lengthByte: number, hasFlags: boolean): void {
    const flags = hasFlags ? task.cdb[1]! : 0;
    // RDPROTECT / WRPROTECT: no protection information here.
    if ((flags & 0xe0) !== 0) return this.#invalidField(task, 1, 7);
    if (write && this.readOnly) return this.#check(task, Sense.WRITE_PROTECTED);
    if (!this.#inRange(task, lba, blocks)) return;
    if (blocks > this.maxTransferBlocks) return this.#invalidField(task, lengthByte);
    const bytes = blocks * this.blockSize;
    if ((write ? task.dataOutLength : task.dataInLength) < bytes) return this.#overrun(task);
    if (blocks === 0) return this.#good(task);
    this.#start(task, write ? 1 : 0, lba, bytes, flags);
  }

  static readonly #afterRead: TaskStep = (unit, task, err) => {
    if (err !== null) unit.#ioError(task, err, false);
    else unit.#good(task);
  };

  static readonly #afterWrite: TaskStep = (unit, task, err) => {
    if (err !== null) return unit.#ioError(task, err, true);
    if ((task.flags & F_SYNC) !== 0) {
      task.step = LogicalUnit.#afterSync;
      unit.stats.flushes++;
      unit.storage.flush(taskIoDone, task);
      return;
    }
    unit.#good(task);
  };

  static readonly #afterSync: TaskStep = (unit, task, err) => {
    if (err !== null) unit.#ioError(task, err, true);
    else unit.#good(task);
  };

  // ---- INQUIRY, REQUEST SENSE, REPORT LUNS ----

  #inquiry(task: ScsiTask): void {
    const cdb = task.cdb;
    // CMDDT (obsolete command support data) is not supported.
    if ((cdb[1]! & 0x02) !== 0) return this.#invalidField(task, 1, 1);
    const allocation = be16(cdb, 3);
    if ((cdb[1]! & 0x01) !== 0) {
      const len = vpdPage(this.#scratch, cdb[2]!, this);
      if (len < 0) return this.#invalidField(task, 2);
      return this.#sendData(task, len, allocation);
    }
    if (cdb[2] !== 0) return this.#invalidField(task, 2);
    this.#sendData(task, standardInquiry(this.#scratch, this), allocation);
  }

  #requestSense(task: ScsiTask): void {
    const cdb = task.cdb;
    // DESC: descriptor-format sense is not supported.
    if ((cdb[1]! & 0x01) !== 0) return this.#invalidField(task, 1, 0);
    const code = this.#unitAttentions.shift() ?? (this.#started ? Sense.NO_SENSE : Sense.NOT_READY_STOPPED);
    this.#sendData(task, encodeFixedSense(this.#scratch, code), cdb[4]!);
  }

  /** REPORT LUNS sent straight to a unit (not through a target): a list with LUN 0. */
  #reportSelf(task: ScsiTask): void {
    const s = this.#scratch;
    s.fill(0, 0, 16);
    put32(s, 0, 8);
    this.#sendData(task, 16, be32(task.cdb, 6));
  }

  // ---- capacity ----

  #readCapacity10(task: ScsiTask): void {
    const cdb = task.cdb;
    // Without PMI the LBA field must be zero (SBC-3).
    if ((cdb[8]! & 0x01) === 0 && be32(cdb, 2) !== 0) return this.#invalidField(task, 2);
    const s = this.#scratch;
    const last = this.capacity - 1;
    put32(s, 0, last > 0xffffffff ? 0xffffffff : last);
    put32(s, 4, this.blockSize);
    this.#sendData(task, 8, 8);
  }

  #serviceActionIn16(task: ScsiTask): void {
    const cdb = task.cdb;
    if ((cdb[1]! & 0x1f) !== ServiceActionIn16.READ_CAPACITY_16) return this.#invalidField(task, 1, 4);
    if ((cdb[14]! & 0x01) === 0 && be64(cdb, 2) !== 0) return this.#invalidField(task, 2);
    const s = this.#scratch;
    s.fill(0, 0, 32);
    put64(s, 0, this.capacity - 1);
    put32(s, 8, this.blockSize);
    s[13] = this.physicalBlockExponent & 0x0f;
    if (this.thinProvisioning) s[14] = 0x80 | (this.readsZerosAfterUnmap ? 0x40 : 0); // LBPME, LBPRZ
    this.#sendData(task, 32, be32(cdb, 10));
  }

  // ---- mode pages ----

  #modeSense(task: ScsiTask, ten: boolean): void {
    const cdb = task.cdb;
    const dbd = (cdb[1]! & 0x08) !== 0;
    const longLba = ten && (cdb[1]! & 0x10) !== 0;
    const pc = cdb[2]! >> 6;
    const page = cdb[2]! & 0x3f;
    const subpage = cdb[3]!;
    const allocation = ten ? be16(cdb, 7) : cdb[4]!;
    if (pc === PageControl.SAVED) return this.#check(task, Sense.SAVING_PARAMETERS_NOT_SUPPORTED, -1, cdbField(2, 7));
    if (subpage !== 0 && !(page === ModePage.ALL && subpage === 0xff)) return this.#invalidField(task, 3);
    const s = this.#scratch;
    const header = ten ? 8 : 4;
    let at = header;
    let descriptors = 0;
    if (!dbd) {
      if (longLba) {
        s.fill(0, at, at + 16);
        put64(s, at, this.capacity);
        put32(s, at + 12, this.blockSize);
        descriptors = 16;
      } else {
        s.fill(0, at, at + 8);
        put32(s, at, this.capacity > 0xffffffff ? 0xffffffff : this.capacity);
        put32(s, at + 4, this.blockSize); // byte 4 is reserved; the block length is the low 24 bits
        s[at + 4] = 0;
        descriptors = 8;
      }
      at += descriptors;
    }
    if (page === ModePage.ALL) {
      for (const p of MODE_PAGES) at += modePage(s, at, p, pc, this);
    } else {
      const n = modePage(s, at, page, pc, this);
      if (n < 0) return this.#invalidField(task, 2, 5);
      at += n;
    }
    // Device-specific parameter: WP, and DPOFUA (FUA is honoured).
    const deviceSpecific = (this.readOnly ? 0x80 : 0) | 0x10;
    if (ten) {
      s[0] = ((at - 2) >> 8) & 0xff;
      s[1] = (at - 2) & 0xff;
      s[2] = 0;
      s[3] = deviceSpecific;
      s[4] = longLba && !dbd ? 0x01 : 0;
      s[5] = 0;
      s[6] = 0;
      s[7] = descriptors;
    } else {
      s[0] = at - 1;
      s[1] = 0;
      s[2] = deviceSpecific;
      s[3] = descriptors;
    }
    this.#sendData(task, at, allocation);
  }

  #modeSelect(task: ScsiTask, ten: boolean): void {
    const cdb = task.cdb;
    const length = ten ? be16(cdb, 7) : cdb[4]!;
    // PF must be set (pages in SPC format); SP (save pages) is not supported.
    if ((cdb[1]! & 0x10) === 0 && length > 0) return this.#invalidField(task, 1, 4);
    if ((cdb[1]! & 0x01) !== 0) return this.#invalidField(task, 1, 0);
    if (length === 0) return this.#good(task);
    if (task.dataOutLength < length) return this.#overrun(task);
    const params = new Uint8Array(length);
    task.dataOutTransferred = copyFromViews(task.dataOut, params);
    const result = parseModeSelect(params, ten, this, this.blockSize);
    if (!result.ok) return this.#check(task, result.sense, -1, result.field);
    const was = this.#writeCache;
    this.#writeCache = result.writeCache;
    if (was !== result.writeCache) this.#log.info(`${this.address}: write cache ${result.writeCache ? 'enabled' : 'disabled'}`);
    if (was && !result.writeCache) {
      // Write-through from now on: what the cache held must be durable too.
      task.step = LogicalUnit.#afterSync;
      this.stats.flushes++;
      this.storage.flush(taskIoDone, task);
      return;
    }
    this.#good(task);
  }

  // ---- START STOP UNIT, SYNCHRONIZE CACHE ----

  #startStop(task: ScsiTask): void {
    const b4 = task.cdb[4]!;
    // Power conditions are not modelled; LOEJ means nothing for a fixed medium.
    if (b4 >> 4 !== 0) return this.#good(task);
    if ((b4 & 0x01) !== 0) {
      this.#started = true;
      return this.#good(task);
    }
    this.#started = false;
    if ((b4 & 0x04) !== 0) return this.#good(task); // NO_FLUSH
    task.step = LogicalUnit.#afterSync;
    this.stats.flushes++;
    this.storage.flush(taskIoDone, task);
  }

  #synchronizeCache(task: ScsiTask, lba: number, blocks: number): void {
    // Zero blocks means "to the end of the medium".
    if (!this.#inRange(task, lba, blocks === 0 ? 1 : blocks)) return;
    this.stats.flushes++;
    task.step = LogicalUnit.#afterSync;
    this.storage.flush(taskIoDone, task);
  }

  // ---- VERIFY ----

  #verify(task: ScsiTask, lba: number, blocks: number, lengthByte: number): void {
    const flags = task.cdb[1]!;
    if ((flags & 0xe0) !== 0) return this.#invalidField(task, 1, 7); // VRPROTECT
    const byteCheck = (flags >> 1) & 0x03;
    if (byteCheck === 2) return this.#invalidField(task, 1, 2);
    if (!this.#inRange(task, lba, blocks)) return;
    this.stats.verifies++;
    // Without BYTCHK this is a medium check, and there is nothing a medium check could find.
    if (blocks === 0 || byteCheck === 0) return this.#good(task);
    if (blocks > this.maxTransferBlocks) return this.#invalidField(task, lengthByte);
    const bytes = blocks * this.blockSize;
    const expected = byteCheck === 1 ? bytes : this.blockSize;
    if (task.dataOutLength < expected) return this.#overrun(task);
    task.dataOutTransferred = expected;
    task.lba = lba;
    task.flags = byteCheck;
    task.buffer = new Uint8Array(bytes);
    task.step = LogicalUnit.#afterVerifyRead;
    this.storage.read([task.buffer], lba * this.blockSize, taskIoDone, task);
  }

  static readonly #afterVerifyRead: TaskStep = (unit, task, err) => {
    if (err !== null) return unit.#ioError(task, err, false);
    const medium = task.buffer!;
    const bs = unit.blockSize;
    const expected = new Uint8Array(task.dataOutTransferred);
    copyFromViews(task.dataOut, expected);
    const step = task.flags === 1 ? medium.byteLength : bs;
    for (let off = 0; off < medium.byteLength; off += step) {
      const got = medium.subarray(off, off + step);
      if (Buffer.compare(got, expected) === 0) continue;
      let i = 0;
      while (got[i] === expected[i]) i++;
      return unit.#check(task, Sense.MISCOMPARE_DURING_VERIFY, off + i);
    }
    unit.#good(task);
  };

  // ---- WRITE SAME, UNMAP ----

  #writeSame(task: ScsiTask, lba: number, blocks: number, lengthByte: number, sixteen: boolean): void {
    const flags = task.cdb[1]!;
    if ((flags & 0xe0) !== 0) return this.#invalidField(task, 1, 7); // WRPROTECT
    if ((flags & 0x10) !== 0) return this.#invalidField(task, 1, 4); // ANCHOR
    if ((flags & 0x06) !== 0) return this.#invalidField(task, 1, 2); // PBDATA / LBDATA (obsolete)
    if (!sixteen && (flags & 0x01) !== 0) return this.#invalidField(task, 1, 0);
    const noDataOut = sixteen && (flags & 0x01) !== 0; // NDOB: the block is zeros
    // WSNZ: a zero block count is refused rather than meaning "to the end".
    if (blocks === 0) return this.#invalidField(task, lengthByte);
    if (this.readOnly) return this.#check(task, Sense.WRITE_PROTECTED);
    if (!this.#inRange(task, lba, blocks)) return;
    if (blocks > this.maxWriteSameBlocks) return this.#invalidField(task, lengthByte);
    const bs = this.blockSize;
    if (!noDataOut && task.dataOutLength < bs) return this.#overrun(task);
    this.stats.writeSames++;
    task.lba = lba;
    task.flags = !this.#writeCache ? F_SYNC : 0;
    const position = lba * bs;
    const length = blocks * bs;
    let pattern: Uint8Array | null = null;
    if (!noDataOut) {
      pattern = new Uint8Array(bs);
      task.dataOutTransferred = copyFromViews(task.dataOut, pattern);
    }
    if (pattern === null || isZero(pattern)) {
      const unmap = (flags & 0x08) !== 0 && this.unmapSupported;
      task.step = LogicalUnit.#afterWrite;
      this.storage.writeZeroes(position, length, unmap, taskIoDone, task);
      return;
    }
    // A pattern: written from a buffer holding it repeated, a chunk at a time.
    const chunk = new Uint8Array(Math.min(length, PATTERN_CHUNK));
    for (let off = 0; off < chunk.byteLength; off += bs) chunk.set(pattern, off);
    task.buffer = chunk;
    task.position = position;
    task.remaining = length;
    LogicalUnit.#writePatternChunk(this, task, null);
  }

  static readonly #writePatternChunk: TaskStep = (unit, task, err) => {
    if (err !== null) return unit.#ioError(task, err, true);
    if (task.remaining === 0) return LogicalUnit.#afterWrite(unit, task, null);
    const chunk = task.buffer!;
    const n = Math.min(chunk.byteLength, task.remaining);
    const at = task.position;
    task.position += n;
    task.remaining -= n;
    task.step = LogicalUnit.#writePatternChunk;
    unit.storage.write([n === chunk.byteLength ? chunk : chunk.subarray(0, n)], at, taskIoDone, task);
  };

  #unmap(task: ScsiTask): void {
    if (!this.unmapSupported) return this.#check(task, Sense.INVALID_OPCODE);
    const cdb = task.cdb;
    if ((cdb[1]! & 0x01) !== 0) return this.#invalidField(task, 1, 0); // ANCHOR
    if (this.readOnly) return this.#check(task, Sense.WRITE_PROTECTED);
    const length = be16(cdb, 7);
    if (length === 0) return this.#good(task);
    if (length < 8) return this.#check(task, Sense.PARAMETER_LIST_LENGTH_ERROR);
    if (task.dataOutLength < length) return this.#overrun(task);
    const params = new Uint8Array(length);
    task.dataOutTransferred = copyFromViews(task.dataOut, params);
    const count = Math.floor(Math.min(be16(params, 2), length - 8) / 16);
    if (count > this.maxUnmapDescriptors) {
      return this.#check(task, Sense.INVALID_FIELD_IN_PARAMETER_LIST, -1, { inCdb: false, byte: 2 });
    }
    // Every descriptor is checked before anything is unmapped.
    for (let i = 0; i < count; i++) {
      const at = 8 + 16 * i;
      const lba = be64(params, at);
      const blocks = be32(params, at + 8);
      if (blocks > this.maxUnmapBlocks) {
        return this.#check(task, Sense.INVALID_FIELD_IN_PARAMETER_LIST, -1, { inCdb: false, byte: at + 8 });
      }
      if (!this.#inRange(task, lba, blocks)) return;
    }
    this.stats.unmaps++;
    task.buffer = params;
    task.index = 0;
    task.remaining = count;
    task.flags = (!this.#writeCache ? F_SYNC : 0) | F_UNMAP;
    LogicalUnit.#unmapNext(this, task, null);
  }

  static readonly #unmapNext: TaskStep = (unit, task, err) => {
    if (err !== null) return unit.#ioError(task, err, true);
    const params = task.buffer!;
    while (task.index < task.remaining) {
      const at = 8 + 16 * task.index++;
      const blocks = be32(params, at + 8);
      if (blocks === 0) continue;
      task.step = LogicalUnit.#unmapNext;
      unit.storage.discard(be64(params, at) * unit.blockSize, blocks * unit.blockSize, taskIoDone, task);
      return;
    }
    LogicalUnit.#afterWrite(unit, task, null);
  };
}

/**
 * The class through a module-level constant, for the per-command step assignments: read through the class's own
 * name, a static field compiled to a context load, a map check and two loads per command (measured); through
 * the constant, the compiler folds it.
 */
const Unit = LogicalUnit;
