/**
 * Guest RAM for our own frontend: a memfd shared with the backend, mapped here too, with a bump allocator for
 * rings and buffers. It plays the part QEMU's memory-backend-memfd plays for a real guest.
 */
import { native, closeQuietly } from '../native/index.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { MemoryRegion } from '../memory/region.js';
import type { RegionDescription } from '../protocol/message.js';

/** Options for {@link GuestRam}. */
export interface GuestRamOptions {
  /** Bytes of RAM (rounded up to 4 KiB). */
  size: number;
  /** Guest-physical address of the first byte (default 0). */
  guestPhysAddr?: number;
  /** The "frontend virtual address" we tell the backend (any value; default 0x7f0000000000 + gpa). */
  userAddr?: number;
}

/** One memfd region of guest RAM, with allocation. */
export class GuestRam {
  readonly fd: number;
  readonly region: MemoryRegion;
  readonly memory = new GuestMemory();
  readonly description: RegionDescription;
  #next: number;
  #end: number;

  constructor(options: GuestRamOptions) {
    const size = Math.ceil(options.size / 4096) * 4096;
    const gpa = options.guestPhysAddr ?? 0;
    this.description = { guestPhysAddr: gpa, size, userAddr: options.userAddr ?? 0x7f00_0000_0000 + gpa, mmapOffset: 0 };
    this.fd = native.memfdCreate('vhost-user-guest-ram', size);
    try {
      const buffer = native.mmap(this.fd, size, true);
      this.region = MemoryRegion.fromBuffer(this.description, buffer, () => native.unmapNow(buffer));
    } catch (err) {
      closeQuietly(this.fd);
      throw err;
    }
    this.memory.add(this.region);
    this.#next = gpa;
    this.#end = gpa + size;
  }

  /** Allocate `size` bytes aligned to `align`; returns the guest-physical address. */
  alloc(size: number, align = 16): number {
    const start = Math.ceil(this.#next / align) * align;
    if (start + size > this.#end) throw new RangeError(`guest RAM exhausted: ${size} bytes wanted`);
    this.#next = start + size;
    return start;
  }

  /** Bytes free for allocation. */
  get free(): number {
    return this.#end - this.#next;
  }

  /** A view of guest memory at a guest-physical address. */
  bytes(gpa: number, len: number): Uint8Array {
    return this.memory.gpaSlice(gpa, len);
  }

  /** The frontend-virtual address of a guest-physical one (what ring addresses are given as). */
  userAddrOf(gpa: number): number {
    return gpa - this.description.guestPhysAddr + this.description.userAddr;
  }

  /** Unmap and close. */
  close(): void {
    this.region.release();
    closeQuietly(this.fd);
  }
}
