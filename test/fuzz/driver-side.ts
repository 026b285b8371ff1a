/**
 * The driver's side of a split ring for fuzzing, written straight into {@link GuardedMemory} (independently of
 * src/virtqueue): descriptors with any field values, indirect tables, the available ring, and reading back the
 * used ring. {@link DriverRing.post} makes well-formed chains; the generators mutate them or write garbage.
 */
import type { GuestAllocator } from './guarded-memory.js';
import type { Rng } from './rng.js';

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

/** Guest memory as the driver writes it: by guest-physical address. */
export interface GuestBytes {
  write(gpa: number, data: Uint8Array): void;
  read(gpa: number, length: number): Uint8Array;
}

/** Guest-physical addresses of the three ring areas. */
export interface RingPlacement {
  desc: number;
  avail: number;
  used: number;
}

/** One buffer of a chain as the driver means it. */
export interface BufferSpec {
  addr: bigint;
  len: number;
  write: boolean;
}

/** A raw descriptor. */
export interface RawDescriptor {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

/** Bytes of the ring areas for `size` entries, with room for the event-index fields. */
export function ringBytes(size: number): { desc: number; avail: number; used: number } {
  return { desc: 16 * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/** Place a ring's areas with the allocator (aligned as virtio requires); undefined if memory is full. */
export function placeRing(rng: Rng, alloc: GuestAllocator, size: number): RingPlacement | undefined {
  const b = ringBytes(size);
  const desc = alloc.alloc(rng, b.desc, 16);
  const avail = alloc.alloc(rng, b.avail, 2);
  const used = alloc.alloc(rng, b.used, 4);
  if (desc === undefined || avail === undefined || used === undefined) return undefined;
  return { desc, avail, used };
}

/** Write one 16-byte descriptor at a guest-physical address (must be backed). */
export function writeDescriptorAt(mem: GuestBytes, gpa: number, d: RawDescriptor): void {
  const out = new Uint8Array(16);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt.asUintN(64, d.addr), true);
  dv.setUint32(8, d.len >>> 0, true);
  dv.setUint16(12, d.flags & 0xffff, true);
  dv.setUint16(14, d.next & 0xffff, true);
  mem.write(gpa, out);
}

/** Read one descriptor at a guest-physical address (must be backed). */
export function readDescriptorAt(mem: GuestBytes, gpa: number): RawDescriptor {
  const b = mem.read(gpa, 16);
  const dv = new DataView(b.buffer);
  return { addr: dv.getBigUint64(0, true), len: dv.getUint32(8, true), flags: dv.getUint16(12, true), next: dv.getUint16(14, true) };
}

/** A driver for one ring in guarded memory: keeps track of free descriptors and chains in flight. */
export class DriverRing {
  readonly mem: GuestBytes;
  readonly size: number;
  readonly at: RingPlacement;
  /** Next avail index to publish. */
  availIdx = 0;
  /** Next used index to read. */
  usedIdx = 0;
  /**
   * The driver corrupted one of its own descriptors ({@link corruptDescriptor}): a buffer may now point anywhere
   * in guest memory, this ring's used ring included, so what the used ring says is no longer the device's word.
   */
  corrupted = false;
  #free: number[];
  /** Descriptor indices of each chain in flight, by head. */
  readonly #inFlight = new Map<number, number[]>();

  constructor(mem: GuestBytes, size: number, at: RingPlacement, availIdx = 0) {
    this.mem = mem;
    this.size = size;
    this.at = at;
    this.availIdx = availIdx;
    this.usedIdx = availIdx;
    this.#free = Array.from({ length: size }, (_, i) => i);
    // The rings start zeroed apart from the indices (a fresh ring as the driver sets it up).
    const b = ringBytes(size);
    mem.write(at.desc, new Uint8Array(b.desc));
    mem.write(at.avail, new Uint8Array(b.avail));
    mem.write(at.used, new Uint8Array(b.used));
    this.#setU16(at.avail + 2, availIdx);
    this.#setU16(at.used + 2, availIdx);
  }

  /** Free descriptors. */
  get freeCount(): number {
    return this.#free.length;
  }

  /** Chains posted and not yet seen in the used ring. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  #setU16(gpa: number, v: number): void {
    this.mem.write(gpa, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff));
  }

  #u16(gpa: number): number {
    const b = this.mem.read(gpa, 2);
    return b[0]! | (b[1]! << 8);
  }

  #u32(gpa: number): number {
    const b = this.mem.read(gpa, 4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }

  /** Write descriptor `i` of the table. */
  writeDescriptor(i: number, d: RawDescriptor): void {
    writeDescriptorAt(this.mem, this.at.desc + 16 * i, d);
  }

  /** Read descriptor `i` of the table. */
  readDescriptor(i: number): RawDescriptor {
    return readDescriptorAt(this.mem, this.at.desc + 16 * i);
  }

  /** Put `head` in the available ring at the current index and publish it. */
  publish(head: number): void {
    this.#setU16(this.at.avail + 4 + 2 * (this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.#setU16(this.at.avail + 2, this.availIdx);
  }

  /** Write avail.idx directly (index jumps). */
  setAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.#setU16(this.at.avail + 2, this.availIdx);
  }

  /** Set avail.flags and used_event (notification suppression fields). */
  setAvailFlags(flags: number, usedEvent: number): void {
    this.#setU16(this.at.avail, flags);
    this.#setU16(this.at.avail + 4 + 2 * this.size, usedEvent);
  }

  /** The used ring's idx as the device last published it. */
  deviceUsedIdx(): number {
    return this.#u16(this.at.used + 2);
  }

  /**
   * Post a chain of `buffers` (written to free descriptors, or to an indirect table at `indirectAt` when given)
   * and publish it. Returns the head, or undefined when there are not enough free descriptors.
   */
  post(buffers: readonly BufferSpec[], indirectAt?: number): number | undefined {
    const direct = indirectAt === undefined ? buffers.length : 1;
    if (direct > this.#free.length || buffers.length === 0) return undefined;
    const ids = this.#free.splice(0, direct);
    if (indirectAt !== undefined) {
      buffers.forEach((b, k) => writeDescriptorAt(this.mem, indirectAt + 16 * k, {
        addr: b.addr, len: b.len, flags: (b.write ? F_WRITE : 0) | (k + 1 < buffers.length ? F_NEXT : 0), next: k + 1,
      }));
      this.writeDescriptor(ids[0]!, { addr: BigInt(indirectAt), len: 16 * buffers.length, flags: F_INDIRECT, next: 0 });
    } else {
      buffers.forEach((b, k) => this.writeDescriptor(ids[k]!, {
        addr: b.addr, len: b.len, flags: (b.write ? F_WRITE : 0) | (k + 1 < buffers.length ? F_NEXT : 0),
        next: ids[k + 1] ?? 0,
      }));
    }
    this.#inFlight.set(ids[0]!, ids);
    this.publish(ids[0]!);
    return ids[0]!;
  }

  /**
   * Read the used entries the device published since the last call. Entries with an id that is not a chain in
   * flight are returned with `known: false` (a device bug, or a chain the generator corrupted).
   */
  reap(): { id: number; len: number; known: boolean }[] {
    const out: { id: number; len: number; known: boolean }[] = [];
    const idx = this.deviceUsedIdx();
    while (this.usedIdx !== idx) {
      const slot = this.at.used + 4 + 8 * (this.usedIdx % this.size);
      const id = this.#u32(slot);
      const len = this.#u32(slot + 4);
      const ids = this.#inFlight.get(id);
      if (ids !== undefined) {
        this.#inFlight.delete(id);
        this.#free.push(...ids);
      }
      out.push({ id, len, known: ids !== undefined });
      this.usedIdx = (this.usedIdx + 1) & 0xffff;
    }
    return out;
  }
}

/**
 * Corrupt one field of descriptor `head` as a hostile driver might after posting it: the address, the length, or
 * the WRITE/INDIRECT flags. The ring usually breaks on it, and the device must say so without side effects.
 */
export function corruptDescriptor(rng: Rng, ring: DriverRing, head: number): void {
  const d = ring.readDescriptor(head);
  const field = rng.int(3);
  if (field === 0) d.addr = rng.interesting64();
  else if (field === 1) d.len = rng.interesting32();
  else d.flags ^= F_WRITE << rng.int(2);
  ring.writeDescriptor(head, d);
  ring.corrupted = true;
}
