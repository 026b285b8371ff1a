/**
 * The device side of a split virtqueue: take available chains, return used ones, decide about notifications.
 *
 * One queue is used from one thread. The rings live in guest memory shared with the driver; the ring indices are
 * read and written with Atomics (sequentially consistent: a full fence), everything else with plain accesses
 * ordered by those.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { ChainWalker, DescriptorChain, type SingleBuffer } from './chain.js';
import { ChainError, ChainErrorKind, QueueError } from './errors.js';
import type { InflightQueue } from './inflight.js';
import {
  AVAIL_ALIGN, DESC_ALIGN, RingFeature, USED_ALIGN, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, availRingBytes,
  descTableBytes, isValidQueueSize, usedRingBytes, vringNeedEvent,
} from './layout.js';

/** Where the three ring areas are. For {@link SplitQueue.configure} these are frontend-virtual addresses. */
export interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** Device side of one split virtqueue. */
export class SplitQueue {
  /** Queue index in the device. */
  readonly index: number;
  /** Ring size (power of two, 1..32768). */
  readonly size: number;
  readonly #mask: number;

  #eventIdx = false;
  #indirect = false;
  #maxChainLength: number;

  #mem: GuestMemory | null = null;
  #addrs: RingAddresses | null = null;
  #walker: ChainWalker | null = null;
  #avail: Uint16Array | null = null; // flags, idx, ring[size], used_event?
  #usedU16: Uint16Array | null = null; // flags, idx, ..., avail_event?
  #usedU32: Uint32Array | null = null; // [0] = flags|idx, then id/len pairs
  #hasEventFields = false;

  #lastAvail = 0;
  // avail.idx as last read: chains up to it are popped without another Atomics load (a builtin call, not
  // inlined), which matters when a pass takes dozens. Equal to #lastAvail whenever that is set from outside.
  #availSeen = 0;
  #usedIdx = 0; // next used index to fill
  #published = 0; // used.idx as last published
  #signalled = 0; // used.idx when the driver's wish for an interrupt was last checked (flush)
  #notify = true;
  #error: ChainError | null = null;
  #inflight: InflightQueue | null = null;
  #resubmit: number[] = [];
  /** One chain object per head, made on first use and refilled by every pop of that head. */
  #chains: (DescriptorChain | undefined)[];
  /** 1 for each head popped (or resubmitted) and not yet pushed. */
  readonly #inUse: Uint8Array;
  #inFlight = 0;

  /** @throws QueueError if `size` is not a power of two in 1..32768. */
  constructor(index: number, size: number) {
    if (!isValidQueueSize(size)) throw new QueueError(`queue ${index}: invalid size ${size}`);
    this.index = index;
    this.size = size;
    this.#mask = size - 1;
    this.#maxChainLength = size;
    this.#chains = newPool(size);
    this.#inUse = new Uint8Array(size);
  }

  // ---- features ----

  /**
   * VIRTIO_F_EVENT_IDX negotiated. Set it before {@link configure} (the ring areas then include the event fields).
   * @throws QueueError when enabling it on a configured queue whose rings have no room for the event fields.
   */
  get eventIdx(): boolean {
    return this.#eventIdx;
  }

  set eventIdx(on: boolean) {
    if (on && this.#avail !== null && !this.#hasEventFields) {
      throw new QueueError(`queue ${this.index}: rings have no room for the EVENT_IDX fields`);
    }
    this.#eventIdx = on;
  }

  /**
   * Take EVENT_IDX and INDIRECT_DESC from a negotiated virtio feature mask (SET_FEATURES).
   * @throws QueueError as the {@link eventIdx} setter does.
   */
  applyFeatures(features: bigint): void {
    this.eventIdx = ((features >> BigInt(RingFeature.EVENT_IDX)) & 1n) === 1n;
    this.indirect = ((features >> BigInt(RingFeature.INDIRECT_DESC)) & 1n) === 1n;
  }

  /** VIRTIO_F_INDIRECT_DESC negotiated (indirect descriptors are a chain error without it). */
  get indirect(): boolean {
    return this.#indirect;
  }

  set indirect(on: boolean) {
    this.#indirect = on;
    if (this.#walker !== null) this.#walker.indirect = on;
  }

  /**
   * Most buffers in one chain, counting indirect table entries (default: the queue size, as the spec requires of
   * drivers). Devices that must accept non-conforming drivers can raise it.
   */
  get maxChainLength(): number {
    return this.#maxChainLength;
  }

  set maxChainLength(n: number) {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`maxChainLength must be a positive integer, got ${n}`);
    this.#maxChainLength = n;
    if (this.#walker !== null) this.#walker.maxChainLength = n;
  }

  // ---- setup ----

  /** Are the rings mapped? */
  get configured(): boolean {
    return this.#avail !== null;
  }

  /** The ring addresses given to {@link configure}, or null. */
  get addresses(): RingAddresses | null {
    return this.#addrs;
  }

  /**
   * Map the rings (SET_VRING_ADDR). Addresses are frontend-virtual; each ring area must lie inside one region and
   * be aligned (in guest terms and in the mapping). The used index is read back from the ring; the avail index
   * ({@link lastAvailIdx}) is kept.
   * @throws QueueError (the queue is then unconfigured).
   */
  configure(mem: GuestMemory, addrs: RingAddresses): void {
    this.#unmap();
    this.#addrs = null;
    this.#map(mem, { desc: addrs.desc, avail: addrs.avail, used: addrs.used });
    this.#usedIdx = this.#published = this.#signalled = Atomics.load(this.#usedU16!, 1);
  }

  /**
   * Translate the same ring addresses again after the memory table changed, keeping all indices.
   * @throws QueueError if the queue was never configured or the rings are no longer mapped (it is then unconfigured).
   */
  remap(mem: GuestMemory): void {
    const addrs = this.#addrs;
    if (addrs === null) throw new QueueError(`queue ${this.index}: remap before configure`);
    this.#unmap();
    this.#map(mem, addrs);
  }

  #map(mem: GuestMemory, addrs: RingAddresses): void {
    this.#availSeen = this.#lastAvail;
    const size = this.size;
    const what = `queue ${this.index}`;
    const ev = this.#eventIdx;
    const desc = this.#area(mem, addrs.desc, descTableBytes(size), DESC_ALIGN, 4, 'descriptor table');
    const avail = this.#area(mem, addrs.avail, availRingBytes(size, ev), AVAIL_ALIGN, 2, 'available ring');
    const used = this.#area(mem, addrs.used, usedRingBytes(size, ev), USED_ALIGN, 4, 'used ring');
    // Include the event fields in the views whenever they are mapped, so EVENT_IDX can be switched on later.
    const availFull = availRingBytes(size, true);
    const usedFull = usedRingBytes(size, true);
    const hasEvents = ev || (mem.vaRegion(addrs.avail, availFull) !== undefined &&
      mem.vaRegion(addrs.used, usedFull) !== undefined);
    const availLen = hasEvents ? availFull : availRingBytes(size, false);
    const usedLen = hasEvents ? usedFull : usedRingBytes(size, false);
    try {
      this.#walker = new ChainWalker(mem, new Uint32Array(desc.buffer, desc.offset, 4 * size), size);
      this.#avail = new Uint16Array(avail.buffer, avail.offset, availLen / 2);
      this.#usedU16 = new Uint16Array(used.buffer, used.offset, usedLen / 2);
      this.#usedU32 = new Uint32Array(used.buffer, used.offset, 1 + 2 * size);
    } catch (err) {
      this.#unmap();
      throw new QueueError(`${what}: cannot view the rings: ${String(err)}`);
    }
    this.#walker.indirect = this.#indirect;
    this.#walker.maxChainLength = this.#maxChainLength;
    this.#hasEventFields = hasEvents;
    this.#mem = mem;
    this.#addrs = addrs;
  }

  #area(mem: GuestMemory, va: number, bytes: number, align: number, bufferAlign: number, name: string):
    { buffer: SharedArrayBuffer | ArrayBuffer; offset: number } {
    const what = `queue ${this.index}: ${name} at ${Number.isSafeInteger(va) ? hex(va) : String(va)}`;
    if (!Number.isSafeInteger(va) || va < 0) throw new QueueError(`${what}: not an address`);
    if (va % align !== 0) throw new QueueError(`${what}: not ${align}-byte aligned`);
    const r = mem.vaRegion(va, bytes);
    if (r === undefined) throw new QueueError(`${what}: ${bytes} bytes are not inside one memory region`);
    const offset = r.mmapOffset + (va - r.userAddr);
    if (offset % bufferAlign !== 0) throw new QueueError(`${what}: misaligned in the mapping (mmap offset)`);
    return { buffer: r.buffer, offset };
  }

  #unmap(): void {
    this.#walker = null;
    this.#avail = null;
    this.#usedU16 = null;
    this.#usedU32 = null;
    this.#hasEventFields = false;
  }

  /**
   * Back to the initial state: unconfigured, indices 0, not broken, no inflight area, notifications on, features
   * off, {@link maxChainLength} = size, no chain in flight. Chains handed out before are never reused (the pool
   * starts afresh), so a device still holding one cannot see it change.
   */
  reset(): void {
    this.#unmap();
    this.#mem = null;
    this.#addrs = null;
    this.#lastAvail = 0;
    this.#availSeen = 0;
    this.#usedIdx = 0;
    this.#published = 0;
    this.#signalled = 0;
    this.#notify = true;
    this.#error = null;
    this.#inflight = null;
    this.#resubmit = [];
    this.#chains = newPool(this.size);
    this.#inUse.fill(0);
    this.#inFlight = 0;
    this.#eventIdx = false;
    this.#indirect = false;
    this.#maxChainLength = this.size;
  }

  // ---- state ----

  /** The next available ring index to take (SET_VRING_BASE / GET_VRING_BASE), u16. */
  get lastAvailIdx(): number {
    return this.#lastAvail;
  }

  set lastAvailIdx(idx: number) {
    if (!Number.isInteger(idx) || idx < 0 || idx > 0xffff) throw new RangeError(`avail index ${idx} is not a u16`);
    this.#lastAvail = idx;
    this.#availSeen = idx;
  }

  /** The next used ring index to fill (includes pushes not yet flushed), u16. */
  get usedIdx(): number {
    return this.#usedIdx;
  }

  /** The used index last published to the driver, u16. */
  get publishedUsedIdx(): number {
    return this.#published;
  }

  /** Chains popped (or resubmitted) and not yet pushed. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** The guest memory the rings were configured with, or null. */
  get memory(): GuestMemory | null {
    return this.#mem;
  }

  /** The error that broke the queue, or null. A broken queue gives no more chains until {@link reset}. */
  get error(): ChainError | null {
    return this.#error;
  }

  /** Has a driver error broken the queue? */
  get broken(): boolean {
    return this.#error !== null;
  }

  #fail(err: ChainError): never {
    this.#error = err;
    throw err;
  }

  // ---- available side ----

  /**
   * Number of chains the driver has made available and we have not taken (0 when unconfigured or broken).
   * @throws ChainError AVAIL_INDEX_JUMP (and the queue breaks) if avail.idx moved more than size ahead.
   */
  pending(): number {
    const avail = this.#avail;
    if (avail === null || this.#error !== null) return 0;
    const idx = Atomics.load(avail, 1);
    const n = (idx - this.#lastAvail) & 0xffff;
    if (n > this.size) this.#jump(n);
    this.#availSeen = idx;
    return n;
  }

  #jump(n: number): never {
    return this.#fail(new ChainError(ChainErrorKind.AVAIL_INDEX_JUMP,
      `queue ${this.index}: avail.idx is ${n} ahead of ${this.#lastAvail} (size ${this.size})`));
  }

  /**
   * Take the next available chain, or null when there is none (or the queue is unconfigured or broken).
   * With EVENT_IDX and notifications on, finding the ring empty asks the driver to kick for the next buffer.
   *
   * The chain is this head's pooled object, refilled (no allocation in steady state): it is the caller's until
   * {@link push} of its head, and must not be used after that.
   * @throws ChainError for a malformed chain, or HEAD_IN_USE for a head whose chain is still in flight; the queue
   * is then broken (see {@link error}).
   */
  pop(): DescriptorChain | null {
    const avail = this.#avail;
    if (avail === null || this.#error !== null) return null;
    if (!this.#hasNext(avail)) return null;
    const last = this.#lastAvail;
    const head = avail[2 + (last & this.#mask)]!;
    if (head >= this.size) {
      this.#fail(new ChainError(ChainErrorKind.HEAD_OUT_OF_RANGE,
        `queue ${this.index}: avail ring entry ${last} is ${head} (size ${this.size})`, head));
    }
    const chain = this.#take(head, last);
    this.#lastAvail = (last + 1) & 0xffff;
    this.#inflight?.markInflight(head);
    return chain;
  }

  /**
   * Is a chain available at {@link lastAvailIdx}? avail.idx is read (an engine call) only when the chains seen at
   * the last read are used up. With EVENT_IDX and notifications on, finding the ring empty asks the driver to
   * kick for the next buffer.
   */
  #hasNext(avail: Uint16Array): boolean {
    const last = this.#lastAvail;
    if (last !== this.#availSeen) return true;
    let idx = Atomics.load(avail, 1);
    if (idx === last) {
      if (!this.#eventIdx || !this.#notify) return false;
      // Ask for a kick at the next buffer, then look again: the driver may have added one before seeing it.
      Atomics.store(this.#usedU16!, 2 + 4 * this.size, last);
      idx = Atomics.load(avail, 1);
      if (idx === last) return false;
    }
    const n = (idx - last) & 0xffff;
    if (n > this.size) this.#jump(n);
    this.#availSeen = idx;
    return true;
  }

  /**
   * {@link pop} for the most common transmit layout, without a chain object or views: when the next available
   * chain is one direct, device-readable descriptor inside one region, take it, put where its buffer is into
   * `out`, and return its head (complete it with {@link push} of that head, as for a popped chain). Returns -1
   * when nothing is available (with EVENT_IDX and notifications on, asking for the next kick, as pop does), and
   * -2, having taken nothing, when the next chain is anything else (or its head is out of range or in flight):
   * then {@link pop} it, which walks it with every check and raises the precise error.
   * @throws ChainError AVAIL_INDEX_JUMP (the queue is then broken).
   */
  popSingle(out: SingleBuffer): number {
    const avail = this.#avail;
    if (avail === null || this.#error !== null) return -1;
    if (!this.#hasNext(avail)) return -1;
    const last = this.#lastAvail;
    const head = avail[2 + (last & this.#mask)]!;
    if (head >= this.size || this.#inUse[head] !== 0 || !this.#walker!.single(head, out)) return -2;
    this.#inUse[head] = 1;
    this.#inFlight++;
    this.#lastAvail = (last + 1) & 0xffff;
    this.#inflight?.markInflight(head);
    return head;
  }

  /**
   * Walk `head` into its pooled chain and mark it in flight; breaks the queue on any ChainError. `slot` is the
   * avail ring index it came from (-1: an inflight entry), for the message only.
   */
  #take(head: number, slot: number): DescriptorChain {
    if (this.#inUse[head] !== 0) {
      const where = slot < 0 ? 'inflight entry' : `avail ring entry ${slot}`;
      this.#fail(new ChainError(ChainErrorKind.HEAD_IN_USE, `queue ${this.index}: ${where} is head ${head}, ` +
        'whose chain the device still holds', head));
    }
    let chain = this.#chains[head];
    if (chain === undefined) {
      chain = new DescriptorChain(head);
      this.#chains[head] = chain;
    }
    try {
      this.#walker!.walk(head, chain);
    } catch (err) {
      if (err instanceof ChainError) this.#fail(err);
      throw err;
    }
    this.#inUse[head] = 1;
    this.#inFlight++;
    return chain;
  }

  // ---- used side ----

  /**
   * Return a chain: write the used element `{head, writtenLen}`. Not visible to the driver until {@link flush};
   * flush at least once per `size` pushes. The head's chain object goes back to the pool: it will be refilled by
   * the next pop of this head.
   * @throws QueueError if unconfigured; RangeError for a head >= size or a length that is not a u32.
   */
  push(head: number, writtenLen: number): void {
    const used = this.#usedU32;
    if (used === null) throw new QueueError(`queue ${this.index}: push on an unconfigured queue`);
    // `x >>> 0 === x` holds exactly for the integers 0..2^32-1: one operation instead of a call and two compares.
    if (!(head >>> 0 === head && head < this.size)) throw new RangeError(`head ${head} out of range`);
    if (writtenLen >>> 0 !== writtenLen) throw new RangeError(`used length ${writtenLen} is not a u32`);
    const at = 1 + 2 * (this.#usedIdx & this.#mask);
    used[at] = head;
    used[at + 1] = writtenLen;
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    if (this.#inUse[head] !== 0) {
      this.#inUse[head] = 0;
      this.#inFlight--;
    }
    this.#inflight?.linkUsed(head);
  }

  /**
   * Make the pushed elements visible to the driver (used.idx, with a full fence) without deciding about an
   * interrupt: a device may publish every few completions within a pass, so that a polling driver can reuse
   * them while the rest of the pass runs, and {@link flush} once at the end. Returns false when nothing was
   * pushed since the last publication.
   */
  publish(): boolean {
    const usedU16 = this.#usedU16;
    const newIdx = this.#usedIdx;
    const oldIdx = this.#published;
    if (usedU16 === null || newIdx === oldIdx) return false;
    Atomics.store(usedU16, 1, newIdx);
    this.#published = newIdx;
    this.#inflight?.commitUsed((newIdx - oldIdx) & 0xffff, newIdx);
    return true;
  }

  /**
   * {@link publish}, then decide whether the driver wants an interrupt for everything published since the
   * previous flush: with EVENT_IDX when used.idx passed used_event in that range, else unless the driver set
   * VRING_AVAIL_F_NO_INTERRUPT. Returns false when nothing was published since the previous flush.
   */
  flush(): boolean {
    const avail = this.#avail;
    if (avail === null) return false;
    this.publish();
    const newIdx = this.#published;
    const oldIdx = this.#signalled;
    if (newIdx === oldIdx) return false;
    this.#signalled = newIdx;
    // The used.idx store in publish() was a full fence: used_event / flags are read after it.
    if (this.#eventIdx) return vringNeedEvent(Atomics.load(avail, 2 + this.size), newIdx, oldIdx);
    return (Atomics.load(avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the driver to kick (or not) when it adds buffers. Without EVENT_IDX this sets or clears
   * VRING_USED_F_NO_NOTIFY; with it, enabling publishes avail_event = {@link lastAvailIdx} (disabling just stops
   * updating it). Returns true when enabling found buffers already pending: process them, no kick will come.
   */
  setNotification(enable: boolean): boolean {
    this.#notify = enable;
    const usedU16 = this.#usedU16;
    const avail = this.#avail;
    if (usedU16 === null || avail === null) return false;
    if (this.#eventIdx) {
      if (enable) Atomics.store(usedU16, 2 + 4 * this.size, this.#lastAvail);
    } else {
      Atomics.store(usedU16, 0, enable ? 0 : VRING_USED_F_NO_NOTIFY);
    }
    // The stores above are fences: a buffer added before them is visible now, one added after will kick.
    return enable && this.#error === null && Atomics.load(avail, 1) !== this.#lastAvail;
  }

  /** Are notifications (kicks) requested? */
  get notificationEnabled(): boolean {
    return this.#notify;
  }

  // ---- inflight tracking ----

  /** The attached inflight region, or null. */
  get inflight(): InflightQueue | null {
    return this.#inflight;
  }

  /**
   * Attach an inflight region (or detach with null). Call after {@link configure} and after SET_VRING_BASE.
   * A fresh region is initialised. A used one is recovered: its still-inflight heads are queued for
   * {@link resubmitInflight}, and {@link lastAvailIdx} becomes used.idx + their number (every popped head is
   * either used or inflight). Returns the number of heads to resubmit.
   * @throws QueueError if unconfigured, or the region does not match the queue.
   */
  attachInflight(inflight: InflightQueue | null): number {
    this.#resubmit = [];
    if (inflight === null) {
      this.#inflight = null;
      return 0;
    }
    if (this.#avail === null) throw new QueueError(`queue ${this.index}: inflight attached before configure`);
    if (inflight.queueSize !== this.size) {
      throw new QueueError(`queue ${this.index}: inflight region is for size ${inflight.queueSize}, queue is ${this.size}`);
    }
    if (!inflight.initialized) {
      inflight.init(this.#published);
    } else {
      const heads = inflight.pendingHeads(this.#published);
      this.#resubmit = heads;
      this.#lastAvail = (this.#published + heads.length) & 0xffff;
      this.#availSeen = this.#lastAvail;
    }
    this.#inflight = inflight;
    return this.#resubmit.length;
  }

  /**
   * The chains recovered by {@link attachInflight}, oldest first, to process before popping new ones. They stay
   * marked inflight until pushed. Returns [] after the first call. The chains are the heads' pooled objects, as
   * {@link pop} gives them.
   * @throws ChainError if a recovered chain is malformed, or HEAD_IN_USE if its head is already in flight here
   * (the queue is then broken).
   */
  resubmitInflight(): DescriptorChain[] {
    const heads = this.#resubmit;
    this.#resubmit = [];
    if (this.#walker === null || this.#error !== null) return [];
    const chains: DescriptorChain[] = [];
    for (const head of heads) chains.push(this.#take(head, -1));
    return chains;
  }
}

function newPool(size: number): (DescriptorChain | undefined)[] {
  const pool: (DescriptorChain | undefined)[] = [];
  for (let i = 0; i < size; i++) pool.push(undefined);
  return pool;
}
