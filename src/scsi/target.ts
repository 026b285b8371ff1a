/**
 * A SCSI target: its logical units by LUN, and what the target itself answers (SPC-4, SAM-5): REPORT LUNS for
 * any LUN, the REPORT LUNS well-known logical unit, INQUIRY with peripheral qualifier 011b and LOGICAL UNIT NOT
 * SUPPORTED for LUNs with no unit, and the task management functions.
 */
import { copyToViews } from '../util/views.js';
import {
  DeviceType, INQUIRY_NOT_PRESENT, MAX_LUN, Opcode, ScsiStatus, Sense, VpdPage, WLUN_REPORT_LUNS, type SenseCode,
} from './constants.js';
import type { LogicalUnit } from './logical-unit.js';
import { encodeFixedSense, type FieldPointer } from './sense.js';
import { TaskResponse, type ScsiTask } from './task.js';

/** Task management functions (SAM-5 7). */
export type TaskManagementFunction =
  | 'abort-task'
  | 'abort-task-set'
  | 'clear-aca'
  | 'clear-task-set'
  | 'i-t-nexus-reset'
  | 'logical-unit-reset'
  | 'query-task'
  | 'query-task-set';

/** Service responses of task management (SAM-5 7.12). */
export const TmfResponse = {
  FUNCTION_COMPLETE: 0,
  /** QUERY TASK / QUERY TASK SET found what it asked about. */
  FUNCTION_SUCCEEDED: 1,
  FUNCTION_REJECTED: 2,
  INCORRECT_LUN: 3,
} as const;
export type TmfResponse = (typeof TmfResponse)[keyof typeof TmfResponse];

/** A module-local copy for the per-command check: the compiler folds it (an import is a load and a check per use). */
const REPORT_LUNS = Opcode.REPORT_LUNS;

/** Most units on one target. */
export const MAX_UNITS_PER_TARGET = 256;
/** LUNs below this are looked up by index (the others in a map). */
const DIRECT_LUNS = 256;

/**
 * The 8-byte LUN of REPORT LUNS for a LUN number (SAM-5 4.7): peripheral device addressing below 256, flat
 * space addressing above, the well-known LUN as C1h 01h.
 */
export function encodeLun(lun: number, out: Uint8Array, at: number): void {
  out.fill(0, at, at + 8);
  if (lun === WLUN_REPORT_LUNS) {
    out[at] = 0xc1;
    out[at + 1] = 0x01;
  } else if (lun < 256) {
    out[at + 1] = lun;
  } else {
    out[at] = 0x40 | (lun >> 8);
    out[at + 1] = lun & 0xff;
  }
}

function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** A target and its logical units. */
export class ScsiTarget {
  readonly id: number;
  readonly #units = new Map<number, LogicalUnit>();
  /** The units of LUNs below {@link DIRECT_LUNS} by index as well: every command looks its unit up. */
  readonly #direct: (LogicalUnit | undefined)[] = [];
  readonly #scratch = new Uint8Array(64);

  constructor(id: number) {
    this.id = id;
    // Filled by push: a packed array (not a holey one) keeps the lookup on the fast path.
    for (let i = 0; i < DIRECT_LUNS; i++) this.#direct.push(undefined);
  }

  /** The units by LUN. */
  get units(): ReadonlyMap<number, LogicalUnit> {
    return this.#units;
  }

  /** The unit at `lun`, if any. */
  unit(lun: number): LogicalUnit | undefined {
    return lun >= 0 && lun < DIRECT_LUNS ? this.#direct[lun] : this.#units.get(lun);
  }

  /** LUNs with a unit, ascending. */
  luns(): number[] {
    return [...this.#units.keys()].sort((a, b) => a - b);
  }

  /**
   * Attach a unit at `lun`. The other units get a REPORTED LUNS DATA HAS CHANGED unit attention.
   * @throws RangeError for a LUN out of range or taken, or a full target.
   */
  attach(lun: number, unit: LogicalUnit): void {
    if (!Number.isInteger(lun) || lun < 0 || lun > MAX_LUN) throw new RangeError(`LUN ${lun} is not in 0..${MAX_LUN}`);
    if (this.#units.has(lun)) throw new RangeError(`target ${this.id} already has LUN ${lun}`);
    if (this.#units.size >= MAX_UNITS_PER_TARGET) throw new RangeError(`target ${this.id} has ${MAX_UNITS_PER_TARGET} LUNs already`);
    for (const u of this.#units.values()) u.addUnitAttention(Sense.REPORTED_LUNS_CHANGED);
    this.#units.set(lun, unit);
    if (lun < DIRECT_LUNS) this.#direct[lun] = unit;
    unit.address = `${this.id}:${lun}`;
  }

  /** Detach the unit at `lun` (its running tasks go on); the others get REPORTED LUNS DATA HAS CHANGED. */
  detach(lun: number): LogicalUnit | undefined {
    const unit = this.#units.get(lun);
    if (!unit) return undefined;
    this.#units.delete(lun);
    if (lun >= 0 && lun < DIRECT_LUNS) this.#direct[lun] = undefined;
    for (const u of this.#units.values()) u.addUnitAttention(Sense.REPORTED_LUNS_CHANGED);
    return unit;
  }

  /**
   * Run a command addressed to `lun` of this target (a LUN number, {@link WLUN_REPORT_LUNS}, or -1 for an
   * address that names no LUN the target knows). The task's `onComplete` is called exactly once.
   */
  execute(lun: number, task: ScsiTask): void {
    if (task.cdb[0] === REPORT_LUNS) return this.#reportLuns(task);
    const unit = this.unit(lun);
    // Compared with undefined, not tested for truthiness: that compiles to one comparison, not a generic test.
    if (unit !== undefined) return unit.execute(task);
    if (lun === WLUN_REPORT_LUNS) return this.#wellKnown(task);
    this.#noUnit(task);
  }

  /**
   * Run a task management function. LUN-scoped functions on a LUN without a unit answer INCORRECT_LUN; the
   * promise resolves once the affected tasks have ended (SAM: before the function completes).
   */
  async taskManagement(fn: TaskManagementFunction, lun: number, tagLo = 0, tagHi = 0): Promise<TmfResponse> {
    if (fn === 'i-t-nexus-reset') {
      await Promise.all([...this.#units.values()].map(async (u) => {
        await u.abortTasks(TaskResponse.RESET);
        u.addUnitAttention(Sense.NEXUS_LOSS_OCCURRED);
      }));
      return TmfResponse.FUNCTION_COMPLETE;
    }
    const unit = this.#units.get(lun);
    if (!unit) return TmfResponse.INCORRECT_LUN;
    switch (fn) {
      case 'abort-task':
        await unit.abortTasks(TaskResponse.ABORTED, (t) => t.tagLo === tagLo && t.tagHi === tagHi);
        return TmfResponse.FUNCTION_COMPLETE;
      case 'abort-task-set':
      case 'clear-task-set':
        // One initiator: its task set is all of the unit's tasks.
        await unit.abortTasks(TaskResponse.ABORTED);
        return TmfResponse.FUNCTION_COMPLETE;
      case 'logical-unit-reset':
        await unit.reset();
        return TmfResponse.FUNCTION_COMPLETE;
      case 'query-task':
        return unit.findTask(tagLo, tagHi) ? TmfResponse.FUNCTION_SUCCEEDED : TmfResponse.FUNCTION_COMPLETE;
      case 'query-task-set':
        return unit.taskCount > 0 ? TmfResponse.FUNCTION_SUCCEEDED : TmfResponse.FUNCTION_COMPLETE;
      case 'clear-aca':
        // NACA is refused in every CDB, so there is never an ACA condition to clear.
        return TmfResponse.FUNCTION_REJECTED;
    }
  }

  // ---- what the target answers itself ----

  #complete(task: ScsiTask, status: number): void {
    task.status = status;
    task.onComplete(task);
  }

  #check(task: ScsiTask, code: SenseCode, field?: FieldPointer): void {
    task.senseLength = encodeFixedSense(task.sense, code, -1, field);
    task.dataInTransferred = 0;
    this.#complete(task, ScsiStatus.CHECK_CONDITION);
  }

  #send(task: ScsiTask, data: Uint8Array, allocation: number): void {
    const n = Math.min(data.byteLength, allocation, task.dataInLength);
    task.dataInTransferred = copyToViews(task.dataIn, n === data.byteLength ? data : data.subarray(0, n));
    this.#complete(task, ScsiStatus.GOOD);
  }

  /** REPORT LUNS (any LUN of the target): the units, and with SELECT REPORT 1 or 2 the well-known LUN. */
  #reportLuns(task: ScsiTask): void {
    const cdb = task.cdb;
    const select = cdb[2]!;
    if (select > 2) return this.#check(task, Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte: 2 });
    const luns = select === 1 ? [] : this.luns();
    if (select !== 0) luns.push(WLUN_REPORT_LUNS);
    const data = new Uint8Array(8 + 8 * luns.length);
    const len = 8 * luns.length;
    data[0] = (len >>> 24) & 0xff;
    data[1] = (len >>> 16) & 0xff;
    data[2] = (len >>> 8) & 0xff;
    data[3] = len & 0xff;
    luns.forEach((lun, i) => encodeLun(lun, data, 8 + 8 * i));
    // The initiator has now seen the new inventory (SPC-4 6.33).
    for (const u of this.#units.values()) u.clearUnitAttention(Sense.REPORTED_LUNS_CHANGED);
    this.#send(task, data, be32(cdb, 6));
  }

  /** INQUIRY data for the target's own answers: `peripheral` (7Fh: no unit; 1Eh: well-known unit). */
  #inquiry(task: ScsiTask, peripheral: number): void {
    const cdb = task.cdb;
    const allocation = be16(cdb, 3);
    const s = this.#scratch;
    if ((cdb[1]! & 0x02) !== 0) return this.#check(task, Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte: 1, bit: 1 });
    if ((cdb[1]! & 0x01) !== 0) {
      if (cdb[2] !== VpdPage.SUPPORTED_PAGES) return this.#check(task, Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte: 2 });
      s.set([peripheral, VpdPage.SUPPORTED_PAGES, 0, 1, VpdPage.SUPPORTED_PAGES]);
      return this.#send(task, s.subarray(0, 5), allocation);
    }
    if (cdb[2] !== 0) return this.#check(task, Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte: 2 });
    s.fill(0, 0, 36);
    s[0] = peripheral;
    s[2] = 0x06; // SPC-4
    s[3] = 0x02; // response data format 2
    s[4] = 36 - 5;
    s.set(Buffer.from('VHOSTUSRSCSI TARGET     0001', 'latin1'), 8);
    this.#send(task, s.subarray(0, 36), allocation);
  }

  #requestSense(task: ScsiTask, code: SenseCode): void {
    if ((task.cdb[1]! & 0x01) !== 0) return this.#check(task, Sense.INVALID_FIELD_IN_CDB, { inCdb: true, byte: 1, bit: 0 });
    const len = encodeFixedSense(this.#scratch, code);
    this.#send(task, this.#scratch.subarray(0, len), task.cdb[4]!);
  }

  /** A LUN with no unit: INQUIRY says "not present", REQUEST SENSE and everything else LOGICAL UNIT NOT SUPPORTED. */
  #noUnit(task: ScsiTask): void {
    switch (task.opcode) {
      case Opcode.INQUIRY: return this.#inquiry(task, INQUIRY_NOT_PRESENT);
      case Opcode.REQUEST_SENSE: return this.#requestSense(task, Sense.LUN_NOT_SUPPORTED);
      default: return this.#check(task, Sense.LUN_NOT_SUPPORTED);
    }
  }

  /** The REPORT LUNS well-known logical unit: REPORT LUNS (handled above), INQUIRY, REQUEST SENSE, TEST UNIT READY. */
  #wellKnown(task: ScsiTask): void {
    switch (task.opcode) {
      case Opcode.INQUIRY: return this.#inquiry(task, DeviceType.WELL_KNOWN_LU);
      case Opcode.REQUEST_SENSE: return this.#requestSense(task, Sense.NO_SENSE);
      case Opcode.TEST_UNIT_READY: return this.#complete(task, ScsiStatus.GOOD);
      default: return this.#check(task, Sense.INVALID_OPCODE);
    }
  }
}
