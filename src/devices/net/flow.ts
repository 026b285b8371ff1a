/**
 * A cheap flow hash to spread received frames over queue pairs (multiqueue without RSS): frames of one TCP/UDP
 * flow always land on the same queue, so they stay in order.
 */

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const PROTO_TCP = 6;
const PROTO_UDP = 17;

function mix(h: number, v: number): number {
  return Math.imul(h ^ v, 0x9e3779b1) >>> 0;
}

function wordsAt(b: Uint8Array, start: number, end: number, h: number): number {
  let x = h;
  for (let i = start; i + 3 < end; i += 4) x = mix(x, (b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!);
  return x;
}

/**
 * Hash of a frame's flow: IP addresses plus TCP/UDP ports for IPv4 and IPv6 (without extension headers), else the
 * MAC addresses. `length` bounds every read.
 */
export function flowHash(b: Uint8Array, length: number): number {
  if (length < 14) return 0;
  const type = (b[12]! << 8) | b[13]!;
  if (type === ETHERTYPE_IPV4 && length >= 34) {
    let h = wordsAt(b, 26, 34, 0);
    const ihl = (b[14]! & 0x0f) * 4;
    const proto = b[23]!;
    const l4 = 14 + ihl;
    const fragment = ((b[20]! & 0x3f) | b[21]!) !== 0;
    if ((proto === PROTO_TCP || proto === PROTO_UDP) && !fragment && ihl >= 20 && l4 + 4 <= length) h = wordsAt(b, l4, l4 + 4, h);
    return h;
  }
  if (type === ETHERTYPE_IPV6 && length >= 54) {
    let h = wordsAt(b, 22, 54, 0);
    const next = b[20]!;
    if ((next === PROTO_TCP || next === PROTO_UDP) && length >= 58) h = wordsAt(b, 54, 58, h);
    return h;
  }
  return wordsAt(b, 0, 12, 0);
}
