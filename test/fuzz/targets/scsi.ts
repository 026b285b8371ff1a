/**
 * Fuzz target "scsi": the virtio-scsi device (src/devices/scsi/device.ts) and the SCSI target behind it
 * (src/scsi/) on the real framework (see device-rig.ts), over memory LUNs at random addresses, with random
 * requests on the request queues: READ/WRITE(10/16) in and out of range, to LUNs and targets that exist or not,
 * every other operation code with random CDB bytes, LUN fields of any shape, headers and responses split over
 * buffers or too short, data both ways, odd data lengths, indirect tables, corrupted descriptors; random task
 * management and asynchronous-notification requests on the control queue; LUNs added and removed (HOTPLUG events
 * into whatever buffers the event queue has); rings disabled and re-enabled. Half the cases put the LUNs on
 * storage that completes on a later turn of the event loop, so that task management and hotplug meet commands
 * in flight.
 *
 * A reference written here says, before each request is handled, what must happen to the requests it models
 * (well-formed READ/WRITE(10/16) to a unit: GOOD with the disk's bytes or the data written, or CHECK CONDITION
 * for a range, a read-only unit or a pending unit attention, without side effects; BAD_TARGET for a target that
 * does not exist; FAILURE for a response or header that does not fit). Checked for every chain: it completes
 * exactly once, with a used length within its writable bytes, a valid response byte, a valid status, sense no
 * longer than sense_size and in fixed format; the units' contents match a mirror (re-read after commands the
 * reference does not model that may write); event buffers come back whole (or zeroed when too small) and report
 * only LUNs that were added (RESCAN) or removed (REMOVED); nothing touches the guards; no exception escapes or
 * stops a ring; warnings stay bounded.
 */
import { MemoryStorage } from '../../../src/devices/blk/storage/memory.js';
import { ScsiDevice } from '../../../src/devices/scsi/device.js';
import { ControlType, EventType, ResetReason, ScsiQueue, ScsiResponse, VirtioScsi, encodeLunField } from '../../../src/devices/scsi/protocol.js';
import { ScsiBus } from '../../../src/scsi/bus.js';
import { Opcode, ScsiStatus, SenseKey } from '../../../src/scsi/constants.js';
import { LogicalUnit } from '../../../src/scsi/logical-unit.js';
import { TestStorage } from '../../helpers/test-storage.js';
import type { DescriptorChain } from '../../../src/virtqueue/chain.js';
import { CommonFeature, hasFeature } from '../../../src/virtio/constants.js';
import { DeviceRig, viewsOverlap } from '../device-rig.js';
import { corruptDescriptor, type BufferSpec, type DriverRing } from '../driver-side.js';
import { GuardedMemory } from '../guarded-memory.js';
import { CapturingLogger, check, Stats, UNEXPECTED_LOG, type FuzzTarget } from '../harness.js';
import type { Rng } from '../rng.js';

const stats = new Stats();
/** Request header and response sizes with the default cdb_size (32) and sense_size (96). */
const HEADER = VirtioScsi.REQUEST_HEADER_BASE + VirtioScsi.DEFAULT_CDB_SIZE;
const RESPONSE = VirtioScsi.RESPONSE_HEADER_BASE + VirtioScsi.DEFAULT_SENSE_SIZE;
const STATUSES = new Set<number>([ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION, ScsiStatus.BUSY,
  ScsiStatus.RESERVATION_CONFLICT, ScsiStatus.TASK_SET_FULL]);
const RW = new Set<number>([Opcode.READ_10, Opcode.WRITE_10, Opcode.READ_16, Opcode.WRITE_16]);
/** Operation codes that may change a unit's blocks: after one the reference does not model, the mirror is re-read. */
const WRITING = new Set<number>([Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16,
  Opcode.WRITE_SAME_10, Opcode.WRITE_SAME_16, Opcode.UNMAP]);
/** A command that reached a target: OVERRUN when its buffers are too small, ABORTED or RESET by task management. */
const REACHED = [ScsiResponse.OK, ScsiResponse.OVERRUN, ScsiResponse.ABORTED, ScsiResponse.RESET];


interface Unit {
  target: number;
  lun: number;
  unit: LogicalUnit;
  storage: MemoryStorage;
  mirror: Buffer;
  blockSize: number;
  readOnly: boolean;
  /** A command the reference does not model may have written: re-read the mirror at the end of the round. */
  dirty: boolean;
}

/** What must happen to one request chain. */
interface Expectation {
  /** Used length 0: no room for even the response header. */
  none?: boolean;
  /** The response byte, when the reference knows it. */
  response?: number;
  /** Or the response bytes it may be: a command that reached a target (OVERRUN when its buffers are too small). */
  responses?: readonly number[];
  /** A modeled READ/WRITE: GOOD with this transfer, or CHECK CONDITION without side effects (range, read-only...). */
  rw?: { unit: Unit; write: boolean; pos: number; len: number; inRange: boolean; expected?: Buffer };
  overlapping: boolean;
  name: string;
}


/** The reference for a request-queue chain, taken when the device pops it. */
function expectRequest(chain: DescriptorChain, units: readonly Unit[]): Expectation {
  const ov = viewsOverlap(chain);
  const wlen = chain.writableLength;
  const rlen = chain.readableLength;
  if (wlen < VirtioScsi.RESPONSE_HEADER_BASE) return { none: true, overlapping: ov, name: 'no-response' };
  if (wlen < RESPONSE || rlen < HEADER) return { response: ScsiResponse.FAILURE, overlapping: ov, name: 'short' };
  const dataIn = wlen - RESPONSE;
  const dataOut = rlen - HEADER;
  if (dataIn > 0 && dataOut > 0) return { overlapping: ov, name: 'both-ways' };
  const h = Buffer.concat(chain.readable);
  const op = h[VirtioScsi.REQUEST_HEADER_BASE]!;
  const name = RW.has(op) ? 'rw' : 'other';
  // A target exists while it has a unit.
  if (h[0] !== 1 || !units.some((u) => u.target === h[1])) {
    return { response: ScsiResponse.BAD_TARGET, overlapping: ov, name: 'bad-target' };
  }
  const lun = h[4] === 0 && h[5] === 0 && h[6] === 0 && h[7] === 0 && (h[2]! >> 6) <= 1 ? ((h[2]! & 0x3f) << 8) | h[3]! : -1;
  const unit = units.find((u) => u.target === h[1] && u.lun === lun);
  if (unit === undefined || !RW.has(op)) {
    if (unit !== undefined && WRITING.has(op)) unit.dirty = true;
    return { responses: REACHED, overlapping: ov, name: unit === undefined ? `${name}-no-lun` : name };
  }
  const cdb = h.subarray(VirtioScsi.REQUEST_HEADER_BASE);
  const write = op === Opcode.WRITE_10 || op === Opcode.WRITE_16;
  const long = op === Opcode.READ_16 || op === Opcode.WRITE_16;
  const lba = long ? Number(cdb.readBigUInt64BE(2)) : cdb.readUInt32BE(2);
  const blocks = long ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  const control = cdb[long ? 15 : 9]!;
  // Only the plain form is modeled: no protection, no group number, no control bits, a transfer that fills the
  // buffers exactly. Anything else may still write (a partial transfer): re-read the mirror.
  const len = blocks * unit.blockSize;
  const plain = (cdb[1]! & ~0x08) === 0 && cdb[long ? 14 : 6] === 0 && control === 0 && blocks > 0 && blocks <= 64 &&
    len === (write ? dataOut : dataIn) && (write ? dataIn === 0 : dataOut === 0);
  // A unit an unmodeled command may have written to is not modeled until the mirror is re-read (end of round).
  if (!plain || unit.dirty) {
    if (write) unit.dirty = true;
    return { responses: REACHED, overlapping: ov, name: 'rw-other' };
  }
  const capacity = unit.mirror.length / unit.blockSize;
  const inRange = lba + blocks <= capacity && !(write && unit.readOnly);
  const pos = lba * unit.blockSize;
  // The unit starts a READ or WRITE as it takes it, and the bytes move when the storage operation starts (later
  // completions only report): so the mirror changes, and a read's bytes are fixed, in the order the device takes
  // the requests, whatever order they complete in (a FUA write waits for a flush). A write that is then refused
  // or aborted leaves the mirror to be re-read.
  let expected: Buffer | undefined;
  if (write && inRange) h.copy(unit.mirror, pos, HEADER, HEADER + len);
  else if (inRange) expected = Buffer.from(unit.mirror.subarray(pos, pos + len));
  return { responses: REACHED, rw: { unit, write, pos, len, inRange, ...(expected ? { expected } : {}) }, overlapping: ov,
    name: `${write ? 'write' : 'read'}${inRange ? '' : '-refused'}` };
}

/** Check a completed request chain against its expectation. */
function checkRequest(chain: DescriptorChain, len: number, want: Expectation): void {
  const wlen = chain.writableLength;
  check(Number.isInteger(len) && len >= 0 && len <= wlen, () => `request ${chain.head}: used length ${len} of ${wlen} writable bytes`);
  if (want.none) {
    check(len === 0, () => `request ${chain.head}: no room for a response, but used length ${len}`);
    stats.count('no-response');
    return;
  }
  check(len >= VirtioScsi.RESPONSE_HEADER_BASE, () => `request ${chain.head}: used length ${len} is shorter than a response header`);
  const w = Buffer.concat(chain.writable);
  const senseLen = w.readUInt32LE(0);
  const status = w[10]!;
  const response = w[11]!;
  if (want.overlapping) {
    if (want.rw?.write) want.rw.unit.dirty = true;
    stats.count('overlapping');
    return;
  }
  check(response <= ScsiResponse.FAILURE, () => `request ${chain.head}: response byte ${response}`);
  if (want.response !== undefined) {
    check(response === want.response, () => `request ${chain.head} (${want.name}): response ${response}, expected ${want.response}`);
  }
  if (want.responses !== undefined) {
    check(want.responses.includes(response), () => `request ${chain.head} (${want.name}): response ${response}, expected one of ${want.responses}`);
  }
  stats.count(`${want.name}-r${response}-s${status}`);
  const rw = want.rw;
  if (response !== ScsiResponse.OK) {
    // Ended by task management (or OVERRUN): a write may have reached the disk before it was aborted.
    if (rw?.write) rw.unit.dirty = true;
    return;
  }
  check(STATUSES.has(status), () => `request ${chain.head}: status 0x${status.toString(16)}`);
  check(senseLen <= VirtioScsi.DEFAULT_SENSE_SIZE && VirtioScsi.RESPONSE_HEADER_BASE + senseLen <= len,
    () => `request ${chain.head}: sense_len ${senseLen} with used length ${len}`);
  if (status === ScsiStatus.CHECK_CONDITION) {
    const code = w[VirtioScsi.RESPONSE_HEADER_BASE]! & 0x7f;
    check(senseLen >= 8 && (code === 0x70 || code === 0x71), () => `request ${chain.head}: CHECK CONDITION with sense ` +
      `length ${senseLen}, response code 0x${code.toString(16)}`);
  }
  if (rw === undefined) return;
  if (status === ScsiStatus.CHECK_CONDITION) {
    // Refused: out of range (ILLEGAL REQUEST), read-only (DATA PROTECT), or, whatever the request, a unit
    // attention reported first or a unit stopped by START STOP UNIT (NOT READY). Either way it did not run.
    const key = w[VirtioScsi.RESPONSE_HEADER_BASE + 2]! & 0x0f;
    const allowed: number[] = rw.inRange ? [SenseKey.NOT_READY, SenseKey.UNIT_ATTENTION]
      : [SenseKey.NOT_READY, SenseKey.UNIT_ATTENTION, SenseKey.ILLEGAL_REQUEST, SenseKey.DATA_PROTECT];
    check(allowed.includes(key), () => `request ${chain.head}: ${want.name} of ${rw.len} bytes at ${rw.pos} refused ` +
      `with sense key ${key}`);
    if (rw.write && rw.inRange) rw.unit.dirty = true;
    return;
  }
  check(status === ScsiStatus.GOOD && rw.inRange, () => `request ${chain.head}: ${want.name} ended with status ${status}`);
  check(len === RESPONSE + (rw.write ? 0 : rw.len), () => `request ${chain.head}: ${want.name} used length ${len}`);
  check(w.readUInt32LE(4) === 0, () => `request ${chain.head}: residual ${w.readUInt32LE(4)} after a full transfer`);
  if (!rw.write) {
    check(w.subarray(RESPONSE, RESPONSE + rw.len).equals(rw.expected!),
      () => `request ${chain.head}: read of ${rw.len} bytes at ${rw.pos} returned other data than the unit holds`);
  }
}

/**
 * An event buffer came back: a whole event when it has room for one (else zeros in what fits), and a
 * TRANSPORT_RESET only for a LUN that was added (RESCAN) or removed (REMOVED).
 */
function checkEvent(chain: DescriptorChain, len: number, hotplugged: ReadonlySet<string>): void {
  const w = Buffer.concat(chain.writable);
  if (w.length < VirtioScsi.EVENT_SIZE) {
    check(len === w.length && w.subarray(0, len).every((b) => b === 0), () => `event buffer ${chain.head} of ${w.length} ` +
      `bytes came back with length ${len} and not all zeros`);
    stats.count('event-short');
    return;
  }
  check(len === VirtioScsi.EVENT_SIZE, () => `event buffer ${chain.head}: used length ${len}`);
  const event = w.readUInt32LE(0);
  const type = (event & ~EventType.EVENTS_MISSED) >>> 0;
  if ((event & EventType.EVENTS_MISSED) !== 0) stats.count('event-missed');
  if (type === EventType.NO_EVENT) return;
  check(type === EventType.TRANSPORT_RESET, () => `event buffer ${chain.head}: event 0x${event.toString(16)}`);
  // The LUN field: 1, target, then the LUN in bytes 2-3.
  const what = `${w[5]}:${((w[6]! & 0x3f) << 8) | w[7]!}:${w.readUInt32LE(12)}`;
  check(w[4] === 1 && hotplugged.has(what), () => `event buffer ${chain.head}: TRANSPORT_RESET for ${what} (LUN field ` +
    `${w.subarray(4, 12).toString('hex')}), which was neither added nor removed`);
  stats.count(`event-reset-${w.readUInt32LE(12)}`);
}

// ---- generation ----

type Part = { write: boolean; data: Uint8Array };

/** A request for a random address and command, often well formed, as buffer parts. */
function buildRequest(rng: Rng, units: readonly Unit[], hostile: number): Part[] {
  const u = units.length > 0 && rng.chance(0.85) ? rng.pick(units) : undefined;
  const target = u?.target ?? rng.weighted<number>([[3, 0], [2, rng.int(4)], [hostile * 5, rng.int(256)]]);
  const lunNo = u?.lun ?? rng.weighted<number>([[3, rng.int(4)], [1, rng.int(16384)]]);
  const lunField = encodeLunField(target, lunNo, rng.chance(0.5));
  if (rng.chance(hostile)) lunField[rng.int(8)] = rng.u32() & 0xff;
  const op = rng.weighted<number>([[12, rng.pick([Opcode.READ_10, Opcode.READ_16])], [8, rng.pick([Opcode.WRITE_10, Opcode.WRITE_16])],
    [3, rng.pick(Object.values(Opcode))], [1 + hostile * 10, rng.u32() & 0xff]]);
  const bs = u?.blockSize ?? 512;
  const capacity = u ? u.mirror.length / bs : 64;
  const blocks = rng.weighted<number>([[8, rng.range(1, 8)], [1, 0], [1, rng.range(9, 64)], [hostile * 3, rng.u32() & 0xffff]]);
  const lba = rng.weighted<number>([[8, rng.int(Math.max(1, capacity - blocks + 1))], [1, capacity - blocks + rng.range(-1, 2)],
    [hostile * 5, rng.u32()]]);
  const cdb = new Uint8Array(VirtioScsi.DEFAULT_CDB_SIZE);
  const dv = new DataView(cdb.buffer);
  cdb[0] = op;
  if (op === Opcode.READ_16 || op === Opcode.WRITE_16) {
    dv.setBigUint64(2, BigInt(Math.max(0, lba)), false);
    dv.setUint32(10, blocks >>> 0, false);
  } else if (RW.has(op)) {
    dv.setUint32(2, Math.max(0, lba) >>> 0, false);
    dv.setUint16(7, blocks & 0xffff, false);
  } else {
    for (let i = 1; i < 16; i++) cdb[i] = rng.chance(0.5) ? 0 : rng.u32() & 0xff;
  }
  if (rng.chance(0.05 + hostile)) cdb[1] = rng.u32() & 0xff;
  if (rng.chance(hostile)) cdb[rng.int(16)] = rng.u32() & 0xff;
  const header = new Uint8Array(HEADER);
  header.set(lunField, 0);
  new DataView(header.buffer).setBigUint64(8, BigInt(rng.u32()), true);
  header.set(cdb, VirtioScsi.REQUEST_HEADER_BASE);

  const parts: Part[] = [];
  const split = (write: boolean, data: Uint8Array): void => {
    const cuts = rng.weighted<number[]>([[8, [data.length]], [1, [rng.range(1, Math.max(1, data.length - 1))]]]);
    let at = 0;
    for (const c of cuts) {
      parts.push({ write, data: data.subarray(at, at + c) });
      at += c;
    }
    if (at < data.length) parts.push({ write, data: data.subarray(at) });
  };
  const dataLen = rng.weighted<number>([[8, Math.min(blocks, 64) * bs], [1, rng.range(1, 4096)], [1, 0]]);
  const isWrite = op === Opcode.WRITE_10 || op === Opcode.WRITE_16 || (!RW.has(op) && WRITING.has(op));
  split(false, rng.chance(hostile) ? header.subarray(0, rng.int(HEADER)) : header);
  if (isWrite && dataLen > 0) split(false, rng.bytes(dataLen));
  const responseLen = rng.weighted<number>([[10, RESPONSE], [1, rng.range(VirtioScsi.RESPONSE_HEADER_BASE, RESPONSE)],
    [hostile * 5, rng.int(VirtioScsi.RESPONSE_HEADER_BASE)]]);
  if (responseLen > 0) split(true, new Uint8Array(responseLen).fill(0xee));
  if (!isWrite && dataLen > 0) split(true, rng.bytes(dataLen));
  if (rng.chance(hostile)) parts.push({ write: rng.chance(0.5), data: rng.bytes(rng.range(1, 64)) });
  return parts;
}

/** A control-queue request: task management or an asynchronous-notification query, often mangled. */
function buildControl(rng: Rng, hostile: number): Part[] {
  const type = rng.weighted<number>([[6, ControlType.TMF], [2, ControlType.AN_QUERY], [2, ControlType.AN_SUBSCRIBE],
    [1 + hostile * 5, rng.u32()]]);
  const req = new Uint8Array(rng.weighted<number>([[8, type === ControlType.TMF ? 24 : 16], [1, rng.range(1, 32)]]));
  const dv = new DataView(req.buffer);
  if (req.length >= 4) dv.setUint32(0, type >>> 0, true);
  if (type === ControlType.TMF && req.length >= 8) dv.setUint32(4, rng.weighted<number>([[8, rng.int(8)], [1, rng.u32()]]) >>> 0, true);
  const lun = encodeLunField(rng.int(3), rng.int(4));
  const at = type === ControlType.TMF ? 8 : 4;
  if (req.length > at) req.set(lun.subarray(0, Math.min(8, req.length - at)), at);
  const resp = new Uint8Array(rng.weighted<number>([[8, type === ControlType.TMF ? 1 : 5], [1, rng.int(12)]]));
  return [{ write: false, data: req }, ...(resp.length > 0 ? [{ write: true, data: resp.fill(0xee) }] : [])];
}

/** Put the parts in guest memory and post them on `ring`, directly or through an indirect table, maybe corrupted. */
function post(rng: Rng, rig: DeviceRig, ring: DriverRing, parts: readonly Part[], indirect: boolean, hostile: number): boolean {
  const buffers: BufferSpec[] = [];
  for (const p of parts) {
    if (p.data.length === 0) continue;
    const gpa = rig.alloc.alloc(rng, p.data.length, rng.pick([1, 4, 8, 64]));
    if (gpa === undefined) return false;
    rig.mem.write(gpa, p.data);
    buffers.push({ addr: BigInt(gpa), len: p.data.length, write: p.write });
  }
  if (buffers.length === 0) return false;
  let table: number | undefined;
  if ((indirect && rng.chance(0.3)) || buffers.length > ring.freeCount) {
    if (!indirect) return false;
    table = rig.alloc.alloc(rng, 16 * buffers.length, 16);
    if (table === undefined) return false;
  }
  const head = ring.post(buffers, table);
  if (head === undefined) return false;
  if (rng.chance(hostile / 3)) {
    corruptDescriptor(rng, ring, head);
    stats.count('corrupted');
  }
  return true;
}

// ---- the case ----

function makeUnit(rng: Rng, target: number, lun: number, deferred: boolean): Unit {
  const blockSize = rng.pick([512, 512, 4096]);
  const size = blockSize * rng.pick([8, 64, 256]);
  const readOnly = rng.chance(0.2);
  const storage = new MemoryStorage({ size });
  const content = rng.bytes(size);
  storage.write([content], 0, (err) => check(err === null, 'prefill failed'));
  // Deferred: completions come on a later turn of the event loop, in the order the operations ran (the bytes
  // move at once), so that task management and hotplug meet commands in flight.
  const unit = new LogicalUnit({ storage: deferred ? deferring(storage) : storage, blockSize, readOnly, serial: `fz${target}x${lun}` });
  return { target, lun, unit, storage, mirror: Buffer.from(content), blockSize, readOnly, dirty: false };
}

function deferring(storage: MemoryStorage): TestStorage {
  const t = new TestStorage(storage);
  t.deferCompletions = true;
  return t;
}

function resync(u: Unit): void {
  u.storage.read([u.mirror], 0, (err) => check(err === null, 'read back failed'));
  u.dirty = false;
}

async function runScsiCase(rng: Rng): Promise<void> {
  const hostile = rng.pick([0, 0.02, 0.1, 0.3]);
  const log = new CapturingLogger('scsi', 'info');
  // Storage that completes later: commands are in flight when task management and hotplug come.
  const deferred = rng.chance(0.5);
  const bus = new ScsiBus();
  const units: Unit[] = [];
  for (let i = rng.range(0, 3); i > 0; i--) {
    const target = rng.int(2);
    const lun = rng.weighted<number>([[4, rng.int(4)], [1, rng.int(256)]]);
    if (units.some((u) => u.target === target && u.lun === lun)) continue;
    const u = makeUnit(rng, target, lun, deferred);
    bus.add(target, lun, u.unit);
    units.push(u);
  }
  const requestQueues = rng.range(1, 2);
  const device = new ScsiDevice({ bus, numQueues: requestQueues, maxQueueSize: rng.pick([16, 64, 256]), logger: log });
  const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [65536, 131072], minRegions: 1, maxRegions: 3 });
  for (const r of mem.regions) rng.fill(mem.bytes.subarray(r.offset, r.offset + r.size));
  const queues = [ScsiQueue.CONTROL, ScsiQueue.EVENT, ...Array.from({ length: requestQueues }, (_, i) => ScsiQueue.FIRST_REQUEST + i)]
    .filter((q) => q >= ScsiQueue.FIRST_REQUEST || rng.chance(0.8));
  const rig = DeviceRig.create(rng, device, mem, log, { queues, maxRingSize: 64 });
  const indirect = hasFeature(rig.backend.features, CommonFeature.INDIRECT_DESC);
  const canDisable = hasFeature(rig.backend.features, CommonFeature.PROTOCOL_FEATURES);

  const pending = new Map<DescriptorChain, Expectation | 'control' | 'event'>();
  /** "target:lun:reason" of every LUN added (RESCAN) or removed (REMOVED) so far: what an event may report. */
  const hotplugged = new Set<string>();
  const completedLen = new Map<number, number>();
  const violations: unknown[] = [];
  for (const index of rig.rings.keys()) {
    const v = rig.vring(index);
    const pop = v.pop.bind(v);
    const complete = v.complete.bind(v);
    v.pop = () => {
      const chain = pop();
      if (chain !== null) {
        pending.set(chain, index === ScsiQueue.CONTROL ? 'control' : index === ScsiQueue.EVENT ? 'event'
          : expectRequest(chain, units));
      }
      return chain;
    };
    // Violations are recorded, not thrown: the device calls this from its own callbacks, which catch errors.
    v.complete = (chain, len) => {
      try {
        const want = pending.get(chain);
        check(want !== undefined, `queue ${index}: chain ${chain.head} completed twice, or never popped`);
        pending.delete(chain);
        if (want === 'control' || want === 'event') {
          check(Number.isInteger(len) && len >= 0 && len <= chain.writableLength,
            () => `queue ${index}: used length ${len} for ${chain.writableLength} writable bytes`);
          stats.count(`${want}-completed`);
          if (want === 'event') checkEvent(chain, len, hotplugged);
        } else {
          checkRequest(chain, len, want);
        }
        completedLen.set(index * 0x10000 + chain.head, len);
      } catch (err) {
        violations.push(err);
      }
      complete(chain, len);
    };
  }
  const kick = (index: number): void => {
    rig.kick(index);
    if (violations.length > 0) throw violations[0];
  };

  try {
    // Event buffers for HOTPLUG events, of any size.
    const eventRing = rig.rings.get(ScsiQueue.EVENT);
    if (eventRing) {
      for (let i = rng.range(0, 4); i > 0; i--) {
        const len = rng.weighted<number>([[8, VirtioScsi.EVENT_SIZE], [1, rng.range(1, 32)]]);
        post(rng, rig, eventRing, [{ write: true, data: new Uint8Array(len) }], indirect, hostile / 3);
      }
      kick(ScsiQueue.EVENT);
      // The device takes these buffers (and reads their indirect tables) only when it has an event, rounds later.
      rig.keepBuffers();
    }
    const rounds = rng.range(1, 5);
    for (let round = 0; round < rounds; round++) {
      const kicked = new Set<number>();
      for (let k = rng.range(1, 8); k > 0; k--) {
        const index = rng.pick([...rig.rings.keys()].filter((i) => i !== ScsiQueue.EVENT));
        const ring = rig.rings.get(index)!;
        const parts = index === ScsiQueue.CONTROL ? buildControl(rng, hostile) : buildRequest(rng, units, hostile);
        if (!post(rng, rig, ring, parts, indirect, hostile)) break;
        kicked.add(index);
      }
      const disabled = canDisable && kicked.size > 0 && rng.chance(0.1) ? rng.pick([...kicked]) : undefined;
      if (disabled !== undefined) {
        rig.backend.setVringEnable(disabled, false);
        kick(disabled);
        check(pending.size === 0 && rig.rings.get(disabled)!.reap().length === 0, 'a disabled ring completed requests');
        rig.backend.setVringEnable(disabled, true);
        stats.count('disabled-ring');
      }
      for (const index of kicked) kick(index);
      // Storage completes later, and task management after the tasks it ends: let them settle.
      for (let i = 0; i < 200 && [...pending.values()].some((w) => w !== 'event'); i++) {
        await new Promise((r) => setImmediate(r));
      }
      if (violations.length > 0) throw violations[0];
      check([...pending.values()].every((w) => w === 'event'),
        () => `${pending.size} request(s) handed to the device were never completed`);
      for (let n = rig.checkUsed(completedLen, (i) => i === ScsiQueue.EVENT); n > 0; n--) stats.count('ring-broken');
      for (const u of units) if (u.dirty) resync(u);
      // Hotplug: a LUN added at a free address, or one taken away (the driver hears of it on the event queue).
      if (rng.chance(0.2)) {
        if (units.length > 0 && rng.chance(0.5)) {
          const u = rng.pick(units);
          units.splice(units.indexOf(u), 1);
          hotplugged.add(`${u.target}:${u.lun}:${ResetReason.REMOVED}`);
          check((await device.removeUnit(u.target, u.lun)) === u.unit, 'removeUnit gave another unit');
          stats.count('hot-removed');
        } else {
          const target = rng.int(2);
          const lun = rng.int(8);
          if (!units.some((u) => u.target === target && u.lun === lun)) {
            const u = makeUnit(rng, target, lun, deferred);
            hotplugged.add(`${target}:${lun}:${ResetReason.RESCAN}`);
            device.addUnit(target, lun, u.unit);
            units.push(u);
            stats.count('hot-added');
          }
        }
        if (violations.length > 0) throw violations[0];
      }
      rig.checkGuards();
      rig.freeBuffers();
    }
    for (const [index, ring] of rig.rings) {
      if (!rng.chance(0.5) || rig.vring(index).error || index === ScsiQueue.EVENT) continue;
      const base = await rig.backend.getVringBase(index);
      check(base === ring.availIdx, `queue ${index}: GET_VRING_BASE gave ${base}, the driver's avail index is ${ring.availIdx}`);
    }
  } finally {
    await rig.close();
    device.dispose();
  }
  for (const u of units) {
    const disk = Buffer.alloc(u.mirror.length);
    u.storage.read([disk], 0, (err) => check(err === null, 'read back failed'));
    check(disk.equals(u.mirror), () => `LUN ${u.target}:${u.lun} differs from what the requests should have left ` +
      `(first difference at byte ${disk.findIndex((b, i) => b !== u.mirror[i])})`);
  }
  const unexpected = log.lines.find((l) => UNEXPECTED_LOG.test(l));
  check(unexpected === undefined, () => `unexpected log line: ${unexpected}`);
  const warnings = log.lines.filter((l) => l.startsWith('warn') && !/queue \d+ stopped|needs reset/.test(l)).length;
  check(warnings <= 24, () => `the device logged ${warnings} warnings for one guest (log flooding):\n${log.lines.slice(0, 30).join('\n')}`);
}

export const scsiTarget: FuzzTarget = {
  name: 'scsi',
  description: 'virtio-scsi device and SCSI target on the real framework: random commands, LUN fields, layouts, ' +
    'task management and hotplug over guarded memory, against a reference for READ/WRITE and the response codes; ' +
    'units match a mirror; bounded warnings',
  batch: 25,
  stats,
  runCase: runScsiCase,
};
