/**
 * Helpers for the SCSI target tests: run one command on a unit or a target with plain buffers, and CDB builders
 * (the storage wrapper that records, holds and fails operations is test/helpers/test-storage.ts).
 */
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { LogicalUnit, type LogicalUnitOptions } from '../../src/scsi/logical-unit.js';
import { decodeFixedSense, type DecodedSense } from '../../src/scsi/sense.js';
import { ScsiTask } from '../../src/scsi/task.js';

/** What a command came back with. */
export interface Result {
  response: number;
  status: number;
  /** Decoded sense data when there was any. */
  sense: DecodedSense | undefined;
  senseLength: number;
  /** The bytes transferred into the data-in buffers, concatenated. */
  data: Buffer;
  dataInTransferred: number;
  dataOutTransferred: number;
  residual: number;
  /** How many times onComplete was called (must be 1). */
  completions: number;
}

/** Buffers for one command. */
export interface Buffers {
  /** Data-out: one buffer or several views. */
  out?: Uint8Array | Uint8Array[];
  /** Data-in: a size, or sizes of several views. */
  in?: number | number[];
  /** Tag. */
  tag?: number;
}

/** A task whose result is awaited. */
export interface Running {
  task: ScsiTask;
  done: Promise<Result>;
  dataIn: Uint8Array[];
}

/** Prepare a task and start it with `exec` (a unit's or a target's execute); the result resolves on completion. */
export function start(exec: (task: ScsiTask) => void, cdb: ArrayLike<number>, buffers: Buffers = {}): Running {
  let completions = 0;
  let resolve!: (r: Result) => void;
  const done = new Promise<Result>((r) => (resolve = r));
  const dataIn = (typeof buffers.in === 'number' ? [buffers.in] : buffers.in ?? []).map((n) => new Uint8Array(n).fill(0xee));
  const out = buffers.out === undefined ? [] : buffers.out instanceof Uint8Array ? [buffers.out] : buffers.out;
  const task = new ScsiTask((t) => {
    completions++;
    const data = Buffer.concat(dataIn.map((b) => Buffer.from(b))).subarray(0, t.dataInTransferred);
    const result: Result = {
      response: t.response,
      status: t.status,
      sense: t.senseLength > 0 ? decodeFixedSense(t.senseData) : undefined,
      senseLength: t.senseLength,
      data: Buffer.from(data),
      dataInTransferred: t.dataInTransferred,
      dataOutTransferred: t.dataOutTransferred,
      residual: t.residual,
      get completions() {
        return completions;
      },
    };
    resolve(result);
  });
  task.prepare();
  task.clearCdb();
  task.cdb.set(Array.from(cdb));
  task.tagLo = buffers.tag ?? 0;
  task.dataOut = out;
  task.dataOutLength = out.reduce((n, b) => n + b.byteLength, 0);
  task.dataIn = dataIn;
  task.dataInLength = dataIn.reduce((n, b) => n + b.byteLength, 0);
  exec(task);
  return { task, done, dataIn };
}

/** Run one command to completion. */
export function run(exec: (task: ScsiTask) => void, cdb: ArrayLike<number>, buffers: Buffers = {}): Promise<Result> {
  return start(exec, cdb, buffers).done;
}

/** A unit over a memory disk (default 8 MiB), with `exec` bound. */
export function memoryUnit(options: Partial<LogicalUnitOptions> & { size?: number } = {}): { unit: LogicalUnit; exec: (t: ScsiTask) => void } {
  const storage = options.storage ?? new MemoryStorage({ size: options.size ?? 8 << 20 });
  const unit = new LogicalUnit({ ...options, storage });
  return { unit, exec: (t) => unit.execute(t) };
}

function u16(v: number): number[] {
  return [(v >>> 8) & 0xff, v & 0xff];
}

function u32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

function u64(v: number | bigint): number[] {
  const b = BigInt(v);
  return [...u32(Number(b >> 32n)), ...u32(Number(b & 0xffffffffn))];
}

/** CDB builders. */
export const Cdb = {
  testUnitReady: () => [0x00, 0, 0, 0, 0, 0],
  requestSense: (alloc = 252, desc = false) => [0x03, desc ? 1 : 0, 0, 0, alloc, 0],
  inquiry: (alloc = 96, evpd = false, page = 0) => [0x12, evpd ? 1 : 0, page, ...u16(alloc), 0],
  read6: (lba: number, blocks: number) => [0x08, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, blocks & 0xff, 0],
  write6: (lba: number, blocks: number) => [0x0a, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, blocks & 0xff, 0],
  read10: (lba: number, blocks: number, flags = 0) => [0x28, flags, ...u32(lba), 0, ...u16(blocks), 0],
  write10: (lba: number, blocks: number, flags = 0) => [0x2a, flags, ...u32(lba), 0, ...u16(blocks), 0],
  read12: (lba: number, blocks: number, flags = 0) => [0xa8, flags, ...u32(lba), ...u32(blocks), 0, 0],
  write12: (lba: number, blocks: number, flags = 0) => [0xaa, flags, ...u32(lba), ...u32(blocks), 0, 0],
  read16: (lba: number | bigint, blocks: number, flags = 0) => [0x88, flags, ...u64(lba), ...u32(blocks), 0, 0],
  write16: (lba: number | bigint, blocks: number, flags = 0) => [0x8a, flags, ...u64(lba), ...u32(blocks), 0, 0],
  readCapacity10: (lba = 0, pmi = false) => [0x25, 0, ...u32(lba), 0, 0, pmi ? 1 : 0, 0],
  readCapacity16: (alloc = 32, serviceAction = 0x10, lba: number | bigint = 0, pmi = false) =>
    [0x9e, serviceAction, ...u64(lba), ...u32(alloc), pmi ? 1 : 0, 0],
  syncCache10: (lba = 0, blocks = 0, flags = 0) => [0x35, flags, ...u32(lba), 0, ...u16(blocks), 0],
  syncCache16: (lba: number | bigint = 0, blocks = 0) => [0x91, 0, ...u64(lba), ...u32(blocks), 0, 0],
  modeSense6: (page: number, pc = 0, alloc = 255, dbd = false, subpage = 0) =>
    [0x1a, dbd ? 0x08 : 0, (pc << 6) | page, subpage, alloc, 0],
  modeSense10: (page: number, pc = 0, alloc = 1024, dbd = false, llbaa = false, subpage = 0) =>
    [0x5a, (dbd ? 0x08 : 0) | (llbaa ? 0x10 : 0), (pc << 6) | page, subpage, 0, 0, 0, ...u16(alloc), 0],
  modeSelect6: (length: number, pf = true, sp = false) => [0x15, (pf ? 0x10 : 0) | (sp ? 1 : 0), 0, 0, length, 0],
  modeSelect10: (length: number, pf = true, sp = false) => [0x55, (pf ? 0x10 : 0) | (sp ? 1 : 0), 0, 0, 0, 0, 0, ...u16(length), 0],
  startStop: (start: boolean, flags = 0, powerCondition = 0) => [0x1b, 0, 0, 0, (powerCondition << 4) | flags | (start ? 1 : 0), 0],
  verify10: (lba: number, blocks: number, byteCheck = 0, flags = 0) => [0x2f, flags | (byteCheck << 1), ...u32(lba), 0, ...u16(blocks), 0],
  verify16: (lba: number | bigint, blocks: number, byteCheck = 0) => [0x8f, byteCheck << 1, ...u64(lba), ...u32(blocks), 0, 0],
  writeSame10: (lba: number, blocks: number, flags = 0) => [0x41, flags, ...u32(lba), 0, ...u16(blocks), 0],
  writeSame16: (lba: number | bigint, blocks: number, flags = 0) => [0x93, flags, ...u64(lba), ...u32(blocks), 0, 0],
  unmap: (length: number, anchor = false) => [0x42, anchor ? 1 : 0, 0, 0, 0, 0, 0, ...u16(length), 0],
  reportLuns: (alloc = 4096, select = 0) => [0xa0, 0, select, 0, 0, 0, ...u32(alloc), 0, 0],
};

/** An UNMAP parameter list. */
export function unmapParams(descriptors: { lba: number; blocks: number }[], descriptorLength = descriptors.length * 16): Uint8Array {
  const out = new Uint8Array(8 + descriptors.length * 16);
  out.set(u16(6 + descriptors.length * 16), 0);
  out.set(u16(descriptorLength), 2);
  descriptors.forEach((d, i) => {
    out.set(u64(d.lba), 8 + 16 * i);
    out.set(u32(d.blocks), 16 + 16 * i);
  });
  return out;
}

/** Bytes of a repeating pattern that differs per `seed`. */
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 31 + seed * 17 + (i >> 9)) & 0xff;
  return out;
}

