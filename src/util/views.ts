/**
 * Scatter/gather helpers over lists of `Uint8Array` views (a transport's buffers, in practice views straight
 * into guest memory), shared by the devices and the SCSI target: data moves as sub-lists of views, without
 * copies; small replies are built in a scratch buffer and copied out.
 *
 * Sizes are read with `.length`, not `.byteLength` (the same for byte views): V8 inlines the former, while the
 * latter is a builtin call about three times as expensive, and these loops run for every request.
 */

/**
 * An empty view list, shared. Not frozen on purpose: a frozen array has another elements kind, and mixing it with
 * ordinary arrays in the same fields makes every access to them polymorphic (slower).
 */
export const NO_BUFFERS: readonly Uint8Array[] = emptyViewList();

/**
 * An empty array whose elements kind is already "objects": an empty literal starts as "small integers", and
 * arrays of two kinds in one field make the code that reads them polymorphic.
 */
export function emptyViewList(): Uint8Array[] {
  const list = [new Uint8Array(0)];
  list.pop();
  return list;
}

/**
 * A view list to be refilled in place, made with room for one view and holding an empty placeholder until its
 * owner fills it: a new list's first store then goes in place, as every later one does. Growing an empty list is
 * not the store the compiled code expects, and a connection's new requests did it once each, dropping the request
 * path's compiled code at every reconnection. The placeholder must never be handed on.
 */
export function refillableViewList(): Uint8Array[] {
  return [new Uint8Array(0)];
}

/** Total bytes of a list of views. */
export function viewsLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < views.length; i++) n += views[i]!.length;
  return n;
}

/**
 * The bytes [start, end) of a list of views, as views: whole views are reused, only the edges are sub-viewed.
 * Returns `views` itself when the range covers all of it.
 */
export function sliceViews(views: readonly Uint8Array[], start: number, end: number, total = -1): readonly Uint8Array[] {
  if (start >= end) return NO_BUFFERS;
  if (start === 0 && end === (total >= 0 ? total : viewsLength(views))) return views;
  return sliceViewsInto(emptyViewList(), views, start, end);
}

/**
 * Like {@link sliceViews}, but into `out` (emptied first), so that a caller can reuse one array per request.
 * Returns `out`.
 */
export function sliceViewsInto(out: Uint8Array[], views: readonly Uint8Array[], start: number, end: number): Uint8Array[] {
  // Written by index and trimmed at the end: emptying the array first would drop its storage every time.
  let n = 0;
  let pos = 0;
  for (let i = 0; i < views.length && pos < end; i++) {
    const v = views[i]!;
    const vs = pos;
    const ve = pos + v.length;
    pos = ve;
    if (ve <= start) continue;
    const a = start > vs ? start - vs : 0;
    const b = end < ve ? end - vs : v.length;
    out[n++] = a === 0 && b === v.length ? v : v.subarray(a, b);
  }
  if (out.length !== n) out.length = n;
  return out;
}

/** Copies up to this many bytes go byte by byte: cheaper than the sub-view a bulk copy would need. */
const SMALL_COPY = 64;

/**
 * Copy `src` into the views starting `offset` bytes in; returns the bytes copied (short when the views end).
 * Allocates nothing when each piece is small or all of `src`. If `src` overlaps a view, the bytes that arrive
 * are unspecified (small pieces are copied forward byte by byte), never anything outside the views.
 */
export function copyToViews(views: readonly Uint8Array[], src: Uint8Array, offset = 0): number {
  let skip = offset;
  let done = 0;
  const total = src.length;
  for (let i = 0; i < views.length && done < total; i++) {
    const v = views[i]!;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, total - done);
    if (n === total) v.set(src, skip);
    else if (n <= SMALL_COPY) for (let k = 0; k < n; k++) v[skip + k] = src[done + k]!;
    else v.set(src.subarray(done, done + n), skip);
    done += n;
    skip = 0;
  }
  return done;
}

/**
 * Copy bytes from the views, starting `offset` bytes in, into `dst`; returns the bytes copied. Allocates nothing
 * when each piece is small or a whole view. As for {@link copyToViews}, `dst` should not overlap the views.
 */
export function copyFromViews(views: readonly Uint8Array[], dst: Uint8Array, offset = 0): number {
  let skip = offset;
  let done = 0;
  const total = dst.length;
  for (let i = 0; i < views.length && done < total; i++) {
    const v = views[i]!;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, total - done);
    if (n === v.length) dst.set(v, done);
    else if (n <= SMALL_COPY) for (let k = 0; k < n; k++) dst[done + k] = v[skip + k]!;
    else dst.set(v.subarray(skip, skip + n), done);
    done += n;
    skip = 0;
  }
  return done;
}

/** Are all bytes zero? */
export function isZero(bytes: Uint8Array): boolean {
  // Eight bytes at a time where alignment allows.
  const n = bytes.length;
  let i = 0;
  if ((bytes.byteOffset & 7) === 0 && n >= 8) {
    const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, n >>> 3);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0n) return false;
    i = words.length << 3;
  }
  for (; i < n; i++) if (bytes[i] !== 0) return false;
  return true;
}
