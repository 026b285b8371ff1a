/**
 * Byte copies between guest memory and our buffers, tuned for frames. `TypedArray.set` on shared memory is a
 * relaxed byte-wise copy in V8, and a byte loop costs a bounds check per byte; copying 32-bit words through a
 * cached word view of the whole buffer is several times faster when source and destination share alignment.
 */

/** Word views of the buffers seen last (guest regions, packet buffers): a handful, reused across frames. */
const cache: { buffer: ArrayBufferLike | undefined; words: Int32Array }[] = Array.from({ length: 4 },
  () => ({ buffer: undefined, words: new Int32Array(0) }));
let victim = 0;

function wordsOf(buffer: ArrayBufferLike): Int32Array {
  for (let i = 0; i < cache.length; i++) {
    const e = cache[i]!;
    if (e.buffer === buffer) return e.words;
  }
  const e = cache[victim]!;
  victim = (victim + 1) % cache.length;
  e.buffer = buffer;
  e.words = new Int32Array(buffer, 0, buffer.byteLength >>> 2);
  return e.words;
}

/** Below this, a plain byte loop wins. */
const MIN_WORDS = 16;

/**
 * Copy `n` bytes from `src[srcOff..]` to `dst[dstOff..]`. The caller guarantees both ranges lie inside the views
 * (and so inside their buffers).
 */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  const s = src.byteOffset + srcOff;
  const d = dst.byteOffset + dstOff;
  if (n >= MIN_WORDS && ((s ^ d) & 3) === 0) {
    let i = 0;
    const head = (4 - (s & 3)) & 3;
    for (; i < head; i++) dst[dstOff + i] = src[srcOff + i]!;
    const sw = wordsOf(src.buffer);
    const dw = wordsOf(dst.buffer);
    const words = (n - head) >>> 2;
    const sBase = (s + head) >>> 2;
    const dBase = (d + head) >>> 2;
    for (let k = 0; k < words; k++) dw[dBase + k] = sw[sBase + k]!;
    i = head + (words << 2);
    for (; i < n; i++) dst[dstOff + i] = src[srcOff + i]!;
    return;
  }
  if (n <= 64) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i]!;
    return;
  }
  dst.set(src.subarray(srcOff, srcOff + n), dstOff);
}
