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
import { copyByteLoop, copyFromViewList, copyWords, WORD_COPY_MIN, wordsOfView } from './copy.js';
import { MAX_FRAME } from './header.js';

/** Bytes of the two MAC addresses at the start of a frame. */
const MACS = 12;

/** Bytes that hold every header a flow hash reads: Ethernet, IPv4 with options or IPv6, and the L4 ports. */
export const HEAD_BYTES = 128;

const NO_VIEWS: readonly Uint8Array[] = [new Uint8Array(0)].slice(1);
const NO_WORDS: Int32Array = new Int32Array(0);

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
  /** Destination MAC, bytes 0-2 as a 24-bit number (`b0 << 16 | b1 << 8 | b2`). */
  dstHi = 0;
  /** Destination MAC, bytes 3-5. */
  dstLo = 0;
  /** Source MAC, bytes 6-8. */
  srcHi = 0;
  /** Source MAC, bytes 9-11. */
  srcLo = 0;
  /** {@link buffer} as words (it starts its own ArrayBuffer). */
  readonly #words: Int32Array;
  #view: Uint8Array;
  /** Frame bytes [0, #copied) are in {@link buffer}; the rest only in #src. */
  #copied = 0;
  /** The sender's views holding the whole frame, from #srcOffset on (while attached). */
  #src: readonly Uint8Array[] = NO_VIEWS;
  #srcOffset = 0;
  /** Word view and byte offset of the sender's first view, looked up once per frame (-1: not yet). */
  #srcWords: Int32Array = NO_WORDS;
  #srcBase = -1;

  constructor(capacity = MAX_FRAME) {
    this.buffer = new Uint8Array(capacity);
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

  #readMacs(b: Uint8Array, at: number): void {
    this.dstHi = (b[at]! << 16) | (b[at + 1]! << 8) | b[at + 2]!;
    this.dstLo = (b[at + 3]! << 16) | (b[at + 4]! << 8) | b[at + 5]!;
    this.srcHi = (b[at + 6]! << 16) | (b[at + 7]! << 8) | b[at + 8]!;
    this.srcLo = (b[at + 9]! << 16) | (b[at + 10]! << 8) | b[at + 11]!;
  }

  /** Write the addresses decided on at `dst[at..at+12)`. */
  #writeMacs(dst: Uint8Array, at: number): void {
    const dh = this.dstHi;
    const dl = this.dstLo;
    const sh = this.srcHi;
    const sl = this.srcLo;
    dst[at] = dh >>> 16;
    dst[at + 1] = dh >>> 8;
    dst[at + 2] = dh;
    dst[at + 3] = dl >>> 16;
    dst[at + 4] = dl >>> 8;
    dst[at + 5] = dl;
    dst[at + 6] = sh >>> 16;
    dst[at + 7] = sh >>> 8;
    dst[at + 8] = sh;
    dst[at + 9] = sl >>> 16;
    dst[at + 10] = sl >>> 8;
    dst[at + 11] = sl;
  }

  /** The destination address as a MAC key (see `macKeyAt`). */
  get dstKey(): number {
    return this.dstHi * 0x100_0000 + this.dstLo;
  }

  /** The source address as a MAC key. */
  get srcKey(): number {
    return this.srcHi * 0x100_0000 + this.srcLo;
  }

  /** Is the destination a multicast (or broadcast) address? */
  get multicast(): boolean {
    return (this.dstHi & 0x10000) !== 0;
  }

  /** Forget the sender's views (before its buffers go back to the guest). */
  release(): void {
    this.#src = NO_VIEWS;
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
    if (want === this.length) this.#src = NO_VIEWS;
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
  copyWhole(dst: Uint8Array, dstOff: number): boolean {
    const src = this.#src;
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
    const src = this.#src;
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
