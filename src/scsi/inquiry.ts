/**
 * INQUIRY data: the standard data and the VPD pages a disk reports (SPC-4 6.6 and 7.8, SBC-3 6.6): supported
 * pages (00h), unit serial number (80h), device identification (83h), block limits (B0h), block device
 * characteristics (B1h) and logical block provisioning (B2h). Each builder writes into a scratch buffer and
 * returns the length.
 */
import { DeviceType, VpdPage } from './constants.js';

/** What the INQUIRY builders need to know about a logical unit. */
export interface InquiryProfile {
  /** T10 vendor identification, product identification and revision, already space-padded (8, 16, 4 bytes). */
  readonly vendorBytes: Uint8Array;
  readonly productBytes: Uint8Array;
  readonly revisionBytes: Uint8Array;
  /** Unit serial number (ASCII); empty: no page 80h. */
  readonly serial: string;
  /** NAA locally assigned identifier, 8 bytes. */
  readonly naa: Uint8Array;
  readonly readOnly: boolean;
  /** Logical block provisioning: UNMAP and WRITE SAME with UNMAP are supported. */
  readonly thinProvisioning: boolean;
  /** Unmapped blocks read as zeros. */
  readonly readsZerosAfterUnmap: boolean;
  /** Block limits, in logical blocks. */
  readonly maxTransferBlocks: number;
  readonly optimalTransferBlocks: number;
  readonly maxUnmapBlocks: number;
  readonly maxUnmapDescriptors: number;
  readonly unmapGranularity: number;
  readonly maxWriteSameBlocks: number;
  /** Medium rotation rate: 1 for a non-rotating medium. */
  readonly rotationRate: number;
}

/** Version descriptors (SPC-4 table 144): SAM-5, SPC-4, SBC-3. */
const VERSION_DESCRIPTORS = [0x00a0, 0x0460, 0x04c0];
/** Bytes of standard INQUIRY data we return (through the version descriptors). */
export const STANDARD_INQUIRY_LENGTH = 58 + 2 * VERSION_DESCRIPTORS.length;

function be16(out: Uint8Array, at: number, v: number): void {
  out[at] = (v >>> 8) & 0xff;
  out[at + 1] = v & 0xff;
}

function be32(out: Uint8Array, at: number, v: number): void {
  out[at] = (v >>> 24) & 0xff;
  out[at + 1] = (v >>> 16) & 0xff;
  out[at + 2] = (v >>> 8) & 0xff;
  out[at + 3] = v & 0xff;
}

function be64(out: Uint8Array, at: number, v: number): void {
  be32(out, at, Math.floor(v / 2 ** 32));
  be32(out, at + 4, v >>> 0);
}

/**
 * Standard INQUIRY data for a disk: SPC-4, response format 2, HISUP, command queuing, and the identification
 * strings. `peripheral` is byte 0 (0 for a present disk).
 */
export function standardInquiry(out: Uint8Array, p: InquiryProfile, peripheral = DeviceType.DISK): number {
  const n = STANDARD_INQUIRY_LENGTH;
  out.fill(0, 0, n);
  out[0] = peripheral;
  out[1] = 0; // not removable
  out[2] = 0x06; // SPC-4
  out[3] = 0x10 | 0x02; // HISUP, response data format 2
  out[4] = n - 5;
  out[7] = 0x02; // CMDQUE
  out.set(p.vendorBytes, 8);
  out.set(p.productBytes, 16);
  out.set(p.revisionBytes, 32);
  VERSION_DESCRIPTORS.forEach((d, i) => be16(out, 58 + 2 * i, d));
  return n;
}

/** The VPD pages a unit reports, in ascending order. */
export function supportedVpdPages(p: InquiryProfile): number[] {
  const pages: number[] = [VpdPage.SUPPORTED_PAGES];
  if (p.serial.length > 0) pages.push(VpdPage.UNIT_SERIAL_NUMBER);
  pages.push(VpdPage.DEVICE_IDENTIFICATION, VpdPage.BLOCK_LIMITS, VpdPage.BLOCK_DEVICE_CHARACTERISTICS,
    VpdPage.LOGICAL_BLOCK_PROVISIONING);
  return pages;
}

/** A VPD page header: peripheral byte, page code, page length. */
function header(out: Uint8Array, page: number, length: number): number {
  out[0] = DeviceType.DISK;
  out[1] = page;
  be16(out, 2, length);
  return 4 + length;
}

/** Device identification designators: NAA locally assigned (binary) and T10 vendor ID based (ASCII). */
function deviceIdentification(out: Uint8Array, p: InquiryProfile): number {
  let at = 4;
  // NAA: code set binary (1), association logical unit, designator type NAA (3).
  out[at] = 0x01;
  out[at + 1] = 0x03;
  out[at + 2] = 0;
  out[at + 3] = p.naa.byteLength;
  out.set(p.naa, at + 4);
  at += 4 + p.naa.byteLength;
  // T10 vendor ID: code set ASCII (2), association logical unit, designator type T10 vendor ID (1).
  const id = Buffer.from(p.serial.length > 0 ? p.serial : Buffer.from(p.naa).toString('hex'), 'latin1');
  const len = 8 + 16 + id.byteLength;
  out[at] = 0x02;
  out[at + 1] = 0x01;
  out[at + 2] = 0;
  out[at + 3] = len;
  out.set(p.vendorBytes, at + 4);
  out.set(p.productBytes, at + 12);
  out.set(id, at + 28);
  at += 4 + len;
  return header(out, VpdPage.DEVICE_IDENTIFICATION, at - 4);
}

/**
 * Write VPD page `page` into `out` (at least 256 bytes); returns its length, or -1 when the unit does not
 * support the page.
 */
export function vpdPage(out: Uint8Array, page: number, p: InquiryProfile): number {
  switch (page) {
    case VpdPage.SUPPORTED_PAGES: {
      const pages = supportedVpdPages(p);
      out.fill(0, 0, 4 + pages.length);
      pages.forEach((c, i) => (out[4 + i] = c));
      return header(out, page, pages.length);
    }
    case VpdPage.UNIT_SERIAL_NUMBER: {
      if (p.serial.length === 0) return -1;
      const serial = Buffer.from(p.serial, 'latin1');
      out.set(serial, 4);
      return header(out, page, serial.byteLength);
    }
    case VpdPage.DEVICE_IDENTIFICATION:
      out.fill(0, 0, 256);
      return deviceIdentification(out, p);
    case VpdPage.BLOCK_LIMITS: {
      out.fill(0, 0, 64);
      out[4] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
      be16(out, 6, 1); // optimal transfer length granularity
      be32(out, 8, p.maxTransferBlocks);
      be32(out, 12, p.optimalTransferBlocks);
      if (p.thinProvisioning) {
        be32(out, 20, p.maxUnmapBlocks);
        be32(out, 24, p.maxUnmapDescriptors);
        be32(out, 28, p.unmapGranularity);
        // UGAVALID with alignment 0.
        out[32] = 0x80;
      }
      be64(out, 36, p.maxWriteSameBlocks);
      return header(out, page, 0x3c);
    }
    case VpdPage.BLOCK_DEVICE_CHARACTERISTICS:
      out.fill(0, 0, 64);
      be16(out, 4, p.rotationRate);
      return header(out, page, 0x3c);
    case VpdPage.LOGICAL_BLOCK_PROVISIONING:
      out.fill(0, 0, 8);
      if (p.thinProvisioning) {
        // LBPU, LBPWS, LBPWS10, and LBPRZ when unmapped blocks read as zeros.
        out[5] = 0x80 | 0x40 | 0x20 | (p.readsZerosAfterUnmap ? 0x04 : 0);
        out[6] = 0x02; // thin provisioned
      }
      return header(out, page, 4);
    default:
      return -1;
  }
}
