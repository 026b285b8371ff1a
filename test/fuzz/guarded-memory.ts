/**
 * Guest memory for fuzzing: regions carved out of one SharedArrayBuffer with guard bytes around each one, filled
 * with a canary pattern. Code under test gets a {@link GuestMemory} over the regions; afterwards the guards must
 * be untouched ({@link GuardedMemory.firstDamagedGuard}) and every view it handed out must lie inside a region
 * ({@link GuardedMemory.contains}). Translation here is written independently of src/memory, so the fuzz
 * targets can compute what the code under test should have returned.
 */
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../src/memory/region.js';
import type { Rng } from './rng.js';

/** One region: where it is in guest-physical and frontend-virtual space, and where its bytes are in the buffer. */
export interface GuardedRegion {
  readonly gpa: number;
  readonly size: number;
  readonly va: number;
  /** Offset of the region's first byte in {@link GuardedMemory.sab} (its mmapOffset). */
  readonly offset: number;
}

/** A piece of a guest-physical range inside one region. */
export interface Piece {
  /** Offset in {@link GuardedMemory.sab}. */
  offset: number;
  length: number;
}

/** Shape of a random layout. */
export interface LayoutOptions {
  minRegions?: number;
  maxRegions?: number;
  /** Region sizes to choose from (a few odd sizes are mixed in unless `alignedOnly`). */
  sizes?: readonly number[];
  /** Every region offset, GPA and size a multiple of 16 (rings need alignment). */
  alignedOnly?: boolean;
  /** Probability that a region starts right where the previous one ends in GPA space. */
  adjacent?: number;
}

/** The canary byte at buffer offset `o`: position-dependent, so a shifted copy or a zero fill both show. */
export function canaryByte(o: number): number {
  return ((o * 131 + 17) ^ (o >>> 8) ^ 0xa5) & 0xff;
}

/** Regions in one buffer, with canary guards between and around them. */
export class GuardedMemory {
  readonly sab: SharedArrayBuffer;
  readonly bytes: Uint8Array;
  /** Sorted by GPA. */
  readonly regions: readonly GuardedRegion[];
  /** The regions as the code under test sees them. */
  readonly memory: GuestMemory;
  readonly #guards: readonly Piece[];

  constructor(totalSize: number, regions: readonly GuardedRegion[]) {
    this.sab = new SharedArrayBuffer(totalSize);
    this.bytes = new Uint8Array(this.sab);
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    const byOffset = [...regions].sort((a, b) => a.offset - b.offset);
    const guards: Piece[] = [];
    let at = 0;
    for (const r of byOffset) {
      if (r.offset < at) throw new RangeError('guarded regions overlap in the buffer');
      guards.push({ offset: at, length: r.offset - at });
      at = r.offset + r.size;
    }
    if (at > totalSize) throw new RangeError('guarded regions exceed the buffer');
    guards.push({ offset: at, length: totalSize - at });
    this.#guards = guards.filter((g) => g.length > 0);
    for (const g of this.#guards) for (let o = g.offset; o < g.offset + g.length; o++) this.bytes[o] = canaryByte(o);
    this.memory = new GuestMemory({ maxRegions: Math.max(1, regions.length) });
    for (const r of this.regions) {
      this.memory.add(MemoryRegion.fromBuffer({ guestPhysAddr: r.gpa, size: r.size, userAddr: r.va, mmapOffset: r.offset },
        this.sab));
    }
  }

  /** A random layout: 1-4 regions, guards of 16..512 bytes, GPAs adjacent or apart, VAs in another order. */
  static random(rng: Rng, options: LayoutOptions = {}): GuardedMemory {
    const count = rng.range(options.minRegions ?? 1, options.maxRegions ?? 4);
    const sizes = options.sizes ?? [256, 1024, 4096, 8192, 16384, 65536];
    const aligned = options.alignedOnly ?? false;
    const regions: GuardedRegion[] = [];
    let offset = 0;
    let gpa = rng.weighted<number>([[4, 0], [2, 0x1000 * rng.range(1, 0x10000)], [1, 2 ** 40], [1, 2 ** 53 - 2 ** 20]]);
    const vaSlots = Array.from({ length: count }, (_, i) => i);
    for (let i = vaSlots.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [vaSlots[i], vaSlots[j]] = [vaSlots[j]!, vaSlots[i]!];
    }
    for (let i = 0; i < count; i++) {
      let size = rng.pick(sizes);
      if (!aligned && rng.chance(0.15)) size += rng.range(1, 15);
      offset += aligned ? 16 * rng.range(1, 32) : rng.range(16, 512);
      if (aligned || rng.chance(0.8)) offset = Math.ceil(offset / 16) * 16;
      const va = 0x7f00_0000_0000 + vaSlots[i]! * 2 ** 32 + (aligned ? 0 : 16 * rng.int(256));
      if (gpa + size > 2 ** 53) break;
      regions.push({ gpa, size, va, offset });
      offset += size;
      const gap = rng.chance(options.adjacent ?? 0.5) ? 0 : 16 * rng.range(1, 4096);
      gpa += size + gap;
      if (aligned) gpa = Math.ceil(gpa / 16) * 16;
    }
    offset += rng.range(16, 512);
    return new GuardedMemory(offset, regions);
  }

  /** Fresh MemoryRegion objects over the same bytes (for another GuestMemory, e.g. a DeviceBackend's). */
  memoryRegions(): MemoryRegion[] {
    return this.regions.map((r) => MemoryRegion.fromBuffer(
      { guestPhysAddr: r.gpa, size: r.size, userAddr: r.va, mmapOffset: r.offset }, this.sab));
  }

  /** Offset of the first guard byte that is no longer the canary, or -1. */
  firstDamagedGuard(): number {
    for (const g of this.#guards) {
      for (let o = g.offset; o < g.offset + g.length; o++) if (this.bytes[o] !== canaryByte(o)) return o;
    }
    return -1;
  }

  /** Does this view lie entirely inside one region of this memory? */
  contains(view: Uint8Array): boolean {
    if (view.buffer !== this.sab) return false;
    const start = view.byteOffset;
    const end = start + view.byteLength;
    return this.regions.some((r) => start >= r.offset && end <= r.offset + r.size);
  }

  /** The region holding guest-physical `gpa`, if any. */
  regionAt(gpa: bigint | number): GuardedRegion | undefined {
    const a = BigInt(gpa);
    return this.regions.find((r) => a >= BigInt(r.gpa) && a < BigInt(r.gpa + r.size));
  }

  /**
   * `[gpa, gpa + length)` as pieces, one per region crossed (regions must be adjacent in GPA space), or null if
   * part of the range is not backed. Length 0 gives no pieces.
   */
  pieces(gpa: bigint | number, length: number): Piece[] | null {
    const out: Piece[] = [];
    let a = BigInt(gpa);
    let left = length;
    while (left > 0) {
      const r = this.regionAt(a);
      if (r === undefined) return null;
      const n = Math.min(left, r.gpa + r.size - Number(a));
      out.push({ offset: r.offset + Number(a - BigInt(r.gpa)), length: n });
      a += BigInt(n);
      left -= n;
    }
    return out;
  }

  /** Offset in the buffer of `[gpa, gpa + length)` when it lies in one region, else undefined. */
  offsetOf(gpa: number, length: number): number | undefined {
    const r = this.regionAt(gpa);
    if (r === undefined || gpa + length > r.gpa + r.size) return undefined;
    return r.offset + (gpa - r.gpa);
  }

  /** The frontend-virtual address of a guest-physical one (which must be backed). */
  vaOf(gpa: number): number {
    const r = this.regionAt(gpa);
    if (r === undefined) throw new RangeError(`gpa 0x${gpa.toString(16)} is not backed`);
    return r.va + (gpa - r.gpa);
  }

  /** Write bytes at a guest-physical address (the range must be backed). */
  write(gpa: number, data: Uint8Array): void {
    const pieces = this.pieces(gpa, data.length);
    if (pieces === null) throw new RangeError(`gpa 0x${gpa.toString(16)}+${data.length} is not backed`);
    let at = 0;
    for (const p of pieces) {
      this.bytes.set(data.subarray(at, at + p.length), p.offset);
      at += p.length;
    }
  }

  /** A copy of `[gpa, gpa + length)` (must be backed). */
  read(gpa: number, length: number): Uint8Array {
    const pieces = this.pieces(gpa, length);
    if (pieces === null) throw new RangeError(`gpa 0x${gpa.toString(16)}+${length} is not backed`);
    const out = new Uint8Array(length);
    let at = 0;
    for (const p of pieces) {
      out.set(this.bytes.subarray(p.offset, p.offset + p.length), at);
      at += p.length;
    }
    return out;
  }
}

/**
 * Hands out guest-physical ranges for rings and buffers, in bump order within each region, never overlapping
 * (so a generator knows that what it wrote stays as written).
 */
export class GuestAllocator {
  readonly #mem: GuardedMemory;
  readonly #next: number[];

  constructor(mem: GuardedMemory) {
    this.#mem = mem;
    this.#next = mem.regions.map((r) => r.gpa);
  }

  /** `length` bytes aligned to `align` in some region with room (a random one), or undefined when full. */
  alloc(rng: Rng, length: number, align = 1): number | undefined {
    const order = this.#mem.regions.map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const i of order) {
      const r = this.#mem.regions[i]!;
      const start = Math.ceil(this.#next[i]! / align) * align;
      if (start + length <= r.gpa + r.size) {
        this.#next[i] = start + length;
        return start;
      }
    }
    return undefined;
  }

  /** The allocation state, to go back to with {@link rewind} (everything allocated after it becomes free). */
  checkpoint(): readonly number[] {
    return [...this.#next];
  }

  rewind(checkpoint: readonly number[]): void {
    checkpoint.forEach((v, i) => (this.#next[i] = v));
  }

  /** Bytes left in the roomiest region. */
  largestFree(): number {
    return Math.max(0, ...this.#mem.regions.map((r, i) => r.gpa + r.size - this.#next[i]!));
  }
}
