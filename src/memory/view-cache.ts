/**
 * Views of guest memory that are asked for again and again (a driver's per-request headers, a sender's packet
 * buffers) are kept and handed out again instead of allocated each time.
 */
import type { MemoryRegion } from './region.js';

/** Placeholder in empty slots (keeps the view array's elements of one kind). */
const NO_VIEW = new Uint8Array(0);

/**
 * A direct-mapped cache of byte views, keyed by where they point: region, offset in the region's `buffer`, and
 * length. A view is handed out only when all three equal the request, so a changed memory table cannot give a
 * stale view (a new region is a new object); {@link clear} lets the old regions' mappings go.
 */
export class ViewCache {
  readonly #region: (MemoryRegion | null)[] = [];
  readonly #view: Uint8Array[] = [];
  readonly #offset: Float64Array;
  readonly #length: Uint32Array;
  readonly #shift: number;

  /** A cache of `slots` entries, rounded up to a power of two (at least 64). */
  constructor(slots: number) {
    let bits = 6;
    while ((1 << bits) < slots && bits < 20) bits++;
    const n = 1 << bits;
    // Filled by push, not `new Array(n)`: packed arrays, not holey ones.
    for (let k = 0; k < n; k++) {
      this.#region.push(null);
      this.#view.push(NO_VIEW);
    }
    this.#offset = new Float64Array(n);
    this.#length = new Uint32Array(n); // 0 never matches: callers never ask for empty views
    this.#shift = 32 - bits;
  }

  /** The view of `len` bytes (> 0) of `r.buffer` at `off`, the cached one when it is there. */
  get(r: MemoryRegion, off: number, len: number): Uint8Array {
    // Fibonacci hashing of the low 32 bits of the offset, mixed with the length.
    const k = Math.imul((off ^ Math.imul(len, 0x85ebca6b)) | 0, 0x9e3779b1) >>> this.#shift;
    if (this.#region[k] === r && this.#offset[k] === off && this.#length[k] === len) return this.#view[k]!;
    const v = new Uint8Array(r.buffer, off, len);
    this.#region[k] = r;
    this.#offset[k] = off;
    this.#length[k] = len;
    this.#view[k] = v;
    return v;
  }

  /** Drop every entry (and with them the references to their regions' mappings). */
  clear(): void {
    this.#region.fill(null);
    this.#view.fill(NO_VIEW);
    this.#length.fill(0);
  }
}
