/**
 * vhost-user payload types: one type per payload, each with a syntax-only decoder (sizes, ranges that no
 * context is needed to judge) and an encoder. Semantic checks (is this ring index one of ours?) belong to the
 * handler that has the context.
 */
import { Limits } from './constants.js';

/** A whole message as it travels: header fields, payload bytes and the fds that rode with it. */
export interface Message {
  request: number;
  flags: number;
  payload: Uint8Array;
  /** File descriptors received with the message. Whoever handles the message owns them. */
  fds: number[];
}

/** A message that breaks the protocol. The connection that sent it is closed with this reason. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

/** Largest integer an address or size may have here: JS numbers are exact below 2^53. */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function view(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

function expectSize(payload: Uint8Array, size: number, what: string): DataView {
  if (payload.byteLength !== size) {
    throw new ProtocolError(`${what}: payload is ${payload.byteLength} bytes, expected ${size}`);
  }
  return view(payload);
}

function safeNumber(value: bigint, what: string): number {
  if (value > MAX_SAFE) throw new ProtocolError(`${what} 0x${value.toString(16)} is beyond 2^53`);
  return Number(value);
}

// ---- u64 ----

/** Decode a u64 payload. */
export function decodeU64(payload: Uint8Array, what = 'u64'): bigint {
  return expectSize(payload, 8, what).getBigUint64(0, true);
}

/** Encode a u64 payload. */
export function encodeU64(value: bigint | number): Uint8Array {
  const out = new Uint8Array(8);
  view(out).setBigUint64(0, BigInt(value), true);
  return out;
}

// ---- vring state ----

/** `{index, num}`: SET_VRING_NUM, SET/GET_VRING_BASE, SET_VRING_ENABLE. */
export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(payload: Uint8Array): VringState {
  const dv = expectSize(payload, 8, 'vring state');
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

export function encodeVringState(state: VringState): Uint8Array {
  const out = new Uint8Array(8);
  const dv = view(out);
  dv.setUint32(0, state.index, true);
  dv.setUint32(4, state.num, true);
  return out;
}

// ---- vring address ----

/** SET_VRING_ADDR: ring addresses in the frontend's virtual address space. */
export interface VringAddress {
  index: number;
  /** Bit 0: VHOST_VRING_F_LOG (log used-ring writes at `log`). */
  flags: number;
  desc: number;
  used: number;
  avail: number;
  log: number;
}

export const VRING_ADDR_F_LOG = 1;

export function decodeVringAddress(payload: Uint8Array): VringAddress {
  const dv = expectSize(payload, 40, 'vring address');
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: safeNumber(dv.getBigUint64(8, true), 'descriptor table address'),
    used: safeNumber(dv.getBigUint64(16, true), 'used ring address'),
    avail: safeNumber(dv.getBigUint64(24, true), 'available ring address'),
    log: safeNumber(dv.getBigUint64(32, true), 'log address'),
  };
}

export function encodeVringAddress(a: VringAddress): Uint8Array {
  const out = new Uint8Array(40);
  const dv = view(out);
  dv.setUint32(0, a.index, true);
  dv.setUint32(4, a.flags, true);
  dv.setBigUint64(8, BigInt(a.desc), true);
  dv.setBigUint64(16, BigInt(a.used), true);
  dv.setBigUint64(24, BigInt(a.avail), true);
  dv.setBigUint64(32, BigInt(a.log), true);
  return out;
}

// ---- memory regions ----

/** One memory region as the frontend describes it. */
export interface RegionDescription {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

const REGION_SIZE = 32;

function decodeRegion(dv: DataView, at: number, what: string): RegionDescription {
  const region = {
    guestPhysAddr: safeNumber(dv.getBigUint64(at, true), `${what} guest address`),
    size: safeNumber(dv.getBigUint64(at + 8, true), `${what} size`),
    userAddr: safeNumber(dv.getBigUint64(at + 16, true), `${what} user address`),
    mmapOffset: safeNumber(dv.getBigUint64(at + 24, true), `${what} mmap offset`),
  };
  if (region.size === 0) throw new ProtocolError(`${what} has size 0`);
  if (region.guestPhysAddr + region.size > Number.MAX_SAFE_INTEGER ||
      region.userAddr + region.size > Number.MAX_SAFE_INTEGER ||
      region.mmapOffset + region.size > Number.MAX_SAFE_INTEGER) {
    throw new ProtocolError(`${what} wraps around the address space`);
  }
  return region;
}

function encodeRegion(dv: DataView, at: number, r: RegionDescription): void {
  dv.setBigUint64(at, BigInt(r.guestPhysAddr), true);
  dv.setBigUint64(at + 8, BigInt(r.size), true);
  dv.setBigUint64(at + 16, BigInt(r.userAddr), true);
  dv.setBigUint64(at + 24, BigInt(r.mmapOffset), true);
}

/** SET_MEM_TABLE: `{nregions u32, padding u32, regions[nregions]}`, one fd per region. */
export function decodeMemoryTable(payload: Uint8Array): RegionDescription[] {
  if (payload.byteLength < 8) throw new ProtocolError(`memory table: payload is ${payload.byteLength} bytes`);
  const dv = view(payload);
  const count = dv.getUint32(0, true);
  if (count === 0 || count > Limits.MAX_TABLE_REGIONS) {
    throw new ProtocolError(`memory table: ${count} regions (1..${Limits.MAX_TABLE_REGIONS} allowed)`);
  }
  // QEMU sends exactly the regions it uses; older frontends send the full 8-slot array.
  const exact = 8 + count * REGION_SIZE;
  const full = 8 + Limits.MAX_TABLE_REGIONS * REGION_SIZE;
  if (payload.byteLength !== exact && payload.byteLength !== full) {
    throw new ProtocolError(`memory table: payload is ${payload.byteLength} bytes for ${count} regions`);
  }
  const regions: RegionDescription[] = [];
  for (let i = 0; i < count; i++) regions.push(decodeRegion(dv, 8 + i * REGION_SIZE, `region ${i}`));
  return regions;
}

export function encodeMemoryTable(regions: RegionDescription[]): Uint8Array {
  const out = new Uint8Array(8 + regions.length * REGION_SIZE);
  const dv = view(out);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => encodeRegion(dv, 8 + i * REGION_SIZE, r));
  return out;
}

/** ADD_MEM_REG / REM_MEM_REG: `{padding u64, region}`. */
export function decodeSingleRegion(payload: Uint8Array): RegionDescription {
  return decodeRegion(expectSize(payload, 8 + REGION_SIZE, 'single memory region'), 8, 'region');
}

export function encodeSingleRegion(region: RegionDescription): Uint8Array {
  const out = new Uint8Array(8 + REGION_SIZE);
  encodeRegion(view(out), 8, region);
  return out;
}

// ---- config space ----

/** GET/SET_CONFIG: `{offset u32, size u32, flags u32, bytes[size]}`. */
export interface ConfigPayload {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

/** SET_CONFIG flags. */
export const ConfigFlag = {
  WRITABLE: 0,
  LIVE_MIGRATION: 1,
} as const;

export function decodeConfig(payload: Uint8Array): ConfigPayload {
  if (payload.byteLength < 12) throw new ProtocolError(`config: payload is ${payload.byteLength} bytes`);
  const dv = view(payload);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  const flags = dv.getUint32(8, true);
  if (size > Limits.MAX_CONFIG_SIZE) throw new ProtocolError(`config: size ${size} over ${Limits.MAX_CONFIG_SIZE}`);
  if (payload.byteLength !== 12 + size) {
    throw new ProtocolError(`config: payload is ${payload.byteLength} bytes for a ${size}-byte config`);
  }
  if (offset > Limits.MAX_CONFIG_SIZE || offset + size > Limits.MAX_CONFIG_SIZE) {
    throw new ProtocolError(`config: range ${offset}+${size} is outside the config space`);
  }
  return { offset, size, flags, data: payload.subarray(12, 12 + size) };
}

export function encodeConfig(c: { offset: number; flags?: number; data: Uint8Array }): Uint8Array {
  const out = new Uint8Array(12 + c.data.byteLength);
  const dv = view(out);
  dv.setUint32(0, c.offset, true);
  dv.setUint32(4, c.data.byteLength, true);
  dv.setUint32(8, c.flags ?? 0, true);
  out.set(c.data, 12);
  return out;
}

// ---- inflight ----

/** GET/SET_INFLIGHT_FD. The wire struct is 20 bytes of fields padded to 24 (QEMU checks the size). */
export interface InflightDescription {
  mmapSize: number;
  mmapOffset: number;
  numQueues: number;
  queueSize: number;
}

export const INFLIGHT_PAYLOAD_SIZE = 24;

export function decodeInflight(payload: Uint8Array): InflightDescription {
  const dv = expectSize(payload, INFLIGHT_PAYLOAD_SIZE, 'inflight');
  return {
    mmapSize: safeNumber(dv.getBigUint64(0, true), 'inflight mmap size'),
    mmapOffset: safeNumber(dv.getBigUint64(8, true), 'inflight mmap offset'),
    numQueues: dv.getUint16(16, true),
    queueSize: dv.getUint16(18, true),
  };
}

export function encodeInflight(i: InflightDescription): Uint8Array {
  const out = new Uint8Array(INFLIGHT_PAYLOAD_SIZE);
  const dv = view(out);
  dv.setBigUint64(0, BigInt(i.mmapSize), true);
  dv.setBigUint64(8, BigInt(i.mmapOffset), true);
  dv.setUint16(16, i.numQueues, true);
  dv.setUint16(18, i.queueSize, true);
  return out;
}

// ---- log ----

/** SET_LOG_BASE: `{mmap_size u64, mmap_offset u64}` with one fd. */
export interface LogDescription {
  mmapSize: number;
  mmapOffset: number;
}

export function decodeLog(payload: Uint8Array): LogDescription {
  const dv = expectSize(payload, 16, 'log');
  return {
    mmapSize: safeNumber(dv.getBigUint64(0, true), 'log size'),
    mmapOffset: safeNumber(dv.getBigUint64(8, true), 'log offset'),
  };
}
