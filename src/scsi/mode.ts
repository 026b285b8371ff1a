/**
 * Mode parameters (SPC-4 7.5, SBC-3 6.5): the caching page (08h, where WCE lives) and the control page (0Ah),
 * as MODE SENSE returns them and as MODE SELECT may change them. Only WCE is changeable.
 */
import { ModePage, Sense, type SenseCode } from './constants.js';
import type { FieldPointer } from './sense.js';

/** Page control values of MODE SENSE (CDB byte 2, bits 7-6). */
export const PageControl = {
  CURRENT: 0,
  CHANGEABLE: 1,
  DEFAULT: 2,
  SAVED: 3,
} as const;

/** What the mode pages need to know about a logical unit. */
export interface ModeProfile {
  readonly writeCache: boolean;
  readonly defaultWriteCache: boolean;
}

/** Length of each supported page, header included. */
const PAGE_LENGTH: Readonly<Record<number, number>> = {
  [ModePage.CACHING]: 20,
  [ModePage.CONTROL]: 12,
};

/** WCE bit of the caching page's byte 2. */
const WCE = 0x04;

/** Pages in the order MODE SENSE for "all pages" returns them. */
export const MODE_PAGES: readonly number[] = [ModePage.CACHING, ModePage.CONTROL];

/**
 * Write mode page `page` as page control `pc` asks (current, changeable or default) at `out[at]`; returns its
 * length, or -1 when the page is not supported.
 */
export function modePage(out: Uint8Array, at: number, page: number, pc: number, p: ModeProfile): number {
  const len = PAGE_LENGTH[page];
  if (len === undefined) return -1;
  out.fill(0, at, at + len);
  out[at] = page;
  out[at + 1] = len - 2;
  switch (page) {
    case ModePage.CACHING:
      if (pc === PageControl.CHANGEABLE) out[at + 2] = WCE;
      else if ((pc === PageControl.DEFAULT ? p.defaultWriteCache : p.writeCache)) out[at + 2] = WCE;
      break;
    case ModePage.CONTROL:
      if (pc !== PageControl.CHANGEABLE) {
        out[at + 2] = 0x02; // GLTSD: no implicit log saving
        out[at + 3] = 0x10; // QAM 1: commands may be reordered
      }
      break;
  }
  return len;
}

/** The outcome of parsing a MODE SELECT parameter list. */
export type ModeSelectResult =
  | { ok: true; writeCache: boolean }
  | { ok: false; sense: SenseCode; field?: FieldPointer };

function refuse(sense: SenseCode, byte?: number, bit?: number): ModeSelectResult {
  return { ok: false, sense, ...(byte !== undefined ? { field: { inCdb: false, byte, ...(bit !== undefined ? { bit } : {}) } } : {}) };
}

/**
 * Check a MODE SELECT(6) or (10) parameter list against the unit's pages: block descriptors must keep the
 * block size, pages must be supported and complete, and only changeable bits may differ from the current
 * values. Returns the new write-cache setting.
 */
export function parseModeSelect(params: Uint8Array, ten: boolean, p: ModeProfile, blockSize: number): ModeSelectResult {
  const headerLength = ten ? 8 : 4;
  if (params.byteLength < headerLength) return refuse(Sense.PARAMETER_LIST_LENGTH_ERROR);
  const descriptorsLength = ten ? (params[6]! << 8) | params[7]! : params[3]!;
  const longLba = ten && (params[4]! & 0x01) !== 0;
  const descriptorLength = longLba ? 16 : 8;
  let at = headerLength;
  if (at + descriptorsLength > params.byteLength) return refuse(Sense.PARAMETER_LIST_LENGTH_ERROR);
  if (descriptorsLength % descriptorLength !== 0) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, ten ? 6 : 3);
  for (let d = at; d < at + descriptorsLength; d += descriptorLength) {
    const lo = longLba ? d + 12 : d + 5;
    const size = longLba
      ? ((params[lo]! << 24) | (params[lo + 1]! << 16) | (params[lo + 2]! << 8) | params[lo + 3]!) >>> 0
      : (params[lo]! << 16) | (params[lo + 1]! << 8) | params[lo + 2]!;
    // Zero keeps the block size; any other value must be the current one (it cannot be changed).
    if (size !== 0 && size !== blockSize) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, lo);
  }
  at += descriptorsLength;
  let writeCache = p.writeCache;
  const current = new Uint8Array(32);
  const changeable = new Uint8Array(32);
  while (at < params.byteLength) {
    if (at + 2 > params.byteLength) return refuse(Sense.PARAMETER_LIST_LENGTH_ERROR);
    const b0 = params[at]!;
    if ((b0 & 0x40) !== 0) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, at, 6); // subpages: none
    const page = b0 & 0x3f;
    const len = params[at + 1]!;
    if (at + 2 + len > params.byteLength) return refuse(Sense.PARAMETER_LIST_LENGTH_ERROR);
    const ours = modePage(current, 0, page, PageControl.CURRENT, p);
    if (ours < 0) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, at, 5);
    if (len !== ours - 2) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, at + 1);
    modePage(changeable, 0, page, PageControl.CHANGEABLE, p);
    for (let i = 2; i < ours; i++) {
      if (((params[at + i]! ^ current[i]!) & ~changeable[i]!) !== 0) return refuse(Sense.INVALID_FIELD_IN_PARAMETER_LIST, at + i);
    }
    if (page === ModePage.CACHING) writeCache = (params[at + 2]! & WCE) !== 0;
    at += 2 + len;
  }
  return { ok: true, writeCache };
}
