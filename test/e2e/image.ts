/**
 * Host-side helpers for the end-to-end disk tests: reproducible test data, checksums, comparing an image file
 * with what it should hold, and reading the `TAG key value` lines the guest scripts print.
 */
import { createCipheriv, createHash } from 'node:crypto';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/**
 * `length` pseudo-random bytes determined by `label` (AES-256-CTR keystream keyed by its hash). Reproducible, so
 * the per-test initramfs that carries the data is the same from run to run and stays cached.
 */
export function testData(label: string, length: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()]);
}

/** Hex SHA-256, as busybox `sha256sum` prints it. */
export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Null if `actual` equals `expected`; otherwise a description of the first differing 4 KiB blocks (offset,
 * what was expected there: zeros or data, and what was found), for an assertion message.
 */
export function describeImageDifference(actual: Buffer, expected: Buffer, limit = 8): string | null {
  if (actual.length === expected.length && actual.equals(expected)) return null;
  const lines: string[] = [];
  if (actual.length !== expected.length) lines.push(`image is ${actual.length} bytes, expected ${expected.length}`);
  const block = 4 * KiB;
  const end = Math.min(actual.length, expected.length);
  let differing = 0;
  for (let off = 0; off < end; off += block) {
    const a = actual.subarray(off, Math.min(off + block, end));
    const e = expected.subarray(off, Math.min(off + block, end));
    if (a.equals(e)) continue;
    differing++;
    if (lines.length < limit) {
      let first = 0;
      while (a[first] === e[first]) first++;
      lines.push(
        `block at ${off} (0x${off.toString(16)}): first difference at +${first}; expected ${describe(e)}, found ${describe(a)}`,
      );
    }
  }
  lines.push(`${differing} differing 4 KiB block(s)`);
  return lines.join('\n');
}

function describe(b: Buffer): string {
  return b.every((x) => x === 0) ? 'zeros' : `data ${b.subarray(0, 16).toString('hex')}...`;
}

/** The `TAG key rest-of-line` lines in guest console output, as a map key -> rest (the last one wins). */
export function taggedLines(output: string, tag: string): Map<string, string> {
  const map = new Map<string, string>();
  const re = new RegExp(`^${tag} (\\S+) ?(.*)$`, 'gm');
  for (const m of output.matchAll(re)) map.set(m[1]!, m[2]!);
  return map;
}
