import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryError } from '../../src/memory/errors.js';
import { GuestMemory, MAX_MEM_SLOTS } from '../../src/memory/guest-memory.js';
import { MemoryRegion, type RegionDescriptor } from '../../src/memory/region.js';

function region(d: RegionDescriptor): MemoryRegion {
  const buf = new SharedArrayBuffer(d.mmapOffset + d.size);
  const r = MemoryRegion.fromBuffer(d, buf);
  // Tag every byte with its guest-physical address (low byte) so views can be checked.
  for (let i = 0; i < d.size; i++) r.bytes[i] = (d.guestPhysAddr + i) & 0xff;
  return r;
}

// A: [0x0000, 0x4000), B: [0x4000, 0x6000) adjacent to A, C: [0x10000, 0x11000) after a hole.
const A = { guestPhysAddr: 0x0, size: 0x4000, userAddr: 0x7f0000100000, mmapOffset: 0x1000 };
const B = { guestPhysAddr: 0x4000, size: 0x2000, userAddr: 0x7f0000000000, mmapOffset: 0 };
const C = { guestPhysAddr: 0x10000, size: 0x1000, userAddr: 0x7f0000200000, mmapOffset: 0x3 };

function table(): { mem: GuestMemory; a: MemoryRegion; b: MemoryRegion; c: MemoryRegion } {
  const mem = new GuestMemory();
  const c = region(C);
  const a = region(A);
  const b = region(B);
  mem.add(c);
  mem.add(a);
  mem.add(b);
  return { mem, a, b, c };
}

function isMemError(address: number, length?: number) {
  return (e: unknown) => e instanceof MemoryError && e.address === address && (length === undefined || e.length === length);
}

test('regions are kept sorted by guest-physical address', () => {
  const { mem, a, b, c } = table();
  assert.deepEqual(mem.regions, [a, b, c]);
});

test('add rejects overlap in guest-physical space and in frontend-virtual space', () => {
  const { mem } = table();
  const g0 = mem.generation;
  // GPA overlap by one byte at either end.
  assert.throws(() => mem.add(region({ ...C, guestPhysAddr: 0x5fff, userAddr: 0x1000000 })), MemoryError);
  assert.throws(() => mem.add(region({ ...C, guestPhysAddr: 0xf001, userAddr: 0x1000000 })), MemoryError);
  // VA overlap with B while GPA is free.
  assert.throws(() => mem.add(region({ ...C, guestPhysAddr: 0x20000, userAddr: 0x7f0000001fff })), MemoryError);
  // The same region object twice.
  assert.throws(() => mem.add(mem.regions[0]!), MemoryError);
  assert.equal(mem.regions.length, 3);
  assert.equal(mem.generation, g0);
  // Touching ranges are fine in both spaces.
  mem.add(region({ guestPhysAddr: 0x6000, size: 0x1000, userAddr: 0x7f0000002000, mmapOffset: 0 }));
  assert.equal(mem.regions.length, 4);
  assert.equal(mem.generation, g0 + 1);
});

test('the region limit defaults to MAX_MEM_SLOTS and can be set', () => {
  assert.equal(MAX_MEM_SLOTS, 32);
  const mem = new GuestMemory();
  assert.equal(mem.maxRegions, 32);
  for (let i = 0; i < 32; i++) mem.add(region({ guestPhysAddr: i * 0x1000, size: 0x1000, userAddr: i * 0x1000, mmapOffset: 0 }));
  assert.throws(() => mem.add(region({ guestPhysAddr: 0x100000, size: 0x1000, userAddr: 0x100000, mmapOffset: 0 })),
    MemoryError);
  const small = new GuestMemory({ maxRegions: 2 });
  small.add(region(A));
  small.add(region(B));
  assert.throws(() => small.add(region(C)), MemoryError);
  assert.throws(() => new GuestMemory({ maxRegions: 0 }), RangeError);
});

test('remove needs an exact match and returns the region', () => {
  const { mem, b } = table();
  assert.throws(() => mem.remove({ guestPhysAddr: B.guestPhysAddr, size: B.size + 1, userAddr: B.userAddr }),
    isMemError(B.guestPhysAddr));
  assert.throws(() => mem.remove({ guestPhysAddr: B.guestPhysAddr, size: B.size, userAddr: B.userAddr + 1 }),
    MemoryError);
  assert.equal(mem.gpaRegion(0x4000, 1), b); // warm the cache with B
  assert.equal(mem.remove({ guestPhysAddr: B.guestPhysAddr, size: B.size, userAddr: B.userAddr }), b);
  assert.equal(mem.regions.length, 2);
  assert.equal(b.released, false, 'the caller releases');
  assert.equal(mem.gpaRegion(0x4000, 1), undefined, 'no stale cache hit');
  assert.equal(mem.vaRegion(B.userAddr, 1), undefined);
});

test('replace validates everything first and is atomic', () => {
  const { mem, a, b, c } = table();
  const g0 = mem.generation;
  const x = region({ guestPhysAddr: 0x100000, size: 0x1000, userAddr: 0x1000, mmapOffset: 0 });
  const clash = region({ guestPhysAddr: 0x100800, size: 0x1000, userAddr: 0x9000, mmapOffset: 0 });
  assert.throws(() => mem.replace([x, clash]), MemoryError);
  assert.deepEqual(mem.regions, [a, b, c]);
  assert.equal(mem.generation, g0);
  const tooMany = new GuestMemory({ maxRegions: 1 });
  assert.throws(() => tooMany.replace([a, b]), MemoryError);
  assert.equal(tooMany.regions.length, 0);

  assert.equal(mem.gpaRegion(0x10, 1), a); // cache A
  const old = mem.replace([x]);
  assert.deepEqual(old, [a, b, c]);
  assert.deepEqual(mem.regions, [x]);
  assert.equal(mem.gpaRegion(0x10, 1), undefined);
  assert.deepEqual(mem.clear(), [x]);
  assert.equal(mem.regions.length, 0);
  assert.ok(mem.generation > g0);
});

test('gpaRegion: edges of a region', () => {
  const { mem, a, b, c } = table();
  assert.equal(mem.gpaRegion(0, 0x4000), a); // exactly the whole region
  assert.equal(mem.gpaRegion(0x3fff, 1), a); // last byte
  assert.equal(mem.gpaRegion(0x3fff, 2), undefined); // crosses into B: not one region
  assert.equal(mem.gpaRegion(0x4000, 1), b);
  assert.equal(mem.gpaRegion(0x5fff, 1), b);
  assert.equal(mem.gpaRegion(0x6000, 1), undefined); // hole
  assert.equal(mem.gpaRegion(0x6000, 0), undefined); // len 0 still needs the address mapped
  assert.equal(mem.gpaRegion(0x5fff, 0), b);
  assert.equal(mem.gpaRegion(0x10fff, 1), c);
  assert.equal(mem.gpaRegion(0x11000, 0), undefined);
  assert.equal(mem.gpaRegion(0x10000, 0x1001), undefined);
});

test('gpaOffset: the buffer offset and region, from a cold and a warm last-region cache, never stale', () => {
  const { mem, a, b, c } = table();
  // Each lookup twice: the second is answered from the cache the first filled.
  for (const [gpa, len, region, off] of [
    [0, 0x4000, a, A.mmapOffset], [0x3fff, 1, a, A.mmapOffset + 0x3fff], [0x4000, 1, b, 0], [0x5fff, 0, b, 0x1fff],
    [0x10fff, 1, c, C.mmapOffset + 0xfff],
  ] as const) {
    for (let i = 0; i < 2; i++) {
      assert.equal(mem.gpaOffset(gpa, len), off, `${gpa}+${len}`);
      assert.equal(mem.lastGpaRegion, region);
      assert.equal(mem.gpaRegion(gpa, len), region);
    }
  }
  // With C cached: what lies partly or wholly outside it is found in no region, whatever the cache says.
  for (const [gpa, len] of [[0x10fff, 2], [0x10000, 0x1001], [0x11000, 0], [0x10000, -1], [0x10000, Number.NaN],
    [0x10000, 2 ** 53], [0x3fff, 2], [0x6000, 1]]) {
    assert.equal(mem.gpaOffset(gpa!, len!), -1, `${gpa}+${len}`);
  }
  assert.equal(mem.gpaOffset(0x4000, 1), 0);
  mem.remove({ guestPhysAddr: B.guestPhysAddr, size: B.size, userAddr: B.userAddr });
  // A table change leaves the lowest region cached, never the one removed.
  assert.equal(mem.lastGpaRegion, a);
  assert.equal(mem.gpaOffset(0x4000, 1), -1, 'no stale cache hit');
  assert.equal(mem.gpaOffset(0x10fff, 1), C.mmapOffset + 0xfff);
  mem.remove({ guestPhysAddr: A.guestPhysAddr, size: A.size, userAddr: A.userAddr });
  mem.remove({ guestPhysAddr: C.guestPhysAddr, size: C.size, userAddr: C.userAddr });
  assert.equal(mem.lastGpaRegion, undefined);
  assert.equal(mem.gpaOffset(0x10fff, 1), -1, 'no region, no hit');
});

test('gpaRegion: overflow and junk never match', () => {
  const { mem } = table();
  for (const [gpa, len] of [
    [0x10, 2 ** 53], [0x10, Number.MAX_SAFE_INTEGER], [0x10, Infinity], [0x10, -1], [0x10, Number.NaN],
    [-1, 1], [Number.NaN, 1], [2 ** 53 - 1, 2], [2 ** 64, 1], [0x3ff0, 0x10 + 2 ** 53],
  ]) {
    assert.equal(mem.gpaRegion(gpa!, len!), undefined, `${gpa} ${len}`);
  }
  // Cached and uncached paths agree.
  mem.gpaRegion(0x10, 1);
  assert.equal(mem.gpaRegion(0x10, -1), undefined);
  assert.equal(mem.gpaRegion(0x3fff, 2), undefined);
});

test('gpaSlice returns a view of the right bytes or throws with the address', () => {
  const { mem, a } = table();
  const v = mem.gpaSlice(0x3ff0, 0x10);
  assert.equal(v.buffer, a.buffer);
  assert.equal(v.byteOffset, A.mmapOffset + 0x3ff0);
  assert.deepEqual([...v], Array.from({ length: 16 }, (_, i) => (0xf0 + i) & 0xff));
  v[0] = 0x55;
  assert.equal(a.bytes[0x3ff0], 0x55, 'views alias guest memory');
  assert.equal(mem.gpaSlice(0x5fff, 0).byteLength, 0);
  assert.throws(() => mem.gpaSlice(0x3ff0, 0x11), isMemError(0x3ff0, 0x11));
  assert.throws(() => mem.gpaSlice(0x8000, 4), isMemError(0x8000, 4));
  assert.throws(() => mem.gpaSlice(1.5, 4), MemoryError);
  assert.throws(() => mem.gpaSlice(0x10, 2.5), MemoryError);
});

test('gpaSlices splits a buffer across adjacent regions and rejects holes', () => {
  const { mem, a, b } = table();
  const parts = mem.gpaSlices(0x3ffe, 4);
  assert.equal(parts.length, 2);
  assert.equal(parts[0]!.buffer, a.buffer);
  assert.equal(parts[1]!.buffer, b.buffer);
  assert.deepEqual(parts.map((p) => [...p]), [[0xfe, 0xff], [0x00, 0x01]]);
  // All of A and B together.
  const all = mem.gpaSlices(0, 0x6000);
  assert.deepEqual(all.map((p) => p.byteLength), [0x4000, 0x2000]);
  // Within one region: one view.
  assert.equal(mem.gpaSlices(0x100, 0x100).length, 1);
  assert.deepEqual(mem.gpaSlices(0x100, 0), []);
  // Running off B into the hole: the error names the first unbacked address.
  assert.throws(() => mem.gpaSlices(0x3ff0, 0x2020), isMemError(0x6000));
  assert.throws(() => mem.gpaSlices(0x8000, 1), isMemError(0x8000));
  assert.throws(() => mem.gpaSlices(0x10, 2 ** 53), MemoryError);
  assert.throws(() => mem.gpaSlices(-1, 1), MemoryError);
});

test('gpaAppendSlices reports the hole address and never runs past it', () => {
  const { mem } = table();
  const out: Uint8Array[] = [];
  assert.equal(mem.gpaAppendSlices(0x5ff0, 0x20, out), 0x6000);
  assert.equal(mem.gpaAppendSlices(0x10, 0x10, out), -1);
  assert.equal(out.at(-1)!.byteLength, 0x10);
});

test('frontend-virtual translation', () => {
  const { mem, a, b } = table();
  assert.equal(mem.vaRegion(A.userAddr, A.size), a);
  assert.equal(mem.vaRegion(A.userAddr + A.size - 1, 2), undefined);
  assert.equal(mem.vaRegion(B.userAddr + 0x10, 0x10), b);
  assert.equal(mem.vaRegion(A.userAddr - 1, 1), undefined);
  const v = mem.vaSlice(A.userAddr + 0x123, 3);
  assert.deepEqual([...v], [0x23, 0x24, 0x25]);
  assert.throws(() => mem.vaSlice(0x1000, 1), isMemError(0x1000, 1));
  assert.throws(() => mem.vaSlice(A.userAddr + A.size - 1, 2), MemoryError);
  assert.equal(mem.vaToGpa(B.userAddr + 0x10), 0x4010);
  assert.equal(mem.vaToGpa(C.userAddr + 0xfff), 0x10fff);
  assert.throws(() => mem.vaToGpa(C.userAddr + 0x1000), isMemError(C.userAddr + 0x1000));
  assert.equal(mem.gpaToVa(0x4010), B.userAddr + 0x10);
  assert.throws(() => mem.gpaToVa(0x6000), isMemError(0x6000));
});

test('a region whose mmapOffset is not aligned still translates exactly', () => {
  const { mem, c } = table();
  const v = mem.gpaSlice(0x10004, 2);
  assert.equal(v.buffer, c.buffer);
  assert.equal(v.byteOffset, 3 + 4);
  assert.deepEqual([...v], [0x04, 0x05]);
});
