/**
 * Fuzz target "net": virtio-net ports (src/devices/net: port.ts, packet.ts, switch.ts, ctrl.ts) on one NetSwitch,
 * each on the real framework (device-rig.ts) over its own guarded guest memory, driven by hostile guests. Two or
 * three ports with random feature subsets (VERSION_1 or the legacy 10-byte header, MRG_RXBUF, CSUM/GUEST_CSUM,
 * CTRL_VQ/CTRL_RX/CTRL_MAC_ADDR, MQ with several pairs, INDIRECT_DESC, EVENT_IDX), ring sizes and transmit bursts.
 *
 * The guests transmit frames in every layout (header and frame in one buffer, aligned or not: the single-buffer
 * fast path; header in its own descriptor; frames split anywhere, also inside the header and the addresses;
 * buffers crossing from one memory region into the next; indirect tables; writable descriptors after the
 * readable ones), of every size (shorter than an Ethernet header up to past MAX_FRAME), with GSO types and
 * NEEDS_CSUM offsets in and out of range, to broadcast, multicast, known, unknown and their own addresses, from
 * their own and from foreign or moving source addresses (the switch learns and floods); post receive buffers of
 * every size and shape (too small for a header, multi-descriptor, readable descriptors first); send control
 * commands (promiscuous/all-multicast, MAC tables with true and lying counts, MAC_ADDR_SET, VQ_PAIRS_SET in and
 * out of range, unknown classes, truncated commands, no ack buffer); kick any queue. The frontend disables and
 * enables rings, stops a ring (GET_VRING_BASE) and starts it again, and goes away and comes back with another
 * guest (the port resets; the switch forgets its addresses); the switch's table ages (a clock of our own) or is
 * tiny (full). Hostile guests also post malformed chains (zero-length, huge and unbacked descriptors, readable
 * after writable, indirect tables not negotiated or unbacked), jump the avail index and name heads past the table.
 *
 * A model written here (switch learning, aging and flooding, each guest's receive filter, queue pairs, the control
 * commands, the header rules) says what must happen. Checked, and each can fail:
 * - no exception escapes; a ring stops only with a ChainError/QueueError, and only one the guest made malformed;
 * - every chain the device pops (pop or popSingle) is completed exactly once (complete or completeHead), at once:
 *   after every action no ring holds a chain; used lengths lie within the writable part (0 on transmit);
 * - the device reads exactly the bytes the driver posted, and writes nothing the driver did not hand it (every
 *   posted buffer not yet used still holds what the driver wrote; guards intact);
 * - per transmitted chain: it is forwarded, counted as an error, or (ring disabled) dropped exactly as the model
 *   says, and every other port's counters move exactly as the model says (filtered, dropped although buffers were
 *   ready is a failure, delivered with the minimal number of buffers and exact used lengths, too small, out of
 *   buffers); never anything back to the sender; checksums completed at most once, for a port without GUEST_CSUM;
 * - each frame a guest reads from its used ring has a well-formed header of the negotiated size (num_buffers the
 *   number of buffers used with MRG_RXBUF, 1 otherwise; NEEDS_CSUM only with GUEST_CSUM) followed by exactly a
 *   frame another guest sent to an address this one accepts, on a ready receive ring of an active pair; with the
 *   checksum completed when it was offloaded (verified here), or left partial with its offsets;
 * - control commands are acked as the model says and change the filter, MAC and pairs as it says; a disabled
 *   control ring has no side effects (what a ring takes as it is enabled was made available while it was
 *   disabled: transmit frames are then dropped, commands may be executed or discarded); an enabled control ring
 *   answers every command at a kick; GET_VRING_BASE returns where the device stopped; a port whose frontend left
 *   is reset and no longer a switch destination; the switch's counters are the model's;
 * - counters add up (txPackets/txErrors/txDropped cover every transmit chain taken; rxPackets is what the guests
 *   read); warnings bounded; after the frontends go, nothing is in flight.
 */
import { NetPort } from '../../../src/devices/net/port.js';
import { NetSwitch } from '../../../src/devices/net/switch.js';
import { MAX_CTRL_REQUEST } from '../../../src/devices/net/ctrl.js';
import { MAC_TABLE_ENTRIES } from '../../../src/devices/net/rx-filter.js';
import { MAX_FRAME } from '../../../src/devices/net/header.js';
import { COUNTER_NAMES, type PortCounters } from '../../../src/devices/net/stats.js';
import { offeredFeatures } from '../../../src/device/backend.js';
import { closeQuietly, native } from '../../../src/native/index.js';
import type { Vring } from '../../../src/device/vring.js';
import type { DescriptorChain } from '../../../src/virtqueue/chain.js';
import { ChainError, QueueError } from '../../../src/virtqueue/errors.js';
import { CommonFeature, featureMask, hasFeature, NetFeature } from '../../../src/virtio/constants.js';
import { DeviceRig } from '../device-rig.js';
import type { BufferSpec } from '../driver-side.js';
import { GuardedMemory } from '../guarded-memory.js';
import { CapturingLogger, check, Stats, UNEXPECTED_LOG, type FuzzTarget } from '../harness.js';
import type { Rng } from '../rng.js';

const stats = new Stats();

const ETH_HLEN = 14;
const NEEDS_CSUM = 1;
const DATA_VALID = 2;
/** Control classes and commands (virtio 1.2, 5.1.6.5). */
const RX = 0;
const MAC = 1;
const MQ = 4;
const OK = 0;
const ERR = 1;

// ---- guest memory for buffers ----

/**
 * Buffer space of one guest: the regions after the rings, GPA-adjacent regions joined into spans (so a buffer
 * can cross from one region into the next), with frees (transmit buffers come back at once, receive buffers when
 * the device used them).
 */
class BufferPool {
  readonly #spans: { start: number; end: number }[] = [];
  /** GPAs where one region ends and the adjacent next one starts. */
  readonly #boundaries: number[] = [];
  readonly #used: { start: number; end: number }[] = [];

  constructor(mem: GuardedMemory, ringsEnd: readonly number[]) {
    mem.regions.forEach((r, i) => {
      const last = this.#spans[this.#spans.length - 1];
      if (last !== undefined && last.end === r.gpa) {
        this.#boundaries.push(r.gpa);
        last.end = r.gpa + r.size;
      } else {
        this.#spans.push({ start: r.gpa, end: r.gpa + r.size });
      }
      const end = ringsEnd[i] ?? r.gpa;
      if (end > r.gpa) this.#used.push({ start: r.gpa, end });
    });
  }

  #isFree(start: number, end: number): boolean {
    return this.#spans.some((s) => start >= s.start && end <= s.end) &&
      !this.#used.some((u) => start < u.end && end > u.start);
  }

  #take(start: number, n: number, skew: number): number {
    this.#used.push({ start, end: start + n });
    return start + skew;
  }

  /**
   * `len` bytes at an address that is `skew` bytes past a multiple of `align`; with `cross`, preferably across a
   * region boundary. Undefined when there is no room.
   */
  alloc(rng: Rng, len: number, align = 1, skew = 0, cross = false): number | undefined {
    const n = len + skew;
    const down = (x: number): number => x - (x % align);
    const up = (x: number): number => Math.ceil(x / align) * align;
    if (cross && this.#boundaries.length > 0 && len >= 2) {
      const b = rng.pick(this.#boundaries);
      for (let t = 0; t < 4; t++) {
        const start = down(b - skew - rng.range(1, len - 1));
        if (start + skew < b && start + n > b && this.#isFree(start, start + n)) return this.#take(start, n, skew);
      }
    }
    for (let t = 0; t < 6; t++) {
      const s = rng.pick(this.#spans);
      if (s.end - s.start < n) continue;
      const start = up(s.start + rng.int(s.end - s.start - n + 1));
      if (this.#isFree(start, start + n)) return this.#take(start, n, skew);
    }
    const sorted = [...this.#used].sort((a, b) => a.start - b.start);
    for (const s of this.#spans) {
      let at = up(s.start);
      for (const u of sorted) {
        if (u.end <= at) continue;
        if (u.start >= at + n) break;
        at = up(u.end);
      }
      if (at + n <= s.end) return this.#take(at, n, skew);
    }
    return undefined;
  }

  free(gpa: number): void {
    const i = this.#used.findIndex((u) => gpa >= u.start && gpa < u.end);
    if (i >= 0) this.#used.splice(i, 1);
  }
}

/** A guest-physical address with nothing behind it (a descriptor pointing there must stop the ring). */
function unbacked(rng: Rng, mem: GuardedMemory): bigint {
  const last = mem.regions[mem.regions.length - 1]!;
  const after = last.gpa + last.size + 16 * rng.range(1, 64);
  const choices: bigint[] = [(1n << 64n) - 4096n, 1n << 53n];
  if (after < 2 ** 52 && mem.regionAt(after) === undefined && mem.regionAt(after + 0x20000) === undefined) choices.push(BigInt(after));
  if (mem.regionAt(0x10) === undefined && mem.regions[0]!.gpa > 0x30000) choices.push(0x10n);
  return rng.pick(choices);
}

/** Do `len` bytes of guest memory at `gpa` still hold `data`? (No copy.) */
function holds(mem: GuardedMemory, gpa: number, data: Uint8Array): boolean {
  const pieces = mem.pieces(gpa, data.length);
  if (pieces === null) return false;
  let at = 0;
  for (const p of pieces) {
    if (Buffer.compare(mem.bytes.subarray(p.offset, p.offset + p.length), data.subarray(at, at + p.length)) !== 0) return false;
    at += p.length;
  }
  return true;
}

// ---- MAC addresses, checksums ----

function macKey(b: Uint8Array, at = 0): string {
  return Buffer.from(b.buffer, b.byteOffset + at, 6).toString('hex');
}

function randomUnicast(rng: Rng): Uint8Array {
  const m = rng.bytes(6);
  m[0] = (m[0]! & 0xfc) | 0x02;
  return m;
}

function randomMulticast(rng: Rng): Uint8Array {
  const m = rng.bytes(6);
  const kind = rng.int(3);
  if (kind === 0) m.set([0x01, 0x00, 0x5e], 0);
  else if (kind === 1) m.set([0x33, 0x33], 0);
  else m[0] = m[0]! | 1;
  return m;
}

const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** Ones'-complement sum of big-endian 16-bit words of `b[start..)` (odd tail padded), folded to 16 bits. */
function foldedSum(b: Uint8Array, start: number): number {
  let s = 0;
  let i = start;
  for (; i + 1 < b.length; i += 2) s += (b[i]! << 8) | b[i + 1]!;
  if (i < b.length) s += b[i]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/**
 * Does `c` complete the partial checksum of `original` (whose field at `start + offset` holds the pseudo-header
 * sum, as the sender left it)? The sum over the range with the field replaced by `c` plus the pseudo-header sum
 * must be all ones, i.e. `fold(S + c) == 0xffff` where S is the sum as sent.
 */
function completes(original: Uint8Array, start: number, c: number): boolean {
  let s = foldedSum(original, start) + c;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s === 0xffff;
}

// ---- the case's model ----

type Kind = 'rx' | 'tx' | 'ctrl';

/** A buffer the driver allocated and filled. */
interface Piece {
  gpa: number;
  data: Uint8Array;
  write: boolean;
}

/** A chain as the driver posted it. */
interface ChainRecord {
  ring: number;
  head: number;
  pieces: Piece[];
  /** Allocations to free once the device is done with it. */
  allocs: number[];
  /** Well-formed (the ring must not stop on it); corrupted chains are never used. */
  intact: boolean;
  /** The device-readable bytes, as the device must read them (intact chains). */
  readable: Uint8Array;
  writableLength: number;
  /** Control commands: the ack the device must write (set when the device takes it; undefined: not checked). */
  ack?: number;
  /**
   * Control commands taken while their ring is being enabled (made available while it was disabled): the device
   * may execute them or discard them; the model before the command, to go back to if it discarded it.
   */
  either?: { filter: FilterModel; mac: Uint8Array; pairsSet: number | undefined };
}

/** A frame some guest sent to a port, as the port's guest may get it. */
interface Candidate {
  frame: Uint8Array;
  csum: { start: number; offset: number } | undefined;
  from: number;
}

/** A receive completion during a transmit. */
interface RxCompletion {
  ring: number;
  wl: number;
  len: number;
}

interface TxExpect {
  kind: 'forward' | 'error' | 'dropped';
  why: string;
  frame?: Uint8Array;
  csum?: { start: number; offset: number };
}

/** The transmit chain the device is working on (everything the switch does for it happens inside). */
interface TxContext {
  sender: PortModel;
  ring: number;
  head: number;
  expect: TxExpect;
  targets: Set<PortModel>;
  accepted: Set<PortModel>;
  before: PortCounters[];
  brokenBefore: boolean[][];
  /** What each accepting port may get of this frame. */
  cands: Map<PortModel, Candidate>;
  rx: Map<PortModel, RxCompletion[]>;
}

interface Inflight {
  writableLength: number;
}

interface FilterModel {
  promisc: boolean;
  allMulti: boolean;
  uni: Set<string>;
  multi: Set<string>;
  uniOver: boolean;
  multiOver: boolean;
}

/** The driver-side state of a frame arriving over several used entries (mergeable buffers). */
interface Assembly {
  /** The frame in flight when the device used the first buffer. */
  expect: Candidate | undefined;
  remaining: number;
  header: Uint8Array;
  parts: Uint8Array[];
}

interface PortModel {
  index: number;
  port: NetPort;
  /** The address the port was made with (it returns to it when its frontend goes). */
  configuredMac: Uint8Array;
  rig: DeviceRig;
  pool: BufferPool;
  features: bigint;
  hdrLen: number;
  mrg: boolean;
  csum: boolean;
  guestCsum: boolean;
  mq: boolean;
  ctrlVq: boolean;
  ctrlRx: boolean;
  ctrlMac: boolean;
  indirect: boolean;
  protocolFeatures: boolean;
  pairs: number;
  ctrlIndex: number;
  mac: Uint8Array;
  filter: FilterModel;
  pairsSet: number | undefined;
  records: Map<number, Map<number, ChainRecord>>;
  inflight: Map<number, Map<number, Inflight>>;
  posted: Map<number, number>;
  popped: Map<number, number>;
  /** Rings a malformed chain (or an avail index jump) was posted on: they may stop. */
  hostileRings: Set<number>;
  /**
   * Rings whose avail ring the driver corrupted: it posts nothing more there (a later post could overwrite an
   * entry the device has not read yet, and then the device may rightly take a head twice).
   */
  poisoned: Set<number>;
  /** Rings kicked with transmit chains still to take (a pass cut short by txBurst continues on a later turn). */
  kickedTx: Set<number>;
  /** The frame in flight when the device completed a receive buffer, by `ring:head`. */
  usedFor: Map<string, Candidate | undefined>;
  assembly: Map<number, Assembly>;
  /** Frames the guest read from its receive rings. */
  delivered: number;
  txTaken: number;
  expForward: number;
  expErrors: number;
  expDropped: number;
}

function activePairs(pm: PortModel): number {
  return pm.mq ? (pm.pairsSet ?? pm.pairs) : 1;
}

function filterAccepts(pm: PortModel, dst: Uint8Array): boolean {
  const f = pm.filter;
  if (f.promisc) return true;
  const key = macKey(dst);
  if ((dst[0]! & 1) !== 0) return key === 'ffffffffffff' || f.allMulti || f.multiOver || f.multi.has(key);
  return key === macKey(pm.mac) || f.uniOver || f.uni.has(key);
}

function ringReady(pm: PortModel, index: number): boolean {
  if (!pm.rig.rings.has(index)) return false;
  const v = pm.rig.vring(index);
  return v.started && v.enabled && v.error === undefined;
}

class NetCase {
  readonly rng: Rng;
  readonly hostile: number;
  readonly ports: PortModel[] = [];
  /** The switch's MAC table as the model learns it: address -> port and when it was last seen. */
  readonly table = new Map<string, { port: PortModel; seen: number }>();
  /** The switch's settings and clock (it learns with the time of its last sweep). */
  maxEntries = 8192;
  agingMs = 1000;
  clock = 0;
  sweptAt = 0;
  /** The switch's counters as the model counts them. */
  readonly counters = { unicast: 0, flooded: 0, hairpin: 0, aged: 0, tableFull: 0 };
  /** Addresses seen as sources (destinations to pick). */
  readonly learned: Uint8Array[] = [];
  readonly violations: unknown[] = [];
  current: TxContext | undefined;
  /** The transmit chain completed last, to account for (see {@link settle}). */
  finished: TxContext | undefined;
  /** The ring SET_VRING_ENABLE(1) is being handled for: what it takes was made available while disabled. */
  enabling: Vring | undefined;

  /** The switch (set once the case made it). */
  sw!: NetSwitch;

  constructor(rng: Rng, hostile: number) {
    this.rng = rng;
    this.hostile = hostile;
  }

  /** Time passes and the switch sweeps: entries not seen for longer than agingMs go. */
  age(): void {
    this.clock += this.rng.pick([0, 300, this.agingMs, this.agingMs + 1, 5 * this.agingMs]);
    let n = 0;
    for (const [key, e] of this.table) {
      if (this.clock - e.seen > this.agingMs) {
        this.table.delete(key);
        n++;
      }
    }
    this.sweptAt = this.clock;
    this.counters.aged += n;
    stats.count('switch-aged', n);
    const got = this.sw.sweep();
    check(got === n, () => `sweep removed ${got} entries, the model ${n}`);
  }

  /** Run `fn`, keeping a violation for later (the device calls our wrappers from code that catches errors). */
  guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.violations.push(err);
    }
  }

  // ---- device-side wrappers ----

  wrap(pm: PortModel): void {
    for (const index of pm.rig.rings.keys()) {
      const v = pm.rig.vring(index);
      const kind: Kind = index === pm.ctrlIndex ? 'ctrl' : (index & 1) === 1 ? 'tx' : 'rx';
      const pop = v.pop.bind(v);
      const popSingle = v.popSingle.bind(v);
      const complete = v.complete.bind(v);
      const completeHead = v.completeHead.bind(v);
      const inflight = new Map<number, Inflight>();
      pm.inflight.set(index, inflight);
      v.pop = () => {
        const chain = pop();
        if (chain !== null) this.guard(() => this.onPop(pm, index, kind, v, chain.head, chain));
        return chain;
      };
      v.popSingle = () => {
        const head = popSingle();
        if (head >= 0) this.guard(() => this.onPop(pm, index, kind, v, head, null));
        return head;
      };
      // Vring.complete completes through completeHead: content checks here, the bookkeeping there.
      v.complete = (chain, len) => {
        this.guard(() => this.onComplete(pm, index, kind, v, chain, len));
        complete(chain, len);
      };
      v.completeHead = (head, len) => {
        this.guard(() => this.onCompleteHead(pm, index, kind, head, len));
        completeHead(head, len);
      };
    }
  }

  onPop(pm: PortModel, index: number, kind: Kind, v: Vring, head: number, chain: DescriptorChain | null): void {
    const inflight = pm.inflight.get(index)!;
    check(!inflight.has(head), () => `${pm.port.name} queue ${index}: head ${head} popped while the device holds it`);
    inflight.set(head, { writableLength: chain?.writableLength ?? 0 });
    pm.popped.set(index, (pm.popped.get(index) ?? 0) + 1);
    let readable: Uint8Array;
    if (chain !== null) {
      readable = Buffer.concat(chain.readable);
    } else {
      const s = v.single;
      const r = s.region!;
      readable = r.bytes.slice(s.offset - r.mmapOffset, s.offset - r.mmapOffset + s.length);
      check(kind === 'tx', `${pm.port.name} queue ${index}: popSingle on a ${kind} queue`);
    }
    const rec = pm.records.get(index)?.get(head);
    check(rec !== undefined, () => `${pm.port.name} queue ${index}: popped head ${head}, which the driver did not post`);
    // Recorded, not thrown: the bookkeeping below must go on, or every later check fails for this one reason.
    this.guard(() => {
      check(rec.intact, () => `${pm.port.name} queue ${index}: a malformed chain (head ${head}) was taken without stopping the ring`);
      check(Buffer.compare(readable, rec.readable) === 0 && (chain?.writableLength ?? 0) === rec.writableLength,
        () => `${pm.port.name} queue ${index}: chain ${head} read as ${readable.length} readable/` +
          `${chain?.writableLength ?? 0} writable bytes, the driver posted ${rec.readable.length}/${rec.writableLength} ` +
          '(or other bytes)');
    });
    if (kind === 'tx') {
      stats.count(chain === null ? 'tx-pop-single' : 'tx-pop-chain');
      this.onTxPop(pm, index, v, head, readable);
    } else if (kind === 'rx') {
      const ctx = this.current;
      check(ctx !== undefined, () => `${pm.port.name} queue ${index}: a receive buffer was taken with no frame in flight`);
      check(ctx.sender !== pm, () => `${pm.port.name}: a frame it sent came back to its own receive queue ${index}`);
      check(v.enabled, () => `${pm.port.name}: a frame was put on disabled receive queue ${index}`);
      check(index / 2 < activePairs(pm), () => `${pm.port.name}: a frame on receive queue ${index}, but only ` +
        `${activePairs(pm)} pair(s) are active`);
    } else {
      if (v.enabled && this.enabling === v) {
        const f = pm.filter;
        rec.either = { filter: { ...f, uni: new Set(f.uni), multi: new Set(f.multi) }, mac: pm.mac, pairsSet: pm.pairsSet };
      }
      rec.ack = this.ctrlExpect(pm, v, readable, chain!.writableLength);
    }
  }

  onComplete(pm: PortModel, index: number, kind: Kind, v: Vring, chain: DescriptorChain, len: number): void {
    check(Number.isInteger(len) && len >= 0 && len <= chain.writableLength,
      () => `${pm.port.name} queue ${index}: used length ${len} for a chain with ${chain.writableLength} writable bytes`);
    if (kind === 'rx') {
      const ctx = this.current;
      check(ctx !== undefined, () => `${pm.port.name} queue ${index}: a receive buffer completed with no frame in flight`);
      let list = ctx.rx.get(pm);
      if (list === undefined) ctx.rx.set(pm, (list = []));
      list.push({ ring: index, wl: chain.writableLength, len });
      // The driver will read this buffer as (part of) the frame in flight now.
      pm.usedFor.set(`${index}:${chain.head}`, ctx.cands.get(pm));
    } else if (kind === 'ctrl') {
      const rec = pm.records.get(index)!.get(chain.head)!;
      if (rec.either !== undefined && this.portStateDiff(pm) !== undefined) {
        // Not executed (discarded as made available while the ring was disabled): nothing changed, ack unspecified.
        pm.filter = rec.either.filter;
        pm.mac = rec.either.mac;
        pm.pairsSet = rec.either.pairsSet;
        rec.ack = undefined;
        stats.count('ctrl-discarded-at-enable');
      }
      // An executed command is acked in its first writable byte; one not executed (disabled ring) may be given back
      // unacked.
      const acked = chain.writableLength >= 1 ? 1 : 0;
      check(len === acked || (rec.ack === undefined && len === 0),
        () => `${pm.port.name}: control command completed with used length ${len} (${chain.writableLength} writable bytes)`);
      if (rec.ack !== undefined && chain.writableLength >= 1) {
        const got = chain.writable[0]![0];
        check(got === rec.ack, () => `${pm.port.name}: control command ${rec.readable[0]}/${rec.readable[1]} acked ${got}, ` +
          `expected ${rec.ack}`);
      }
      const diff = this.portStateDiff(pm);
      check(diff === undefined, () => `${pm.port.name}: state after a control command on a${v.enabled ? 'n enabled' : ' disabled'} ` +
        `ring differs from the model (device/model): ${diff}`);
    }
  }

  onCompleteHead(pm: PortModel, index: number, kind: Kind, head: number, len: number): void {
    const inflight = pm.inflight.get(index)!;
    const f = inflight.get(head);
    check(f !== undefined, () => `${pm.port.name} queue ${index}: head ${head} completed twice, or never popped`);
    inflight.delete(head);
    check(len >= 0 && len <= f.writableLength, () => `${pm.port.name} queue ${index}: used length ${len} for head ${head} ` +
      `(${f.writableLength} writable bytes)`);
    if (kind === 'tx') {
      check(len === 0, () => `${pm.port.name} queue ${index}: transmit chain completed with used length ${len}`);
      const ctx = this.current;
      check(ctx !== undefined && ctx.sender === pm && ctx.ring === index && ctx.head === head,
        () => `${pm.port.name} queue ${index}: transmit head ${head} completed, but it is not the chain in flight`);
      // Accounted when the next chain starts (or at the step's end): counters may move right after the
      // completion (a discarded chain is counted once it is given back).
      this.current = undefined;
      this.finished = ctx;
    }
  }

  // ---- transmit ----

  txExpect(pm: PortModel, v: Vring, r: Uint8Array): TxExpect {
    if (!v.enabled || this.enabling === v) return { kind: 'dropped', why: 'ring-disabled' };
    const len = r.length - pm.hdrLen;
    if (len < ETH_HLEN) return { kind: 'error', why: 'short' };
    if (len > MAX_FRAME) return { kind: 'error', why: 'long' };
    if (r[1] !== 0) return { kind: 'error', why: 'gso' };
    const frame = r.slice(pm.hdrLen);
    if ((r[0]! & NEEDS_CSUM) !== 0) {
      const start = r[6]! | (r[7]! << 8);
      const offset = r[8]! | (r[9]! << 8);
      if (!pm.csum) return { kind: 'error', why: 'csum-not-negotiated' };
      if (start + offset + 2 > len) return { kind: 'error', why: 'csum-range' };
      return { kind: 'forward', why: 'csum', frame, csum: { start, offset } };
    }
    return { kind: 'forward', why: 'plain', frame };
  }

  onTxPop(pm: PortModel, index: number, v: Vring, head: number, r: Uint8Array): void {
    check(this.current === undefined, () => `${pm.port.name} queue ${index}: transmit chain taken inside another's forwarding`);
    this.guard(() => this.settle());
    pm.txTaken++;
    const expect = this.txExpect(pm, v, r);
    stats.count(`tx-${expect.kind}-${expect.why}`);
    const targets = new Set<PortModel>();
    const accepted = new Set<PortModel>();
    const cands = new Map<PortModel, Candidate>();
    if (expect.kind === 'forward') {
      pm.expForward++;
      const frame = expect.frame!;
      const dst = frame.subarray(0, 6);
      const src = frame.subarray(6, 12);
      if ((src[0]! & 1) === 0) {
        const key = macKey(src);
        const entry = this.table.get(key);
        if (entry !== undefined) {
          if (entry.port !== pm) stats.count('switch-station-moved');
          entry.port = pm;
          entry.seen = this.sweptAt;
        } else if (this.table.size >= this.maxEntries) {
          this.counters.tableFull++;
          stats.count('switch-table-full');
        } else {
          this.table.set(key, { port: pm, seen: this.sweptAt });
          this.learned.push(src.slice());
        }
      }
      const known = (dst[0]! & 1) === 0 ? this.table.get(macKey(dst))?.port : undefined;
      if (known === pm) {
        this.counters.hairpin++;
        stats.count('switch-hairpin');
      } else if (known !== undefined) {
        targets.add(known);
        this.counters.unicast++;
        stats.count('switch-unicast');
      } else {
        for (const p of this.ports) if (p !== pm) targets.add(p);
        this.counters.flooded++;
        stats.count('switch-flood');
      }
      for (const p of targets) {
        if (!filterAccepts(p, dst)) continue;
        accepted.add(p);
        cands.set(p, { frame, csum: expect.csum, from: pm.index });
      }
    } else if (expect.kind === 'error') {
      pm.expErrors++;
    } else {
      pm.expDropped++;
    }
    this.current = {
      sender: pm, ring: index, head, expect, targets, accepted, cands, rx: new Map(),
      before: this.ports.map((p) => p.port.stats.snapshot()),
      brokenBefore: this.ports.map((p) => this.brokenRings(p)),
    };
  }

  brokenRings(pm: PortModel): boolean[] {
    return Array.from({ length: pm.port.numQueues }, (_, i) => pm.rig.rings.has(i) && pm.rig.vring(i).error !== undefined);
  }

  /** Account for the last transmit chain completed, if not yet done. */
  settle(): void {
    const ctx = this.finished;
    this.finished = undefined;
    if (ctx !== undefined) this.finishTx(ctx);
  }

  /** The transmit chain is done: every port's counters moved exactly as the model says. */
  finishTx(ctx: TxContext): void {
    const after = this.ports.map((p) => p.port.stats.snapshot());
    const S = ctx.sender;
    const e = ctx.expect;
    const delta = (p: PortModel, k: keyof PortCounters): number => after[p.index]![k] - ctx.before[p.index]![k];
    const deltas = (p: PortModel): string => COUNTER_NAMES.map((k) => `${k}${delta(p, k) >= 0 ? '+' : ''}${delta(p, k)}`)
      .filter((s) => !s.endsWith('+0')).join(' ');
    const where = `${S.port.name} queue ${ctx.ring} head ${ctx.head} (${e.kind}/${e.why})`;
    check(delta(S, 'txErrors') === (e.kind === 'error' ? 1 : 0) && delta(S, 'txDropped') === (e.kind === 'dropped' ? 1 : 0),
      () => `${where}: sender counters ${deltas(S)}`);
    for (const k of ['rxPackets', 'rxBytes', 'rxDropped', 'rxFiltered', 'rxErrors', 'csumComputed'] as const) {
      check(delta(S, k) === 0, () => `${where}: the sender's receive counters moved: ${deltas(S)}`);
    }
    let csumDone = 0;
    let csumEligible = false;
    for (const Q of this.ports) {
      if (Q === S) continue;
      const comps = ctx.rx.get(Q) ?? [];
      const d = (k: keyof PortCounters): number => delta(Q, k);
      const at = `${where} -> ${Q.port.name}`;
      const moved = d('rxPackets') + d('rxDropped') + d('rxErrors') + d('rxFiltered');
      if (!ctx.targets.has(Q)) {
        check(moved === 0 && comps.length === 0 && d('csumComputed') === 0,
          () => `${at}: not a destination, but counters ${deltas(Q)}, ${comps.length} buffer(s) used`);
        continue;
      }
      if (!ctx.accepted.has(Q)) {
        check(d('rxFiltered') === 1 && moved === 1 && comps.length === 0,
          () => `${at}: its filter refuses the frame, but counters ${deltas(Q)}, ${comps.length} buffer(s) used`);
        stats.count('rx-filtered');
        continue;
      }
      check(moved === 1 && d('rxFiltered') === 0, () => `${at}: accepted destination, counters ${deltas(Q)}`);
      check(d('csumComputed') <= 1, () => `${at}: checksum computed ${d('csumComputed')} times`);
      csumDone += d('csumComputed');
      const flen = e.frame!.length;
      const need = Q.hdrLen + flen;
      if (comps.length === 0) {
        check(d('rxDropped') === 1, () => `${at}: no buffer used, counters ${deltas(Q)}`);
        this.checkDropFair(ctx, Q, at);
        stats.count('rx-dropped');
        continue;
      }
      if (e.csum && !Q.guestCsum) csumEligible = true;
      const lens = comps.map((c) => c.len).join(',');
      if (!Q.mrg) {
        check(comps.length === 1, () => `${at}: ${comps.length} buffers used without MRG_RXBUF`);
        const c = comps[0]!;
        if (c.wl >= need) {
          check(c.len === need && d('rxPackets') === 1 && d('rxBytes') === flen,
            () => `${at}: ${need}-byte frame+header into a ${c.wl}-byte buffer: used ${c.len}, counters ${deltas(Q)}`);
          stats.count('rx-delivered');
        } else {
          check(c.len === 0 && d('rxErrors') === 1,
            () => `${at}: ${need} bytes do not fit a ${c.wl}-byte buffer: used ${c.len}, counters ${deltas(Q)}`);
          stats.count('rx-too-small');
        }
        continue;
      }
      let room = 0;
      let k = 0;
      while (k < comps.length && room < need) room += comps[k++]!.wl;
      check(k === comps.length, () => `${at}: ${comps.length} buffers taken (${comps.map((c) => c.wl).join(',')} bytes) ` +
        `for ${need} bytes: more than needed`);
      if (room < need || comps[0]!.wl < Q.hdrLen) {
        check(comps.every((c) => c.len === 0), () => `${at}: undeliverable frame, but used lengths ${lens}`);
        if (room < need) check(d('rxDropped') === 1, () => `${at}: out of buffers, counters ${deltas(Q)}`);
        else check(d('rxErrors') === 1, () => `${at}: first buffer too small for the header, counters ${deltas(Q)}`);
        stats.count(room < need ? 'rx-merge-out-of-buffers' : 'rx-merge-first-too-small');
        continue;
      }
      let off = 0;
      const want: number[] = [];
      comps.forEach((c, j) => {
        const start = j === 0 ? Q.hdrLen : 0;
        const n = Math.max(0, Math.min(c.wl - start, flen - off));
        off += n;
        want.push(start + n);
      });
      check(want.join(',') === lens && d('rxPackets') === 1 && d('rxBytes') === flen,
        () => `${at}: merged frame of ${flen} bytes over buffers of ${comps.map((c) => c.wl).join(',')}: used ${lens}, ` +
          `expected ${want.join(',')}; counters ${deltas(Q)}`);
      check(new Set(comps.map((c) => c.ring)).size === 1, () => `${at}: one frame over several receive queues`);
      stats.count(comps.length > 1 ? 'rx-delivered-merged' : 'rx-delivered');
    }
    if (e.kind === 'forward') {
      check(csumDone === (csumEligible ? 1 : 0), () => `${where}: checksum completed ${csumDone} time(s), ` +
        `expected ${csumEligible ? 1 : 0}`);
      if (csumDone > 0) stats.count('rx-csum-completed');
    }
  }

  /**
   * A frame for `Q` was dropped without taking a buffer: fair only if no receive ring could take it (the device
   * picks among the ready rings of the active pairs; one with buffers must take the frame when every ready ring
   * has buffers, since whichever it picked had some). Rings that stopped meanwhile (a malformed chain) excuse it.
   */
  checkDropFair(ctx: TxContext, Q: PortModel, at: string): void {
    const now = this.brokenRings(Q);
    if (now.some((b, i) => b && !ctx.brokenBefore[Q.index]![i])) return;
    const ready: number[] = [];
    for (let q = 0; q < activePairs(Q); q++) if (ringReady(Q, 2 * q)) ready.push(2 * q);
    const waiting = (i: number): number => (Q.posted.get(i) ?? 0) - (Q.popped.get(i) ?? 0);
    check(ready.length === 0 || !ready.every((i) => waiting(i) > 0),
      () => `${at}: frame dropped although receive queue(s) ${ready.join(',')} had ` +
        `${ready.map(waiting).join(',')} buffer chain(s) posted`);
  }

  // ---- control ----

  /** What a command does (applied to the model now: the device executes it before completing); the ack to expect. */
  ctrlExpect(pm: PortModel, v: Vring, r: Uint8Array, wl: number): number | undefined {
    if (!v.enabled) {
      stats.count('ctrl-disabled-ring');
      return undefined; // no side effects allowed; the ack is not specified
    }
    if (!pm.ctrlVq || wl < 1 || r.length < 2 || r.length > MAX_CTRL_REQUEST) {
      stats.count('ctrl-refused');
      return ERR;
    }
    const cls = r[0]!;
    const cmd = r[1]!;
    const data = r.subarray(2);
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    const f = pm.filter;
    let ack = ERR;
    if (cls === RX) {
      if (pm.ctrlRx && data.length === 1 && (cmd === 0 || cmd === 1)) {
        if (cmd === 0) f.promisc = data[0] !== 0;
        else f.allMulti = data[0] !== 0;
        ack = OK;
      }
    } else if (cls === MAC && cmd === 0) {
      if (pm.ctrlRx && data.length >= 4) {
        const n1 = dv.getUint32(0, true);
        const at2 = 4 + 6 * n1;
        if (at2 + 4 <= data.length) {
          const n2 = dv.getUint32(at2, true);
          if (at2 + 4 + 6 * n2 === data.length) {
            const list = (at: number, n: number): string[] => Array.from({ length: n }, (_, i) => macKey(data, at + 6 * i));
            f.uni = new Set(n1 > MAC_TABLE_ENTRIES ? [] : list(4, n1));
            f.multi = new Set(n2 > MAC_TABLE_ENTRIES ? [] : list(at2 + 4, n2));
            f.uniOver = n1 > MAC_TABLE_ENTRIES;
            f.multiOver = n2 > MAC_TABLE_ENTRIES;
            ack = OK;
          }
        }
      }
    } else if (cls === MAC && cmd === 1) {
      if (pm.ctrlMac && data.length === 6 && (data[0]! & 1) === 0) {
        pm.mac = data.slice();
        ack = OK;
      }
    } else if (cls === MQ && cmd === 0) {
      if (pm.mq && data.length === 2) {
        const n = dv.getUint16(0, true);
        if (n >= 1 && n <= pm.pairs) {
          pm.pairsSet = n;
          ack = OK;
        }
      }
    }
    const name = cls === RX && cmd <= 1 ? ['promisc', 'allmulti'][cmd]! : cls === MAC && cmd <= 1 ? ['table', 'addr'][cmd]!
      : cls === MQ && cmd === 0 ? 'pairs' : 'other';
    stats.count(`ctrl-${name}-${ack === OK ? 'ok' : 'err'}`);
    return ack;
  }

  /** Undefined when the device's filter, address and pairs are the model's; else both, side by side. */
  portStateDiff(pm: PortModel): string | undefined {
    const f = pm.port.filter;
    const m = pm.filter;
    const keys = (s: Set<number>): string => [...s].map((k) => k.toString(16).padStart(12, '0')).sort().join(',');
    const same = f.promiscuous === m.promisc && f.allMulticast === m.allMulti && f.unicastOverflow === m.uniOver &&
      f.multicastOverflow === m.multiOver && keys(f.unicast) === [...m.uni].sort().join(',') &&
      keys(f.multicast) === [...m.multi].sort().join(',') && pm.port.mac.replaceAll(':', '') === macKey(pm.mac) &&
      pm.port.activeQueuePairs === activePairs(pm);
    if (same) return undefined;
    return `promisc ${f.promiscuous}/${m.promisc}, allmulti ${f.allMulticast}/${m.allMulti}, ` +
      `overflow ${f.unicastOverflow}/${m.uniOver} ${f.multicastOverflow}/${m.multiOver}, mac ${pm.port.mac}/${macKey(pm.mac)}, ` +
      `pairs ${pm.port.activeQueuePairs}/${activePairs(pm)}, tables ${keys(f.unicast)}|${keys(f.multicast)} / ` +
      `${[...m.uni].sort().join(',')}|${[...m.multi].sort().join(',')}`;
  }

  // ---- the driver side ----

  /**
   * Allocate, fill and post a chain. `corrupt` makes it malformed (the ring may then stop). Returns the record, or
   * undefined when there was no room (ring or memory).
   */
  post(pm: PortModel, ring: number, parts: { write: boolean; data: Uint8Array }[],
    opts: { align?: number; skew?: number; cross?: boolean; indirect?: boolean; corrupt?: string } = {}): ChainRecord | undefined {
    const rng = this.rng;
    const dr = pm.rig.rings.get(ring);
    if (dr === undefined || parts.length === 0 || pm.poisoned.has(ring)) return undefined;
    const pieces: Piece[] = [];
    const allocs: number[] = [];
    const undo = (): undefined => {
      for (const a of allocs) pm.pool.free(a);
      return undefined;
    };
    for (const p of parts) {
      const gpa = pm.pool.alloc(rng, p.data.length, opts.align ?? rng.pick([1, 2, 4, 8, 16]), opts.skew ?? 0,
        opts.cross ?? false);
      if (gpa === undefined) return undo();
      allocs.push(gpa);
      pm.rig.mem.write(gpa, p.data);
      pieces.push({ gpa, data: p.data, write: p.write });
    }
    const specs: BufferSpec[] = pieces.map((p) => ({ addr: BigInt(p.gpa), len: p.data.length, write: p.write }));
    let intact = true;
    const k = rng.int(specs.length);
    switch (opts.corrupt) {
      case 'zero-length':
        specs[k]!.len = 0;
        break;
      case 'huge':
        specs[k]!.len = 0xffffffff;
        break;
      case 'unbacked':
        specs[k]!.addr = unbacked(rng, pm.rig.mem);
        break;
      case 'order':
        // A readable descriptor after a writable one.
        if (specs.some((s) => s.write)) specs.push({ addr: specs[0]!.addr, len: 1, write: false });
        else specs.unshift({ addr: specs[0]!.addr, len: 1, write: true });
        break;
      default:
    }
    if (opts.corrupt !== undefined) {
      intact = false;
      stats.count(`corrupt-${opts.corrupt}`);
    }
    let table: number | undefined;
    const indirect = opts.indirect === true || opts.corrupt === 'indirect-unbacked' || specs.length > dr.freeCount;
    if (indirect) {
      if (!pm.indirect || specs.length > dr.size) {
        // Not negotiated, or more entries than the queue size: a malformed chain, only from hostile guests.
        if (rng.chance(1 - this.hostile)) return undo();
        intact = false;
        stats.count('corrupt-indirect');
      }
      table = pm.pool.alloc(rng, 16 * specs.length, 16);
      if (table === undefined) return undo();
      allocs.push(table);
    }
    if (dr.freeCount === 0) return undo();
    const head = dr.post(specs, table);
    if (head === undefined) return undo();
    if (opts.corrupt === 'indirect-unbacked') {
      // The table written, then the descriptor pointing at it moved where nothing is.
      const d = dr.readDescriptor(head);
      d.addr = unbacked(rng, pm.rig.mem);
      dr.writeDescriptor(head, d);
    }
    const readable = Buffer.concat(pieces.filter((p) => !p.write).map((p) => p.data));
    const rec: ChainRecord = {
      ring, head, pieces, allocs, intact, readable,
      writableLength: pieces.filter((p) => p.write).reduce((n, p) => n + p.data.length, 0),
    };
    let map = pm.records.get(ring);
    if (map === undefined) pm.records.set(ring, (map = new Map()));
    check(!map.has(head), () => `driver bug: head ${head} of queue ${ring} reused while in flight`);
    map.set(head, rec);
    pm.posted.set(ring, (pm.posted.get(ring) ?? 0) + 1);
    if (!intact) pm.hostileRings.add(ring);
    return rec;
  }

  corruption(): string | undefined {
    const rng = this.rng;
    if (!rng.chance(this.hostile / 2)) return undefined;
    return rng.pick(['zero-length', 'huge', 'unbacked', 'order', 'indirect-unbacked']);
  }

  /** A frame from `pm`: addresses chosen to exercise learning, flooding, filters and hairpins. */
  frame(pm: PortModel): Uint8Array {
    const rng = this.rng;
    const h = this.hostile;
    const len = rng.weighted<number>([[8, rng.range(14, 128)], [5, rng.range(129, 1514)], [1, rng.range(1515, 9018)],
      [0.2, MAX_FRAME], [0.2, rng.range(MAX_FRAME - 300, MAX_FRAME)], [0.3 + h * 5, rng.range(0, 13)],
      [0.1 + h * 2, MAX_FRAME + rng.range(1, 40)]]);
    const f = new Uint8Array(len);
    if (len <= 4096) rng.fill(f);
    else {
      f.fill(rng.int(256));
      for (let i = 0; i < 64; i++) f[rng.int(len)] = rng.int(256);
    }
    const others = this.ports.filter((p) => p !== pm);
    const dst = rng.weighted<Uint8Array>([[3, BROADCAST], [2, randomMulticast(rng)], [6, rng.pick(others).mac],
      [2, this.learned.length > 0 ? rng.pick(this.learned) : BROADCAST], [1, pm.mac], [2, randomUnicast(rng)]]);
    const src = rng.weighted<Uint8Array>([[10, pm.mac], [2, randomUnicast(rng)], [0.5, rng.pick(others).mac],
      [0.5, this.learned.length > 0 ? rng.pick(this.learned) : pm.mac], [0.3, randomMulticast(rng)]]);
    const head = new Uint8Array(14);
    head.set(dst, 0);
    head.set(src, 6);
    const type = rng.weighted<number>([[4, 0x0800], [2, 0x86dd], [1, 0x0806], [1, rng.int(0x10000)]]);
    head[12] = type >> 8;
    head[13] = type & 0xff;
    f.set(head.subarray(0, Math.min(14, len)));
    if (type === 0x0800 && len >= 34) {
      f[14] = rng.chance(0.9) ? 0x45 : rng.int(256);
      f[20] = rng.chance(0.9) ? 0 : rng.int(256);
      f[21] = 0;
      f[23] = rng.pick([6, 17, 17, 1, rng.int(256)]);
    } else if (type === 0x86dd && len >= 54) {
      f[20] = rng.pick([6, 17, 58]);
    }
    return f;
  }

  /** The virtio-net header for a frame of `len` bytes from `pm`. */
  txHeader(pm: PortModel, len: number): Uint8Array {
    const rng = this.rng;
    const h = new Uint8Array(pm.hdrLen);
    const dv = new DataView(h.buffer);
    const needs = pm.csum ? rng.chance(0.35) : rng.chance(this.hostile);
    h[0] = (needs ? NEEDS_CSUM : 0) | (rng.chance(0.05) ? DATA_VALID : 0);
    h[1] = rng.weighted<number>([[30, 0], [0.3 + this.hostile * 10, rng.pick([1, 3, 4, 0x81, 5, 0x80])]]);
    if (rng.chance(0.1)) {
      dv.setUint16(2, rng.int(0x10000), true);
      dv.setUint16(4, rng.int(0x10000), true);
    }
    if (needs) {
      let start: number;
      let offset: number;
      const mode = rng.weighted<string>([[3, 'ip'], [4, 'in'], [0.5, 'edge'], [1 + this.hostile * 5, 'out']]);
      if (mode === 'ip' && len >= 34 + 18) {
        start = 34;
        offset = rng.pick([6, 16]);
      } else if (mode === 'edge' || (mode !== 'out' && len >= 2 && rng.chance(0.2))) {
        start = Math.max(0, len - 2 - rng.int(Math.min(len - 1, 8)));
        offset = Math.max(0, len - 2 - start);
      } else if (mode === 'out' || len < 2) {
        start = rng.pick([len - 1, len, 0xffff, rng.int(0x10000)]) & 0xffff;
        offset = rng.pick([0, 1, 0xffff, rng.int(0x10000), Math.max(0, len - start - 1)]) & 0xffff;
      } else {
        start = rng.int(Math.min(len - 1, 0x10000));
        offset = rng.int(Math.min(len - start - 1, 0x10000));
      }
      dv.setUint16(6, start & 0xffff, true);
      dv.setUint16(8, offset & 0xffff, true);
    } else if (rng.chance(0.2)) {
      dv.setUint16(6, rng.int(0x10000), true);
      dv.setUint16(8, rng.int(0x10000), true);
    }
    if (pm.hdrLen === 12) dv.setUint16(10, rng.pick([0, 1, rng.int(0x10000)]), true);
    return h;
  }

  /** Post one frame on transmit queue `ring` of `pm`, in a random layout. */
  postFrame(pm: PortModel, ring: number): boolean {
    const rng = this.rng;
    const f = this.frame(pm);
    const r = new Uint8Array(pm.hdrLen + f.length);
    r.set(this.txHeader(pm, f.length));
    r.set(f, pm.hdrLen);
    const layout = rng.weighted<string>([[8, 'one'], [3, 'header-own'], [3, 'split'], [1.5, 'cross'], [1, 'writable-tail']]);
    stats.count(`tx-layout-${layout}`);
    let parts: { write: boolean; data: Uint8Array }[];
    const opts: { align?: number; skew?: number; cross?: boolean; indirect?: boolean; corrupt?: string } = {};
    if (layout === 'one' || layout === 'cross') {
      parts = [{ write: false, data: r }];
      if (layout === 'cross') opts.cross = true;
      else if (rng.chance(0.3)) {
        opts.align = 4;
        opts.skew = rng.range(1, 3);
        stats.count('tx-misaligned');
      } else {
        opts.align = rng.pick([4, 8, 64]);
      }
    } else if (layout === 'header-own') {
      parts = [{ write: false, data: r.subarray(0, pm.hdrLen) }, { write: false, data: r.subarray(pm.hdrLen) }];
    } else {
      const cuts = new Set<number>();
      for (let i = rng.range(1, 4); i > 0; i--) {
        cuts.add(rng.weighted<number>([[3, rng.int(r.length)], [1, rng.int(pm.hdrLen + 1)], [1, pm.hdrLen + rng.int(13)]]));
      }
      const sorted = [...cuts].filter((c) => c > 0 && c < r.length).sort((a, b) => a - b);
      parts = [];
      let at = 0;
      for (const c of [...sorted, r.length]) {
        parts.push({ write: false, data: r.subarray(at, c) });
        at = c;
      }
      if (layout === 'writable-tail') {
        for (let i = rng.range(1, 2); i > 0; i--) parts.push({ write: true, data: rng.bytes(rng.pick([1, 12, 100])) });
      }
    }
    parts = parts.filter((p) => p.data.length > 0);
    if (parts.length === 0) return false;
    if (pm.indirect && rng.chance(0.2)) opts.indirect = true;
    else if (!pm.indirect && rng.chance(this.hostile / 4)) opts.indirect = true;
    opts.corrupt = this.corruption();
    return this.post(pm, ring, parts, opts) !== undefined;
  }

  /** Post one receive chain on `ring` of `pm`. */
  postRx(pm: PortModel, ring: number): boolean {
    const rng = this.rng;
    const frameMax = pm.hdrLen + 1514;
    const size = rng.weighted<number>([[4, frameMax], [3, 2048], [2, 4096], [2, rng.range(pm.hdrLen, 200)],
      [1, rng.range(1, pm.hdrLen - 1)], [1, pm.hdrLen], [0.4, pm.hdrLen + MAX_FRAME], [0.3, 65536], [1, rng.range(1, 9000)]]);
    const data = new Uint8Array(size);
    data.fill(rng.int(256));
    if (size <= 256) rng.fill(data);
    const shape = rng.weighted<string>([[7, 'one'], [2, 'split'], [1, 'readable-first'], [0.5, 'readable-only']]);
    stats.count(`rx-shape-${shape}`);
    let parts: { write: boolean; data: Uint8Array }[];
    if (shape === 'split' && size > 1) {
      const cut = rng.weighted<number>([[2, rng.range(1, size - 1)], [1, Math.min(size - 1, rng.range(1, pm.hdrLen))]]);
      parts = [{ write: true, data: data.subarray(0, cut) }, { write: true, data: data.subarray(cut) }];
      if (rng.chance(0.3) && parts[1]!.data.length > 1) {
        const b = parts[1]!.data;
        const c2 = rng.range(1, b.length - 1);
        parts = [parts[0]!, { write: true, data: b.subarray(0, c2) }, { write: true, data: b.subarray(c2) }];
      }
    } else if (shape === 'readable-first') {
      parts = [{ write: false, data: rng.bytes(rng.range(1, 16)) }, { write: true, data }];
    } else if (shape === 'readable-only') {
      parts = [{ write: false, data: data.subarray(0, Math.min(size, 64)) }];
    } else {
      parts = [{ write: true, data }];
    }
    const opts: { cross?: boolean; indirect?: boolean; corrupt?: string } = {};
    if (rng.chance(0.1)) opts.cross = true;
    if (pm.indirect && rng.chance(0.15)) opts.indirect = true;
    opts.corrupt = this.corruption();
    return this.post(pm, ring, parts, opts) !== undefined;
  }

  /** A control command (Linux's layout: class/command, data, ack), often malformed. */
  postCtrl(pm: PortModel): boolean {
    const rng = this.rng;
    const h = this.hostile;
    const cmd = rng.weighted<string>([[4, 'promisc'], [3, 'allmulti'], [0.5, 'rx-other'], [4, 'table'], [2, 'addr'],
      [2, 'pairs'], [0.5, 'other']]);
    let hdr: number[];
    let data: Uint8Array;
    const someMac = (): Uint8Array => rng.weighted<Uint8Array>([[3, rng.pick(this.ports).mac], [2, randomUnicast(rng)],
      [2, randomMulticast(rng)], [1, BROADCAST], [1, this.learned.length > 0 ? rng.pick(this.learned) : BROADCAST]]);
    switch (cmd) {
      case 'promisc':
      case 'allmulti':
        hdr = [RX, cmd === 'promisc' ? 0 : 1];
        data = Uint8Array.of(rng.weighted<number>([[5, 0], [3, 1], [1, rng.int(256)]]));
        break;
      case 'rx-other':
        hdr = [RX, rng.range(2, 8)];
        data = Uint8Array.of(1);
        break;
      case 'table': {
        hdr = [MAC, 0];
        const count = (): number => rng.weighted<number>([[4, rng.range(0, 3)], [1, MAC_TABLE_ENTRIES],
          [1, MAC_TABLE_ENTRIES + 1], [0.5, rng.range(65, 200)]]);
        const n1 = count();
        const n2 = count();
        const unis = Array.from({ length: n1 }, () => (rng.chance(0.7) ? someMac() : randomUnicast(rng)));
        const multis = Array.from({ length: n2 }, () => (rng.chance(0.7) ? randomMulticast(rng) : someMac()));
        // Lying counts: what the header says is not what follows.
        const lie = (n: number): number => (rng.chance(0.1 + h) ? rng.pick([n + 1, Math.max(0, n - 1), 0xffffffff, 0x2aaaaaab]) : n);
        const out = Buffer.alloc(8 + 6 * (n1 + n2));
        out.writeUInt32LE(lie(n1), 0);
        unis.forEach((m, i) => out.set(m, 4 + 6 * i));
        out.writeUInt32LE(lie(n2) >>> 0, 4 + 6 * n1);
        multis.forEach((m, i) => out.set(m, 8 + 6 * n1 + 6 * i));
        data = out;
        break;
      }
      case 'addr':
        hdr = [MAC, 1];
        data = someMac().slice();
        break;
      case 'pairs': {
        hdr = [MQ, rng.chance(0.9) ? 0 : rng.range(1, 3)];
        const n = rng.weighted<number>([[5, rng.range(1, pm.pairs)], [1, 0], [1, pm.pairs + 1], [0.5, 0xffff]]);
        data = Uint8Array.of(n & 0xff, n >> 8);
        break;
      }
      default:
        hdr = [rng.pick([2, 3, 5, rng.int(256)]), rng.int(256)];
        data = rng.bytes(rng.int(8));
    }
    // Truncated or padded commands.
    if (rng.chance(0.05 + h)) data = data.subarray(0, rng.int(data.length + 1));
    else if (rng.chance(0.03 + h / 2)) data = Buffer.concat([data, rng.bytes(rng.range(1, 4))]);
    const parts: { write: boolean; data: Uint8Array }[] = [];
    const cmdBytes = Uint8Array.from(hdr);
    if (rng.chance(0.2)) parts.push({ write: false, data: Buffer.concat([cmdBytes, data]) });
    else {
      parts.push({ write: false, data: rng.chance(0.05 + h) ? cmdBytes.subarray(0, 1) : cmdBytes });
      if (data.length > 0) parts.push({ write: false, data });
    }
    const ack = rng.weighted<number>([[10, 1], [1, rng.range(2, 8)], [0.5 + h * 5, 0]]);
    if (ack > 0) parts.push({ write: true, data: Uint8Array.of(...Array.from({ length: ack }, () => 0xee)) });
    stats.count(`ctrl-posted-${cmd}`);
    return this.post(pm, pm.ctrlIndex, parts, { corrupt: this.corruption() }) !== undefined;
  }

  // ---- after each action ----

  /**
   * Everything the action set off is done: no violation recorded, nothing held, used rings as the model says,
   * untouched buffers untouched, counters adding up.
   */
  checkStep(where: string): void {
    this.guard(() => this.settle());
    if (this.violations.length > 0) throw this.violations[0];
    check(this.current === undefined, () => `${where}: a transmit chain is still in flight`);
    for (const pm of this.ports) {
      for (const index of pm.rig.rings.keys()) {
        const v = pm.rig.vring(index);
        check(v.inflightCount === 0, () => `${where}: ${pm.port.name} queue ${index} holds ${v.inflightCount} chain(s)`);
        check(pm.inflight.get(index)!.size === 0, () => `${where}: ${pm.port.name} queue ${index}: popped chains not completed`);
        const err = v.error;
        if (err !== undefined) {
          check(err instanceof ChainError || err instanceof QueueError,
            () => `${pm.port.name} queue ${index} was stopped by a device exception: ${err.stack ?? String(err)}`);
          check(pm.hostileRings.has(index), () => `${pm.port.name} queue ${index} stopped although the driver ` +
            `posted only well-formed chains: ${err.message}`);
        }
      }
    }
    for (const pm of this.ports) this.reap(pm);
    const sc = this.sw.counters;
    const mc = this.counters;
    check(sc.unicast === mc.unicast && sc.flooded === mc.flooded && sc.hairpin === mc.hairpin && sc.aged === mc.aged &&
      sc.tableFull === mc.tableFull, () => `${where}: switch counters ${JSON.stringify(sc)}, model ${JSON.stringify(mc)}`);
    for (const pm of this.ports) {
      for (const [ring, a] of pm.assembly) {
        check(a.remaining === 0, () => `${where}: ${pm.port.name} queue ${ring}: a frame announced ${a.remaining} more ` +
          'buffer(s) that never came');
      }
      pm.assembly.clear();
      const s = pm.port.stats;
      check(s.rxPackets === pm.delivered, () => `${where}: ${pm.port.name} counts ${s.rxPackets} frames received, its ` +
        `guest read ${pm.delivered}`);
      check(s.txPackets === pm.expForward && s.txErrors === pm.expErrors && s.txDropped === pm.expDropped &&
        s.txPackets + s.txErrors + s.txDropped === pm.txTaken,
      () => `${where}: ${pm.port.name} tx counters ${s.txPackets}/${s.txErrors}/${s.txDropped} (packets/errors/dropped), ` +
        `expected ${pm.expForward}/${pm.expErrors}/${pm.expDropped} for ${pm.txTaken} chains taken`);
      // Buffers the device has not used hold what the driver wrote: nothing wrote outside what it was handed.
      for (const map of pm.records.values()) {
        for (const rec of map.values()) {
          for (const p of rec.pieces) {
            check(holds(pm.rig.mem, p.gpa, p.data), () => `${where}: ${pm.port.name} queue ${rec.ring}: buffer of chain ` +
              `${rec.head} at 0x${p.gpa.toString(16)}+${p.data.length} changed while the driver still owned it`);
          }
        }
      }
      pm.rig.checkGuards();
    }
  }

  /** Read the used rings like the driver: free what came back, check received frames and acks. */
  reap(pm: PortModel): void {
    for (const [ring, dr] of pm.rig.rings) {
      const kind: Kind = ring === pm.ctrlIndex ? 'ctrl' : (ring & 1) === 1 ? 'tx' : 'rx';
      const map = pm.records.get(ring);
      for (const u of dr.reap()) {
        const rec = map?.get(u.id);
        check(u.known && rec !== undefined, () => `${pm.port.name} queue ${ring}: used id ${u.id} is not a chain the driver posted`);
        map!.delete(u.id);
        for (const a of rec.allocs) pm.pool.free(a);
        check(u.len <= rec.writableLength, () => `${pm.port.name} queue ${ring}: used length ${u.len} for ` +
          `${rec.writableLength} writable bytes`);
        if (kind === 'tx') check(u.len === 0, () => `${pm.port.name} queue ${ring}: transmit chain used length ${u.len}`);
        if (kind === 'rx') {
          const key = `${ring}:${u.id}`;
          check(pm.usedFor.has(key), () => `${pm.port.name} queue ${ring}: head ${u.id} is in the used ring, but the device ` +
            'never completed it');
          const expect = pm.usedFor.get(key);
          pm.usedFor.delete(key);
          this.received(pm, ring, rec, u.len, expect);
        }
        if (kind === 'ctrl' && u.len > 0 && rec.ack !== undefined) {
          const w = rec.pieces.find((p) => p.write)!;
          const got = pm.rig.mem.read(w.gpa, 1)[0];
          check(got === rec.ack, () => `${pm.port.name}: the guest reads ack ${got}, expected ${rec.ack}`);
        }
      }
    }
  }

  /** One used receive buffer as the guest sees it. */
  received(pm: PortModel, ring: number, rec: ChainRecord, len: number, expect: Candidate | undefined): void {
    const data = Buffer.concat(rec.pieces.filter((p) => p.write).map((p) => pm.rig.mem.read(p.gpa, p.data.length)))
      .subarray(0, len);
    let a = pm.assembly.get(ring);
    if (a === undefined || a.remaining === 0) {
      if (len === 0) {
        stats.count('rx-returned-unused');
        return;
      }
      check(len >= pm.hdrLen, () => `${pm.port.name} queue ${ring}: a used buffer of ${len} bytes, shorter than the header`);
      const header = data.subarray(0, pm.hdrLen);
      const n = pm.hdrLen === 12 ? header.readUInt16LE(10) : 1;
      check(pm.mrg ? n >= 1 : n === 1, () => `${pm.port.name} queue ${ring}: num_buffers ${n}` +
        (pm.mrg ? '' : ' without MRG_RXBUF'));
      a = { expect, remaining: n - 1, header: Buffer.from(header), parts: [data.subarray(pm.hdrLen)] };
      pm.assembly.set(ring, a);
    } else {
      check(len > 0 || rec.writableLength === 0, () => `${pm.port.name} queue ${ring}: an empty buffer inside a merged frame`);
      a.parts.push(data);
      a.remaining--;
    }
    if (a.remaining === 0) this.checkFrame(pm, ring, a.header, Buffer.concat(a.parts), a.parts.length, a.expect);
  }

  /** A whole frame the guest received: a well-formed header and a frame sent to it. */
  checkFrame(pm: PortModel, ring: number, header: Uint8Array, frame: Uint8Array, buffers: number,
    expect: Candidate | undefined): void {
    const flags = header[0]!;
    const where = `${pm.port.name} queue ${ring}`;
    check(header[1] === 0, () => `${where}: received header with gso_type ${header[1]}`);
    check((flags & ~(NEEDS_CSUM | DATA_VALID)) === 0, () => `${where}: received header flags ${flags}`);
    check(flags === 0 || pm.guestCsum, () => `${where}: header flags ${flags} without GUEST_CSUM`);
    const start = header[6]! | (header[7]! << 8);
    const offset = header[8]! | (header[9]! << 8);
    const matches = (c: Candidate): boolean => {
      if (c.frame.length !== frame.length) return false;
      if ((flags & NEEDS_CSUM) !== 0) {
        return c.csum !== undefined && c.csum.start === start && c.csum.offset === offset && Buffer.compare(c.frame, frame) === 0;
      }
      if (c.csum === undefined) return Buffer.compare(c.frame, frame) === 0;
      const field = c.csum.start + c.csum.offset;
      const value = (frame[field]! << 8) | frame[field + 1]!;
      return Buffer.compare(c.frame.subarray(0, field), frame.subarray(0, field)) === 0 &&
        Buffer.compare(c.frame.subarray(field + 2), frame.subarray(field + 2)) === 0 && completes(c.frame, c.csum.start, value);
    };
    check(expect !== undefined, () => `${where}: the guest got a ${frame.length}-byte frame (dst ${macKey(frame)}) in a ` +
      'buffer the device used while forwarding a frame not meant for it');
    check(matches(expect), () => `${where}: the guest got a ${frame.length}-byte frame (flags ${flags}, csum ${start}/` +
      `${offset}, dst ${macKey(frame)}, ${buffers} buffer(s)) that is not the ${expect.frame.length}-byte frame ` +
      `${expect.csum ? `(csum ${expect.csum.start}/${expect.csum.offset}) ` : ''}p${expect.from} sent to it` +
      (expect.frame.length === frame.length ? ` (first difference at byte ${frame.findIndex((b, i) => b !== expect.frame[i])})` : ''));
    const c = expect;
    pm.delivered++;
    stats.count('frames-received');
    if (buffers > 1) stats.count('frames-received-merged');
    if (c.csum !== undefined) stats.count((flags & NEEDS_CSUM) !== 0 ? 'frames-received-partial-csum' : 'frames-received-csum-completed');
    if (frame.length > 9000) stats.count('frames-received-jumbo');
  }

  /** Run transmit passes a txBurst cut short (they continue on later event-loop turns) until the kicked rings are empty. */
  async drain(where: string): Promise<void> {
    for (let turn = 0; ; turn++) {
      let waiting = false;
      for (const pm of this.ports) {
        for (const ring of pm.kickedTx) {
          const left = (pm.posted.get(ring) ?? 0) - (pm.popped.get(ring) ?? 0);
          if (left > 0 && pm.rig.vring(ring).error === undefined) waiting = true;
          else pm.kickedTx.delete(ring);
        }
      }
      if (!waiting) return;
      check(turn < 400, () => `${where}: kicked transmit chains were never taken`);
      await new Promise((resolve) => setImmediate(resolve));
      stats.count('tx-continued-pass');
      this.checkStep(`${where} (turn ${turn})`);
    }
  }
}

// ---- the case ----

/** What a port's model holds about the frontend and guest connected now (replaced when another one connects). */
type Guest = Pick<PortModel, 'rig' | 'pool' | 'features' | 'hdrLen' | 'mrg' | 'csum' | 'guestCsum' | 'mq' | 'ctrlVq' | 'ctrlIndex' |
  'ctrlRx' | 'ctrlMac' | 'indirect' | 'protocolFeatures' | 'records' | 'inflight' | 'posted' | 'popped' | 'hostileRings' |
  'poisoned' | 'kickedTx' | 'usedFor' | 'assembly'>;

/** A frontend connects to `port`: fresh guest memory, a random feature subset, some of the queues set up. */
function connect(c: NetCase, port: NetPort, pairs: number, log: CapturingLogger): Guest {
  const rng = c.rng;
  const offered = offeredFeatures(port);
  let features = rng.subsetOf(offered);
  if (rng.chance(0.85)) features |= featureMask(CommonFeature.VERSION_1);
  else features &= ~featureMask(CommonFeature.VERSION_1);
  // Without MQ the driver has one pair and its control queue is queue 2 (virtio 1.2, 5.1.2).
  const dataPairs = hasFeature(features, NetFeature.MQ) ? pairs : 1;
  const ctrlIndex = 2 * dataPairs;
  const queues: number[] = [];
  for (let q = 0; q < dataPairs; q++) {
    if (rng.chance(q === 0 ? 0.95 : 0.75)) queues.push(2 * q);
    if (rng.chance(q === 0 ? 0.95 : 0.75)) queues.push(2 * q + 1);
  }
  if (rng.chance(hasFeature(features, NetFeature.CTRL_VQ) ? 0.85 : 0.3)) queues.push(ctrlIndex);
  const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [16384, 65536, 131072, 262144], minRegions: 1,
    maxRegions: 4, adjacent: 0.6 });
  const rig = DeviceRig.create(rng, port, mem, log, { queues, maxRingSize: rng.pick([32, 32, 128]), features });
  const neg = rig.backend.features;
  const has = (bit: number): boolean => hasFeature(neg, bit);
  const g: Guest = {
    rig, pool: new BufferPool(mem, rig.alloc.checkpoint()), features: neg,
    hdrLen: has(NetFeature.MRG_RXBUF) || has(CommonFeature.VERSION_1) ? 12 : 10,
    mrg: has(NetFeature.MRG_RXBUF), csum: has(NetFeature.CSUM), guestCsum: has(NetFeature.GUEST_CSUM),
    mq: has(NetFeature.MQ), ctrlVq: has(NetFeature.CTRL_VQ), ctrlIndex, ctrlRx: has(NetFeature.CTRL_RX),
    ctrlMac: has(NetFeature.CTRL_MAC_ADDR), indirect: has(CommonFeature.INDIRECT_DESC),
    protocolFeatures: has(CommonFeature.PROTOCOL_FEATURES), records: new Map(), inflight: new Map(), posted: new Map(),
    popped: new Map(), hostileRings: new Set(), poisoned: new Set(), kickedTx: new Set(), usedFor: new Map(),
    assembly: new Map(),
  };
  stats.count(`features-hdr${g.hdrLen}${g.mrg ? '-mrg' : ''}`);
  if (g.mq) stats.count('features-mq');
  if (g.csum && g.guestCsum) stats.count('features-csum-both');
  return g;
}

function makePort(c: NetCase, sw: NetSwitch, index: number, log: CapturingLogger): PortModel {
  const rng = c.rng;
  const pairs = rng.weighted<number>([[5, 1], [3, 2], [2, 3]]);
  const sameMac = index > 0 && rng.chance(0.03 + c.hostile / 4);
  const mac = sameMac ? c.ports[0]!.mac.slice() : randomUnicast(rng);
  if (sameMac) stats.count('ports-same-mac');
  const port = new NetPort(sw, {
    name: `p${index}`, mac, queuePairs: pairs, maxQueueSize: rng.pick([8, 64, 256, 1024]),
    txBurst: rng.weighted<number>([[6, 0], [1, 1], [1, 2], [1, 5]]),
    // The disabled-ring poll is a timer: kept out of the way so that cases replay exactly.
    disabledPollMs: 3_600_000, logger: log.child(`p${index}`),
  });
  return {
    index, port, pairs, configuredMac: mac, mac: mac.slice(), filter: freshFilter(),
    pairsSet: undefined, delivered: 0, txTaken: 0, expForward: 0, expErrors: 0, expDropped: 0,
    ...connect(c, port, pairs, log),
  };
}

function freshFilter(): FilterModel {
  // A port starts promiscuous (what a driver that never uses the control queue needs).
  return { promisc: true, allMulti: false, uni: new Set(), multi: new Set(), uniOver: false, multiOver: false };
}

/** A driver fills its receive rings. */
function fillRx(c: NetCase, pm: PortModel): void {
  for (const ring of rxRings(pm)) {
    if (!c.rng.chance(0.85)) continue;
    for (let k = c.rng.range(1, 8); k > 0; k--) c.postRx(pm, ring);
  }
}

/**
 * The frontend goes away (the framework stops every ring and resets the port: address, filter and pairs back to
 * their defaults, its addresses forgotten by the switch), others send meanwhile, and a new frontend with another
 * guest connects.
 */
async function reconnect(c: NetCase, pm: PortModel, log: CapturingLogger): Promise<void> {
  await pm.rig.close();
  c.checkStep(`${pm.port.name} disconnected`);
  for (const [ring, inflight] of pm.inflight) {
    check(inflight.size === 0 && pm.rig.vring(ring).inflightCount === 0, () => `${pm.port.name} queue ${ring}: in flight after close`);
  }
  for (const [key, e] of c.table) if (e.port === pm) c.table.delete(key);
  pm.mac = pm.configuredMac.slice();
  pm.filter = freshFilter();
  pm.pairsSet = undefined;
  check(pm.port.mac.replaceAll(':', '') === macKey(pm.mac) && pm.port.filter.promiscuous && pm.port.negotiatedFeatures === 0n &&
    pm.port.activeQueuePairs === 1, () => `${pm.port.name}: not reset after its frontend left`);
  for (const key of c.table.keys()) {
    const known = c.sw.lookup(Buffer.from(key, 'hex'));
    check(known !== pm.port, () => `the switch still sends ${key} to ${pm.port.name}, whose frontend left`);
  }
  // Traffic while the port has no frontend: frames for it are dropped.
  const other = c.rng.pick(c.ports.filter((p) => p !== pm));
  const rings = txRings(other);
  if (rings.length > 0) {
    const ring = c.rng.pick(rings);
    for (let k = c.rng.range(1, 3); k > 0; k--) c.postFrame(other, ring);
    kick(other, ring);
    c.checkStep(`${other.port.name} sends while ${pm.port.name} is gone`);
    await c.drain(`${other.port.name} sends while ${pm.port.name} is gone`);
  }
  Object.assign(pm, connect(c, pm.port, pm.pairs, log));
  c.wrap(pm);
  fillRx(c, pm);
  stats.count('reconnected');
}

function txRings(pm: PortModel): number[] {
  return [...pm.rig.rings.keys()].filter((i) => i !== pm.ctrlIndex && (i & 1) === 1);
}

function rxRings(pm: PortModel): number[] {
  return [...pm.rig.rings.keys()].filter((i) => i !== pm.ctrlIndex && (i & 1) === 0);
}

/**
 * The frontend stops a ring (GET_VRING_BASE, which also disables it with PROTOCOL_FEATURES) and starts it again
 * where it stopped, as around a migration or a reconnect of the backend. The base must be the driver's avail index
 * less what the device has not taken; frames posted meanwhile are discarded if the ring is disabled.
 */
async function restart(c: NetCase, pm: PortModel): Promise<void> {
  const rings = [...pm.rig.rings.keys()].filter((i) => pm.rig.vring(i).error === undefined && !pm.poisoned.has(i));
  if (rings.length === 0) return;
  const ring = c.rng.pick(rings);
  const dr = pm.rig.rings.get(ring)!;
  const b = pm.rig.backend;
  const base = await b.getVringBase(ring);
  const waiting = (pm.posted.get(ring) ?? 0) - (pm.popped.get(ring) ?? 0);
  check(base === ((dr.availIdx - waiting) & 0xffff), () => `${pm.port.name} queue ${ring}: GET_VRING_BASE gave ${base}, ` +
    `the driver's avail index is ${dr.availIdx} with ${waiting} chain(s) not taken`);
  check(!pm.rig.vring(ring).started, () => `${pm.port.name} queue ${ring}: still started after GET_VRING_BASE`);
  stats.count(`ring-restarted-${ring === pm.ctrlIndex ? 'ctrl' : (ring & 1) === 1 ? 'tx' : 'rx'}`);
  // Frames the driver posts while the ring is stopped.
  if ((ring & 1) === 1 && ring !== pm.ctrlIndex && c.rng.chance(0.5)) c.postFrame(pm, ring);
  c.checkStep(`${pm.port.name} queue ${ring} stopped`);
  b.setVringBase({ index: ring, num: base });
  const kickFd = native.eventfd(0);
  try {
    b.setVringKick(ring, kickFd);
  } catch (err) {
    closeQuietly(kickFd);
    throw err;
  }
  check(pm.rig.vring(ring).started, () => `${pm.port.name} queue ${ring} did not start again`);
  if (ring !== pm.ctrlIndex && (ring & 1) === 1) pm.kickedTx.add(ring);
  if (pm.protocolFeatures && c.rng.chance(0.8)) {
    c.enabling = pm.rig.vring(ring);
    try {
      b.setVringEnable(ring, true);
    } finally {
      c.enabling = undefined;
    }
  }
}

function kick(pm: PortModel, ring: number): void {
  if (ring !== pm.ctrlIndex && (ring & 1) === 1) pm.kickedTx.add(ring);
  pm.rig.kick(ring);
  if (ring === pm.ctrlIndex && pm.rig.rings.has(ring)) {
    const v = pm.rig.vring(ring);
    const left = (pm.posted.get(ring) ?? 0) - (pm.popped.get(ring) ?? 0);
    check(!v.enabled || v.error !== undefined || left === 0,
      () => `${pm.port.name}: ${left} control command(s) not answered after a kick`);
  }
}

async function runNetCase(rng: Rng): Promise<void> {
  const hostile = rng.pick([0, 0, 0.01, 0.04, 0.15]);
  const c = new NetCase(rng, hostile);
  const log = new CapturingLogger('net', 'info');
  c.maxEntries = rng.weighted<number>([[8, 8192], [1, rng.range(1, 4)]]);
  c.agingMs = rng.pick([1000, 60_000]);
  const sw = new NetSwitch({ autoSweep: false, maxEntries: c.maxEntries, agingMs: c.agingMs, clock: () => c.clock });
  c.sw = sw;
  const count = rng.range(2, 3);
  try {
    for (let i = 0; i < count; i++) c.ports.push(makePort(c, sw, i, log));
    for (const pm of c.ports) c.wrap(pm);
    // A driver starts by filling its receive rings.
    for (const pm of c.ports) fillRx(c, pm);
    c.checkStep('start');
    const steps = rng.range(5, 30);
    for (let step = 0; step < steps; step++) {
      const action = rng.weighted<string>([[8, 'tx'], [5, 'rx'], [2.5, 'ctrl'], [2, 'kick'], [1.5, 'enable'],
        [1, 'burst'], [0.7, 'age'], [0.7, 'restart'], [0.3, 'reconnect'], [hostile * 3, 'avail-jump']]);
      stats.count(`action-${action}`);
      const pm = rng.pick(c.ports);
      switch (action) {
        case 'tx': {
          const rings = txRings(pm);
          const ring = rings.length > 0 && rng.chance(0.95) ? rng.pick(rings) : rng.int(pm.port.numQueues);
          if (!rings.includes(ring)) break;
          const n = rng.weighted<number>([[5, 1], [3, rng.range(2, 6)], [1, rng.range(7, 24)], [0.3, rng.range(60, 140)]]);
          for (let k = n; k > 0; k--) c.postFrame(pm, ring);
          if (rng.chance(0.9)) kick(pm, ring);
          break;
        }
        case 'rx': {
          const rings = rxRings(pm);
          if (rings.length === 0) break;
          const ring = rng.pick(rings);
          for (let k = rng.range(1, 6); k > 0; k--) c.postRx(pm, ring);
          if (rng.chance(0.2)) kick(pm, ring);
          break;
        }
        case 'ctrl':
          if (!pm.rig.rings.has(pm.ctrlIndex)) break;
          for (let k = rng.range(1, 3); k > 0; k--) c.postCtrl(pm);
          if (rng.chance(0.9)) kick(pm, pm.ctrlIndex);
          break;
        case 'kick':
          kick(pm, rng.pick([...pm.rig.rings.keys(), rng.int(pm.port.numQueues)]));
          break;
        case 'enable': {
          if (!pm.protocolFeatures || pm.rig.rings.size === 0) break;
          const ring = rng.pick([...pm.rig.rings.keys()]);
          const v = pm.rig.vring(ring);
          const on = !v.enabled;
          stats.count(`ring-${on ? 'enabled' : 'disabled'}-${ring === pm.ctrlIndex ? 'ctrl' : (ring & 1) === 1 ? 'tx' : 'rx'}`);
          if (on) c.enabling = v;
          try {
            pm.rig.backend.setVringEnable(ring, on);
          } finally {
            c.enabling = undefined;
          }
          break;
        }
        case 'burst':
          for (const p of c.ports) {
            const rings = txRings(p);
            if (rings.length === 0) continue;
            const ring = rng.pick(rings);
            for (let k = rng.range(1, 4); k > 0; k--) c.postFrame(p, ring);
          }
          for (const p of c.ports) for (const ring of txRings(p)) kick(p, ring);
          break;
        case 'age':
          c.age();
          break;
        case 'restart':
          await restart(c, pm);
          break;
        case 'reconnect':
          await reconnect(c, pm, log);
          break;
        default: {
          const ring = rng.pick([...pm.rig.rings.keys()]);
          const dr = pm.rig.rings.get(ring);
          if (dr === undefined) break;
          // The avail index jumps past the ring, or an entry names a head past the table.
          if (rng.chance(0.5)) dr.setAvailIdx(dr.availIdx + dr.size + rng.range(1, 100));
          else dr.publish(dr.size + rng.int(0x10000 - dr.size));
          pm.hostileRings.add(ring);
          pm.poisoned.add(ring);
          kick(pm, ring);
        }
      }
      c.checkStep(`step ${step} (${action})`);
      await c.drain(`step ${step} (${action})`);
      // Drivers refill their receive rings as they read them (not always in time).
      for (const p of c.ports) {
        for (const ring of rxRings(p)) {
          if ((p.posted.get(ring) ?? 0) - (p.popped.get(ring) ?? 0) > 2 || !rng.chance(0.4)) continue;
          for (let k = rng.range(1, 4); k > 0; k--) c.postRx(p, ring);
        }
      }
    }
    for (const pm of c.ports) for (const ring of txRings(pm)) kick(pm, ring);
    c.checkStep('final kicks');
    await c.drain('final kicks');
    c.checkStep('end');
    for (const pm of c.ports) {
      for (const ring of rxRings(pm)) if (pm.rig.vring(ring).error) stats.count('ring-broken-rx');
      for (const ring of txRings(pm)) if (pm.rig.vring(ring).error) stats.count('ring-broken-tx');
    }
  } finally {
    for (const pm of c.ports) await pm.rig.close();
    sw.close();
  }
  // The frontends went away: what stopping took (disabled transmit rings are emptied) adds up too.
  c.guard(() => c.settle());
  if (c.violations.length > 0) throw c.violations[0];
  check(c.current === undefined, 'a transmit chain was left in flight at close');
  for (const pm of c.ports) {
    for (const [ring, inflight] of pm.inflight) {
      check(inflight.size === 0 && pm.rig.vring(ring).inflightCount === 0,
        () => `${pm.port.name} queue ${ring}: chains in flight after the frontend left`);
    }
    const s = pm.port.stats;
    check(s.txPackets + s.txErrors + s.txDropped === pm.txTaken && s.txDropped === pm.expDropped,
      () => `${pm.port.name}: after close, tx counters ${s.txPackets}/${s.txErrors}/${s.txDropped} for ${pm.txTaken} chains`);
    check(s.rxPackets === pm.delivered, () => `${pm.port.name}: after close, rxPackets ${s.rxPackets}, guest read ${pm.delivered}`);
  }
  const unexpected = log.lines.find((l) => UNEXPECTED_LOG.test(l) || /transmit failed|control command failed/.test(l));
  check(unexpected === undefined, () => `unexpected log line: ${unexpected}`);
  const errors = log.lines.filter((l) => l.startsWith('error') && !/queue \d+ stopped|device needs reset/.test(l));
  check(errors.length === 0, () => `unexpected error lines:\n${errors.slice(0, 5).join('\n')}`);
  const warnings = log.lines.filter((l) => l.startsWith('warn')).length;
  stats.count('warnings', warnings);
  check(warnings <= 20, () => `${warnings} warnings for ${count} guests (log flooding):\n${log.lines.slice(-10).join('\n')}`);
}

export const netTarget: FuzzTarget = {
  name: 'net',
  description: 'virtio-net ports on one switch, each on the real framework, driven by hostile guests: frames in ' +
    'every layout, receive buffers, control commands, ring enables; a model of switch, filters and headers',
  batch: 25,
  stats,
  runCase: runNetCase,
};
