/**
 * Fixed-format sense data (SPC-4, 4.5.3): 18 bytes with the sense key, the additional sense code and qualifier,
 * an optional INFORMATION field and an optional sense-key specific field pointer (which CDB or parameter-list
 * byte, and bit, was wrong).
 */
import { FIXED_SENSE_LENGTH, SenseKey, type SenseCode } from './constants.js';

/** Response code for current errors in fixed format. */
const CURRENT_FIXED = 0x70;
/** VALID bit of byte 0: the INFORMATION field holds a value. */
const VALID = 0x80;
/** SKSV bit of byte 15: the sense-key specific bytes hold a value. */
const SKSV = 0x80;
/** C/D bit: the field pointer points into the CDB (else into the parameter list). */
const C_D = 0x40;
/** BPV bit: the bit pointer is valid. */
const BPV = 0x08;

/** Where a bad field is, for ILLEGAL REQUEST sense. */
export interface FieldPointer {
  /** In the CDB (true) or in the parameter list (false). */
  readonly inCdb: boolean;
  /** Byte index of the field. */
  readonly byte: number;
  /** Bit (0-7) of the field's most significant bit within the byte, when it matters. */
  readonly bit?: number;
}

/**
 * Write fixed-format sense data into `out` (at least 18 bytes) and return its length (18).
 * `information` (0 to 2^32 - 1) sets VALID and the INFORMATION field; -1 leaves them clear.
 */
export function encodeFixedSense(out: Uint8Array, code: SenseCode, information = -1, field?: FieldPointer): number {
  out.fill(0, 0, FIXED_SENSE_LENGTH);
  out[0] = CURRENT_FIXED;
  out[2] = code.key & 0x0f;
  if (information >= 0 && information <= 0xffffffff) {
    out[0] |= VALID;
    out[3] = (information >>> 24) & 0xff;
    out[4] = (information >>> 16) & 0xff;
    out[5] = (information >>> 8) & 0xff;
    out[6] = information & 0xff;
  }
  out[7] = FIXED_SENSE_LENGTH - 8;
  out[12] = code.asc;
  out[13] = code.ascq;
  if (field && code.key === SenseKey.ILLEGAL_REQUEST) {
    out[15] = SKSV | (field.inCdb ? C_D : 0) | (field.bit !== undefined ? BPV | (field.bit & 7) : 0);
    out[16] = (field.byte >> 8) & 0xff;
    out[17] = field.byte & 0xff;
  }
  return FIXED_SENSE_LENGTH;
}

/** A decoded fixed-format sense buffer (for tests and logs). */
export interface DecodedSense {
  responseCode: number;
  valid: boolean;
  key: number;
  asc: number;
  ascq: number;
  information: number;
  /** The sense-key specific field pointer, when SKSV is set. */
  field?: FieldPointer;
}

/** Decode fixed-format sense data. @throws RangeError when it is not fixed format or is too short. */
export function decodeFixedSense(sense: Uint8Array): DecodedSense {
  if (sense.byteLength < 14) throw new RangeError(`sense data of ${sense.byteLength} bytes is too short`);
  const responseCode = sense[0]! & 0x7f;
  if (responseCode !== 0x70 && responseCode !== 0x71) throw new RangeError(`sense response code 0x${responseCode.toString(16)} is not fixed format`);
  const out: DecodedSense = {
    responseCode,
    valid: (sense[0]! & VALID) !== 0,
    key: sense[2]! & 0x0f,
    asc: sense[12]!,
    ascq: sense[13]!,
    information: ((sense[3]! << 24) | (sense[4]! << 16) | (sense[5]! << 8) | sense[6]!) >>> 0,
  };
  if (sense.byteLength >= 18 && (sense[15]! & SKSV) !== 0) {
    const b = sense[15]!;
    out.field = {
      inCdb: (b & C_D) !== 0,
      byte: (sense[16]! << 8) | sense[17]!,
      ...((b & BPV) !== 0 ? { bit: b & 7 } : {}),
    };
  }
  return out;
}

/** One line for logs: `ILLEGAL REQUEST 24/00`. */
export function describeSense(code: { key: number; asc: number; ascq: number }): string {
  const name = Object.entries(SenseKey).find(([, v]) => v === code.key)?.[0].replace(/_/g, ' ') ?? `key ${code.key}`;
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  return `${name} ${hex(code.asc)}/${hex(code.ascq)}`;
}
