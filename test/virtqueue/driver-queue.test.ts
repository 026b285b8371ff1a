import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryError } from '../../src/memory/errors.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import { QueueError } from '../../src/virtqueue/errors.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtqueue/layout.js';
import { A, DATA, END, RINGS, makeMemory, makeRig, peek } from './rig.js';

function descriptor(mem: ReturnType<typeof makeMemory>, gpa: number) {
  const v = mem.gpaSlice(gpa, 16);
  const dv = new DataView(v.buffer, v.byteOffset, 16);
  return {
    addr: dv.getUint32(0, true) + dv.getUint32(4, true) * 2 ** 32,
    len: dv.getUint32(8, true),
    flags: dv.getUint16(12, true),
    next: dv.getUint16(14, true),
  };
}

test('the constructor zeroes the rings and checks their placement', () => {
  const mem = makeMemory();
  mem.gpaSlice(RINGS.avail, 4).fill(0xff);
  mem.gpaSlice(RINGS.used, 4).fill(0xff);
  const q = new DriverQueue(mem, 8, RINGS);
  assert.equal(q.readUsedIdx(), 0);
  assert.equal(q.readUsedFlags(), 0);
  assert.deepEqual(peek(mem, RINGS.avail, 4), [0, 0, 0, 0]);
  assert.throws(() => new DriverQueue(mem, 6, RINGS), QueueError);
  assert.throws(() => new DriverQueue(mem, 8, { ...RINGS, desc: 8 }), QueueError);
  assert.throws(() => new DriverQueue(mem, 8, { ...RINGS, used: RINGS.used + 2 }), QueueError);
  assert.throws(() => new DriverQueue(mem, 8, { ...RINGS, used: END }), QueueError);
  assert.throws(() => new DriverQueue(mem, 8, { ...RINGS, avail: A.size - 8 }), QueueError, 'crosses regions');
});

test('add writes a linked chain, readable first, and hands out the free list', () => {
  const { mem, driver } = makeRig(8);
  const head = driver.add([{ addr: DATA, len: 10 }, { addr: DATA + 0x100, len: 20 }], [{ addr: 0x10000, len: 30 }], 7);
  assert.equal(head, 0);
  assert.equal(driver.freeCount, 5);
  assert.deepEqual(descriptor(mem, RINGS.desc), { addr: DATA, len: 10, flags: VIRTQ_DESC_F_NEXT, next: 1 });
  assert.deepEqual(descriptor(mem, RINGS.desc + 16), { addr: DATA + 0x100, len: 20, flags: VIRTQ_DESC_F_NEXT, next: 2 });
  assert.deepEqual(descriptor(mem, RINGS.desc + 32), { addr: 0x10000, len: 30, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  assert.equal(driver.availIdx, 1);
  assert.equal(driver.add([{ addr: DATA, len: 1 }], [], 8), 3);
  // Not enough descriptors: -1 and nothing changes.
  assert.equal(driver.add(Array.from({ length: 5 }, () => ({ addr: DATA, len: 1 })), [], 9), -1);
  assert.equal(driver.freeCount, 4);
  assert.equal(driver.availIdx, 2);
  assert.throws(() => driver.add([], [], 1), RangeError);
  assert.throws(() => driver.add([{ addr: -1, len: 1 }], [], 1), RangeError);
  assert.throws(() => driver.add([{ addr: 0, len: 2 ** 32 }], [], 1), RangeError);
});

test('add with an indirect table uses one descriptor', () => {
  const { mem, driver, device } = makeRig(4, { indirect: true });
  const table = 0x6000;
  const bufs = Array.from({ length: 4 }, (_, i) => ({ addr: DATA + 0x10 * i, len: 0x10 }));
  const head = driver.add(bufs.slice(0, 3), bufs.slice(3), 5, { indirectTable: table });
  assert.equal(driver.freeCount, 3);
  assert.deepEqual(descriptor(mem, RINGS.desc + 16 * head), { addr: table, len: 64, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
  assert.deepEqual(descriptor(mem, table + 48), { addr: DATA + 0x30, len: 0x10, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  driver.publish();
  const chain = device.pop()!;
  assert.equal(chain.readableLength, 0x30);
  assert.equal(chain.writableLength, 0x10);
  device.push(chain.head, 0x10);
  device.flush();
  assert.deepEqual(driver.popUsed(), { head, token: 5, len: 0x10 });
  assert.equal(driver.freeCount, 4);
  assert.throws(() => driver.add(bufs, [], 1, { indirectTable: END - 16 }), MemoryError);
});

test('popUsed frees whole chains and refuses heads that are not outstanding', () => {
  const { driver, device } = makeRig(4);
  const h1 = driver.add([{ addr: DATA, len: 1 }, { addr: DATA, len: 1 }], [], 1);
  const h2 = driver.add([{ addr: DATA, len: 1 }, { addr: DATA, len: 1 }], [], 2);
  assert.equal(driver.freeCount, 0);
  driver.publish();
  device.pop();
  device.pop();
  device.push(h2, 0);
  device.push(h1, 0);
  device.flush();
  assert.equal(driver.usedPending(), 2);
  assert.equal(driver.popUsed()!.token, 2);
  assert.equal(driver.freeCount, 2);
  assert.equal(driver.popUsed()!.token, 1);
  assert.equal(driver.freeCount, 4);
  // All four descriptors can be used again as one chain.
  assert.equal(driver.add(Array.from({ length: 4 }, () => ({ addr: DATA, len: 1 })), [], 3), h1);
  // A device that returns a head that is not outstanding (h2 is now the middle of h1's chain).
  device.push(h2, 0);
  device.flush();
  assert.throws(() => driver.popUsed(), QueueError);
});

test('needsKick without EVENT_IDX honours VRING_USED_F_NO_NOTIFY', () => {
  const { driver, device } = makeRig(8);
  assert.equal(driver.needsKick(), false, 'nothing published');
  driver.add([{ addr: DATA, len: 1 }], [], 1);
  assert.equal(driver.needsKick(), false, 'added but not published');
  driver.publish();
  assert.equal(driver.needsKick(), true);
  device.setNotification(false);
  driver.add([{ addr: DATA, len: 1 }], [], 2);
  driver.publish();
  assert.equal(driver.needsKick(), false);
});

test('setInterrupts and setUsedEvent write the avail ring fields', () => {
  const { driver } = makeRig(8);
  driver.setInterrupts(false);
  assert.deepEqual(peek(driver.mem, RINGS.avail, 2), [1, 0]);
  driver.setInterrupts(true);
  assert.deepEqual(peek(driver.mem, RINGS.avail, 2), [0, 0]);
  driver.setUsedEvent(0x1234);
  assert.equal(driver.readUsedEvent(), 0x1234);
  assert.deepEqual(peek(driver.mem, RINGS.avail + 4 + 2 * 8, 2), [0x34, 0x12]);
});
