/**
 * Byte copies between guest memory and our buffers, tuned for frames, allocating nothing.
 *
 * Costs on Node 20 (V8 11.3, measured as instructions under callgrind) shape this: a typed-array element access
 * costs 6-25 instructions whether it moves a byte or a 32-bit word, so long copies go through word views of the
 * whole buffers (four times fewer accesses). A view's `byteOffset` is inlined, but its `buffer` is a call into
 * the engine (~140 instructions), so the word view of a view's buffer is looked up by the view itself
 * ({@link wordsOfView}: guest views are reused objects). `TypedArray.set` is a native memmove (a 1.5 KB frame for
 * a tenth of the instructions of a word loop), but costs ~300 instructions before the first byte and copies only
 * whole views (a range needs a sub-view, an allocation per copy); `Packet.copyWhole` uses it for large frames.
 *
 * Byte offsets may exceed 2^32 (guest regions above 4 GiB): word indices are computed in doubles, never with
 * `>>>`, and a word view holds at most 2^32 words, so a copy its views do not cover is done byte by byte.
 */

/** Longest typed array V8 makes (elements). */
const MAX_WORDS = 2 ** 32;

/** Word views of the buffers seen last (guest regions, packet buffers): a handful, reused across frames. */
const cache: { buffer: ArrayBufferLike | undefined; words: Int32Array }[] = Array.from({ length: 6 },
  () => ({ buffer: undefined, words: new Int32Array(0) }));
let victim = 0;

/** A word view of `buffer` from its start, as many whole words as it has (at most 2^32; cached). */
export function wordsOf(buffer: ArrayBufferLike): Int32Array {
  for (let i = 0; i < cache.length; i++) {
    const e = cache[i]!;
    if (e.buffer === buffer) return e.words;
  }
  const e = cache[victim]!;
  victim = (victim + 1) % cache.length;
  e.buffer = buffer;
  e.words = new Int32Array(buffer, 0, Math.min(Math.floor(buffer.byteLength / 4), MAX_WORDS));
  return e.words;
}

/** Slots of the view cache of {@link wordsOfView} (a power of two: two rings of 1024 buffers and then some). */
const VIEW_SLOTS_LOG2 = 12;
const NO_VIEW = new Uint8Array(0);
const NO_WORDS = new Int32Array(0);
/** Direct-mapped by a hash of the view's byte offset: the view, and the word view of its buffer. */
const viewKey: Uint8Array[] = [];
const viewWords: Int32Array[] = [];
for (let i = 0; i < 1 << VIEW_SLOTS_LOG2; i++) {
  viewKey.push(NO_VIEW);
  viewWords.push(NO_WORDS);
}

/**
 * {@link wordsOf}(`view.buffer`), where `byteOffset` is `view.byteOffset` (the caller has it). Remembered per view
 * object, so a view seen before costs a few loads instead of the `buffer` getter: the descriptor walker hands the
 * same view objects for the same guest buffers again. A view's buffer never changes, so an entry is never wrong;
 * it only keeps the view (and its mapping) referenced until replaced or {@link forgetViews}.
 */
export function wordsOfView(view: Uint8Array, byteOffset: number): Int32Array {
  const k = Math.imul((byteOffset ^ view.length) | 0, 0x9e3779b1) >>> (32 - VIEW_SLOTS_LOG2);
  if (viewKey[k] === view) return viewWords[k]!;
  const words = wordsOf(view.buffer);
  viewKey[k] = view;
  viewWords[k] = words;
  return words;
}

/** Drop every view {@link wordsOfView} remembers (a device reset: let old mappings go). */
export function forgetViews(): void {
  viewKey.fill(NO_VIEW);
  viewWords.fill(NO_WORDS);
}

/** The word index of byte address `byte` (a multiple of 4 or not: rounded down), also beyond 2^32. */
export function wordIndex(byte: number): number {
  return byte <= 0x7fffffff ? byte >> 2 : Math.floor(byte / 4);
}

/** Are words little-endian (x86, Arm as Node runs them)? Shifted word copies and the net word paths assume so. */
export const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** Below this many bytes a byte loop is cheaper than looking up word views. */
export const WORD_COPY_MIN = 48;

/** `dst[dstOff, +n) = src[srcOff, +n)`, a byte at a time. */
export function copyByteLoop(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/**
 * Copy `n` bytes from `src[srcOff..]` to `dst[dstOff..]` where the caller also gives each side's buffer as words
 * (`dw`, `sw`) and the byte address of `dst[0]` / `src[0]` in its buffer (`dBase`, `sBase`: the views'
 * `byteOffset`). The caller guarantees both ranges lie inside the views.
 */
export function copyWords(dst: Uint8Array, dstOff: number, dw: Int32Array, dBase: number,
  src: Uint8Array, srcOff: number, sw: Int32Array, sBase: number, n: number): void {
  if (n < 8) {
    copyByteLoop(dst, dstOff, src, srcOff, n);
    return;
  }
  const d = dBase + dstOff;
  // Destination word-aligned first.
  const head = (4 - (d & 3)) & 3;
  const dWord = wordIndex(d + head);
  const sByte = sBase + srcOff + head;
  const shift = (sByte & 3) << 3;
  let words = (n - head) >>> 2;
  const sWord = wordIndex(sByte);
  if (dWord + words > dw.length || sWord + words > sw.length) {
    // Beyond what the word views cover (regions over 16 GiB).
    copyByteLoop(dst, dstOff, src, srcOff, n);
    return;
  }
  for (let i = 0; i < head; i++) dst[dstOff + i] = src[srcOff + i]!;
  if (shift === 0) {
    // Unrolled: V8 re-checks a typed array's map in every iteration, but only once per straight run.
    let k = 0;
    for (; k + 8 <= words; k += 8) {
      const d8 = dWord + k;
      const s8 = sWord + k;
      dw[d8] = sw[s8]!;
      dw[d8 + 1] = sw[s8 + 1]!;
      dw[d8 + 2] = sw[s8 + 2]!;
      dw[d8 + 3] = sw[s8 + 3]!;
      dw[d8 + 4] = sw[s8 + 4]!;
      dw[d8 + 5] = sw[s8 + 5]!;
      dw[d8 + 6] = sw[s8 + 6]!;
      dw[d8 + 7] = sw[s8 + 7]!;
    }
    for (; k < words; k++) dw[dWord + k] = sw[sWord + k]!;
  } else if (LITTLE_ENDIAN) {
    // Each destination word takes the top bytes of one source word and the bottom bytes of the next; the last
    // one read lies inside the source buffer's word view (the byte loop below does the rest).
    if (sWord + words >= sw.length) words = Math.max(0, sw.length - sWord - 1);
    const back = 32 - shift;
    let lo = words > 0 ? sw[sWord]! : 0;
    for (let k = 0; k < words; k++) {
      const hi = sw[sWord + k + 1]!;
      dw[dWord + k] = (lo >>> shift) | (hi << back);
      lo = hi;
    }
  } else {
    words = 0;
  }
  for (let i = head + (words << 2); i < n; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/**
 * Copy `n` bytes from `src[srcOff..]` to `dst[dstOff..]`. The caller guarantees both ranges lie inside the views
 * (and so inside their buffers). Allocates nothing (once the buffers' word views are cached).
 */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  if (n < WORD_COPY_MIN) {
    copyByteLoop(dst, dstOff, src, srcOff, n);
    return;
  }
  const dBase = dst.byteOffset;
  const sBase = src.byteOffset;
  copyWords(dst, dstOff, wordsOfView(dst, dBase), dBase, src, srcOff, wordsOfView(src, sBase), sBase, n);
}

/**
 * Copy `n` bytes starting `from` bytes into the list of views `src` to `dst[dstOff..]`. Returns the bytes copied
 * (short when the views end first). Allocates nothing.
 */
export function copyFromViewList(dst: Uint8Array, dstOff: number, src: readonly Uint8Array[], from: number, n: number): number {
  let skip = from;
  let done = 0;
  for (let i = 0; i < src.length && done < n; i++) {
    const v = src[i]!;
    const len = v.length;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const m = Math.min(len - skip, n - done);
    copyBytes(dst, dstOff + done, v, skip, m);
    done += m;
    skip = 0;
  }
  return done;
}

/**
 * Copy `src[srcOff, srcOff + n)` into the list of views `dst`, starting `at` bytes into it. Returns the bytes
 * copied (short when the views end first). Allocates nothing.
 */
export function copyToViewList(dst: readonly Uint8Array[], at: number, src: Uint8Array, srcOff: number, n: number): number {
  let skip = at;
  let done = 0;
  for (let i = 0; i < dst.length && done < n; i++) {
    const v = dst[i]!;
    const len = v.length;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const m = Math.min(len - skip, n - done);
    copyBytes(v, skip, src, srcOff + done, m);
    done += m;
    skip = 0;
  }
  return done;
}
