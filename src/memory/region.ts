/**
 * One region of guest memory as the frontend described it, backed by a buffer (an mmap of the region's fd, or a
 * plain SharedArrayBuffer in tests).
 */
import { MemoryError, hex } from './errors.js';

/** A region as described by SET_MEM_TABLE / ADD_MEM_REG (all values are integers < 2^53). */
export interface RegionDescriptor {
  /** Guest-physical address of the first byte. */
  guestPhysAddr: number;
  /** Size in bytes (> 0). */
  size: number;
  /** The frontend's virtual address of the first byte (ring addresses are given in this space). */
  userAddr: number;
  /** Offset of the first byte in the mapped fd, and so in {@link MemoryRegion.buffer}. */
  mmapOffset: number;
}

/** Exclusive upper bound of every address and end address (JS numbers are exact below it). */
export const ADDRESS_LIMIT = 2 ** 53;

/**
 * Throw {@link MemoryError} unless `desc` is a well-formed region: integers, size > 0, and neither address range
 * nor the mmap range wrapping past 2^53.
 */
export function validateRegionDescriptor(desc: RegionDescriptor): void {
  const { guestPhysAddr, size, userAddr, mmapOffset } = desc;
  for (const [name, v] of [['guestPhysAddr', guestPhysAddr], ['size', size], ['userAddr', userAddr],
    ['mmapOffset', mmapOffset]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new MemoryError(`memory region: ${name} ${String(v)} is not an integer in [0, 2^53)`, guestPhysAddr, size);
    }
  }
  if (size === 0) throw new MemoryError(`memory region at ${hex(guestPhysAddr)} has size 0`, guestPhysAddr, 0);
  // `limit - start` is exact, so these comparisons cannot be fooled by rounding.
  if (size > ADDRESS_LIMIT - guestPhysAddr || size > ADDRESS_LIMIT - userAddr || size > ADDRESS_LIMIT - mmapOffset) {
    throw new MemoryError(`memory region at ${hex(guestPhysAddr)} size ${hex(size)} wraps around`, guestPhysAddr, size);
  }
}

/** A mapped region of guest memory. Immutable apart from {@link release}. */
export class MemoryRegion {
  readonly guestPhysAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mmapOffset: number;
  /** Exclusive end of the region in guest-physical space. */
  readonly gpaEnd: number;
  /** Exclusive end of the region in frontend-virtual space. */
  readonly userAddrEnd: number;
  /** The whole mapping (the region's data starts at {@link mmapOffset}). */
  readonly buffer: SharedArrayBuffer | ArrayBuffer;
  /** Exactly the region's data: `buffer` from `mmapOffset`, `size` bytes. */
  readonly bytes: Uint8Array;
  #release: (() => void) | undefined;
  #released = false;

  private constructor(desc: RegionDescriptor, buffer: SharedArrayBuffer | ArrayBuffer, bytes: Uint8Array,
    release: (() => void) | undefined) {
    this.guestPhysAddr = desc.guestPhysAddr;
    this.size = desc.size;
    this.userAddr = desc.userAddr;
    this.mmapOffset = desc.mmapOffset;
    this.gpaEnd = desc.guestPhysAddr + desc.size;
    this.userAddrEnd = desc.userAddr + desc.size;
    this.buffer = buffer;
    this.bytes = bytes;
    this.#release = release;
    let words: Uint32Array | null = null;
    try {
      words = new Uint32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
    } catch {
      // Beyond the engine's typed-array limit: callers fall back to byte views.
    }
    this.u32 = words;
  }

  /**
   * A region over `buffer`, whose bytes `[mmapOffset, mmapOffset + size)` hold the region's data.
   * `release` (called at most once, by {@link release}) frees the mapping.
   * @throws MemoryError if the description is malformed or does not fit the buffer.
   */
  static fromBuffer(desc: RegionDescriptor, buffer: SharedArrayBuffer | ArrayBuffer,
    release?: () => void): MemoryRegion {
    validateRegionDescriptor(desc);
    const { guestPhysAddr, size, mmapOffset } = desc;
    if (mmapOffset > buffer.byteLength || size > buffer.byteLength - mmapOffset) {
      throw new MemoryError(`memory region at ${hex(guestPhysAddr)}: offset ${hex(mmapOffset)} + size ${hex(size)} ` +
        `exceeds the mapping (${hex(buffer.byteLength)} bytes)`, guestPhysAddr, size);
    }
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(buffer, mmapOffset, size);
    } catch (err) {
      // Typed arrays have an engine length limit (4 GiB on Node 20).
      throw new MemoryError(`memory region at ${hex(guestPhysAddr)}: cannot view ${hex(size)} bytes: ${String(err)}`,
        guestPhysAddr, size);
    }
    return new MemoryRegion({ ...desc }, buffer, bytes, release);
  }

  /** Has {@link release} been called? */
  get released(): boolean {
    return this.#released;
  }

  /**
   * The whole buffer as 32-bit words (from buffer offset 0, rounded down), or null when the engine cannot make
   * such a view (too large). Lets the virtqueue read aligned descriptor tables, and devices aligned request
   * fields, anywhere in the region without a view per read. A plain field: the hot paths read it per request.
   */
  readonly u32: Uint32Array | null;

  /**
   * The index in {@link u32} of the word at buffer offset `offset`, or -1 when there is none to use: no word view,
   * an offset that is not a multiple of 4, or one at or past 4 GiB (where `>>> 2` would wrap). Callers check
   * that the bytes they read lie in the region; the index is then inside {@link u32}.
   */
  wordIndex(offset: number): number {
    return this.u32 !== null && (offset & 3) === 0 && offset < 4294967296 ? offset >>> 2 : -1;
  }

  /** Free the mapping (once; later calls do nothing). Views into it must not be used afterwards. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const fn = this.#release;
    this.#release = undefined;
    fn?.();
  }

  /** Short description for logs. */
  toString(): string {
    return `region gpa ${hex(this.guestPhysAddr)}+${hex(this.size)} va ${hex(this.userAddr)} off ${hex(this.mmapOffset)}`;
  }
}
