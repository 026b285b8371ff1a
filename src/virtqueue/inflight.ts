/**
 * Inflight I/O tracking for split rings (vhost-user INFLIGHT_SHMFD, QEMU docs/interop/vhost-user.rst).
 *
 * A shared area outlives the backend process; for each queue it records which heads were popped and not yet
 * returned, so a restarted backend can resubmit them. Per queue, little-endian:
 *
 *   header (16 bytes): features u64 (0), version u16 (1; 0 = not initialised), desc_num u16 (= queue size),
 *                      last_batch_head u16, used_idx u16
 *   desc_num entries (16 bytes): inflight u8, padding[5], next u16, counter u64
 *
 * Protocol: on pop, set `counter` (rising) then `inflight = 1`. On push, link the head into the last-batch list
 * (`next = last_batch_head; last_batch_head = head`); after used.idx is published clear `inflight` of the batch,
 * then store used.idx in `used_idx`. After a restart, if `used_idx` lags the ring's used.idx, the batch that was
 * published but not recorded is cleared by walking that list; the heads still marked are resubmitted in counter
 * order.
 */
import { QueueError } from './errors.js';
import { isValidQueueSize } from './layout.js';

/** Version written to an initialised queue region. */
export const INFLIGHT_VERSION = 1;
/** Queue regions are padded to this alignment. */
export const INFLIGHT_ALIGNMENT = 64;
/** Bytes of the per-queue header. */
export const INFLIGHT_HEADER_BYTES = 16;
/** Bytes of one descriptor-state entry. */
export const INFLIGHT_ENTRY_BYTES = 16;

const H_FEATURES = 0;
const H_VERSION = 8;
const H_DESC_NUM = 10;
const H_LAST_BATCH_HEAD = 12;
const H_USED_IDX = 14;
const E_INFLIGHT = 0;
const E_NEXT = 6;
const E_COUNTER = 8;
const TWO_32 = 2 ** 32;

/**
 * Bytes of one queue's region in the inflight area, computed as libvhost-user does
 * (`ALIGN_UP(16 * queue_size + 2, 64)`, which always leaves room for the 16-byte header).
 * The whole area for `n` queues is `n * inflightQueueSize(queueSize)`; queue `i` starts at `i *` that.
 */
export function inflightQueueSize(queueSize: number): number {
  if (!isValidQueueSize(queueSize)) throw new QueueError(`inflight: invalid queue size ${queueSize}`);
  const raw = INFLIGHT_ENTRY_BYTES * queueSize + 2;
  return Math.ceil(raw / INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT;
}

/** One queue's region of the inflight area. */
export class InflightQueue {
  /** Ring size this region tracks. */
  readonly queueSize: number;
  readonly #dv: DataView;
  #counter = 1;

  /**
   * A view of the region at `offset` in `buffer` (nothing is read or written yet).
   * @throws QueueError if the size is invalid or the region does not fit in the buffer.
   */
  constructor(buffer: ArrayBufferLike, offset: number, queueSize: number) {
    if (!isValidQueueSize(queueSize)) throw new QueueError(`inflight: invalid queue size ${queueSize}`);
    const bytes = INFLIGHT_HEADER_BYTES + INFLIGHT_ENTRY_BYTES * queueSize;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > buffer.byteLength - bytes) {
      throw new QueueError(`inflight: region at offset ${offset} (${bytes} bytes) does not fit in ` +
        `${buffer.byteLength} bytes`);
    }
    this.queueSize = queueSize;
    this.#dv = new DataView(buffer, offset, bytes);
  }

  /** Has the region been initialised (version != 0)? A fresh area is all zeroes. */
  get initialized(): boolean {
    return this.#dv.getUint16(H_VERSION, true) !== 0;
  }

  /** The `used_idx` recorded in the header. */
  get usedIdx(): number {
    return this.#dv.getUint16(H_USED_IDX, true);
  }

  /** The `last_batch_head` recorded in the header. */
  get lastBatchHead(): number {
    return this.#dv.getUint16(H_LAST_BATCH_HEAD, true);
  }

  /** Is `head` marked inflight? */
  isInflight(head: number): boolean {
    return this.#dv.getUint8(entry(head) + E_INFLIGHT) === 1;
  }

  /** The counter stored for `head` (as a number; exact below 2^53). */
  counterOf(head: number): number {
    const at = entry(head) + E_COUNTER;
    return this.#dv.getUint32(at, true) + this.#dv.getUint32(at + 4, true) * TWO_32;
  }

  /** Initialise a fresh region: nothing inflight, `used_idx` = the ring's current used index. */
  init(usedIdx = 0): void {
    const dv = this.#dv;
    for (let i = 0; i < dv.byteLength; i += 4) dv.setUint32(i, 0, true);
    dv.setUint16(H_DESC_NUM, this.queueSize, true);
    dv.setUint16(H_USED_IDX, usedIdx & 0xffff, true);
    dv.setBigUint64(H_FEATURES, 0n, true);
    // Version last: a region is valid once it says so.
    dv.setUint16(H_VERSION, INFLIGHT_VERSION, true);
    this.#counter = 1;
  }

  /** A head was popped: give it the next counter value, then mark it inflight. */
  markInflight(head: number): void {
    const at = entry(head);
    const c = this.#counter++;
    this.#dv.setUint32(at + E_COUNTER, c % TWO_32, true);
    this.#dv.setUint32(at + E_COUNTER + 4, Math.floor(c / TWO_32), true);
    this.#dv.setUint8(at + E_INFLIGHT, 1);
  }

  /** A head is being returned (its used element is written, not yet published): link it into the last batch. */
  linkUsed(head: number): void {
    this.#dv.setUint16(entry(head) + E_NEXT, this.lastBatchHead, true);
    this.#dv.setUint16(H_LAST_BATCH_HEAD, head, true);
  }

  /** A head's used element is published: it is no longer inflight. */
  markDone(head: number): void {
    this.#dv.setUint8(entry(head) + E_INFLIGHT, 0);
  }

  /** Record the ring's used index (after the batch's heads are marked done). */
  setUsedIdx(usedIdx: number): void {
    this.#dv.setUint16(H_USED_IDX, usedIdx & 0xffff, true);
  }

  /**
   * Used index `usedIdx` was just published, covering the last `count` linked heads: mark them done, then record
   * `usedIdx`.
   */
  commitUsed(count: number, usedIdx: number): void {
    this.#clearBatch(count);
    this.setUsedIdx(usedIdx);
  }

  #clearBatch(count: number): void {
    let i = this.lastBatchHead;
    // Bounded by count; indices come from shared memory, so check them.
    for (let k = 0; k < count && i < this.queueSize; k++) {
      this.markDone(i);
      i = this.#dv.getUint16(entry(i) + E_NEXT, true);
    }
  }

  /**
   * After a restart: apply the recovery rule against the ring's current used index (clear the batch that was
   * published but not recorded), then return the heads still inflight, oldest first. New counters continue after
   * the largest one found.
   * @throws QueueError if the region is not initialised or was made for another queue size.
   */
  pendingHeads(ringUsedIdx: number): number[] {
    const dv = this.#dv;
    const version = dv.getUint16(H_VERSION, true);
    if (version !== INFLIGHT_VERSION) throw new QueueError(`inflight: region version ${version}`);
    const descNum = dv.getUint16(H_DESC_NUM, true);
    if (descNum !== this.queueSize) {
      throw new QueueError(`inflight: region is for ${descNum} descriptors, queue has ${this.queueSize}`);
    }
    ringUsedIdx &= 0xffff;
    const recorded = this.usedIdx;
    if (recorded !== ringUsedIdx) {
      this.#clearBatch(Math.min((ringUsedIdx - recorded) & 0xffff, this.queueSize));
      this.setUsedIdx(ringUsedIdx);
    }
    const found: { head: number; counter: bigint }[] = [];
    for (let head = 0; head < this.queueSize; head++) {
      if (dv.getUint8(entry(head) + E_INFLIGHT) === 1) {
        found.push({ head, counter: dv.getBigUint64(entry(head) + E_COUNTER, true) });
      }
    }
    found.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : a.head - b.head));
    const last = found.length > 0 ? found[found.length - 1]!.counter : 0n;
    if (last < BigInt(Number.MAX_SAFE_INTEGER) - BigInt(this.queueSize)) {
      this.#counter = Number(last) + 1;
    } else {
      // Counters too large to continue as numbers: renumber them, keeping the order.
      found.forEach((f, k) => dv.setBigUint64(entry(f.head) + E_COUNTER, BigInt(k + 1), true));
      this.#counter = found.length + 1;
    }
    return found.map((f) => f.head);
  }
}

function entry(head: number): number {
  return INFLIGHT_HEADER_BYTES + INFLIGHT_ENTRY_BYTES * head;
}
