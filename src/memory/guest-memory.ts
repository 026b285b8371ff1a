/**
 * The guest memory table: the set of mapped regions, and address translation with every bound checked.
 *
 * Buffer addresses in descriptors are guest-physical (GPA); ring addresses are the frontend's virtual addresses
 * (VA). Translation returns views into the regions' buffers; nothing outside a region is ever reachable.
 */
import { MemoryError, hex } from './errors.js';
import { MemoryRegion } from './region.js';

/** Default limit on the number of regions (what we answer to GET_MAX_MEM_SLOTS). */
export const MAX_MEM_SLOTS = 32;

/** The identifying part of a region, as REM_MEM_REG gives it. */
export interface RegionKey {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
}

/** Options for {@link GuestMemory}. */
export interface GuestMemoryOptions {
  /** Most regions accepted (default {@link MAX_MEM_SLOTS}). */
  maxRegions?: number;
}

function overlaps(aStart: number, aEnd: number, bStart: number, bEnd: number): boolean {
  return aStart < bEnd && bStart < aEnd;
}

function isLength(len: number): boolean {
  return Number.isSafeInteger(len) && len >= 0;
}

function isAddress(addr: number): boolean {
  return Number.isSafeInteger(addr) && addr >= 0;
}

/** The region table of one connection. Not thread-safe: used from the thread that owns the connection. */
export class GuestMemory {
  /** Most regions this table accepts. */
  readonly maxRegions: number;
  #regions: MemoryRegion[] = [];
  #lastGpa: MemoryRegion | undefined;
  /**
   * #lastGpa's guest-physical start and end and (mmap offset - start), as doubles: addresses pass the small
   * integers at 2^30, and a region's own fields, which may hold either, cost a type check and a conversion each.
   * Empty (start > end) when #lastGpa is undefined.
   */
  readonly #lastGpaBounds = Float64Array.of(1, 0, 0);
  #lastVa: MemoryRegion | undefined;
  #generation = 0;

  constructor(options: GuestMemoryOptions = {}) {
    const max = options.maxRegions ?? MAX_MEM_SLOTS;
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`maxRegions must be a positive integer, got ${max}`);
    this.maxRegions = max;
  }

  /** The regions, sorted by guest-physical address. */
  get regions(): readonly MemoryRegion[] {
    return this.#regions;
  }

  /** Bumped on every change of the table, so users of cached views (rings) can tell they must re-translate. */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Add a region.
   * @throws MemoryError if it overlaps an existing region in GPA or VA space, or the table is full.
   */
  add(region: MemoryRegion): void {
    this.#check([...this.#regions, region]);
    this.#install([...this.#regions, region]);
  }

  /**
   * Remove the region with exactly this GPA, size and user address. Returns it; the caller releases it.
   * @throws MemoryError if there is no such region.
   */
  remove(key: RegionKey): MemoryRegion {
    const i = this.#regions.findIndex((r) =>
      r.guestPhysAddr === key.guestPhysAddr && r.size === key.size && r.userAddr === key.userAddr);
    if (i < 0) {
      throw new MemoryError(`no memory region at ${hex(key.guestPhysAddr)} size ${hex(key.size)} ` +
        `va ${hex(key.userAddr)}`, key.guestPhysAddr, key.size);
    }
    const removed = this.#regions[i]!;
    this.#install(this.#regions.filter((_, j) => j !== i));
    return removed;
  }

  /**
   * Replace the whole table at once (SET_MEM_TABLE). All regions are validated before anything changes.
   * Returns the old regions; the caller releases those not reused.
   * @throws MemoryError on overlap or too many regions (the table is then unchanged).
   */
  replace(regions: readonly MemoryRegion[]): MemoryRegion[] {
    this.#check(regions);
    const old = this.#regions;
    this.#install([...regions]);
    return old;
  }

  /** Remove every region; returns them for the caller to release. */
  clear(): MemoryRegion[] {
    const old = this.#regions;
    this.#install([]);
    return old;
  }

  #check(regions: readonly MemoryRegion[]): void {
    if (regions.length > this.maxRegions) {
      const r = regions[regions.length - 1]!;
      throw new MemoryError(`too many memory regions: ${regions.length} > ${this.maxRegions}`, r.guestPhysAddr, r.size);
    }
    for (let i = 0; i < regions.length; i++) {
      const a = regions[i]!;
      for (let j = 0; j < i; j++) {
        const b = regions[j]!;
        if (a === b) throw new MemoryError(`${a} is given twice`, a.guestPhysAddr, a.size);
        if (overlaps(a.guestPhysAddr, a.gpaEnd, b.guestPhysAddr, b.gpaEnd)) {
          throw new MemoryError(`${a} overlaps ${b} in guest-physical space`, a.guestPhysAddr, a.size);
        }
        if (overlaps(a.userAddr, a.userAddrEnd, b.userAddr, b.userAddrEnd)) {
          throw new MemoryError(`${a} overlaps ${b} in frontend-virtual space`, a.userAddr, a.size);
        }
      }
    }
  }

  #install(regions: MemoryRegion[]): void {
    regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    this.#regions = regions;
    // The cache starts on the lowest region, not empty: with one region (or buffers in the lowest) no lookup ever
    // misses, and the miss path, which a first connection may never run once its type feedback exists, does not
    // drop the descriptor walk's compiled code at each new table.
    this.#rememberGpa(regions[0]);
    this.#lastVa = undefined;
    this.#generation++;
  }

  // ---- guest-physical translation ----

  /**
   * The region that holds all of `[gpa, gpa + len)`, or undefined. With `len` 0, the region that holds `gpa`.
   * Hot path: no allocation. Expects integers (anything else finds nothing or may be truncated).
   */
  gpaRegion(gpa: number, len: number): MemoryRegion | undefined {
    const b = this.#lastGpaBounds;
    // `end - gpa` is exact for in-range values, so `len` cannot overflow past the end.
    if (gpa >= b[0]! && gpa < b[1]! && len >= 0 && len <= b[1]! - gpa) return this.#lastGpa;
    return this.#findGpa(gpa, len);
  }

  /** The region search behind {@link gpaRegion} (the last region missed): remembers what it finds. */
  #findGpa(gpa: number, len: number): MemoryRegion | undefined {
    const regions = this.#regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i]!;
      if (gpa >= r.guestPhysAddr && gpa < r.gpaEnd) {
        if (len >= 0 && len <= r.gpaEnd - gpa) {
          this.#rememberGpa(r);
          return r;
        }
        return undefined;
      }
    }
    return undefined;
  }

  /**
   * {@link gpaRegion} as an offset into the region's buffer: where `[gpa, gpa + len)` starts in
   * {@link lastGpaRegion}'s mapping, or -1 when no one region holds it. The descriptor walk's form: no region
   * fields read when the buffer is in the same region as the last one.
   */
  gpaOffset(gpa: number, len: number): number {
    const b = this.#lastGpaBounds;
    if (gpa >= b[0]! && gpa < b[1]! && len >= 0 && len <= b[1]! - gpa) return gpa + b[2]!;
    return this.#findGpa(gpa, len) === undefined ? -1 : gpa + b[2]!;
  }

  /**
   * The region the last successful {@link gpaRegion} or {@link gpaOffset} found; after a table change, the lowest
   * region (undefined when there is none).
   */
  get lastGpaRegion(): MemoryRegion | undefined {
    return this.#lastGpa;
  }

  #rememberGpa(r: MemoryRegion | undefined): void {
    this.#lastGpa = r;
    const b = this.#lastGpaBounds;
    if (r === undefined) {
      b[0] = 1;
      b[1] = 0;
    } else {
      b[0] = r.guestPhysAddr;
      b[1] = r.gpaEnd;
      b[2] = r.mmapOffset - r.guestPhysAddr;
    }
  }

  /**
   * A view of `[gpa, gpa + len)`, which must lie in one region.
   * @throws MemoryError with the address if it does not.
   */
  gpaSlice(gpa: number, len: number): Uint8Array {
    const r = isAddress(gpa) && isLength(len) ? this.gpaRegion(gpa, len) : undefined;
    if (r === undefined) {
      throw new MemoryError(`guest memory [${hex(gpa)}, +${hex(len)}) is not inside one region`, gpa, len);
    }
    return new Uint8Array(r.buffer, r.mmapOffset + (gpa - r.guestPhysAddr), len);
  }

  /**
   * Views covering `[gpa, gpa + len)`, split where the range crosses from one region into the adjacent one.
   * `len` 0 gives no views.
   * @throws MemoryError with the first unbacked address if the range meets a hole.
   */
  gpaSlices(gpa: number, len: number): Uint8Array[] {
    if (!isAddress(gpa) || !isLength(len)) {
      throw new MemoryError(`guest memory [${hex(gpa)}, +${hex(len)}) is not a valid range`, gpa, len);
    }
    const out: Uint8Array[] = [];
    const hole = this.gpaAppendSlices(gpa, len, out);
    if (hole >= 0) {
      throw new MemoryError(`guest memory [${hex(gpa)}, +${hex(len)}) is not backed at ${hex(hole)}`, hole, len);
    }
    return out;
  }

  /**
   * Low-level form of {@link gpaSlices} for the descriptor walker: appends views of `[gpa, gpa + len)` to `out`
   * and returns -1, or returns the first unbacked address (`out` may then hold part of the range).
   * Expects integers with `gpa < 2^53`.
   */
  gpaAppendSlices(gpa: number, len: number, out: Uint8Array[]): number {
    if (len === 0) return -1;
    const whole = this.gpaRegion(gpa, len);
    if (whole !== undefined) {
      out.push(new Uint8Array(whole.buffer, whole.mmapOffset + (gpa - whole.guestPhysAddr), len));
      return -1;
    }
    if (!(len > 0)) return gpa;
    let addr = gpa;
    let left = len;
    // Each step consumes the rest of one region (at least one byte), so this ends.
    while (left > 0) {
      const r = this.gpaRegion(addr, 0);
      if (r === undefined) return addr;
      const n = Math.min(left, r.gpaEnd - addr);
      out.push(new Uint8Array(r.buffer, r.mmapOffset + (addr - r.guestPhysAddr), n));
      addr += n;
      left -= n;
    }
    return -1;
  }

  /**
   * The frontend-virtual address of a guest-physical one.
   * @throws MemoryError if `gpa` is not in a region.
   */
  gpaToVa(gpa: number): number {
    const r = isAddress(gpa) ? this.gpaRegion(gpa, 0) : undefined;
    if (r === undefined) throw new MemoryError(`guest-physical address ${hex(gpa)} is not mapped`, gpa, 0);
    return r.userAddr + (gpa - r.guestPhysAddr);
  }

  // ---- frontend-virtual translation (ring addresses) ----

  /** The region that holds all of frontend-virtual `[va, va + len)`, or undefined (`len` 0: the one holding `va`). */
  vaRegion(va: number, len: number): MemoryRegion | undefined {
    const c = this.#lastVa;
    if (c !== undefined && va >= c.userAddr && va < c.userAddrEnd && len >= 0 && len <= c.userAddrEnd - va) return c;
    const regions = this.#regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i]!;
      if (va >= r.userAddr && va < r.userAddrEnd) {
        if (len >= 0 && len <= r.userAddrEnd - va) {
          this.#lastVa = r;
          return r;
        }
        return undefined;
      }
    }
    return undefined;
  }

  /**
   * A view of frontend-virtual `[va, va + len)`, which must lie in one region.
   * @throws MemoryError with the address if it does not.
   */
  vaSlice(va: number, len: number): Uint8Array {
    const r = isAddress(va) && isLength(len) ? this.vaRegion(va, len) : undefined;
    if (r === undefined) {
      throw new MemoryError(`frontend memory [${hex(va)}, +${hex(len)}) is not inside one region`, va, len);
    }
    return new Uint8Array(r.buffer, r.mmapOffset + (va - r.userAddr), len);
  }

  /**
   * The guest-physical address of a frontend-virtual one.
   * @throws MemoryError if `va` is not in a region.
   */
  vaToGpa(va: number): number {
    const r = isAddress(va) ? this.vaRegion(va, 0) : undefined;
    if (r === undefined) throw new MemoryError(`frontend virtual address ${hex(va)} is not mapped`, va, 0);
    return r.guestPhysAddr + (va - r.userAddr);
  }
}
