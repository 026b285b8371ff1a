/**
 * A frame in flight through the switch: one reusable buffer per sender (no allocation per packet), the frame's
 * length, and the checksum offload state the sender left it in.
 *
 * A guest's frame is not copied out of its transmit buffer up front: only its two MAC addresses are read, into
 * numbers (what the switch and the receive filters decide on), so those decisions rest on values the guest can
 * no longer change, and every receiver gets exactly those addresses. Receivers copy the rest straight from the
 * sender's buffer into theirs, and a frame nobody takes costs no more than reading its addresses. Whoever needs
 * more of it in {@link Packet.buffer} (a flow hash, a checksum, a TAP write) pulls it in first.
 */
import { completeChecksum } from './checksum.js';
import { copyByteLoop, copyFromViewList, copyWords, LITTLE_ENDIAN, WORD_COPY_MIN, wordsOfView } from './copy.js';
import { MAX_FRAME } from './header.js';
import type { MemoryRegion } from '../../memory/region.js';
import { ViewCache } from '../../memory/view-cache.js';

/** Bytes of the two MAC addresses at the start of a frame. */
const MACS = 12;

/** Bytes that hold every header a flow hash reads: Ethernet, IPv4 with options or IPv6, and the L4 ports. */
export const HEAD_BYTES = 128;

const NO_VIEWS: readonly Uint8Array[] = [new Uint8Array(0)].slice(1);
const NO_WORDS: Int32Array = new Int32Array(0);

/**
 * Frames up to this many bytes go to a receiver word by word ({@link Packet.copyToWords}); longer ones with one
 * native copy, which costs ~350 instructions before its first byte but ~0.8 per byte after.
 */
export const WORD_FRAME_MAX = 256;
if (WORD_FRAME_MAX !== 256) throw new Error('update the literal in Packet.copyToWords');

/**
 * A frame and its offload state. Receivers read it and copy it out ({@link copyTo}, {@link frame}); the only
 * change they make is {@link completeChecksum}. Valid only during the `receive` call it is passed to.
 */
export class Packet {
  /**
   * Backing store, {@link MAX_FRAME} bytes. Holds the frame's first {@link headLength} bytes; all of it after
   * {@link materialize} (or when the sender wrote it there and called {@link reset}).
   */
  readonly buffer: Uint8Array;
  /** Frame length. */
  length = 0;
  /** The checksum still has to be completed (virtio NEEDS_CSUM). */
  needsCsum = false;
  /** Where the checksummed range starts (with {@link needsCsum}). */
  csumStart = 0;
  /** Where the checksum goes, relative to {@link csumStart}. */
  csumOffset = 0;
  /*
   * The two addresses (frame bytes 0-11) as the little-endian words they are in memory, split at the boundary
   * between them: what three word loads give, and cheap to compare (the switch memoises on them). Keys in
   * the `macKeyAt` form are made from these only when a table or a filter needs one ({@link dstKey}).
   */
  /** Frame bytes 0-3 (destination bytes 0-3): `b0 | b1 << 8 | b2 << 16 | b3 << 24`, an int32. */
  dstHi = 0;
  /** Frame bytes 4-5 (destination bytes 4-5): `b4 | b5 << 8`. */
  dstLo = 0;
  /** Frame bytes 6-7 (source bytes 0-1): `b6 | b7 << 8`. */
  srcHi = 0;
  /** Frame bytes 8-11 (source bytes 2-5), an int32 like {@link dstHi}. */
  srcLo = 0;
  /** {@link buffer} as words (it starts its own ArrayBuffer). */
  readonly #words: Int32Array;
  /** {@link buffer}'s length, as a number (a view's length is a few more instructions). */
  readonly #capacity: number;
  #view: Uint8Array;
  /** Frame bytes [0, #copied) are in {@link buffer}; the rest only in #src. */
  #copied = 0;
  /** The sender's views holding the whole frame, from #srcOffset on (while attached). */
  #src: readonly Uint8Array[] = NO_VIEWS;
  #srcOffset = 0;
  /** Word view and byte offset of the sender's first view, looked up once per frame (-1: not yet). */
  #srcWords: Int32Array = NO_WORDS;
  #srcBase = -1;
  /**
   * Attached with {@link attachWords}: the sender's region as words and the word index of frame byte 0 (null
   * otherwise, and once the frame no longer comes from the sender's buffer).
   */
  #srcU32: Uint32Array | null = null;
  #srcWord = 0;
  /**
   * Attached with {@link attachWords}: the sender's region, and where frame byte 0 is in its buffer. A view of
   * the frame ({@link #source}) is made only when a receiver needs one: a frame that is dropped, or taken by
   * words, needs none.
   */
  #srcRegion: MemoryRegion | null = null;
  #srcAt = 0;
  /** Views made for #srcRegion frames (a sender's buffers come round again); the owner clears it. */
  readonly #viewCache: ViewCache;
  readonly #one: Uint8Array[] = [new Uint8Array(0)];

  /**
   * `views` keeps the views made of senders' buffers (default: a cache of the packet's own); whoever owns it
   * clears it when the sender's memory goes away.
   */
  constructor(capacity = MAX_FRAME, views: ViewCache = new ViewCache(4096)) {
    this.#viewCache = views;
    this.buffer = new Uint8Array(capacity);
    this.#capacity = capacity;
    this.#words = new Int32Array(this.buffer.buffer, 0, capacity >>> 2);
    this.#view = this.buffer.subarray(0, 0);
  }

  /**
   * The whole frame is in {@link buffer} from offset 0 (put it there first: its addresses are read now): set its
   * length and clear the offload state.
   */
  reset(length: number): void {
    if (length > this.buffer.length) throw new RangeError(`frame of ${length} bytes over ${this.buffer.length}`);
    this.length = length;
    this.#copied = length;
    this.#src = NO_VIEWS;
    this.#srcU32 = null;
    this.#srcRegion = null;
    this.#readMacs(this.buffer, 0);
    this.needsCsum = false;
    this.csumStart = 0;
    this.csumOffset = 0;
  }

  /**
   * The frame is `length` bytes of `views` starting `offset` bytes in (the caller checked they hold that many,
   * at least 12). Reads the MAC addresses; the views must stay valid, and unchanged by us, until {@link release}.
   */
  attach(views: readonly Uint8Array[], offset: number, length: number): void {
    if (length > this.buffer.length) throw new RangeError(`frame of ${length} bytes over ${this.buffer.length}`);
    const v = views[0]!;
    this.length = length;
    this.#src = views;
    this.#srcOffset = offset;
    this.#srcBase = -1;
    this.#srcU32 = null;
    this.#srcRegion = null;
    if (offset + MACS <= v.length) {
      this.#copied = 0;
      this.#readMacs(v, offset);
    } else {
      // Addresses split over buffers (unusual): gather them.
      const n = length < MACS ? length : MACS;
      this.buffer.fill(0, 0, MACS);
      copyFromViewList(this.buffer, 0, views, offset, n);
      this.#copied = n;
      this.#readMacs(this.buffer, 0);
    }
    this.needsCsum = false;
    this.csumStart = 0;
    this.csumOffset = 0;
  }

  /**
   * {@link attach} for the usual layout, reading the addresses as three words: the frame is `length` bytes of
   * `region.buffer` from word `word` of `region.u32` on (the caller checked the range lies in the region, and
   * that the host is little-endian: {@link LITTLE_ENDIAN}). No view is made unless a receiver needs one.
   * Receivers can take the frame through {@link copyToWords}.
   */
  attachWords(region: MemoryRegion, word: number, length: number): void {
    if (length > this.#capacity) throw new RangeError(`frame of ${length} bytes over ${this.buffer.length}`);
    // A byte offset as a number (word * 4 is exact; `<< 2` would wrap past 4 GiB).
    const at = word * 4;
    if (length < 14) {
      // Shorter than an Ethernet header: not worth a word path (copyToWords writes 12 bytes of addresses).
      this.#one[0] = this.#viewCache.get(region, at, length);
      this.attach(this.#one, 0, length);
      return;
    }
    const words = region.u32!;
    this.length = length;
    this.#src = NO_VIEWS;
    this.#srcOffset = 0;
    this.#srcBase = -1;
    this.#copied = 0;
    this.#srcU32 = words;
    this.#srcWord = word;
    this.#srcRegion = region;
    this.#srcAt = at;
    // `| 0`: int32s (a field holding a uint32 above 2^31 would become a boxed number).
    const m1 = words[word + 1]!;
    this.dstHi = words[word]! | 0;
    this.dstLo = m1 & 0xffff;
    this.srcHi = m1 >>> 16;
    this.srcLo = words[word + 2]! | 0;
    this.needsCsum = false;
    this.csumStart = 0;
    this.csumOffset = 0;
  }

  /** The sender's views holding the frame from #srcOffset on, made now for a frame attached by region. */
  #source(): readonly Uint8Array[] {
    const r = this.#srcRegion;
    if (r !== null && this.#src === NO_VIEWS) {
      this.#one[0] = this.#viewCache.get(r, this.#srcAt, this.length);
      this.#src = this.#one;
    }
    return this.#src;
  }

  #readMacs(b: Uint8Array, at: number): void {
    this.dstHi = b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24);
    this.dstLo = b[at + 4]! | (b[at + 5]! << 8);
    this.srcHi = b[at + 6]! | (b[at + 7]! << 8);
    this.srcLo = b[at + 8]! | (b[at + 9]! << 8) | (b[at + 10]! << 16) | (b[at + 11]! << 24);
  }

  /** Write the addresses decided on at `dst[at..at+12)`. */
  #writeMacs(dst: Uint8Array, at: number): void {
    const dh = this.dstHi;
    const dl = this.dstLo;
    const sh = this.srcHi;
    const sl = this.srcLo;
    dst[at] = dh;
    dst[at + 1] = dh >>> 8;
    dst[at + 2] = dh >>> 16;
    dst[at + 3] = dh >>> 24;
    dst[at + 4] = dl;
    dst[at + 5] = dl >>> 8;
    dst[at + 6] = sh;
    dst[at + 7] = sh >>> 8;
    dst[at + 8] = sl;
    dst[at + 9] = sl >>> 8;
    dst[at + 10] = sl >>> 16;
    dst[at + 11] = sl >>> 24;
  }

  /** The destination address as a MAC key (see `macKeyAt`). */
  get dstKey(): number {
    const h = this.dstHi;
    const l = this.dstLo;
    return ((h & 0xff) * 0x100 + ((h >>> 8) & 0xff)) * 0x1_0000_0000 +
      ((((h >>> 16) & 0xff) << 24 | (h >>> 24) << 16 | (l & 0xff) << 8 | l >>> 8) >>> 0);
  }

  /** The source address as a MAC key. */
  get srcKey(): number {
    const h = this.srcHi;
    const l = this.srcLo;
    return ((h & 0xff) * 0x100 + (h >>> 8)) * 0x1_0000_0000 +
      (((l & 0xff) << 24 | ((l >>> 8) & 0xff) << 16 | ((l >>> 16) & 0xff) << 8 | l >>> 24) >>> 0);
  }

  /** Is the destination a multicast (or broadcast) address? */
  get multicast(): boolean {
    return (this.dstHi & 1) !== 0;
  }

  /** Forget the sender's views (before its buffers go back to the guest). */
  release(): void {
    this.#src = NO_VIEWS;
    this.#srcU32 = null;
    this.#srcRegion = null;
    this.#srcWords = NO_WORDS;
    this.#srcBase = -1;
  }

  /** Bytes of the frame already in {@link buffer}. */
  get headLength(): number {
    return this.#copied;
  }

  /** Make sure the first `n` bytes (or the whole frame, if shorter) are in {@link buffer}. */
  pull(n: number): void {
    const want = n < this.length ? n : this.length;
    let c = this.#copied;
    if (want <= c) return;
    if (c < MACS) {
      // The addresses as decided on, whatever the sender's buffer says now.
      this.#writeMacs(this.buffer, 0);
      c = this.#copied = MACS < this.length ? MACS : this.length;
      if (want <= c) return;
    }
    this.#copyFromSource(this.buffer, c, this.#words, 0, c, want - c);
    this.#copied = want;
    if (want === this.length) {
      this.#src = NO_VIEWS;
      this.#srcU32 = null;
      this.#srcRegion = null;
    }
  }

  /** Copy the whole frame into {@link buffer} (from then on it is self-contained). */
  materialize(): void {
    this.pull(this.length);
  }

  /** The frame bytes, in {@link buffer} (materialized; a view made on demand). */
  get frame(): Uint8Array {
    this.materialize();
    if (this.#view.length !== this.length) this.#view = this.buffer.subarray(0, this.length);
    return this.#view;
  }

  /**
   * Copy frame bytes `[from, from + n)` to `dst[dstOff..]`: what is in {@link buffer} from there, the rest
   * straight from the sender's views. The caller keeps the range inside the frame and `dst`.
   */
  copyTo(dst: Uint8Array, dstOff: number, from: number, n: number): void {
    if (from < MACS && this.#copied < MACS) this.pull(MACS);
    const c = this.#copied;
    let at = from;
    let left = n;
    let to = dstOff;
    let dw: Int32Array = NO_WORDS;
    let dBase = -1;
    if (at < c) {
      const m = c - at < left ? c - at : left;
      if (m < WORD_COPY_MIN) {
        copyByteLoop(dst, to, this.buffer, at, m);
      } else {
        dBase = dst.byteOffset;
        dw = wordsOfView(dst, dBase);
        copyWords(dst, to, dw, dBase, this.buffer, at, this.#words, 0, m);
      }
      at += m;
      left -= m;
      to += m;
    }
    if (left === 0) return;
    if (left >= WORD_COPY_MIN && dBase < 0) {
      dBase = dst.byteOffset;
      dw = wordsOfView(dst, dBase);
    }
    this.#copyFromSource(dst, to, dw, dBase, at, left);
  }

  /**
   * Write the whole frame to `dst` at `dstOff` with one native copy of the sender's buffer, when the frame is
   * still there in one piece and `dst` has room for it and for the sender's virtio-net header in front (the
   * `dstOff` bytes before the frame are overwritten: the caller writes its own header after this). Returns false,
   * having written nothing, when that does not apply (then use {@link copyTo}).
   */
  /**
   * Write the whole frame into a receiver's buffer: at word `dWord` of `dw`, a word view of the buffer `dsts[0]`
   * lies in, where `dsts[0][dstOff]` is that word's first byte and `dsts[0]` has room for the frame from there. Works when the
   * frame was attached with {@link attachWords} and is still in the sender's buffer: a short frame (up to
   * {@link WORD_FRAME_MAX}) is copied by words, a longer one with one native copy of the sender's buffer (which
   * overwrites the `dstOff` bytes in front of the frame when the sender's buffer has a header there). The
   * addresses are the ones decisions were made on. Returns false, having written nothing, otherwise.
   */
  copyToWords(dw: Uint32Array, dWord: number, dsts: readonly Uint8Array[], dstOff: number): boolean {
    const sw = this.#srcU32;
    if (sw === null) return false;
    const len = this.length;
    // WORD_FRAME_MAX (a literal: an imported or module constant is a cell load and a check per use).
    if (len > 256) {
      const v = this.#source()[0]!;
      const lead = this.#srcOffset;
      if (lead > dstOff || lead + len !== v.length) return false;
      dsts[0]!.set(v, dstOff - lead);
    } else {
      // From the word after the addresses to the last whole word of the frame, then the last 0-3 bytes. Indices
      // stay far below 2^31 (`| 0` spares the overflow checks). Loads are grouped before stores: after a
      // typed-array store TurboFan checks the arrays (map, length, data pointer) again for the next load.
      let k = (this.#srcWord + 3) | 0;
      let d = (dWord + 3) | 0;
      const stop = (this.#srcWord + (len >>> 2)) | 0;
      for (; ((k + 4) | 0) <= stop; k = (k + 4) | 0, d = (d + 4) | 0) {
        const a = sw[k]!;
        const b = sw[(k + 1) | 0]!;
        const c = sw[(k + 2) | 0]!;
        const e = sw[(k + 3) | 0]!;
        dw[d] = a;
        dw[(d + 1) | 0] = b;
        dw[(d + 2) | 0] = c;
        dw[(d + 3) | 0] = e;
      }
      if (((k + 2) | 0) <= stop) {
        const a = sw[k]!;
        const b = sw[(k + 1) | 0]!;
        dw[d] = a;
        dw[(d + 1) | 0] = b;
        k = (k + 2) | 0;
        d = (d + 2) | 0;
      }
      if (k < stop) dw[d] = sw[k]!;
      if ((len & 3) !== 0) {
        // The last bytes from the region's own byte view (only attachWords sets #srcU32, and with it #srcRegion).
        const dst = dsts[0]!;
        const r = this.#srcRegion!;
        const v = r.bytes;
        const at = this.#srcAt - r.mmapOffset;
        for (let i = len & ~3; i < len; i++) dst[dstOff + i] = v[at + i]!;
      }
    }
    dw[dWord] = this.dstHi;
    dw[dWord + 1] = this.dstLo | (this.srcHi << 16);
    dw[dWord + 2] = this.srcLo;
    return true;
  }

  copyWhole(dst: Uint8Array, dstOff: number): boolean {
    const src = this.#source();
    const lead = this.#srcOffset;
    if (src.length !== 1 || dstOff < lead || this.length < MACS) return false;
    const v = src[0]!;
    const at = dstOff - lead;
    if (at + v.length > dst.length || lead + this.length !== v.length) return false;
    // TypedArray.set between whole views is a memmove in V8: no sub-view to allocate, no per-element work.
    dst.set(v, at);
    // The addresses decisions were made on, not what the sender may have written there since.
    this.#writeMacs(dst, dstOff);
    return true;
  }

  /**
   * Frame bytes `[from, from + n)`, all past #copied, from the sender's views to `dst[dstOff..]` (whose word view
   * and byte offset the caller looked up when `n` is large enough to copy by words).
   */
  #copyFromSource(dst: Uint8Array, dstOff: number, dw: Int32Array, dBase: number, from: number, n: number): void {
    const src = this.#source();
    const off = this.#srcOffset + from;
    const v = src[0]!;
    if (src.length !== 1 && off + n > v.length) {
      copyFromViewList(dst, dstOff, src, off, n);
      return;
    }
    if (n < WORD_COPY_MIN) {
      copyByteLoop(dst, dstOff, v, off, n);
      return;
    }
    if (this.#srcBase < 0) {
      this.#srcBase = v.byteOffset;
      this.#srcWords = wordsOfView(v, this.#srcBase);
    }
    copyWords(dst, dstOff, dw, dBase, v, off, this.#srcWords, this.#srcBase, n);
  }

  /**
   * Complete a pending checksum in software (for receivers that cannot take a partial one). Returns true when
   * one was computed.
   */
  completeChecksum(): boolean {
    if (!this.needsCsum) return false;
    this.needsCsum = false;
    this.materialize();
    return completeChecksum(this.buffer, this.length, this.csumStart, this.csumOffset);
  }
}
