/**
 * Descriptor chains: the walker's checks (every ChainErrorKind, through SplitQueue.pop on hand-built rings) and
 * the DescriptorChain copy helpers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryRegion } from '../../src/memory/region.js';
import { DescriptorChain } from '../../src/virtqueue/chain.js';
import { ChainError, ChainErrorKind } from '../../src/virtqueue/errors.js';
import { VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE }
  from '../../src/virtqueue/layout.js';
import { DATA, END, makeRig, offer, peek, poke, type Rig } from './rig.js';

const TABLE = 0x6000; // indirect tables go here (in region A)

function expectKind(rig: Rig, kind: ChainErrorKind, check?: (e: ChainError) => void): void {
  assert.throws(() => rig.device.pop(), (e: unknown) => {
    assert.ok(e instanceof ChainError, String(e));
    assert.equal(e.kind, kind);
    check?.(e);
    return true;
  });
  // The queue is now broken: no more chains until reset, and the error is kept.
  assert.equal(rig.device.broken, true);
  assert.equal(rig.device.error?.kind, kind);
  assert.equal(rig.device.pop(), null);
  assert.equal(rig.device.pending(), 0);
  assert.equal(rig.device.lastAvailIdx, 0, 'a bad chain is not consumed');
}

test('a well-formed direct chain: readable then writable, views into guest memory', () => {
  const rig = makeRig();
  const { driver, device, mem } = rig;
  poke(mem, DATA, [1, 2, 3, 4]);
  driver.writeDescriptor(3, DATA, 4, NEXT, 5);
  driver.writeDescriptor(5, DATA + 0x100, 8, NEXT | WRITE, 1);
  driver.writeDescriptor(1, DATA + 0x200, 2, WRITE, 7); // next is ignored without NEXT
  offer(driver, 3);
  const chain = device.pop()!;
  assert.equal(chain.head, 3);
  assert.equal(chain.descriptorCount, 3);
  assert.equal(chain.readableLength, 4);
  assert.equal(chain.writableLength, 10);
  assert.deepEqual(chain.readable.map((v) => v.byteLength), [4]);
  assert.deepEqual(chain.writable.map((v) => v.byteLength), [8, 2]);
  assert.deepEqual([...chain.readAll()], [1, 2, 3, 4]);
  chain.writable[1]![1] = 0x77;
  assert.deepEqual(peek(mem, DATA + 0x200, 2), [0, 0x77]);
  assert.equal(device.lastAvailIdx, 1);
  assert.equal(device.pop(), null);
});

test('a buffer spanning the two adjacent regions becomes two views', () => {
  const rig = makeRig();
  const { driver, device, mem } = rig;
  poke(mem, 0xfffc, [9, 8, 7, 6, 5, 4, 3, 2]);
  driver.writeDescriptor(0, 0xfffc, 8, 0, 0);
  offer(driver, 0);
  const chain = device.pop()!;
  assert.deepEqual(chain.readable.map((v) => v.byteLength), [4, 4]);
  assert.deepEqual([...chain.readAll()], [9, 8, 7, 6, 5, 4, 3, 2]);
  assert.equal(chain.descriptorCount, 1);
});

test('LOOP: a chain that comes back to itself', () => {
  const rig = makeRig();
  rig.driver.writeDescriptor(0, DATA, 4, NEXT, 1);
  rig.driver.writeDescriptor(1, DATA, 4, NEXT, 2);
  rig.driver.writeDescriptor(2, DATA, 4, NEXT, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.LOOP, (e) => assert.equal(e.head, 0));
});

test('LOOP: a descriptor pointing at itself, and a loop inside an indirect table', () => {
  const self = makeRig();
  self.driver.writeDescriptor(4, DATA, 4, NEXT, 4);
  offer(self.driver, 4);
  expectKind(self, ChainErrorKind.LOOP);

  const ind = makeRig(8, { indirect: true });
  ind.driver.writeDescriptorAt(TABLE, DATA, 4, NEXT, 1);
  ind.driver.writeDescriptorAt(TABLE + 16, DATA, 4, NEXT, 0);
  ind.driver.writeDescriptor(0, TABLE, 32, IND, 0);
  offer(ind.driver, 0);
  expectKind(ind, ChainErrorKind.LOOP);
});

test('TOO_LONG: more buffers than maxChainLength', () => {
  const rig = makeRig();
  rig.device.maxChainLength = 2;
  rig.driver.writeDescriptor(0, DATA, 4, NEXT, 1);
  rig.driver.writeDescriptor(1, DATA, 4, NEXT, 2);
  rig.driver.writeDescriptor(2, DATA, 4, 0, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.TOO_LONG);
});

test('TOO_LONG: direct buffers plus a full indirect table exceed the queue size', () => {
  const rig = makeRig(8, { indirect: true });
  for (let k = 0; k < 8; k++) rig.driver.writeDescriptorAt(TABLE + 16 * k, DATA, 4, k < 7 ? NEXT : 0, k + 1);
  rig.driver.writeDescriptor(0, DATA, 4, NEXT, 1);
  rig.driver.writeDescriptor(1, TABLE, 8 * 16, IND, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.TOO_LONG);

  // The table alone (8 entries = queue size) is fine.
  const ok = makeRig(8, { indirect: true });
  for (let k = 0; k < 8; k++) ok.driver.writeDescriptorAt(TABLE + 16 * k, DATA, 4, k < 7 ? NEXT : 0, k + 1);
  ok.driver.writeDescriptor(0, TABLE, 8 * 16, IND, 0);
  offer(ok.driver, 0);
  assert.equal(ok.device.pop()!.descriptorCount, 8);
});

test('NESTED_INDIRECT: an indirect descriptor inside an indirect table', () => {
  const rig = makeRig(8, { indirect: true });
  rig.driver.writeDescriptorAt(TABLE, DATA, 4, NEXT, 1);
  rig.driver.writeDescriptorAt(TABLE + 16, TABLE + 0x100, 16, IND, 0);
  rig.driver.writeDescriptorAt(TABLE + 0x100, DATA, 4, 0, 0);
  rig.driver.writeDescriptor(0, TABLE, 32, IND, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.NESTED_INDIRECT);
});

test('INDIRECT_WITH_NEXT: INDIRECT and NEXT on one descriptor', () => {
  const rig = makeRig(8, { indirect: true });
  rig.driver.writeDescriptorAt(TABLE, DATA, 4, 0, 0);
  rig.driver.writeDescriptor(0, TABLE, 16, IND | NEXT, 1);
  rig.driver.writeDescriptor(1, DATA, 4, 0, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.INDIRECT_WITH_NEXT);
});

test('INDIRECT_LENGTH: zero, not a multiple of 16, or more entries than allowed', () => {
  for (const len of [0, 8, 24, 16 * 9, 0xfffffff0]) {
    const rig = makeRig(8, { indirect: true });
    rig.driver.writeDescriptor(0, TABLE, len, IND, 0);
    offer(rig.driver, 0);
    expectKind(rig, ChainErrorKind.INDIRECT_LENGTH);
  }
  // Raising maxChainLength admits a longer table.
  const rig = makeRig(8, { indirect: true });
  rig.device.maxChainLength = 9;
  for (let k = 0; k < 9; k++) rig.driver.writeDescriptorAt(TABLE + 16 * k, DATA, 4, k < 8 ? NEXT : 0, k + 1);
  rig.driver.writeDescriptor(0, TABLE, 16 * 9, IND, 0);
  offer(rig.driver, 0);
  assert.equal(rig.device.pop()!.descriptorCount, 9);
});

test('INDIRECT_NOT_NEGOTIATED: an indirect descriptor without the feature', () => {
  const rig = makeRig(8, { indirect: false });
  rig.driver.writeDescriptorAt(TABLE, DATA, 4, 0, 0);
  rig.driver.writeDescriptor(0, TABLE, 16, IND, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.INDIRECT_NOT_NEGOTIATED);
});

test('HEAD_OUT_OF_RANGE: an avail entry >= queue size', () => {
  for (const head of [8, 0xffff]) {
    const rig = makeRig(8);
    offer(rig.driver, head);
    expectKind(rig, ChainErrorKind.HEAD_OUT_OF_RANGE, (e) => assert.equal(e.head, head));
  }
});

test('NEXT_OUT_OF_RANGE: next >= queue size, or >= the indirect table size', () => {
  const rig = makeRig(8);
  rig.driver.writeDescriptor(0, DATA, 4, NEXT, 8);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.NEXT_OUT_OF_RANGE);

  const ind = makeRig(8, { indirect: true });
  ind.driver.writeDescriptorAt(TABLE, DATA, 4, NEXT, 2); // table has 2 entries
  ind.driver.writeDescriptorAt(TABLE + 16, DATA, 4, 0, 0);
  ind.driver.writeDescriptor(0, TABLE, 32, IND, 0);
  offer(ind.driver, 0);
  expectKind(ind, ChainErrorKind.NEXT_OUT_OF_RANGE);
});

test('AVAIL_INDEX_JUMP: avail.idx more than size ahead', () => {
  const rig = makeRig(8);
  rig.driver.writeDescriptor(0, DATA, 4, 0, 0);
  rig.driver.writeAvailIdx(9);
  assert.throws(() => rig.device.pending(), (e: unknown) =>
    e instanceof ChainError && e.kind === ChainErrorKind.AVAIL_INDEX_JUMP);
  assert.equal(rig.device.broken, true);
  assert.equal(rig.device.pop(), null);

  const viaPop = makeRig(8);
  viaPop.driver.writeAvailIdx(0x8000);
  expectKind(viaPop, ChainErrorKind.AVAIL_INDEX_JUMP);

  // Exactly size ahead is legal.
  const full = makeRig(8);
  for (let i = 0; i < 8; i++) {
    full.driver.writeDescriptor(i, DATA, 4, 0, 0);
    full.driver.writeAvailEntry(i, i);
  }
  full.driver.writeAvailIdx(8);
  assert.equal(full.device.pending(), 8);
});

test('ZERO_LENGTH: a zero-length buffer, direct or indirect', () => {
  const rig = makeRig(8);
  rig.driver.writeDescriptor(0, DATA, 4, NEXT, 1);
  rig.driver.writeDescriptor(1, DATA, 0, WRITE, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.ZERO_LENGTH);

  const ind = makeRig(8, { indirect: true });
  ind.driver.writeDescriptorAt(TABLE, DATA, 0, 0, 0);
  ind.driver.writeDescriptor(0, TABLE, 16, IND, 0);
  offer(ind.driver, 0);
  expectKind(ind, ChainErrorKind.ZERO_LENGTH);
});

test('OUT_OF_MEMORY: buffers outside guest memory, with the address', () => {
  const cases: [addr: number, len: number, bad: number][] = [
    [END, 1, END], // just past the end
    [END - 4, 8, END], // runs off the end of B
    [0x100000, 16, 0x100000], // far away
    [2 ** 52, 16, 2 ** 52],
    [0xffffffff, 0xffffffff, 0xffffffff],
  ];
  for (const [addr, len, bad] of cases) {
    const rig = makeRig(8);
    rig.driver.writeDescriptor(0, addr, len, 0, 0);
    offer(rig.driver, 0);
    expectKind(rig, ChainErrorKind.OUT_OF_MEMORY, (e) => assert.equal(e.address, bad));
  }
  // High word >= 2^21: the address is >= 2^53, out of range without any arithmetic on it.
  const huge = makeRig(8);
  huge.driver.writeDescriptor(0, 0, 4, WRITE, 0);
  const words = new Uint32Array(huge.mem.gpaSlice(0, 16).buffer, huge.mem.gpaSlice(0, 16).byteOffset, 4);
  words[1] = 0xffffffff;
  offer(huge.driver, 0);
  expectKind(huge, ChainErrorKind.OUT_OF_MEMORY);
});

test('OUT_OF_MEMORY: an indirect table outside guest memory', () => {
  const rig = makeRig(8, { indirect: true });
  rig.driver.writeDescriptor(0, END - 16, 32, IND, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.OUT_OF_MEMORY, (e) => assert.equal(e.address, END - 16));
});

test('READ_AFTER_WRITE: a readable buffer after a writable one', () => {
  const rig = makeRig(8);
  rig.driver.writeDescriptor(0, DATA, 4, NEXT | WRITE, 1);
  rig.driver.writeDescriptor(1, DATA, 4, 0, 0);
  offer(rig.driver, 0);
  expectKind(rig, ChainErrorKind.READ_AFTER_WRITE);

  const ind = makeRig(8, { indirect: true });
  ind.driver.writeDescriptorAt(TABLE, DATA, 4, NEXT | WRITE, 1);
  ind.driver.writeDescriptorAt(TABLE + 16, DATA, 4, 0, 0);
  ind.driver.writeDescriptor(0, TABLE, 32, IND, 0);
  offer(ind.driver, 0);
  expectKind(ind, ChainErrorKind.READ_AFTER_WRITE);
});

test('indirect chains: after direct descriptors, unaligned, and spanning two regions', () => {
  // Direct readable header, then an indirect table with one readable and one writable buffer.
  const rig = makeRig(8, { indirect: true });
  poke(rig.mem, DATA, [0xaa, 0xbb]);
  poke(rig.mem, DATA + 0x10, [0xcc]);
  rig.driver.writeDescriptorAt(TABLE, DATA + 0x10, 1, NEXT, 1);
  rig.driver.writeDescriptorAt(TABLE + 16, DATA + 0x20, 4, WRITE, 0);
  rig.driver.writeDescriptor(2, DATA, 2, NEXT, 6);
  rig.driver.writeDescriptor(6, TABLE, 32, IND | WRITE, 0); // WRITE on the table descriptor is ignored
  offer(rig.driver, 2);
  const chain = rig.device.pop()!;
  assert.equal(chain.head, 2);
  assert.equal(chain.descriptorCount, 3);
  assert.deepEqual([...chain.readAll()], [0xaa, 0xbb, 0xcc]);
  assert.equal(chain.writableLength, 4);

  // A table at an address that is not 4-byte aligned, and one that crosses from region A into region B.
  for (const table of [TABLE + 2, 0x10000 - 16]) {
    const r = makeRig(8, { indirect: true });
    poke(r.mem, DATA, [1, 2, 3]);
    r.driver.writeDescriptorAt(table, DATA, 3, NEXT, 1);
    r.driver.writeDescriptorAt(table + 16, DATA + 0x40, 5, WRITE, 0);
    r.driver.writeDescriptor(0, table, 32, IND, 0);
    offer(r.driver, 0);
    const c = r.device.pop()!;
    assert.deepEqual([...c.readAll()], [1, 2, 3], `table at ${table}`);
    assert.equal(c.writableLength, 5);
  }
});

test('a walk reads each descriptor once: changing the table afterwards does not change the chain', () => {
  const rig = makeRig(8);
  rig.driver.writeDescriptor(0, DATA, 4, 0, 0);
  offer(rig.driver, 0);
  const chain = rig.device.pop()!;
  rig.driver.writeDescriptor(0, END, 0x1000, NEXT, 0);
  assert.equal(chain.readableLength, 4);
  assert.equal(chain.readable[0]!.byteLength, 4);
});

test('reset clears the broken state', () => {
  const rig = makeRig(8);
  offer(rig.driver, 9);
  assert.throws(() => rig.device.pop(), ChainError);
  rig.device.reset();
  assert.equal(rig.device.broken, false);
  assert.equal(rig.device.error, null);
  assert.equal(rig.device.configured, false);
  assert.equal(rig.device.pop(), null);
});

test('DescriptorChain helpers: readInto and writeFrom across views and offsets', () => {
  const r1 = Uint8Array.from([1, 2, 3]);
  const r2 = Uint8Array.from([4, 5]);
  const w1 = new Uint8Array(2);
  const w2 = new Uint8Array(3);
  const chain = new DescriptorChain(5, [r1, r2], [w1, w2], 5, 5, 4);
  assert.deepEqual([...chain.readAll()], [1, 2, 3, 4, 5]);

  const dst = new Uint8Array(3);
  assert.equal(chain.readInto(dst, 2), 3);
  assert.deepEqual([...dst], [3, 4, 5]);
  assert.equal(chain.readInto(dst, 4), 1);
  assert.equal(dst[0], 5);
  assert.equal(chain.readInto(dst, 5), 0);
  assert.equal(chain.readInto(new Uint8Array(10)), 5);

  assert.equal(chain.writeFrom(Uint8Array.from([9, 8, 7]), 1), 3);
  assert.deepEqual([...w1, ...w2], [0, 9, 8, 7, 0]);
  assert.equal(chain.writeFrom(Uint8Array.from([6, 6, 6]), 3), 2, 'clipped at the end');
  assert.deepEqual([...w1, ...w2], [0, 9, 8, 6, 6]);
  assert.equal(chain.writeFrom(Uint8Array.from([1]), 5), 0);

  // A single readable view: readAll copies rather than aliasing.
  const single = new DescriptorChain(0, [r1], [], 3, 0, 1);
  const copy = single.readAll();
  copy[0] = 99;
  assert.equal(r1[0], 1);
});

test('views are reused across heads when the guest hands the same buffer again', () => {
  const rig = makeRig(8);
  const { driver, device } = rig;
  // Heads 0 and 4 point at the same header and status buffers, with different data buffers.
  for (const [head, data] of [[0, DATA + 0x1000], [4, DATA + 0x2000]] as const) {
    driver.writeDescriptor(head, DATA, 16, NEXT, head + 1);
    driver.writeDescriptor(head + 1, data, 512, NEXT | WRITE, head + 2);
    driver.writeDescriptor(head + 2, DATA + 0x20, 1, WRITE, 0);
  }
  offer(driver, 0, 0);
  const a = device.pop()!;
  const [hdrA, dataA, statusA] = [a.readable[0]!, a.writable[0]!, a.writable[1]!];
  device.push(0, 0);
  offer(driver, 4, 1);
  const b = device.pop()!;
  assert.notEqual(b, a);
  assert.equal(b.readable[0], hdrA, 'same header buffer, same view');
  assert.equal(b.writable[1], statusA, 'same status buffer, same view');
  assert.notEqual(b.writable[0], dataA, 'another data buffer, another view');
  assert.equal(b.writable[0]!.byteOffset - dataA.byteOffset, 0x1000);
  // Same address, another length: another view.
  device.push(4, 0);
  driver.writeDescriptor(6, DATA + 0x20, 2, WRITE, 0);
  offer(driver, 4, 2);
  const c = device.pop()!;
  assert.equal(c.writable[1]!.byteLength, 2);
  assert.notEqual(c.writable[1], statusA);
});

test('reused views follow the memory table: a buffer remapped elsewhere gets a view of the new memory', () => {
  const rig = makeRig(8);
  const { driver, device, mem } = rig;
  driver.writeDescriptor(0, 0x10100, 4, 0, 0); // in region B
  offer(driver, 0, 0);
  const before = device.pop()!.readable[0]!;
  device.push(0, 0);
  // The frontend replaces region B by one at the same addresses over other memory.
  const b = mem.regions.find((r) => r.guestPhysAddr === 0x10000)!;
  mem.remove(b);
  const fresh = new SharedArrayBuffer(b.size);
  new Uint8Array(fresh)[0x100] = 0x5a;
  mem.add(MemoryRegion.fromBuffer(b, fresh));
  offer(driver, 0, 1);
  const after = device.pop()!;
  const viewAfter = after.readable[0]!;
  assert.equal(viewAfter.buffer, fresh);
  assert.notEqual(viewAfter, before);
  assert.deepEqual([...after.readAll()], [0x5a, 0, 0, 0]);
  device.push(0, 0);
  // New region objects over the same buffer (a re-sent table): a view of the same bytes.
  mem.replace(mem.regions.map((r) => MemoryRegion.fromBuffer(r, r.buffer)));
  device.remap(mem);
  offer(driver, 0, 2);
  const again = device.pop()!;
  const viewAgain = again.readable[0]!;
  assert.equal(viewAgain.buffer, fresh);
  assert.equal(viewAgain.byteOffset, viewAfter.byteOffset);
  assert.deepEqual([...again.readAll()], [0x5a, 0, 0, 0]);
  device.push(0, 0);
  // With the table unchanged, the next pop reuses it.
  offer(driver, 0, 3);
  assert.equal(device.pop()!.readable[0], viewAgain);
});

test('DescriptorChain.writeByte writes one byte anywhere in the writable part', () => {
  const w1 = new Uint8Array(2);
  const w2 = new Uint8Array(3);
  const chain = new DescriptorChain(1, [Uint8Array.of(1)], [w1, w2]);
  assert.deepEqual([chain.readableLength, chain.writableLength, chain.descriptorCount], [1, 5, 3]);
  assert.equal(chain.writeByte(4, 7), true);
  assert.equal(chain.writeByte(1, 8), true);
  assert.equal(chain.writeByte(2, 9), true);
  assert.deepEqual([...w1, ...w2], [0, 8, 9, 0, 7]);
  for (const bad of [5, -1, 1.5, NaN]) assert.equal(chain.writeByte(bad, 1), false, `offset ${bad}`);
  assert.deepEqual([...w1, ...w2], [0, 8, 9, 0, 7]);
});

test('copy helpers move small and large pieces at any offset', () => {
  const big = new Uint8Array(300).map((_, i) => i & 0xff);
  const parts = [new Uint8Array(100), new Uint8Array(7), new Uint8Array(193)];
  const chain = new DescriptorChain(0, [big.subarray(0, 150), big.subarray(150)], parts);
  for (const [offset, len] of [[0, 300], [3, 5], [140, 20], [149, 151], [299, 1], [10, 100]] as const) {
    const dst = new Uint8Array(len);
    assert.equal(chain.readInto(dst, offset), len);
    assert.deepEqual([...dst], [...big.subarray(offset, offset + len)], `read ${offset}+${len}`);
    for (const p of parts) p.fill(0);
    assert.equal(chain.writeFrom(big.subarray(offset, offset + len), 300 - len), len);
    const flat = [...parts[0]!, ...parts[1]!, ...parts[2]!];
    assert.deepEqual(flat.slice(300 - len), [...big.subarray(offset, offset + len)], `write ${offset}+${len}`);
    assert.ok(flat.slice(0, 300 - len).every((x) => x === 0));
  }
});
