/**
 * The virtio-blk config space (virtio 1.2, 5.2.4), encoded little-endian. We expose the fields up to and including
 * `unused1` (60 bytes): geometry and topology stay zero (not offered), secure erase and zoned are not offered.
 */

/** Byte offsets of the fields we fill. */
export const BlkConfigOffset = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  BLK_SIZE: 20,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
} as const;

/** Bytes of config space the device exposes. */
export const BLK_CONFIG_SIZE = 60;

/** Values of the config space. */
export interface BlkConfig {
  /** In 512-byte sectors. */
  capacity: number;
  sizeMax: number;
  segMax: number;
  blkSize: number;
  writeback: boolean;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  discardSectorAlignment: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: boolean;
}

/** Encode the config space. */
export function encodeBlkConfig(c: BlkConfig): Uint8Array {
  const out = new Uint8Array(BLK_CONFIG_SIZE);
  const dv = new DataView(out.buffer);
  const O = BlkConfigOffset;
  dv.setBigUint64(O.CAPACITY, BigInt(c.capacity), true);
  dv.setUint32(O.SIZE_MAX, c.sizeMax, true);
  dv.setUint32(O.SEG_MAX, c.segMax, true);
  dv.setUint32(O.BLK_SIZE, c.blkSize, true);
  dv.setUint8(O.WRITEBACK, c.writeback ? 1 : 0);
  dv.setUint16(O.NUM_QUEUES, c.numQueues, true);
  dv.setUint32(O.MAX_DISCARD_SECTORS, c.maxDiscardSectors, true);
  dv.setUint32(O.MAX_DISCARD_SEG, c.maxDiscardSeg, true);
  dv.setUint32(O.DISCARD_SECTOR_ALIGNMENT, c.discardSectorAlignment, true);
  dv.setUint32(O.MAX_WRITE_ZEROES_SECTORS, c.maxWriteZeroesSectors, true);
  dv.setUint32(O.MAX_WRITE_ZEROES_SEG, c.maxWriteZeroesSeg, true);
  dv.setUint8(O.WRITE_ZEROES_MAY_UNMAP, c.writeZeroesMayUnmap ? 1 : 0);
  return out;
}
