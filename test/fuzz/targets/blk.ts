/**
 * Fuzz target "blk": the virtio-blk request parser and device (src/devices/blk/request.ts, device.ts) on the real
 * framework (see device-rig.ts) over a MemoryStorage disk with random limits (capacity, seg_max, discard limits,
 * read-only, block size, serial), random features (FLUSH/WCE: write-through or not, INDIRECT, EVENT_IDX) and
 * random requests: every type (and unknown ones), sectors at and past the end and beyond 2^53, headers split over
 * buffers or short, data buffers of odd sizes, missing or wide status bytes, discard/write-zeroes segments with
 * any flags and ranges, indirect tables, corrupted descriptors, rings disabled and re-enabled, writeback flips.
 *
 * A reference written here from the virtio spec (and the limits the device advertises) says, before each request
 * is handled, what must happen. Checked for every chain: it completes exactly once, with the expected used
 * length and status byte (OK/IOERR/UNSUPP), reads return the disk's bytes, writes/discards/write-zeroes change
 * the disk exactly as expected (a mirror of the disk is compared with the storage at the end), a disabled ring
 * has no side effects, GET_VRING_BASE returns the driver's avail index, nothing touches the guards, no exception
 * escapes or stops a ring, and the device's warnings stay bounded no matter how many bad requests come.
 */
import { MemoryStorage } from '../../../src/devices/blk/storage/memory.js';
import { BlkDevice } from '../../../src/devices/blk/device.js';
import { Blk, BlkRequestType, BlkStatus } from '../../../src/devices/blk/request.js';
import type { DescriptorChain } from '../../../src/virtqueue/chain.js';
import { RequestRejected } from '../../../src/protocol/backend.js';
import { CommonFeature, hasFeature } from '../../../src/virtio/constants.js';
import { DeviceRig, viewsOverlap } from '../device-rig.js';
import { corruptDescriptor, type BufferSpec, type DriverRing } from '../driver-side.js';
import { GuardedMemory } from '../guarded-memory.js';
import { CapturingLogger, check, Stats, UNEXPECTED_LOG, type FuzzTarget } from '../harness.js';
import type { Rng } from '../rng.js';

const stats = new Stats();
const T = BlkRequestType;

/** What the device advertises, as the reference needs it. */
interface Params {
  capacity: bigint;
  readOnly: boolean;
  segMax: number;
  maxData: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  serial: Uint8Array;
}

/** What must happen to one chain. */
interface Expectation {
  status: number | null;
  usedLen: number;
  /** Disk range the data part of the writable buffers must hold afterwards (reads). */
  read?: { pos: number; len: number };
  /** Bytes to store at `pos` (writes), captured before the device ran. */
  write?: { pos: number; data: Buffer };
  zero?: { pos: number; len: number }[];
  /** GET_ID: the serial bytes expected at the start of the writable part. */
  id?: Uint8Array;
  /** Do the chain's views overlap each other (then the device's own writes may change what it reads)? */
  overlapping: boolean;
  /** Request type name, for the statistics. */
  type?: string;
}

const TYPE_NAMES: Record<number, string> = { 0: 'in', 1: 'out', 4: 'flush', 8: 'getid', 11: 'discard', 13: 'wzeroes' };


/** The reference: what the spec (and the advertised limits) say must happen to `chain`. */
function expect(chain: DescriptorChain, p: Params): Expectation {
  const ov = viewsOverlap(chain);
  const wlen = chain.writableLength;
  const rlen = chain.readableLength;
  let name = 'short';
  const done = (status: number, extra: Partial<Expectation> = {}): Expectation =>
    ({ status, usedLen: 1, overlapping: ov, type: name, ...extra });
  if (wlen === 0) return { status: null, usedLen: 0, overlapping: ov };
  if (rlen < Blk.HEADER_SIZE) return done(BlkStatus.IOERR);
  const r = Buffer.concat(chain.readable);
  const type = r.readUInt32LE(0);
  const sector = r.readBigUInt64LE(8);
  name = TYPE_NAMES[type] ?? 'other';
  const rangeOk = (sectors: bigint) => sector + sectors <= p.capacity;
  const dataOk = (len: number) => len % 512 === 0 && chain.descriptorCount <= p.segMax + 2 && len <= p.maxData &&
    rangeOk(BigInt(len / 512));
  switch (type) {
    case T.IN: {
      const len = wlen - 1;
      if (rlen !== Blk.HEADER_SIZE || !dataOk(len)) return done(BlkStatus.IOERR);
      return done(BlkStatus.OK, { usedLen: len + 1, read: { pos: Number(sector) * 512, len } });
    }
    case T.OUT: {
      const len = rlen - Blk.HEADER_SIZE;
      if (p.readOnly || wlen !== 1 || !dataOk(len)) return done(BlkStatus.IOERR);
      return done(BlkStatus.OK, { write: { pos: Number(sector) * 512, data: Buffer.from(r.subarray(Blk.HEADER_SIZE)) } });
    }
    case T.FLUSH:
      return done(rlen === Blk.HEADER_SIZE && wlen === 1 ? BlkStatus.OK : BlkStatus.IOERR);
    case T.GET_ID: {
      if (rlen !== Blk.HEADER_SIZE) return done(BlkStatus.IOERR);
      const n = Math.min(20, wlen - 1);
      return done(BlkStatus.OK, { usedLen: n + 1, id: p.serial.subarray(0, n) });
    }
    case T.DISCARD:
    case T.WRITE_ZEROES: {
      const discard = type === T.DISCARD;
      if (p.readOnly || wlen !== 1) return done(BlkStatus.IOERR);
      const payload = rlen - Blk.HEADER_SIZE;
      if (payload === 0 || payload % 16 !== 0) return done(BlkStatus.IOERR);
      const count = payload / 16;
      if (count > (discard ? p.maxDiscardSeg : p.maxWriteZeroesSeg)) return done(BlkStatus.IOERR);
      const zero: { pos: number; len: number }[] = [];
      for (let i = 0; i < count; i++) {
        const o = Blk.HEADER_SIZE + 16 * i;
        const s = r.readBigUInt64LE(o);
        const num = r.readUInt32LE(o + 8);
        const flags = r.readUInt32LE(o + 12);
        if ((flags & ~1) !== 0 || (discard && flags !== 0)) return done(BlkStatus.UNSUPP);
        if (num > (discard ? p.maxDiscardSectors : p.maxWriteZeroesSectors) || s + BigInt(num) > p.capacity) {
          return done(BlkStatus.IOERR);
        }
        zero.push({ pos: Number(s) * 512, len: num * 512 });
      }
      return done(BlkStatus.OK, { zero });
    }
    default:
      return done(BlkStatus.UNSUPP);
  }
}

// ---- request generation ----

interface Built {
  buffers: BufferSpec[];
  /** Bytes to put in guest memory before posting. */
  fill: { gpa: number; data: Uint8Array }[];
}

/** A plausible request (often with one thing wrong), laid out in freshly allocated guest memory. */
function buildRequest(rng: Rng, rig: DeviceRig, p: Params, hostile: number): Built | undefined {
  const type = rng.weighted<number>([[5, T.IN], [5, T.OUT], [1, T.FLUSH], [1, T.GET_ID], [1, T.DISCARD],
    [1, T.WRITE_ZEROES], [0.5, rng.pick([2, 3, T.GET_LIFETIME, T.SECURE_ERASE])], [0.3 + hostile, rng.u32()]]);
  const cap = Number(p.capacity);
  const sectorFor = (sectors: number): bigint => {
    const n = Math.ceil(sectors);
    return rng.weighted<bigint>([
    [8, BigInt(rng.int(Math.max(1, cap - n + 1)))],
    [1, BigInt(Math.max(0, cap - n + rng.range(-2, 2)))],
    [1, p.capacity],
    [hostile * 10, rng.interesting64()],
    ]);
  };
  const parts: { write: boolean; data: Uint8Array }[] = [];
  const header = (sector: bigint): void => {
    const h = new Uint8Array(16);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, type, true);
    dv.setUint32(4, rng.chance(0.9) ? 0 : rng.u32(), true);
    dv.setBigUint64(8, BigInt.asUintN(64, sector), true);
    const split = rng.weighted<number[]>([[8, [16]], [1, [8, 8]], [1, [4, 12]], [hostile * 5, [rng.range(1, 15)]]]);
    let at = 0;
    for (const n of split) {
      parts.push({ write: false, data: h.subarray(at, at + n) });
      at += n;
    }
  };
  const dataLengths = (): number[] => {
    const n = rng.weighted<number>([[6, 1], [3, rng.range(2, 4)], [1, rng.range(1, p.segMax + 2)]]);
    return Array.from({ length: n }, () => 512 * rng.range(1, 4) + (rng.chance(0.05 + hostile) ? rng.range(1, 511) : 0));
  };
  switch (type) {
    case T.IN: {
      const lens = dataLengths();
      header(sectorFor(lens.reduce((a, b) => a + b, 0) / 512));
      for (const len of lens) parts.push({ write: true, data: rng.bytes(len) });
      break;
    }
    case T.OUT: {
      const lens = dataLengths();
      header(sectorFor(lens.reduce((a, b) => a + b, 0) / 512));
      for (const len of lens) parts.push({ write: false, data: rng.bytes(len) });
      break;
    }
    case T.DISCARD:
    case T.WRITE_ZEROES: {
      header(0n);
      const max = type === T.DISCARD ? p.maxDiscardSeg : p.maxWriteZeroesSeg;
      const maxSectors = type === T.DISCARD ? p.maxDiscardSectors : p.maxWriteZeroesSectors;
      const count = rng.weighted<number>([[6, rng.range(1, Math.min(max, 4))], [1, max + 1]]);
      const segs = new Uint8Array(16 * count);
      const dv = new DataView(segs.buffer);
      for (let i = 0; i < count; i++) {
        const num = rng.weighted<number>([[6, rng.range(0, Math.min(maxSectors, 64))], [1, maxSectors], [1, maxSectors + 1]]);
        dv.setBigUint64(16 * i, BigInt.asUintN(64, sectorFor(num)), true);
        dv.setUint32(16 * i + 8, num, true);
        const flags = rng.weighted<number>([[8, 0], [type === T.WRITE_ZEROES ? 4 : 1, 1], [1 + hostile * 10, rng.interesting32()]]);
        dv.setUint32(16 * i + 12, flags, true);
      }
      if (rng.chance(0.1 + hostile)) parts.push({ write: false, data: segs.subarray(0, rng.int(segs.length + 1)) });
      else parts.push({ write: false, data: segs });
      break;
    }
    case T.GET_ID:
      header(0n);
      parts.push({ write: true, data: rng.bytes(rng.weighted<number>([[6, 20], [1, rng.range(1, 40)]])) });
      break;
    default:
      header(sectorFor(1));
      if (rng.chance(0.3)) parts.push({ write: rng.chance(0.5), data: rng.bytes(512) });
  }
  // The status byte: its own buffer, a wider one, the tail of the last data buffer, or (hostile) none.
  const status = rng.weighted<string>([[10, 'own'], [1, 'wide'], [1, 'merged'], [hostile * 10, 'none'], [hostile * 3, 'readable-after']]);
  const last = parts[parts.length - 1];
  if (status === 'merged' && last?.write) {
    const merged = new Uint8Array(last.data.length + 1);
    merged.set(last.data);
    parts[parts.length - 1] = { write: true, data: merged };
  } else if (status === 'wide') parts.push({ write: true, data: new Uint8Array(rng.range(2, 8)) });
  else if (status !== 'none') parts.push({ write: true, data: Uint8Array.of(0xee) });
  if (status === 'readable-after') parts.push({ write: false, data: rng.bytes(8) });

  const buffers: BufferSpec[] = [];
  const fill: Built['fill'] = [];
  for (const part of parts) {
    if (part.data.length === 0) continue;
    const gpa = rig.alloc.alloc(rng, part.data.length, rng.pick([1, 8, 512]));
    if (gpa === undefined) return undefined;
    buffers.push({ addr: BigInt(gpa), len: part.data.length, write: part.write });
    fill.push({ gpa, data: part.data });
  }
  return buffers.length === 0 ? undefined : { buffers, fill };
}

/** Post a built request on `ring`, directly or through an indirect table, maybe corrupting a descriptor. */
function post(rng: Rng, rig: DeviceRig, ring: DriverRing, built: Built, indirect: boolean, hostile: number): number | undefined {
  for (const f of built.fill) rig.mem.write(f.gpa, f.data);
  let table: number | undefined;
  if ((indirect && rng.chance(0.3)) || built.buffers.length > ring.freeCount) {
    if (!indirect) return undefined;
    table = rig.alloc.alloc(rng, 16 * built.buffers.length, 16);
    if (table === undefined) return undefined;
  }
  const head = ring.post(built.buffers, table);
  if (head !== undefined && rng.chance(hostile / 3)) {
    // A corrupted descriptor: the ring will (usually) break, and the device must say so without side effects.
    corruptDescriptor(rng, ring, head);
    stats.count('corrupted');
  }
  return head;
}

// ---- the case ----

const PRINTABLE = ' !"#$%&\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~';

async function runBlkCase(rng: Rng): Promise<void> {
  const hostile = rng.pick([0, 0.02, 0.1, 0.3]);
  const readOnly = rng.chance(0.15);
  const size = 512 * rng.pick([1, 2, 8, 64, 128, 2048]);
  const storage = new MemoryStorage({ size, readOnly });
  const mirror = Buffer.alloc(size);
  const log = new CapturingLogger('blk', 'info');
  const serial = Array.from({ length: rng.int(21) }, () => rng.pick([...PRINTABLE])).join('');
  const segMax = rng.pick([1, 2, 4, 126]);
  const sizeMax = rng.pick([512, 4096, 1 << 20]);
  const limits = {
    maxDiscardSectors: rng.pick([1, 8, 32768]), maxDiscardSeg: rng.pick([1, 2, 16]),
    maxWriteZeroesSectors: rng.pick([1, 8, 32768]), maxWriteZeroesSeg: rng.pick([1, 2, 16]),
  };
  const numQueues = rng.range(1, 2);
  const device = new BlkDevice({
    storage, numQueues, maxQueueSize: rng.pick([8, 64, 1024]), serial, blockSize: rng.pick([512, 4096]), segMax,
    sizeMax, writeback: rng.chance(0.7), logger: log, ...limits,
  });
  const params: Params = {
    capacity: BigInt(device.capacity), readOnly, segMax, maxData: Math.min(segMax * sizeMax, 2 ** 32 - 1), ...limits,
    serial: new Uint8Array(20),
  };
  params.serial.set(Buffer.from(serial, 'latin1'));
  if (!readOnly) {
    // Not a blank disk: reads must return what is there.
    const content = rng.bytes(size);
    storage.write([content], 0, (err) => check(err === null, 'prefill failed'));
    mirror.set(content);
  }
  const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [65536, 131072], minRegions: 1, maxRegions: 3 });
  for (const r of mem.regions) rng.fill(mem.bytes.subarray(r.offset, r.offset + r.size));
  const rig = DeviceRig.create(rng, device, mem, log, { queues: Array.from({ length: numQueues }, (_, i) => i) });
  const indirect = hasFeature(rig.backend.features, CommonFeature.INDIRECT_DESC);
  const canDisable = hasFeature(rig.backend.features, CommonFeature.PROTOCOL_FEATURES);

  // Expectations are taken just before the device sees the chain; completions are checked against them.
  const pending = new Map<DescriptorChain, Expectation>();
  const completedLen = new Map<number, number>();
  const violations: unknown[] = [];
  const kick = (index: number): void => {
    rig.kick(index);
    if (violations.length > 0) throw violations[0];
  };
  const handle = device.handleChain.bind(device);
  device.handleChain = (vring, chain) => {
    pending.set(chain, expect(chain, params));
    handle(vring, chain);
  };
  for (const index of rig.rings.keys()) {
    const v = rig.vring(index);
    const complete = v.complete.bind(v);
    // Violations are recorded, not thrown: the device calls this from its own callbacks, which catch errors.
    v.complete = (chain, len) => {
      try {
        const want = pending.get(chain);
        check(want !== undefined, `queue ${index}: chain ${chain.head} completed twice, or never handed to the device`);
        pending.delete(chain);
        checkCompletion(chain, len, want, mirror);
        completedLen.set(index * 0x10000 + chain.head, len);
      } catch (err) {
        violations.push(err);
      }
      complete(chain, len);
    };
  }

  try {
    const rounds = rng.range(1, 6);
    for (let round = 0; round < rounds; round++) {
      const kicked = new Set<number>();
      const posts = rng.range(1, 8);
      for (let k = 0; k < posts; k++) {
        const index = rng.pick([...rig.rings.keys()]);
        const ring = rig.rings.get(index)!;
        const built = buildRequest(rng, rig, params, hostile);
        if (built === undefined || post(rng, rig, ring, built, indirect, hostile) === undefined) break;
        kicked.add(index);
      }
      // Sometimes the frontend disables a ring first: it must then have no side effects at all.
      const disabled = canDisable && rng.chance(0.15) ? rng.pick([...kicked, 0]) : undefined;
      if (disabled !== undefined && rig.rings.has(disabled)) {
        rig.backend.setVringEnable(disabled, false);
        kick(disabled);
        check(pending.size === 0 && rig.rings.get(disabled)!.reap().length === 0, 'a disabled ring completed requests');
        rig.backend.setVringEnable(disabled, true);
        stats.count('disabled-ring');
      }
      if (rng.chance(0.1)) {
        try {
          await rig.backend.setConfig(32, Uint8Array.of(rng.pick([0, 1, 1, 2])));
          stats.count('writeback-set');
        } catch (err) {
          check(err instanceof RequestRejected, () => `SET_CONFIG threw ${String(err)}`);
        }
      }
      for (const index of kicked) kick(index);
      check(pending.size === 0, () => `${pending.size} request(s) handed to the device were never completed`);
      for (let n = rig.checkUsed(completedLen); n > 0; n--) stats.count('ring-broken');
      rig.checkGuards();
      rig.freeBuffers();
    }
    // Stopping a ring returns the next avail index to process: everything the driver posted, unless broken.
    for (const [index, ring] of rig.rings) {
      if (!rng.chance(0.5) || rig.vring(index).error) continue;
      const base = await rig.backend.getVringBase(index);
      check(base === ring.availIdx, `queue ${index}: GET_VRING_BASE gave ${base}, the driver's avail index is ${ring.availIdx}`);
    }
  } finally {
    await rig.close();
  }
  const disk = Buffer.alloc(size);
  storage.read([disk], 0, (err) => check(err === null, 'read back failed'));
  check(disk.equals(mirror), () => `the disk differs from what the requests should have left (first difference at byte ${disk.findIndex((b, i) => b !== mirror[i])})`);
  const unexpected = log.lines.find((l) => UNEXPECTED_LOG.test(l));
  check(unexpected === undefined, () => `unexpected log line: ${unexpected}`);
  // Guest mistakes are logged at warn once per kind: the count must not grow with the number of bad requests.
  const warnings = log.lines.filter((l) => l.startsWith('warn') && !/queue \d+ stopped|needs reset/.test(l)).length;
  check(warnings <= 16, () => `the device logged ${warnings} warnings for one guest (log flooding):\n${log.lines.slice(0, 20).join('\n')}`);
}

function checkCompletion(chain: DescriptorChain, len: number, want: Expectation, mirror: Buffer): void {
  check(len === want.usedLen, () => `chain ${chain.head}: used length ${len}, expected ${want.usedLen} (status ${want.status})`);
  if (want.status === null) {
    stats.count('no-status');
    return;
  }
  const w = chain.writable;
  const last = w[w.length - 1]!;
  const status = last[last.length - 1];
  stats.count(`${want.type}-${status}`);
  if (want.overlapping) {
    check(status === 0 || status === 1 || status === 2, `chain ${chain.head}: status byte ${status}`);
    return;
  }
  check(status === want.status, () => `chain ${chain.head}: status ${status}, expected ${want.status}`);
  if (want.status !== BlkStatus.OK) return;
  if (want.read) {
    const got = Buffer.concat(w).subarray(0, want.read.len);
    check(got.equals(mirror.subarray(want.read.pos, want.read.pos + want.read.len)),
      () => `chain ${chain.head}: read of ${want.read!.len} bytes at ${want.read!.pos} returned other data than the disk holds`);
  }
  if (want.write) want.write.data.copy(mirror, want.write.pos);
  for (const z of want.zero ?? []) mirror.fill(0, z.pos, z.pos + z.len);
  if (want.id) {
    const got = Buffer.concat(w).subarray(0, want.id.length);
    check(got.equals(Buffer.from(want.id)), `chain ${chain.head}: GET_ID returned other bytes than the serial`);
  }
}

export const blkTarget: FuzzTarget = {
  name: 'blk',
  description: 'virtio-blk device on the real framework with random requests over guarded memory, against a ' +
    'reference (status, used length, data, disk contents); bounded warnings',
  batch: 25,
  stats,
  runCase: runBlkCase,
};
