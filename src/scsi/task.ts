/**
 * One SCSI command on its way through the target: the CDB and the data buffers the transport hands in, the
 * outcome the target hands back. Tasks are meant to be pooled by the transport: {@link ScsiTask.prepare}
 * clears the results for reuse, and the completion callback is bound once.
 */
import { NO_BUFFERS, emptyViewList } from '../util/views.js';
import type { LogicalUnit } from './logical-unit.js';

/** A module-local copy: the compiler folds it (an import is a load and a check per use). */
const EMPTY = NO_BUFFERS;

/** Bytes of CDB a task holds; longer CDBs (variable length, 0x7F) are not supported. */
export const MAX_CDB_SIZE = 32;
/** Room for sense data. */
export const MAX_SENSE_SIZE = 32;

/** How a task ended, besides its SCSI status. */
export const TaskResponse = {
  /** The command ran; {@link ScsiTask.status} (and the sense data) say how it went. */
  COMPLETE: 0,
  /** The buffers cannot hold what the CDB asks to transfer (or are in the wrong direction); it did not run. */
  OVERRUN: 1,
  /** Ended by ABORT TASK, ABORT TASK SET or CLEAR TASK SET. */
  ABORTED: 2,
  /** Ended by LOGICAL UNIT RESET or I_T NEXUS RESET. */
  RESET: 3,
} as const;
export type TaskResponse = (typeof TaskResponse)[keyof typeof TaskResponse];

/** Continuation of a task after an asynchronous storage operation. */
export type TaskStep = (unit: LogicalUnit, task: ScsiTask, error: Error | null) => void;

/** A SCSI command and its result. */
export class ScsiTask {
  /** The CDB, zero-padded (the transport copies it in: the initiator may change its own copy at any time). */
  readonly cdb = new Uint8Array(MAX_CDB_SIZE);
  /**
   * The same bytes as 32-bit words (host order, little-endian on every host we run on), for transports that copy
   * the CDB a word at a time.
   */
  readonly cdbWords = new Uint32Array(this.cdb.buffer, 0, MAX_CDB_SIZE / 4);
  /** The same bytes as a DataView, for reading the CDB's big-endian fields. */
  readonly cdbView = new DataView(this.cdb.buffer, 0, MAX_CDB_SIZE);
  /** The initiator's tag for the task (task management matches on it), as two 32-bit halves. */
  tagLo = 0;
  tagHi = 0;
  /** Data-out buffers (what the initiator sends) and their total length. */
  dataOut: readonly Uint8Array[] = NO_BUFFERS;
  dataOutLength = 0;
  /** Data-in buffers (what the target returns into) and their total length. */
  dataIn: readonly Uint8Array[] = NO_BUFFERS;
  dataInLength = 0;

  /** How the task ended. */
  response: TaskResponse = TaskResponse.COMPLETE;
  /** SCSI status (when `response` is COMPLETE). */
  status = 0;
  /** Sense data (fixed format), {@link senseLength} bytes of it. */
  readonly sense = new Uint8Array(MAX_SENSE_SIZE);
  senseLength = 0;
  /** Bytes written into the data-in buffers. */
  dataInTransferred = 0;
  /** Bytes taken from the data-out buffers. */
  dataOutTransferred = 0;

  /** Called once when the task has ended (possibly before `execute` returns). */
  readonly onComplete: (task: ScsiTask) => void;

  // ---- execution state, owned by the logical unit while the task runs ----
  /** @internal The unit running the task (null when it is not running on one). */
  unit: LogicalUnit | null = null;
  /** @internal Links of the unit's list of running tasks, and whether the task is on it. */
  prevRunning: ScsiTask | null = null;
  nextRunning: ScsiTask | null = null;
  listed = false;
  /** @internal Set by task management: the response to end with (ABORTED or RESET), 0 when none. */
  abortedWith: TaskResponse = TaskResponse.COMPLETE;
  /** @internal What to do when the pending storage operation completes. */
  step: TaskStep | null = null;
  /** @internal First logical block of the command (for the INFORMATION field of a medium error), -1 if none. */
  lba = -1;
  /** @internal Byte position and bytes left of a multi-step operation. */
  position = 0;
  remaining = 0;
  /** @internal Per-command flags (FUA, UNMAP...). */
  flags = 0;
  /** @internal Descriptor index of a multi-step operation. */
  index = 0;
  /** @internal A private buffer of a multi-step operation (parameter list, WRITE SAME pattern). */
  buffer: Uint8Array | null = null;
  /**
   * @internal The part of the data buffers a READ or WRITE transfers, when it is not all of them: reused from
   * command to command (no list allocated per command).
   */
  readonly ioViews: Uint8Array[] = emptyViewList();
  constructor(onComplete: (task: ScsiTask) => void) {
    this.onComplete = onComplete;
  }

  /**
   * Clear the results before the task is filled in again. The CDB is left as it is: the transport writes all
   * {@link MAX_CDB_SIZE} bytes of it (zero-padding a shorter CDB), or calls {@link clearCdb}. The execution
   * state needs no clearing here: a task that is not running has none (the unit drops it when the task ends, and
   * the multi-step fields are set by the commands that use them before they are read).
   */
  prepare(): void {
    // 0 rather than TaskResponse.COMPLETE: each read of a property of the constant object is a load and a check.
    this.tagLo = 0;
    this.tagHi = 0;
    this.dataOut = EMPTY;
    this.dataOutLength = 0;
    this.dataIn = EMPTY;
    this.dataInLength = 0;
    this.response = 0;
    this.status = 0;
    this.senseLength = 0;
    this.dataInTransferred = 0;
    this.dataOutTransferred = 0;
    this.lba = -1;
  }

  /** Zero the CDB. */
  clearCdb(): void {
    this.cdb.fill(0);
  }

  /** The operation code. */
  get opcode(): number {
    return this.cdb[0]!;
  }

  /** The sense data as a view. */
  get senseData(): Uint8Array {
    return this.sense.subarray(0, this.senseLength);
  }

  /**
   * Bytes of the data buffers not transferred: of the data-in buffers when there are any, else of the data-out
   * buffers (what virtio-scsi and most transports call the residual).
   */
  get residual(): number {
    return this.dataInLength > 0 ? this.dataInLength - this.dataInTransferred : this.dataOutLength - this.dataOutTransferred;
  }
}

/**
 * @internal The completion of every storage operation a unit starts, the task being the operation's context: one
 * function for all tasks, so that the storage's call of it stays specialized across connections (a closure per
 * task was a new call target for every new task, and V8 dropped the code that had inlined the previous one).
 */
export function taskIoDone(error: Error | null, task: ScsiTask): void {
  const step = task.step;
  const unit = task.unit;
  task.step = null;
  // Comparisons with null, not truthiness: those compile to one instruction each. A storage that passes
  // undefined for success is taken at its word.
  if (step !== null && unit !== null) unit.resume(step, task, error === undefined ? null : error);
}
