/**
 * Descriptor chains: walking one from the descriptor table (and an indirect table) into views of guest memory.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { copyFromViews, copyToViews } from '../util/views.js';
import { ChainError, ChainErrorKind } from './errors.js';
import { DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from './layout.js';

const TWO_32 = 2 ** 32;
/** Descriptor addresses with a high word at or above this are >= 2^53: out of range for us. */
const HI_LIMIT = 2 ** 21;

/**
 * One available buffer: the device-readable part followed by the device-writable part, as views straight into
 * guest memory (no copies). A buffer that crosses from one memory region into the adjacent one is two views.
 *
 * The guest can change readable bytes at any time: copy what you validate ({@link readAll}, {@link readInto})
 * rather than checking a view and reading it again.
 */
export class DescriptorChain {
  /** Index of the head descriptor: the id to return in the used ring. */
  readonly head: number;
  /** Device-readable views, in order. */
  readonly readable: Uint8Array[];
  /** Device-writable views, in order. */
  readonly writable: Uint8Array[];
  /** Total bytes of {@link readable}. */
  readonly readableLength: number;
  /** Total bytes of {@link writable}. */
  readonly writableLength: number;
  /** Number of buffer descriptors in the chain (an indirect table's entries count, the descriptor pointing to it not). */
  readonly descriptorCount: number;

  constructor(head: number, readable: Uint8Array[], writable: Uint8Array[], readableLength: number,
    writableLength: number, descriptorCount: number) {
    this.head = head;
    this.readable = readable;
    this.writable = writable;
    this.readableLength = readableLength;
    this.writableLength = writableLength;
    this.descriptorCount = descriptorCount;
  }

  /** A copy of all readable bytes (meant for small requests and headers). */
  readAll(): Uint8Array {
    if (this.readable.length === 1) return this.readable[0]!.slice();
    const out = new Uint8Array(this.readableLength);
    let at = 0;
    for (const v of this.readable) {
      out.set(v, at);
      at += v.byteLength;
    }
    return out;
  }

  /**
   * Copy readable bytes, starting `offset` bytes into the readable part, into `dst`.
   * Returns the number of bytes copied (less than `dst.length` when the readable part ends first).
   */
  readInto(dst: Uint8Array, offset = 0): number {
    return copyFromViews(this.readable, dst, offset);
  }

  /**
   * Copy `src` into the writable part, starting `offset` bytes into it.
   * Returns the number of bytes written (less than `src.length` when the writable part ends first).
   */
  writeFrom(src: Uint8Array, offset = 0): number {
    return copyToViews(this.writable, src, offset);
  }
}

/**
 * Walks chains of one descriptor table. Every read is bounded: at most as many steps as the table (or indirect
 * table) has entries, at most {@link maxChainLength} buffers, and every buffer and indirect table must lie in
 * guest memory. Each descriptor is read once, so a guest changing the table meanwhile cannot make it misbehave.
 */
export class ChainWalker {
  readonly mem: GuestMemory;
  /** The descriptor table as 32-bit words (4 per descriptor). */
  readonly table: Uint32Array;
  /** Entries in the descriptor table (the queue size). */
  readonly size: number;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect = false;
  /** Most buffers one chain may have (direct plus indirect entries); also caps indirect table entries. */
  maxChainLength: number;
  #scratch: Uint32Array = new Uint32Array(0);
  // Result slots of #loadIndirect, to avoid allocating a tuple per indirect chain.
  #tbl: Uint32Array = this.#scratch;
  #base = 0;

  constructor(mem: GuestMemory, table: Uint32Array, size: number) {
    this.mem = mem;
    this.table = table;
    this.size = size;
    this.maxChainLength = size;
  }

  /**
   * Walk the chain starting at `head` (which the caller checked is < size).
   * @throws ChainError for every malformed chain.
   */
  walk(head: number): DescriptorChain {
    const mem = this.mem;
    const readable: Uint8Array[] = [];
    const writable: Uint8Array[] = [];
    let readLen = 0;
    let writeLen = 0;
    let count = 0;
    let tbl = this.table;
    let base = 0;
    let entries = this.size;
    let inIndirect = false;
    let steps = 0;
    let i = head;
    for (;;) {
      if (++steps > entries) {
        throw new ChainError(ChainErrorKind.LOOP, `chain ${head} visits more than ${entries} descriptors` +
          (inIndirect ? ' of its indirect table' : ''), head);
      }
      const w = base + i * 4;
      const lo = tbl[w]!;
      const hi = tbl[w + 1]!;
      const len = tbl[w + 2]!;
      const fn = tbl[w + 3]!;
      const flags = fn & 0xffff;

      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        if (inIndirect) throw new ChainError(ChainErrorKind.NESTED_INDIRECT, `chain ${head}: indirect in indirect`, head);
        if (!this.indirect) {
          throw new ChainError(ChainErrorKind.INDIRECT_NOT_NEGOTIATED, `chain ${head}: indirect descriptor`, head);
        }
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
          throw new ChainError(ChainErrorKind.INDIRECT_WITH_NEXT, `chain ${head}: descriptor ${i} has INDIRECT and NEXT`,
            head);
        }
        if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > this.maxChainLength) {
          throw new ChainError(ChainErrorKind.INDIRECT_LENGTH, `chain ${head}: indirect table of ${len} bytes`, head);
        }
        const addr = lo + hi * TWO_32;
        if (hi >= HI_LIMIT || !this.#loadIndirect(addr, len)) {
          throw new ChainError(ChainErrorKind.OUT_OF_MEMORY,
            `chain ${head}: indirect table 0x${addr.toString(16)}+${len} is not in guest memory`, head, addr);
        }
        tbl = this.#tbl;
        base = this.#base;
        entries = len / DESC_SIZE;
        inIndirect = true;
        steps = 0;
        i = 0;
        continue;
      }

      if (len === 0) throw new ChainError(ChainErrorKind.ZERO_LENGTH, `chain ${head}: descriptor ${i} has length 0`, head);
      if (++count > this.maxChainLength) {
        throw new ChainError(ChainErrorKind.TOO_LONG, `chain ${head} has more than ${this.maxChainLength} buffers`, head);
      }
      const addr = lo + hi * TWO_32;
      let hole: number;
      if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
        hole = hi >= HI_LIMIT ? addr : mem.gpaAppendSlices(addr, len, writable);
        writeLen += len;
      } else {
        if (writeLen !== 0) {
          throw new ChainError(ChainErrorKind.READ_AFTER_WRITE, `chain ${head}: readable descriptor ${i} after a ` +
            'writable one', head);
        }
        hole = hi >= HI_LIMIT ? addr : mem.gpaAppendSlices(addr, len, readable);
        readLen += len;
      }
      if (hole >= 0) {
        throw new ChainError(ChainErrorKind.OUT_OF_MEMORY, `chain ${head}: buffer 0x${addr.toString(16)}+${len} is ` +
          `not in guest memory (at 0x${hole.toString(16)})`, head, hole);
      }

      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
      const next = fn >>> 16;
      if (next >= entries) {
        throw new ChainError(ChainErrorKind.NEXT_OUT_OF_RANGE, `chain ${head}: next ${next} >= ${entries}`, head);
      }
      i = next;
    }
    return new DescriptorChain(head, readable, writable, readLen, writeLen, count);
  }

  /** Point #tbl/#base at the indirect table; false if it is not in guest memory. */
  #loadIndirect(addr: number, len: number): boolean {
    const r = this.mem.gpaRegion(addr, len);
    if (r !== undefined) {
      const off = r.mmapOffset + (addr - r.guestPhysAddr);
      const words = off % 4 === 0 ? r.u32 : null;
      if (words !== null) {
        this.#tbl = words;
        this.#base = off / 4;
        return true;
      }
    }
    // Unaligned, or crossing into the adjacent region: copy it out.
    const parts: Uint8Array[] = [];
    if (this.mem.gpaAppendSlices(addr, len, parts) >= 0) return false;
    if (this.#scratch.byteLength < len) this.#scratch = new Uint32Array(Math.max(len, 256) / 4);
    const bytes = new Uint8Array(this.#scratch.buffer, 0, len);
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.byteLength;
    }
    this.#tbl = this.#scratch;
    this.#base = 0;
    return true;
  }
}
