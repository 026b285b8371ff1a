/**
 * A small deterministic PRNG for the fuzz targets (mulberry32), with the helpers structure-aware generators
 * need: ranges, weighted choices, "interesting" integers (boundaries where off-by-one bugs live) and byte
 * mutations. A case is reproduced from its seed alone: {@link caseSeed} derives it from the run's seed and the
 * case number.
 */

/** Seed of case `index` of a run seeded with `seed` (a splitmix32-style hash, so neighbouring cases differ). */
export function caseSeed(seed: number, index: number): number {
  let z = (Math.imul(seed >>> 0, 0x9e3779b9) + Math.imul(index >>> 0, 0x85ebca6b) + 0x6a09e667) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97) >>> 0;
  return (z ^ (z >>> 15)) >>> 0;
}

/** 32-bit values at the edges of common ranges. */
const INTERESTING_32 = [
  0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 31, 32, 33, 63, 64, 127, 128, 255, 256, 511, 512, 513, 1023, 1024, 4095, 4096,
  4097, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
] as const;

/** 64-bit values at the edges of common ranges (2^53 is where JS numbers stop being exact). */
const INTERESTING_64 = [
  0n, 1n, 0xffffffffn, 0x100000000n, (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, (1n << 63n) - 1n, 1n << 63n,
  (1n << 64n) - 1n, (1n << 64n) - 4096n,
] as const;

/** A seeded generator. Not cryptographic; the same seed always gives the same sequence. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A uniform u32. */
  u32(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** An integer in [0, n) (n <= 2^32). */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor(this.float() * n);
  }

  /** An integer in [lo, hi], inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** One value by weight: `[[weight, value], ...]`. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    let total = 0;
    for (const [w] of choices) total += w;
    let x = this.float() * total;
    for (const [w, v] of choices) {
      if (x < w) return v;
      x -= w;
    }
    return choices[choices.length - 1]![1];
  }

  /** A u64 as a bigint. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  /** A u32 that is often a boundary value, sometimes near one, sometimes anything. */
  interesting32(): number {
    const r = this.int(10);
    if (r < 5) return this.pick(INTERESTING_32);
    if (r < 7) return (this.pick(INTERESTING_32) + this.range(-2, 2)) >>> 0;
    return this.u32();
  }

  /** A u64 that is often a boundary value. */
  interesting64(): bigint {
    const r = this.int(10);
    if (r < 5) return this.pick(INTERESTING_64);
    if (r < 7) return BigInt(this.interesting32());
    return this.u64();
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    this.fill(out);
    return out;
  }

  /** Fill a view with random bytes. */
  fill(view: Uint8Array): void {
    for (let i = 0; i < view.length; i += 4) {
      let x = this.u32();
      for (let k = 0; k < 4 && i + k < view.length; k++, x >>>= 8) view[i + k] = x & 0xff;
    }
  }

  /** A random subset of the set bits of `mask`. */
  subsetOf(mask: bigint): bigint {
    let out = 0n;
    for (let bit = 0n; mask >> bit !== 0n; bit++) if ((mask >> bit) & 1n && this.chance(0.6)) out |= 1n << bit;
    return out;
  }

  /** A new generator seeded from this one (for a sub-task that must not shift this one's sequence). */
  fork(): Rng {
    return new Rng(this.u32());
  }
}

/**
 * A mutated copy of `data`: one to `maxEdits` edits of the kinds that find parser bugs (bit flips, boundary
 * integers written over a field, truncation, extension, byte runs, duplicated slices).
 */
export function mutate(rng: Rng, data: Uint8Array, maxEdits = 3): Uint8Array {
  let out: Uint8Array = data.slice();
  const edits = rng.range(1, maxEdits);
  for (let e = 0; e < edits; e++) {
    const kind = rng.int(8);
    if (out.length === 0 && kind < 5) {
      out = rng.bytes(rng.range(1, 16));
      continue;
    }
    const at = rng.int(out.length);
    switch (kind) {
      case 0:
        out[at] ^= 1 << rng.int(8);
        break;
      case 1:
        out[at] = rng.pick([0, 1, 0x7f, 0x80, 0xff]);
        break;
      case 2: {
        // A boundary u32 over an aligned field.
        const o = at & ~3;
        const v = rng.interesting32();
        for (let k = 0; k < 4 && o + k < out.length; k++) out[o + k] = (v >>> (8 * k)) & 0xff;
        break;
      }
      case 3: {
        const o = at & ~7;
        const v = rng.interesting64();
        for (let k = 0; k < 8 && o + k < out.length; k++) out[o + k] = Number((v >> BigInt(8 * k)) & 0xffn);
        break;
      }
      case 4: {
        const n = rng.range(1, 8);
        const fillByte = rng.pick([0, 0xff, rng.int(256)]);
        for (let k = 0; k < n && at + k < out.length; k++) out[at + k] = fillByte;
        break;
      }
      case 5:
        out = out.slice(0, rng.int(out.length + 1));
        break;
      case 6: {
        const extra = rng.bytes(rng.pick([1, 4, 8, rng.range(1, 64)]));
        const next = new Uint8Array(out.length + extra.length);
        next.set(out);
        next.set(extra, out.length);
        out = next;
        break;
      }
      default: {
        const start = rng.int(out.length + 1);
        const slice = out.slice(start, start + rng.range(1, 16));
        const next = new Uint8Array(out.length + slice.length);
        next.set(out);
        next.set(slice, out.length);
        out = next;
      }
    }
  }
  return out;
}
