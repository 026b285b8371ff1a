/**
 * Software completion of a partial checksum (virtio-net NEEDS_CSUM): the sender put the pseudo-header sum in the
 * checksum field and left the rest; the Internet checksum over `csum_start..end` goes at `csum_start +
 * csum_offset`. This covers TCP and UDP over IPv4 and IPv6 without parsing the headers.
 */

/** Ones'-complement sum of `bytes[start..end)` as 16-bit big-endian words (odd tail padded), not folded. */
export function onesSum(bytes: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  let i = start;
  // Partial sums stay far below 2^53 for any frame we handle, so fold once at the end.
  for (; i + 1 < end; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (i < end) sum += bytes[i]! << 8;
  return sum;
}

/** Fold a sum to 16 bits. */
export function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/**
 * Complete the checksum of `frame[0..length)` in place. Returns false (and changes nothing) when the checksum
 * field does not fit in the frame.
 */
export function completeChecksum(frame: Uint8Array, length: number, csumStart: number, csumOffset: number): boolean {
  const field = csumStart + csumOffset;
  if (csumStart >= length || field + 2 > length) return false;
  // A computed 0 goes out as 0xffff, its ones'-complement twin: for UDP 0 would mean "no checksum".
  const csum = (~foldSum(onesSum(frame, csumStart, length)) & 0xffff) || 0xffff;
  frame[field] = csum >>> 8;
  frame[field + 1] = csum & 0xff;
  return true;
}
