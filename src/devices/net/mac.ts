/**
 * Ethernet MAC addresses: parsing, formatting, generation, and a numeric key (48 bits fit a double exactly) so
 * the switch can look addresses up without allocating.
 */
import { randomBytes } from 'node:crypto';

/** Bytes in a MAC address. */
export const MAC_LENGTH = 6;

/** The numeric key of the address at `bytes[at..at+6)`. */
export function macKeyAt(bytes: Uint8Array, at: number): number {
  return (bytes[at]! * 0x100 + bytes[at + 1]!) * 0x1_0000_0000 +
    ((bytes[at + 2]! << 24) >>> 0) + (bytes[at + 3]! << 16) + (bytes[at + 4]! << 8) + bytes[at + 5]!;
}

/** The key of the broadcast address ff:ff:ff:ff:ff:ff. */
export const BROADCAST_KEY = 0xffff_ffff_ffff;

/** Is the address at `bytes[at]` multicast (broadcast included)? */
export function isMulticastAt(bytes: Uint8Array, at: number): boolean {
  return (bytes[at]! & 1) === 1;
}

/** Parse `aa:bb:cc:dd:ee:ff` (or with `-`). */
export function parseMac(text: string): Uint8Array {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i
    .exec(text.trim());
  if (!m) throw new RangeError(`'${text}' is not a MAC address (aa:bb:cc:dd:ee:ff)`);
  return Uint8Array.from(m.slice(1, 7), (h) => parseInt(h, 16));
}

/** Format six bytes as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(bytes: Uint8Array, at = 0): string {
  const parts: string[] = [];
  for (let i = 0; i < MAC_LENGTH; i++) parts.push(bytes[at + i]!.toString(16).padStart(2, '0'));
  return parts.join(':');
}

/** Format a numeric key as `aa:bb:cc:dd:ee:ff`. */
export function formatMacKey(key: number): string {
  return formatMac(macFromKey(key));
}

/** The six bytes of a numeric key. */
export function macFromKey(key: number): Uint8Array {
  const out = new Uint8Array(MAC_LENGTH);
  let k = key;
  for (let i = MAC_LENGTH - 1; i >= 0; i--) {
    out[i] = k % 256;
    k = Math.floor(k / 256);
  }
  return out;
}

/** A random locally administered unicast address (first octet x2, x6, xA or xE). */
export function generateMac(): Uint8Array {
  const bytes = randomBytes(MAC_LENGTH);
  bytes[0] = (bytes[0]! & 0xfc) | 0x02;
  return new Uint8Array(bytes);
}
