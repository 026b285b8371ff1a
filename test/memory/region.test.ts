import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryError } from '../../src/memory/errors.js';
import { MemoryRegion } from '../../src/memory/region.js';
import { mapRegionWith, type MappingBinding } from '../../src/memory/map-region.js';

const desc = { guestPhysAddr: 0x10000, size: 0x1000, userAddr: 0x7f0000000000, mmapOffset: 0x200 };

test('fromBuffer: bytes cover exactly [mmapOffset, mmapOffset + size) of the buffer', () => {
  const buf = new SharedArrayBuffer(0x1400);
  const r = MemoryRegion.fromBuffer(desc, buf);
  assert.equal(r.bytes.byteOffset, 0x200);
  assert.equal(r.bytes.byteLength, 0x1000);
  assert.equal(r.buffer, buf);
  assert.equal(r.gpaEnd, 0x11000);
  assert.equal(r.userAddrEnd, 0x7f0000001000);
  r.bytes[0] = 0xab;
  r.bytes[0xfff] = 0xcd;
  const raw = new Uint8Array(buf);
  assert.equal(raw[0x200], 0xab);
  assert.equal(raw[0x11ff], 0xcd);
});

test('fromBuffer: the region may end exactly at the end of the buffer, not beyond', () => {
  assert.doesNotThrow(() => MemoryRegion.fromBuffer(desc, new ArrayBuffer(0x1200)));
  assert.throws(() => MemoryRegion.fromBuffer(desc, new ArrayBuffer(0x11ff)), MemoryError);
  assert.throws(() => MemoryRegion.fromBuffer({ ...desc, mmapOffset: 0x2000 }, new ArrayBuffer(0x1200)), MemoryError);
});

test('fromBuffer rejects malformed descriptions with MemoryError', () => {
  const buf = new ArrayBuffer(0x2000);
  const bad = [
    { ...desc, size: 0 },
    { ...desc, size: -1 },
    { ...desc, size: 1.5 },
    { ...desc, guestPhysAddr: -4096 },
    { ...desc, guestPhysAddr: Number.NaN },
    { ...desc, userAddr: 2 ** 53 },
    { ...desc, mmapOffset: 0.5 },
    // wrap-around past 2^53 in each address space
    { ...desc, guestPhysAddr: 2 ** 53 - 0x800 },
    { ...desc, userAddr: 2 ** 53 - 1 },
  ];
  for (const d of bad) {
    assert.throws(() => MemoryRegion.fromBuffer(d, buf), (e: unknown) => e instanceof MemoryError, JSON.stringify(d));
  }
  // The very top of the address space is fine when it does not wrap.
  assert.doesNotThrow(() => MemoryRegion.fromBuffer({ ...desc, guestPhysAddr: 2 ** 53 - 0x1000 }, buf));
});

test('release calls the callback once and is idempotent', () => {
  let calls = 0;
  const r = MemoryRegion.fromBuffer(desc, new ArrayBuffer(0x1200), () => calls++);
  assert.equal(r.released, false);
  r.release();
  r.release();
  assert.equal(calls, 1);
  assert.equal(r.released, true);
  // Without a callback it is a no-op that still marks the region released.
  const plain = MemoryRegion.fromBuffer(desc, new ArrayBuffer(0x1200));
  plain.release();
  assert.equal(plain.released, true);
});

test('u32 views the whole buffer as words', () => {
  const buf = new SharedArrayBuffer(0x1203);
  const r = MemoryRegion.fromBuffer(desc, buf);
  const w = r.u32!;
  assert.equal(w.length, 0x480);
  w[0x80] = 0x04030201;
  assert.deepEqual([...new Uint8Array(buf, 0x200, 4)], [1, 2, 3, 4]);
});

function fakeBinding(fileSize: number) {
  const log: string[] = [];
  const binding: MappingBinding = {
    fstat: () => ({ size: fileSize, mode: 0o100600 }),
    mmap: (_fd, length) => {
      log.push(`mmap ${length}`);
      return new SharedArrayBuffer(length);
    },
    unmapNow: (sab) => {
      log.push(`unmap ${sab.byteLength}`);
    },
  };
  return { binding, log };
}

test('mapRegionWith maps mmapOffset + size and unmaps on release', () => {
  const { binding, log } = fakeBinding(0x1200);
  const r = mapRegionWith(binding, 7, desc);
  assert.equal(r.buffer.byteLength, 0x1200);
  assert.equal(r.bytes.byteOffset, 0x200);
  assert.deepEqual(log, ['mmap 4608']);
  r.release();
  r.release();
  assert.deepEqual(log, ['mmap 4608', 'unmap 4608']);
});

test('mapRegionWith refuses a file smaller than the region before mapping it', () => {
  const { binding, log } = fakeBinding(0x11ff);
  assert.throws(() => mapRegionWith(binding, 7, desc), (e: unknown) =>
    e instanceof MemoryError && e.address === desc.guestPhysAddr && e.length === desc.size);
  assert.deepEqual(log, []);
  assert.throws(() => mapRegionWith(fakeBinding(0x10000).binding, 7, { ...desc, size: 0 }), MemoryError);
});

test('mapRegionWith unmaps again when the mapping cannot be used', () => {
  const { binding, log } = fakeBinding(0x1200);
  // A binding that returns a short buffer (it should not): the region cannot be built, the mapping is dropped.
  const short: MappingBinding = { ...binding, mmap: (fd, length, w) => binding.mmap(fd, length - 1, w) };
  assert.throws(() => mapRegionWith(short, 7, desc), MemoryError);
  assert.deepEqual(log, ['mmap 4607', 'unmap 4607']);
});

test('wordIndex: the u32 index of an aligned offset below 4 GiB, else -1', () => {
  const r = MemoryRegion.fromBuffer({ guestPhysAddr: 0, size: 4096, userAddr: 0x1000, mmapOffset: 0 },
    new SharedArrayBuffer(4096));
  assert.ok(r.u32 !== null);
  assert.equal(r.wordIndex(0), 0);
  assert.equal(r.wordIndex(4092), 1023);
  for (const off of [1, 2, 3, 4094]) assert.equal(r.wordIndex(off), -1, `misaligned ${off}`);
  // `>>> 2` would wrap these to small indices: a write there would land 4 GiB (or 8) too low.
  for (const off of [2 ** 32, 2 ** 32 + 4, 2 ** 33]) assert.equal(r.wordIndex(off), -1, `offset ${off}`);
});
