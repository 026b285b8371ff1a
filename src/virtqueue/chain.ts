/**
 * Descriptor chains: walking one from the descriptor table (and an indirect table) into views of guest memory.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import type { MemoryRegion } from '../memory/region.js';
import { ViewCache } from '../memory/view-cache.js';
import { copyFromViews, copyToViews, emptyViewList, viewsLength } from '../util/views.js';
import { ChainError, ChainErrorKind } from './errors.js';
import * as layout from './layout.js';

// Module-local copies: an imported binding is live, so each use in compiled code is a load and a check for the
// temporal dead zone; a local const is folded into the instruction.
const DESC_SIZE = layout.DESC_SIZE;
const VIRTQ_DESC_F_NEXT = layout.VIRTQ_DESC_F_NEXT;
const VIRTQ_DESC_F_WRITE = layout.VIRTQ_DESC_F_WRITE;
const VIRTQ_DESC_F_INDIRECT = layout.VIRTQ_DESC_F_INDIRECT;

const TWO_32 = 2 ** 32;
/** Descriptor addresses with a high word at or above this are >= 2^53: out of range for us. */
const HI_LIMIT = 2 ** 21;

/**
 * One available buffer: the device-readable part followed by the device-writable part, as views straight into
 * guest memory (no copies). A buffer that crosses from one memory region into the adjacent one is two views.
 *
 * The guest can change readable bytes at any time: copy what you validate ({@link readAll}, {@link readInto})
 * rather than checking a view and reading it again.
 *
 * Chains from a `SplitQueue` are pooled, one object per head: the object, its {@link readable} and
 * {@link writable} arrays and their views are reused for the next request with the same head. A chain is valid
 * from its pop until it is pushed (the framework's `vring.complete`); neither it nor its arrays may be used, or
 * kept, after that. Views may be shared between chains (the same guest buffer gives the same view object), so
 * never modify a view object itself (only the bytes it shows).
 */
export class DescriptorChain {
  /** Device-readable views, in order. Owned by the chain: reused in place when the chain is. */
  readonly readable: Uint8Array[];
  /** Device-writable views, in order. Owned by the chain: reused in place when the chain is. */
  readonly writable: Uint8Array[];
  /**
   * Byte length of each {@link readable} view, as numbers: reading these is cheaper than a view's `byteLength`
   * (an engine call), which matters on per-request paths. Owned by the chain like the views.
   */
  readonly readableLengths: number[] = [];
  /** Byte length of each {@link writable} view (see {@link readableLengths}). */
  readonly writableLengths: number[] = [];
  /**
   * The guest-memory region each {@link readable} view lies in, or null when not known (a chain built from
   * views, or a buffer split where it crosses from one region into the next). With {@link readableOffsets} it
   * lets a device read small fields in place through the region's word view. The walker also uses it to reuse a
   * view when its region and place are unchanged (comparing `view.buffer` would cost an engine call per view).
   */
  readonly readableRegions: (MemoryRegion | null)[] = [];
  /** The region of each {@link writable} view (see {@link readableRegions}). */
  readonly writableRegions: (MemoryRegion | null)[] = [];
  /** Where each {@link readable} view starts in its region's `buffer` (-1 when its region is null). */
  readonly readableOffsets: number[] = [];
  /** Where each {@link writable} view starts in its region's `buffer` (-1 when its region is null). */
  readonly writableOffsets: number[] = [];
  #head: number;
  #readableLength: number;
  #writableLength: number;
  #descriptorCount: number;

  /**
   * A chain over given views (tests, and devices that build chains themselves). Lengths default to the views'
   * total bytes, the descriptor count to the number of views. The arrays become the chain's own.
   */
  constructor(head: number, readable: Uint8Array[] = emptyViewList(), writable: Uint8Array[] = emptyViewList(),
    readableLength = viewsLength(readable), writableLength = viewsLength(writable),
    descriptorCount = readable.length + writable.length) {
    this.readable = readable;
    this.writable = writable;
    for (let i = 0; i < readable.length; i++) {
      this.readableLengths.push(readable[i]!.byteLength);
      this.readableRegions.push(null);
      this.readableOffsets.push(-1);
    }
    for (let i = 0; i < writable.length; i++) {
      this.writableLengths.push(writable[i]!.byteLength);
      this.writableRegions.push(null);
      this.writableOffsets.push(-1);
    }
    this.#head = head;
    this.#readableLength = readableLength;
    this.#writableLength = writableLength;
    this.#descriptorCount = descriptorCount;
  }

  /** The walker's refill of a pooled chain (not for devices). @internal */
  refill(head: number, readableLength: number, writableLength: number, descriptorCount: number): void {
    this.#head = head;
    this.#readableLength = readableLength;
    this.#writableLength = writableLength;
    this.#descriptorCount = descriptorCount;
  }

  /** Index of the head descriptor: the id to return in the used ring. */
  get head(): number {
    return this.#head;
  }

  /** Total bytes of {@link readable}. */
  get readableLength(): number {
    return this.#readableLength;
  }

  /** Total bytes of {@link writable}. */
  get writableLength(): number {
    return this.#writableLength;
  }

  /** Number of buffer descriptors in the chain (an indirect table's entries count, the descriptor pointing to it not). */
  get descriptorCount(): number {
    return this.#descriptorCount;
  }

  /** A copy of all readable bytes (meant for small requests and headers; allocates the copy). */
  readAll(): Uint8Array {
    if (this.readable.length === 1) return this.readable[0]!.slice();
    const out = new Uint8Array(this.#readableLength);
    copyFromViews(this.readable, out, 0);
    return out;
  }

  /**
   * Copy readable bytes, starting `offset` bytes into the readable part, into `dst` (no allocation).
   * Returns the number of bytes copied (less than `dst.length` when the readable part ends first).
   */
  readInto(dst: Uint8Array, offset = 0): number {
    return copyFromViews(this.readable, dst, offset);
  }

  /**
   * Copy `src` into the writable part, starting `offset` bytes into it (no allocation when `src` fits in one
   * view or is small). Returns the number of bytes written (less than `src.length` when the writable part ends
   * first).
   */
  writeFrom(src: Uint8Array, offset = 0): number {
    return copyToViews(this.writable, src, offset);
  }

  /**
   * Write one byte at `offset` into the writable part (a status or response byte) without a view or a source
   * array. Returns false when `offset` is not inside the writable part.
   */
  writeByte(offset: number, value: number): boolean {
    if (!(Number.isInteger(offset) && offset >= 0 && offset < this.#writableLength)) return false;
    const w = this.writable;
    const lengths = this.writableLengths;
    let skip = offset;
    for (let i = 0; i < w.length; i++) {
      const n = lengths[i]!;
      if (skip < n) {
        w[i]![skip] = value;
        return true;
      }
      skip -= n;
    }
    return false;
  }
}

/** Most entries of a walker's view cache. */
const VIEW_CACHE_MAX = 4096;

/**
 * Where the buffer of a one-buffer chain is, as numbers ({@link ChainWalker.single}): the whole chain is one
 * direct, device-readable descriptor inside one memory region (the usual transmit buffer of a network driver).
 */
export class SingleBuffer {
  /** The region the buffer lies in. */
  region: MemoryRegion | null = null;
  /** Where the buffer starts in the region's `buffer`. */
  offset = 0;
  /** Its length in bytes (> 0). */
  length = 0;
}

/**
 * Walks chains of one descriptor table. Every read is bounded: at most as many steps as the table (or indirect
 * table) has entries, at most {@link maxChainLength} buffers, and every buffer and indirect table must lie in
 * guest memory. Each descriptor is read once, so a guest changing the table meanwhile cannot make it misbehave.
 *
 * Views are reused instead of created when the guest hands the same buffers again (drivers keep per-request
 * headers and status bytes, benchmark drivers whole chains): first the view the refilled chain had at the same
 * position, then a direct-mapped cache keyed by where the view points. A view is reused only when its region
 * (so its buffer), offset and length equal the fresh translation, so a changed memory table cannot leave a stale
 * view in use; a new table also empties the cache, to let the old regions go.
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
  readonly #cache: ViewCache;
  /** Memory table generation the cache was filled under: a new table empties it (to let old regions go). */
  #cacheGeneration: number;
  /** Scratch list for a buffer that crosses regions (rare). */
  readonly #parts: Uint8Array[] = emptyViewList();

  constructor(mem: GuestMemory, table: Uint32Array, size: number) {
    this.mem = mem;
    this.table = table;
    this.size = size;
    this.maxChainLength = size;
    this.#cache = new ViewCache(4 * size < VIEW_CACHE_MAX ? 4 * size : VIEW_CACHE_MAX);
    this.#cacheGeneration = mem.generation;
  }

  /**
   * Walk the chain starting at `head` (which the caller checked is < size) into `chain` (refilled in place: its
   * arrays are overwritten and trimmed), or into a new chain.
   * @throws ChainError for every malformed chain (`chain` is then left partly filled: do not use it).
   */
  walk(head: number, chain: DescriptorChain = new DescriptorChain(head)): DescriptorChain {
    if (this.mem.generation !== this.#cacheGeneration) this.#clearCache();
    if (this.#walkDirect(head, chain)) return chain;
    return this.#walkAny(head, chain);
  }

  /**
   * If the chain at `head` (which the caller checked is < size) is one direct, device-readable descriptor inside
   * one region, put where its buffer is into `out` and return true; otherwise return false, having decided
   * nothing (walk it with {@link walk}, which has every check and the precise error). No views are made.
   */
  single(head: number, out: SingleBuffer): boolean {
    const tbl = this.table;
    const w = head << 2;
    const lo = tbl[w]!;
    const hi = tbl[w + 1]!;
    const len = tbl[w + 2]!;
    // No NEXT, WRITE or INDIRECT flag. Reserved flag bits are ignored, as the walk ignores them: a chain both
    // would see as one readable buffer must be taken here too.
    if ((tbl[w + 3]! & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT)) !== 0 || len === 0 ||
      hi >= HI_LIMIT) return false;
    const addr = lo + hi * TWO_32;
    const r = this.mem.gpaRegion(addr, len);
    if (r === undefined) return false;
    out.region = r;
    out.offset = r.mmapOffset + (addr - r.guestPhysAddr);
    out.length = len;
    return true;
  }

  /**
   * The common case, kept small so that it compiles tight: direct descriptors only, each buffer inside one
   * region. Returns false, having decided nothing, at the first descriptor that is anything else (indirect,
   * empty, unbacked, too many, readable after writable, next out of range): {@link #walkAny} then walks the
   * chain again from the start, with every check and the precise error.
   */
  #walkDirect(head: number, chain: DescriptorChain): boolean {
    const tbl = this.table;
    const size = this.size;
    const limit = this.maxChainLength < size ? this.maxChainLength : size;
    const mem = this.mem;
    let nr = 0;
    let nw = 0;
    let readLen = 0;
    let writeLen = 0;
    let i = head;
    for (let steps = 1; ; steps++) {
      if (steps > limit) return false;
      const w = i << 2;
      const lo = tbl[w]!;
      const hi = tbl[w + 1]!;
      const len = tbl[w + 2]!;
      const fn = tbl[w + 3]!;
      if ((fn & VIRTQ_DESC_F_INDIRECT) !== 0 || len === 0 || hi >= HI_LIMIT) return false;
      const addr = lo + hi * TWO_32;
      const off = mem.gpaOffset(addr, len);
      if (off < 0) return false;
      const r = mem.lastGpaRegion!;
      if ((fn & VIRTQ_DESC_F_WRITE) !== 0) {
        nw = this.#put(chain.writable, chain.writableRegions, chain.writableOffsets, chain.writableLengths, nw, r, off,
          len);
        writeLen += len;
      } else {
        if (writeLen !== 0) return false;
        nr = this.#put(chain.readable, chain.readableRegions, chain.readableOffsets, chain.readableLengths, nr, r, off,
          len);
        readLen += len;
      }
      if ((fn & VIRTQ_DESC_F_NEXT) === 0) break;
      i = fn >>> 16;
      if (i >= size) return false;
    }
    this.#trim(chain, nr, nw);
    chain.refill(head, readLen, writeLen, nr + nw);
    return true;
  }

  #trim(chain: DescriptorChain, nr: number, nw: number): void {
    // Trimmed, not emptied first: emptying an array drops its storage, and then refilling it allocates.
    if (chain.readable.length !== nr) {
      chain.readable.length = nr;
      chain.readableRegions.length = nr;
      chain.readableOffsets.length = nr;
      chain.readableLengths.length = nr;
    }
    if (chain.writable.length !== nw) {
      chain.writable.length = nw;
      chain.writableRegions.length = nw;
      chain.writableOffsets.length = nw;
      chain.writableLengths.length = nw;
    }
  }

  /** Put the view of region `r` at buffer offset `off`, `len` bytes, at index `n` of a chain's lists. */
  #put(list: Uint8Array[], regions: (MemoryRegion | null)[], offsets: number[], lengths: number[], n: number,
    r: MemoryRegion, off: number, len: number): number {
    // The view this chain had here last time (the four lists are always equally long).
    if (n < regions.length && regions[n] === r && offsets[n] === off && lengths[n] === len) return n + 1;
    list[n] = this.#cache.get(r, off, len);
    regions[n] = r;
    offsets[n] = off;
    lengths[n] = len;
    return n + 1;
  }

  /** Any chain, with every check (see {@link walk}). */
  #walkAny(head: number, chain: DescriptorChain): DescriptorChain {
    const readable = chain.readable;
    const writable = chain.writable;
    const readableRegions = chain.readableRegions;
    const writableRegions = chain.writableRegions;
    const readableOffsets = chain.readableOffsets;
    const writableOffsets = chain.writableOffsets;
    const readableLengths = chain.readableLengths;
    const writableLengths = chain.writableLengths;
    let nr = 0;
    let nw = 0;
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
      // #append returns the new number of views, or -1 - (first unbacked address).
      let r: number;
      if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
        r = hi >= HI_LIMIT ? -1 - addr : this.#append(writable, writableRegions, writableOffsets, writableLengths, nw, addr, len);
        if (r >= 0) nw = r;
        writeLen += len;
      } else {
        if (writeLen !== 0) {
          throw new ChainError(ChainErrorKind.READ_AFTER_WRITE, `chain ${head}: readable descriptor ${i} after a ` +
            'writable one', head);
        }
        r = hi >= HI_LIMIT ? -1 - addr : this.#append(readable, readableRegions, readableOffsets, readableLengths, nr, addr, len);
        if (r >= 0) nr = r;
        readLen += len;
      }
      if (r < 0) {
        const hole = -1 - r;
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
    this.#trim(chain, nr, nw);
    chain.refill(head, readLen, writeLen, count);
    return chain;
  }

  /**
   * Put the view(s) of guest `[addr, addr + len)` at `list[n]` on (addr < 2^53, len > 0), and their regions,
   * buffer offsets and lengths at `regions[n]`, `offsets[n]`, `lengths[n]` on. Returns the new count, or -1 - (the first unbacked address).
   */
  #append(list: Uint8Array[], regions: (MemoryRegion | null)[], offsets: number[], lengths: number[], n: number,
    addr: number, len: number): number {
    const r = this.mem.gpaRegion(addr, len);
    if (r === undefined) return this.#appendSplit(list, regions, offsets, lengths, n, addr, len);
    return this.#put(list, regions, offsets, lengths, n, r, r.mmapOffset + (addr - r.guestPhysAddr), len);
  }

  /** The rare case of {@link #append}: a buffer crossing into the adjacent region, or a hole. */
  #appendSplit(list: Uint8Array[], regions: (MemoryRegion | null)[], offsets: number[], lengths: number[], n: number,
    addr: number, len: number): number {
    const parts = this.#parts;
    parts.length = 0;
    const hole = this.mem.gpaAppendSlices(addr, len, parts);
    if (hole >= 0) return -1 - hole;
    for (let j = 0; j < parts.length; j++) {
      const part = parts[j]!;
      list[n] = part;
      // Not reused next time: a fresh view per walk for this rare case.
      regions[n] = null;
      offsets[n] = -1;
      lengths[n] = part.byteLength;
      n++;
    }
    return n;
  }

  #clearCache(): void {
    this.#cache.clear();
    this.#cacheGeneration = this.mem.generation;
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
    const parts = this.#parts;
    parts.length = 0;
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
