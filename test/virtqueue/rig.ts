/**
 * Test rig: two adjacent SharedArrayBuffer-backed regions of guest memory, a driver queue and a device queue on
 * the same rings.
 *
 *   region A: GPA [0x00000, 0x10000), VA 0x7f0000000000, at offset 0x1000 of its buffer; rings live here
 *   region B: GPA [0x10000, 0x20000), VA 0x7e0000000000 (below A: VA order differs from GPA order)
 *   nothing at GPA 0x20000 and above
 */
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../src/memory/region.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import { SplitQueue, type RingAddresses } from '../../src/virtqueue/split-queue.js';

export const A = { guestPhysAddr: 0x0, size: 0x10000, userAddr: 0x7f0000000000, mmapOffset: 0x1000 };
export const B = { guestPhysAddr: 0x10000, size: 0x10000, userAddr: 0x7e0000000000, mmapOffset: 0 };
/** First GPA past all memory. */
export const END = 0x20000;
/** Free data area in A (above the rings). */
export const DATA = 0x8000;

/** Ring placement (GPA) used by the rig: room for up to 256 entries. */
export const RINGS: RingAddresses = { desc: 0x0, avail: 0x1000, used: 0x2000 };

export function makeMemory(): GuestMemory {
  const mem = new GuestMemory();
  mem.add(MemoryRegion.fromBuffer(A, new SharedArrayBuffer(A.mmapOffset + A.size)));
  mem.add(MemoryRegion.fromBuffer(B, new SharedArrayBuffer(B.size)));
  return mem;
}

export function toVa(mem: GuestMemory, gpa: RingAddresses): RingAddresses {
  return { desc: mem.gpaToVa(gpa.desc), avail: mem.gpaToVa(gpa.avail), used: mem.gpaToVa(gpa.used) };
}

export interface Rig {
  mem: GuestMemory;
  driver: DriverQueue<number>;
  device: SplitQueue;
}

export interface RigOptions {
  eventIdx?: boolean;
  indirect?: boolean;
}

/** Memory, a driver that laid out the rings, and a device configured on them. */
export function makeRig(size = 8, options: RigOptions = {}): Rig {
  const mem = makeMemory();
  const driver = new DriverQueue<number>(mem, size, RINGS, { eventIdx: options.eventIdx ?? false });
  const device = new SplitQueue(0, size);
  device.eventIdx = options.eventIdx ?? false;
  device.indirect = options.indirect ?? false;
  device.configure(mem, toVa(mem, RINGS));
  return { mem, driver, device };
}

/** Write bytes at a GPA (may span regions). */
export function poke(mem: GuestMemory, gpa: number, data: ArrayLike<number>): void {
  let at = 0;
  for (const part of mem.gpaSlices(gpa, data.length)) {
    for (let i = 0; i < part.length; i++) part[i] = data[at++]!;
  }
}

/** Read bytes at a GPA (may span regions). */
export function peek(mem: GuestMemory, gpa: number, len: number): number[] {
  return mem.gpaSlices(gpa, len).flatMap((p) => [...p]);
}

/** Publish a raw chain: avail.ring[slot] = head, avail.idx = slot + 1. */
export function offer(driver: DriverQueue<number>, head: number, slot = 0): void {
  driver.writeAvailEntry(slot, head);
  driver.writeAvailIdx(slot + 1);
}
