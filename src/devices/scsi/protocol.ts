/**
 * The virtio-scsi wire format (virtio 1.2, 5.6): queue layout, config space, the request/response headers of
 * the request queues, control-queue requests (task management, asynchronous notification), events, and the
 * 8-byte LUN field. Decoders read bytes the guest wrote exactly once (from a copy); encoders are for the
 * device and for drivers in tests.
 */
import { WLUN_REPORT_LUNS } from '../../scsi/constants.js';

/** Queue indexes: control, event, then request queues. */
export const ScsiQueue = {
  CONTROL: 0,
  EVENT: 1,
  FIRST_REQUEST: 2,
} as const;

/** Defaults and fixed sizes. */
export const VirtioScsi = {
  /** cdb_size and sense_size after reset. */
  DEFAULT_CDB_SIZE: 32,
  DEFAULT_SENSE_SIZE: 96,
  /** lun[8], id u64, task_attr, prio, crn: the request header before the CDB. */
  REQUEST_HEADER_BASE: 19,
  /** sense_len u32, residual u32, status_qualifier u16, status, response: the response header before the sense. */
  RESPONSE_HEADER_BASE: 12,
  /** struct virtio_scsi_event. */
  EVENT_SIZE: 16,
  /** Config space bytes. */
  CONFIG_SIZE: 36,
  /** TMF request: type, subtype, lun[8], id. */
  TMF_REQUEST_SIZE: 24,
  /** AN request: type, lun[8], event_requested. */
  AN_REQUEST_SIZE: 16,
  /** AN response: event_actual u32, response. */
  AN_RESPONSE_SIZE: 5,
  /** Config offsets of the two writable fields. */
  SENSE_SIZE_OFFSET: 20,
  CDB_SIZE_OFFSET: 24,
} as const;

/** The response byte of requests and control requests. */
export const ScsiResponse = {
  OK: 0,
  OVERRUN: 1,
  ABORTED: 2,
  BAD_TARGET: 3,
  RESET: 4,
  BUSY: 5,
  TRANSPORT_FAILURE: 6,
  TARGET_FAILURE: 7,
  NEXUS_FAILURE: 8,
  FAILURE: 9,
  /** TMF: FUNCTION COMPLETE is OK (0). */
  FUNCTION_SUCCEEDED: 10,
  FUNCTION_REJECTED: 11,
  INCORRECT_LUN: 12,
} as const;

/** Control request types. */
export const ControlType = {
  TMF: 0,
  AN_QUERY: 1,
  AN_SUBSCRIBE: 2,
} as const;

/** TMF subtypes. */
export const TmfSubtype = {
  ABORT_TASK: 0,
  ABORT_TASK_SET: 1,
  CLEAR_ACA: 2,
  CLEAR_TASK_SET: 3,
  I_T_NEXUS_RESET: 4,
  LOGICAL_UNIT_RESET: 5,
  QUERY_TASK: 6,
  QUERY_TASK_SET: 7,
} as const;

/** Event types (`event` field); bit 31 flags lost events. */
export const EventType = {
  NO_EVENT: 0,
  TRANSPORT_RESET: 1,
  ASYNC_NOTIFY: 2,
  PARAM_CHANGE: 3,
  EVENTS_MISSED: 0x80000000,
} as const;

/** Reasons of TRANSPORT_RESET events. */
export const ResetReason = {
  HARD: 0,
  RESCAN: 1,
  REMOVED: 2,
} as const;

/** Task attributes. */
export const TaskAttribute = {
  SIMPLE: 0,
  ORDERED: 1,
  HEAD: 2,
  ACA: 3,
} as const;

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

/**
 * The target a LUN field addresses: byte 0 must be 1 (the only format virtio-scsi defines), byte 1 is the
 * target. -1 for anything else.
 */
export function lunTarget(lun: Uint8Array, at = 0): number {
  return lun[at] === 1 ? lun[at + 1]! : -1;
}

/**
 * The LUN number in bytes 2-3 of a LUN field (single-level: peripheral addressing `00 LL`, flat addressing
 * `01LLLLLL LL`, or the REPORT LUNS well-known LUN `C1 01`), with bytes 4-7 zero. -1 when the field names no
 * LUN of those forms.
 */
export function decodeLun(lun: Uint8Array, at = 0): number {
  if ((lun[at + 4]! | lun[at + 5]! | lun[at + 6]! | lun[at + 7]!) !== 0) return -1;
  return lunNumber(lun[at + 2]!, lun[at + 3]!);
}

/** {@link decodeLun} from bytes 2 and 3 of a LUN field whose bytes 4-7 are zero. */
export function lunNumber(b2: number, b3: number): number {
  switch (b2 >> 6) {
    case 0: return b2 === 0 ? b3 : -1;
    case 1: return ((b2 & 0x3f) << 8) | b3;
    case 3: return b2 === 0xc1 && b3 === 0x01 ? WLUN_REPORT_LUNS : -1;
    default: return -1;
  }
}

/**
 * A LUN field for target:lun. `flat` uses flat addressing even below 256 (as Linux's driver sends requests);
 * otherwise peripheral addressing below 256 (as events report LUNs, so that Linux maps them to the numbers
 * REPORT LUNS gave it).
 */
export function encodeLunField(target: number, lun: number, flat = false, out = new Uint8Array(8), at = 0): Uint8Array {
  out.fill(0, at, at + 8);
  out[at] = 1;
  out[at + 1] = target;
  if (lun === WLUN_REPORT_LUNS) {
    out[at + 2] = 0xc1;
    out[at + 3] = 0x01;
  } else if (flat || lun >= 256) {
    out[at + 2] = 0x40 | (lun >> 8);
    out[at + 3] = lun & 0xff;
  } else {
    out[at + 3] = lun;
  }
  return out;
}

/** virtio_scsi_config. */
export interface ScsiConfig {
  numQueues: number;
  segMax: number;
  maxSectors: number;
  cmdPerLun: number;
  eventInfoSize: number;
  senseSize: number;
  cdbSize: number;
  maxChannel: number;
  maxTarget: number;
  maxLun: number;
}

/** Encode the config space (36 bytes, little-endian). */
export function encodeScsiConfig(c: ScsiConfig): Uint8Array {
  const out = new Uint8Array(VirtioScsi.CONFIG_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, c.numQueues, true);
  dv.setUint32(4, c.segMax, true);
  dv.setUint32(8, c.maxSectors, true);
  dv.setUint32(12, c.cmdPerLun, true);
  dv.setUint32(16, c.eventInfoSize, true);
  dv.setUint32(20, c.senseSize, true);
  dv.setUint32(24, c.cdbSize, true);
  dv.setUint16(28, c.maxChannel, true);
  dv.setUint16(30, c.maxTarget, true);
  dv.setUint32(32, c.maxLun, true);
  return out;
}

/** Encode one event (16 bytes). */
export function encodeEvent(event: number, lunField: Uint8Array, reason: number, out = new Uint8Array(VirtioScsi.EVENT_SIZE)): Uint8Array {
  put32(out, 0, event);
  out.set(lunField.subarray(0, 8), 4);
  put32(out, 12, reason);
  return out;
}

/** A decoded event (for drivers and tests). */
export interface ScsiEvent {
  event: number;
  target: number;
  lun: number;
  reason: number;
}

/** Decode an event; `lun` as Linux computes it from bytes 2-3 (`(b2 << 8) | b3`). */
export function decodeEvent(bytes: Uint8Array): ScsiEvent {
  return { event: u32(bytes, 0), target: bytes[5]!, lun: (bytes[6]! << 8) | bytes[7]!, reason: u32(bytes, 12) };
}

/** Encode a request header: LUN field, tag, task attribute and the CDB padded to `cdbSize` (for drivers and tests). */
export function encodeRequestHeader(lunField: Uint8Array, tag: bigint | number, cdb: ArrayLike<number>,
  cdbSize: number = VirtioScsi.DEFAULT_CDB_SIZE, taskAttribute = 0): Uint8Array {
  const out = new Uint8Array(VirtioScsi.REQUEST_HEADER_BASE + cdbSize);
  out.set(lunField.subarray(0, 8), 0);
  new DataView(out.buffer).setBigUint64(8, BigInt(tag), true);
  out[16] = taskAttribute;
  out.set(Array.from(cdb).slice(0, cdbSize), 19);
  return out;
}

/** A decoded response header (for drivers and tests). */
export interface ScsiResponseHeader {
  senseLen: number;
  residual: number;
  statusQualifier: number;
  status: number;
  response: number;
  sense: Uint8Array;
}

/** Decode a response header with its sense bytes. */
export function decodeResponseHeader(bytes: Uint8Array): ScsiResponseHeader {
  const senseLen = u32(bytes, 0);
  return {
    senseLen,
    residual: u32(bytes, 4),
    statusQualifier: bytes[8]! | (bytes[9]! << 8),
    status: bytes[10]!,
    response: bytes[11]!,
    sense: bytes.slice(12, 12 + Math.min(senseLen, Math.max(0, bytes.byteLength - 12))),
  };
}

/** Encode a TMF control request (for drivers and tests). */
export function encodeTmf(subtype: number, lunField: Uint8Array, tag: bigint | number = 0): Uint8Array {
  const out = new Uint8Array(VirtioScsi.TMF_REQUEST_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, ControlType.TMF, true);
  dv.setUint32(4, subtype, true);
  out.set(lunField.subarray(0, 8), 8);
  dv.setBigUint64(16, BigInt(tag), true);
  return out;
}

/** Encode an AN query or subscribe request (for drivers and tests). */
export function encodeAn(type: number, lunField: Uint8Array, eventRequested: number): Uint8Array {
  const out = new Uint8Array(VirtioScsi.AN_REQUEST_SIZE);
  put32(out, 0, type);
  out.set(lunField.subarray(0, 8), 4);
  put32(out, 12, eventRequested);
  return out;
}
