/**
 * The driver side of a split virtqueue: what a guest's virtio driver does. Used by our frontend library, by tests
 * and benchmarks, and as the test double for the device side. Ring addresses here are guest-physical.
 *
 * Besides the managed API ({@link DriverQueue.add}, {@link DriverQueue.publish}, {@link DriverQueue.popUsed}) it
 * has raw writers so tests can build hostile rings by hand; mixing the two on one ring is the caller's business.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { QueueError } from './errors.js';
import type { RingAddresses } from './split-queue.js';
import {
  AVAIL_ALIGN, DESC_ALIGN, DESC_SIZE, USED_ALIGN, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
  VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, availRingBytes, descTableBytes, isValidQueueSize,
  usedRingBytes, vringNeedEvent,
} from './layout.js';

const TWO_32 = 2 ** 32;

/** A buffer in guest-physical memory. */
export interface BufferSpec {
  addr: number;
  len: number;
}

/** A chain the device returned. */
export interface UsedElement<T> {
  /** Head descriptor index. */
  head: number;
  /** The token given to {@link DriverQueue.add}. */
  token: T;
  /** Bytes the device says it wrote. */
  len: number;
}

/** Options for {@link DriverQueue}. */
export interface DriverQueueOptions {
  /** VIRTIO_F_EVENT_IDX negotiated: {@link DriverQueue.needsKick} honours avail_event instead of NO_NOTIFY. */
  eventIdx?: boolean;
}

/** Options for one {@link DriverQueue.add}. */
export interface AddOptions {
  /** Put the buffers in an indirect table at this guest-physical address (16 bytes per buffer, in memory). */
  indirectTable?: number;
}

function checkBuffer(b: BufferSpec): void {
  if (!(Number.isSafeInteger(b.addr) && b.addr >= 0)) throw new RangeError(`buffer address ${b.addr} is not an address`);
  if (!(Number.isInteger(b.len) && b.len >= 0 && b.len <= 0xffffffff)) throw new RangeError(`buffer length ${b.len}`);
}

/** Driver side of one split virtqueue. */
export class DriverQueue<T = unknown> {
  readonly mem: GuestMemory;
  readonly size: number;
  /** Guest-physical ring addresses. */
  readonly addresses: Readonly<RingAddresses>;
  /** VIRTIO_F_EVENT_IDX in effect. */
  eventIdx: boolean;
  readonly #mask: number;
  readonly #desc: Uint32Array;
  readonly #avail: Uint16Array;
  readonly #usedU16: Uint16Array;
  readonly #usedU32: Uint32Array;
  readonly #next: Uint16Array; // free list and chain links, our own copy (never read back from shared memory)
  readonly #chainLen: Uint16Array; // descriptors per outstanding head
  readonly #active: Uint8Array;
  readonly #tokens: (T | undefined)[];
  #freeHead = 0;
  #freeCount: number;
  #availIdx = 0; // next avail slot (includes unpublished adds)
  #publishedAvail = 0;
  #kickedAvail = 0; // avail idx at the last needsKick()
  #lastUsed = 0;

  /**
   * Lay out and zero the rings at the given guest-physical addresses (each area inside one region, aligned).
   * The areas always include the EVENT_IDX fields.
   * @throws QueueError for a bad size or ring placement.
   */
  constructor(mem: GuestMemory, size: number, addrs: RingAddresses, options: DriverQueueOptions = {}) {
    if (!isValidQueueSize(size)) throw new QueueError(`driver queue: invalid size ${size}`);
    this.mem = mem;
    this.size = size;
    this.#mask = size - 1;
    this.addresses = { desc: addrs.desc, avail: addrs.avail, used: addrs.used };
    this.eventIdx = options.eventIdx ?? false;
    const desc = area(mem, addrs.desc, descTableBytes(size), DESC_ALIGN, 'descriptor table');
    const avail = area(mem, addrs.avail, availRingBytes(size, true), AVAIL_ALIGN, 'available ring');
    const used = area(mem, addrs.used, usedRingBytes(size, true), USED_ALIGN, 'used ring');
    if (desc.byteOffset % 4 !== 0 || used.byteOffset % 4 !== 0) {
      throw new QueueError('driver queue: rings misaligned in the mapping');
    }
    desc.fill(0);
    avail.fill(0);
    used.fill(0);
    this.#desc = new Uint32Array(desc.buffer, desc.byteOffset, 4 * size);
    this.#avail = new Uint16Array(avail.buffer, avail.byteOffset, avail.byteLength / 2);
    this.#usedU16 = new Uint16Array(used.buffer, used.byteOffset, used.byteLength / 2);
    this.#usedU32 = new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * size);
    this.#next = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.#next[i] = (i + 1) & 0xffff;
    this.#chainLen = new Uint16Array(size);
    this.#active = new Uint8Array(size);
    this.#tokens = new Array<T | undefined>(size);
    this.#freeCount = size;
  }

  /** Free descriptors. */
  get freeCount(): number {
    return this.#freeCount;
  }

  /** Next avail ring index (counting adds not yet published), u16. */
  get availIdx(): number {
    return this.#availIdx;
  }

  /** Used ring index up to which {@link popUsed} has consumed, u16. */
  get lastUsedIdx(): number {
    return this.#lastUsed;
  }

  // ---- managed API ----

  /**
   * Offer a chain: `readable` buffers then `writable` ones. Returns the head index, or -1 when there are not
   * enough free descriptors. Visible to the device after {@link publish}.
   * @throws RangeError for an empty chain or a bad address/length; MemoryError if the indirect table is not in memory.
   */
  add(readable: readonly BufferSpec[], writable: readonly BufferSpec[], token: T, options: AddOptions = {}): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('a chain needs at least one buffer');
    for (const b of readable) checkBuffer(b);
    for (const b of writable) checkBuffer(b);
    const table = options.indirectTable;
    const needed = table === undefined ? n : 1;
    if (needed > this.#freeCount) return -1;
    if (table !== undefined) {
      const view = this.mem.gpaSlice(table, n * DESC_SIZE); // throws MemoryError if not in memory
      const dv = new DataView(view.buffer, view.byteOffset, view.byteLength);
      let k = 0;
      for (const [list, write] of [[readable, 0], [writable, VIRTQ_DESC_F_WRITE]] as const) {
        for (const b of list) {
          const flags = write | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
          writeDesc(dv, k * DESC_SIZE, b.addr, b.len, flags, k + 1 < n ? k + 1 : 0);
          k++;
        }
      }
    }
    const head = this.#freeHead;
    let i = head;
    if (table !== undefined) {
      this.writeDescriptor(i, table, n * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
      i = this.#next[i]!;
    } else {
      let k = 0;
      for (const [list, write] of [[readable, 0], [writable, VIRTQ_DESC_F_WRITE]] as const) {
        for (const b of list) {
          const more = ++k < n;
          this.writeDescriptor(i, b.addr, b.len, write | (more ? VIRTQ_DESC_F_NEXT : 0), more ? this.#next[i]! : 0);
          i = this.#next[i]!;
        }
      }
    }
    this.#freeHead = i;
    this.#freeCount -= needed;
    this.#chainLen[head] = needed;
    this.#active[head] = 1;
    this.#tokens[head] = token;
    this.#avail[2 + (this.#availIdx & this.#mask)] = head;
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    return head;
  }

  /** Make the added chains visible: store avail.idx (a full fence). */
  publish(): void {
    Atomics.store(this.#avail, 1, this.#availIdx);
    this.#publishedAvail = this.#availIdx;
  }

  /**
   * Must the device be kicked for what was published since the last call? With EVENT_IDX: when avail.idx passed
   * avail_event; else unless the device set VRING_USED_F_NO_NOTIFY. False when nothing new was published.
   */
  needsKick(): boolean {
    const newIdx = this.#publishedAvail;
    const oldIdx = this.#kickedAvail;
    this.#kickedAvail = newIdx;
    if (newIdx === oldIdx) return false;
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.#usedU16, 2 + 4 * this.size), newIdx, oldIdx);
    return (Atomics.load(this.#usedU16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * The next chain the device returned, or null. Its descriptors are freed.
   * @throws QueueError if the device returned a head that is not outstanding.
   */
  popUsed(): UsedElement<T> | null {
    const idx = Atomics.load(this.#usedU16, 1);
    if (idx === this.#lastUsed) return null;
    const at = 1 + 2 * (this.#lastUsed & this.#mask);
    const head = this.#usedU32[at]!;
    const len = this.#usedU32[at + 1]!;
    if (head >= this.size || this.#active[head] !== 1) {
      throw new QueueError(`driver queue: device returned head ${head}, which is not outstanding`);
    }
    const token = this.#tokens[head] as T;
    this.#tokens[head] = undefined;
    this.#active[head] = 0;
    const count = this.#chainLen[head]!;
    let tail = head;
    for (let k = 1; k < count; k++) tail = this.#next[tail]!;
    this.#next[tail] = this.#freeHead;
    this.#freeHead = head;
    this.#freeCount += count;
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    return { head, token, len };
  }

  /** Used elements the device has published and {@link popUsed} has not taken. */
  usedPending(): number {
    return (Atomics.load(this.#usedU16, 1) - this.#lastUsed) & 0xffff;
  }

  /** EVENT_IDX: ask for an interrupt once used.idx passes `idx` (writes used_event, a full fence). */
  setUsedEvent(idx: number): void {
    Atomics.store(this.#avail, 2 + this.size, idx & 0xffff);
  }

  /** Without EVENT_IDX: clear or set VRING_AVAIL_F_NO_INTERRUPT. */
  setInterrupts(enable: boolean): void {
    Atomics.store(this.#avail, 0, enable ? 0 : VRING_AVAIL_F_NO_INTERRUPT);
  }

  // ---- raw access, for building hostile rings ----

  /** Write descriptor `index` of the table as given (no checks beyond the field widths). */
  writeDescriptor(index: number, addr: number, len: number, flags: number, next: number): void {
    if (!(Number.isInteger(index) && index >= 0 && index < this.size)) throw new RangeError(`descriptor ${index}`);
    const w = 4 * index;
    this.#desc[w] = addr % TWO_32;
    this.#desc[w + 1] = Math.floor(addr / TWO_32);
    this.#desc[w + 2] = len;
    this.#desc[w + 3] = (flags & 0xffff) | ((next & 0xffff) << 16);
  }

  /** Write a descriptor anywhere in guest memory (an indirect table entry). */
  writeDescriptorAt(gpa: number, addr: number, len: number, flags: number, next: number): void {
    const v = this.mem.gpaSlice(gpa, DESC_SIZE);
    writeDesc(new DataView(v.buffer, v.byteOffset, DESC_SIZE), 0, addr, len, flags, next);
  }

  /** Write avail.ring[slot & (size-1)] = head. */
  writeAvailEntry(slot: number, head: number): void {
    this.#avail[2 + (slot & this.#mask)] = head;
  }

  /** Store avail.idx directly (Atomics). Does not touch the managed state. */
  writeAvailIdx(idx: number): void {
    Atomics.store(this.#avail, 1, idx & 0xffff);
  }

  /** Store avail.flags directly. */
  writeAvailFlags(flags: number): void {
    Atomics.store(this.#avail, 0, flags & 0xffff);
  }

  /** used.idx as the device last published it. */
  readUsedIdx(): number {
    return Atomics.load(this.#usedU16, 1);
  }

  /** used.flags. */
  readUsedFlags(): number {
    return Atomics.load(this.#usedU16, 0);
  }

  /** used.ring[slot & (size-1)]. */
  readUsedElement(slot: number): { id: number; len: number } {
    const at = 1 + 2 * (slot & this.#mask);
    return { id: this.#usedU32[at]!, len: this.#usedU32[at + 1]! };
  }

  /** avail_event (EVENT_IDX), as the device last wrote it. */
  readAvailEvent(): number {
    return Atomics.load(this.#usedU16, 2 + 4 * this.size);
  }

  /** used_event (EVENT_IDX), as this driver last wrote it. */
  readUsedEvent(): number {
    return Atomics.load(this.#avail, 2 + this.size);
  }
}

function area(mem: GuestMemory, gpa: number, bytes: number, align: number, name: string): Uint8Array {
  if (!(Number.isSafeInteger(gpa) && gpa >= 0) || gpa % align !== 0) {
    throw new QueueError(`driver queue: ${name} at ${gpa} is not ${align}-byte aligned`);
  }
  const r = mem.gpaRegion(gpa, bytes);
  if (r === undefined) throw new QueueError(`driver queue: ${name} at 0x${gpa.toString(16)} is not inside one region`);
  const view = new Uint8Array(r.buffer, r.mmapOffset + (gpa - r.guestPhysAddr), bytes);
  if (view.byteOffset % align !== 0) throw new QueueError(`driver queue: ${name} misaligned in the mapping`);
  return view;
}

function writeDesc(dv: DataView, at: number, addr: number, len: number, flags: number, next: number): void {
  dv.setUint32(at, addr % TWO_32, true);
  dv.setUint32(at + 4, Math.floor(addr / TWO_32), true);
  dv.setUint32(at + 8, len, true);
  dv.setUint16(at + 12, flags, true);
  dv.setUint16(at + 14, next, true);
}
