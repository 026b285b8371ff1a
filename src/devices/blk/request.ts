/**
 * The virtio-blk request format (virtio 1.2, 5.2.6): a 16-byte header `{type u32, reserved u32, sector u64}`
 * the device reads, the data (device-readable for writes, device-writable for reads), and one status byte, the
 * last device-writable byte. Discard and write-zeroes carry 16-byte segments as their data.
 *
 * Helpers here read what the guest wrote exactly once (the guest may change it at any time) and cut the data
 * part out of a chain's views without copying it.
 */
import type { DescriptorChain } from '../../virtqueue/chain.js';

/** Request types. */
export const BlkRequestType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Status byte values. */
export const BlkStatus = {
  OK: 0,
  IOERR: 1,
  UNSUPP: 2,
} as const;

/** Protocol constants. */
export const Blk = {
  /** Sectors are always 512 bytes in the protocol, whatever blk_size says. */
  SECTOR_SIZE: 512,
  HEADER_SIZE: 16,
  /** One discard / write-zeroes segment `{sector u64, num_sectors u32, flags u32}`. */
  SEGMENT_SIZE: 16,
  /** GET_ID answers with up to 20 bytes, NUL-padded. */
  ID_BYTES: 20,
  /** Segment flag: write-zeroes may deallocate (discard must not have it). */
  SEGMENT_F_UNMAP: 1,
} as const;

/** A decoded request header. Reused across requests (fill it with {@link readHeader}). */
export interface BlkHeader {
  type: number;
  /**
   * Start sector. Exact below 2^53; larger values come out inexact but still far past any capacity, so range
   * checks reject them.
   */
  sector: number;
}

const TWO_32 = 2 ** 32;

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/**
 * Decode the header of `chain` into `out`. Returns false when the readable part is shorter than a header.
 * `scratch` (at least 16 bytes; exactly 16 avoids a sub-view) is used when the header is split over several
 * buffers. Allocates nothing otherwise.
 */
export function readHeader(chain: DescriptorChain, out: BlkHeader, scratch: Uint8Array): boolean {
  if (chain.readableLength < Blk.HEADER_SIZE) return false;
  if (chain.readableLengths[0]! >= Blk.HEADER_SIZE) {
    // In place through the region's word view when aligned (the usual case): no byte assembly.
    const region = chain.readableRegions[0];
    const w = region != null ? region.wordIndex(chain.readableOffsets[0]!) : -1;
    if (w >= 0) {
      const words = region!.u32!;
      out.type = words[w]!;
      out.sector = words[w + 3]! * TWO_32 + words[w + 2]!;
      return true;
    }
  }
  let h = chain.readable[0]!;
  if (chain.readableLengths[0]! < Blk.HEADER_SIZE) {
    // Only the first 16 bytes of scratch are filled and read.
    chain.readInto(scratch.length === Blk.HEADER_SIZE ? scratch : scratch.subarray(0, Blk.HEADER_SIZE));
    h = scratch;
  }
  out.type = u32(h, 0);
  out.sector = u32(h, 12) * TWO_32 + u32(h, 8);
  return true;
}


/** One discard / write-zeroes segment. */
export interface BlkSegment {
  sector: number;
  numSectors: number;
  flags: number;
}

/** Decode segment `index` of a segment list copied out of the chain. */
export function readSegment(segments: Uint8Array, index: number, out: BlkSegment): BlkSegment {
  const o = index * Blk.SEGMENT_SIZE;
  out.sector = u32(segments, o + 4) * TWO_32 + u32(segments, o);
  out.numSectors = u32(segments, o + 8);
  out.flags = u32(segments, o + 12);
  return out;
}

/** Encode a request header (for drivers and tests). */
export function encodeHeader(type: number, sector: number | bigint, out = new Uint8Array(Blk.HEADER_SIZE)): Uint8Array {
  const dv = new DataView(out.buffer, out.byteOffset, Blk.HEADER_SIZE);
  dv.setUint32(0, type, true);
  dv.setUint32(4, 0, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return out;
}

/** Encode discard / write-zeroes segments (for drivers and tests). */
export function encodeSegments(segments: readonly BlkSegment[]): Uint8Array {
  const out = new Uint8Array(segments.length * Blk.SEGMENT_SIZE);
  const dv = new DataView(out.buffer);
  segments.forEach((s, i) => {
    const o = i * Blk.SEGMENT_SIZE;
    dv.setBigUint64(o, BigInt(s.sector), true);
    dv.setUint32(o + 8, s.numSectors, true);
    dv.setUint32(o + 12, s.flags, true);
  });
  return out;
}
