import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DescriptorChain } from '../../../src/virtqueue/chain.js';
import {
  BlkRequestType, encodeHeader, encodeSegments, readHeader, readSegment, type BlkHeader,
} from '../../../src/devices/blk/request.js';
import { sliceViews } from '../../../src/util/views.js';
import { BLK_CONFIG_SIZE, encodeBlkConfig } from '../../../src/devices/blk/config.js';
import { decodeBlkConfig } from '../../../src/virtio/config.js';

function chainOf(readable: Uint8Array[], writable: Uint8Array[] = []): DescriptorChain {
  const len = (vs: Uint8Array[]) => vs.reduce((n, v) => n + v.byteLength, 0);
  return new DescriptorChain(0, readable, writable, len(readable), len(writable), readable.length + writable.length);
}

test('readHeader decodes from one buffer or from pieces, and refuses a short header', () => {
  const h: BlkHeader = { type: -1, sector: -1 };
  const scratch = new Uint8Array(16);
  const bytes = encodeHeader(BlkRequestType.OUT, 0x1_2345_6789);
  assert.equal(readHeader(chainOf([bytes]), h, scratch), true);
  assert.deepEqual({ ...h }, { type: BlkRequestType.OUT, sector: 0x1_2345_6789 });
  const withData = new Uint8Array(16 + 512);
  withData.set(encodeHeader(BlkRequestType.IN, 7));
  assert.equal(readHeader(chainOf([withData]), h, scratch), true);
  assert.deepEqual({ ...h }, { type: BlkRequestType.IN, sector: 7 });
  assert.equal(readHeader(chainOf([bytes.subarray(0, 3), bytes.subarray(3, 9), bytes.subarray(9)]), h, scratch), true);
  assert.deepEqual({ ...h }, { type: BlkRequestType.OUT, sector: 0x1_2345_6789 });
  assert.equal(readHeader(chainOf([bytes.subarray(0, 15)]), h, scratch), false);
  // Type with the high bit and a sector past 2^53 decode without wrapping to small numbers.
  readHeader(chainOf([encodeHeader(0x80000001, 2n ** 64n - 1n)]), h, scratch);
  assert.equal(h.type, 0x80000001);
  assert.ok(h.sector >= 2 ** 64 - 2 ** 12);
});

test('sliceViews cuts byte ranges out of view lists, reusing whole views', () => {
  const a = new Uint8Array([0, 1, 2, 3]);
  const b = new Uint8Array([4, 5]);
  const c = new Uint8Array([6, 7, 8]);
  const all = [a, b, c];
  const flat = (vs: readonly Uint8Array[]) => vs.map((v) => [...v]);
  assert.deepEqual(flat(sliceViews(all, 0, 9)), [[0, 1, 2, 3], [4, 5], [6, 7, 8]]);
  assert.equal(sliceViews(all, 4, 9)[0], b, 'whole views are the same objects');
  assert.deepEqual(flat(sliceViews(all, 4, 8)), [[4, 5], [6, 7]]);
  assert.deepEqual(flat(sliceViews(all, 1, 5)), [[1, 2, 3], [4]]);
  assert.deepEqual(flat(sliceViews(all, 2, 3)), [[2]]);
  assert.deepEqual(sliceViews(all, 3, 3), []);
  assert.deepEqual(sliceViews(all, 9, 9), []);
});

test('segments round trip through encodeSegments / readSegment', () => {
  const segs = [{ sector: 2 ** 40, numSectors: 0xffffffff, flags: 1 }, { sector: 0, numSectors: 8, flags: 0x80000000 }];
  const bytes = encodeSegments(segs);
  assert.equal(bytes.byteLength, 32);
  const out = { sector: 0, numSectors: 0, flags: 0 };
  assert.deepEqual({ ...readSegment(bytes, 0, out) }, segs[0]);
  assert.deepEqual({ ...readSegment(bytes, 1, out) }, segs[1]);
});

test('the config space encodes every field at its virtio offset', () => {
  const bytes = encodeBlkConfig({
    capacity: 2 ** 40, sizeMax: 65536, segMax: 126, blkSize: 4096, writeback: true, numQueues: 4,
    maxDiscardSectors: 1000, maxDiscardSeg: 2, discardSectorAlignment: 8, maxWriteZeroesSectors: 3000,
    maxWriteZeroesSeg: 5, writeZeroesMayUnmap: true,
  });
  assert.equal(bytes.byteLength, BLK_CONFIG_SIZE);
  const d = decodeBlkConfig(bytes);
  assert.deepEqual(d, {
    capacity: 2 ** 40, size_max: 65536, seg_max: 126, cylinders: 0, heads: 0, sectors: 0, blk_size: 4096,
    physical_block_exp: 0, alignment_offset: 0, min_io_size: 0, opt_io_size: 0, writeback: 1, num_queues: 4,
    max_discard_sectors: 1000, max_discard_seg: 2, discard_sector_alignment: 8, max_write_zeroes_sectors: 3000,
    max_write_zeroes_seg: 5, write_zeroes_may_unmap: 1,
  });
  assert.deepEqual([...bytes.subarray(57, 60)], [0, 0, 0], 'unused1 is zero');
});
