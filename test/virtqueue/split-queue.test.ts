import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../src/memory/region.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import { ChainError, ChainErrorKind, QueueError } from '../../src/virtqueue/errors.js';
import {
  VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
} from '../../src/virtqueue/layout.js';
import { SplitQueue } from '../../src/virtqueue/split-queue.js';
import { SingleBuffer } from '../../src/virtqueue/chain.js';
import { A, DATA, RINGS, makeMemory, makeRig, offer, peek, poke, toVa } from './rig.js';

test('constructor rejects sizes that are not a power of two in 1..32768', () => {
  for (const size of [0, 3, 100, 65536, 32769, -8, 1.5]) assert.throws(() => new SplitQueue(0, size), QueueError);
  for (const size of [1, 2, 256, 32768]) assert.equal(new SplitQueue(0, size).size, size);
});

test('configure: misaligned ring addresses are refused', () => {
  const mem = makeMemory();
  const va = toVa(mem, RINGS);
  const q = new SplitQueue(0, 8);
  assert.throws(() => q.configure(mem, { ...va, desc: va.desc + 8 }), QueueError);
  assert.throws(() => q.configure(mem, { ...va, avail: va.avail + 1 }), QueueError);
  assert.throws(() => q.configure(mem, { ...va, used: va.used + 2 }), QueueError);
  assert.throws(() => q.configure(mem, { ...va, used: 0.5 }), QueueError);
  assert.equal(q.configured, false);
  q.configure(mem, { desc: va.desc + 16, avail: va.avail + 2, used: va.used + 4 });
  assert.equal(q.configured, true);
});

test('configure: rings must be translatable and lie inside one region', () => {
  const mem = makeMemory();
  const va = toVa(mem, RINGS);
  const q = new SplitQueue(0, 256);
  // Guest-physical addresses are not frontend-virtual ones.
  assert.throws(() => q.configure(mem, RINGS), QueueError);
  // The descriptor table (4 KiB) would run past the end of region A.
  assert.throws(() => q.configure(mem, { ...va, desc: A.userAddr + A.size - 0x800 }), QueueError);
  // A used ring that does not fit in what is left of the region.
  assert.throws(() => q.configure(mem, { ...va, used: A.userAddr + A.size - 8 * 256 }), QueueError);
  // A ring bigger than all of memory.
  const big = new SplitQueue(0, 32768);
  assert.throws(() => big.configure(mem, va), QueueError);
  // A failed configure leaves the queue unconfigured.
  q.configure(mem, va);
  assert.throws(() => q.configure(mem, { ...va, desc: 0x1000 }), QueueError);
  assert.equal(q.configured, false);
  assert.equal(q.pop(), null);
});

test('configure: a ring aligned in guest terms but misaligned in the mapping is refused', () => {
  const mem = new GuestMemory();
  const d = { guestPhysAddr: 0, size: 0x4000, userAddr: 0x10000, mmapOffset: 1 };
  mem.add(MemoryRegion.fromBuffer(d, new SharedArrayBuffer(0x4001)));
  const q = new SplitQueue(0, 8);
  assert.throws(() => q.configure(mem, { desc: 0x10000, avail: 0x11000, used: 0x12000 }), /misaligned in the mapping/);
});

test('configure reads used.idx back from the ring; lastAvailIdx is kept', () => {
  const rig = makeRig(8);
  const used = rig.mem.gpaSlice(RINGS.used, 4);
  new DataView(used.buffer, used.byteOffset, 4).setUint16(2, 0x1234, true);
  rig.device.lastAvailIdx = 0x1236;
  rig.device.configure(rig.mem, toVa(rig.mem, RINGS));
  assert.equal(rig.device.usedIdx, 0x1234);
  assert.equal(rig.device.publishedUsedIdx, 0x1234);
  assert.equal(rig.device.lastAvailIdx, 0x1236);
  assert.throws(() => { rig.device.lastAvailIdx = 0x10000; }, RangeError);
});

test('round trip driver -> device -> driver with data checked', () => {
  const { mem, driver, device } = makeRig(8);
  const request = Array.from({ length: 100 }, (_, i) => (i * 7) & 0xff);
  poke(mem, DATA, request);
  // The response buffer spans regions A and B.
  const head = driver.add([{ addr: DATA, len: 100 }], [{ addr: 0xfff0, len: 0x40 }], 42);
  assert.ok(head >= 0);
  driver.publish();
  assert.equal(driver.needsKick(), true);
  assert.equal(device.pending(), 1);

  const chain = device.pop()!;
  assert.equal(chain.head, head);
  assert.deepEqual([...chain.readAll()], request);
  assert.equal(chain.writable.length, 2);
  const response = Uint8Array.from({ length: 0x30 }, (_, i) => 0xff - i);
  assert.equal(chain.writeFrom(response), 0x30);
  device.push(chain.head, 0x30);
  assert.equal(driver.popUsed(), null, 'not visible before flush');
  assert.equal(device.flush(), true);
  assert.equal(device.flush(), false, 'nothing new');

  const used = driver.popUsed()!;
  assert.deepEqual(used, { head, token: 42, len: 0x30 });
  assert.deepEqual(peek(mem, 0xfff0, 0x30), [...response]);
  assert.equal(driver.freeCount, 8);
  assert.equal(driver.popUsed(), null);
});

test('the device takes chains across the wrap of the u16 avail index', () => {
  const { driver, device } = makeRig(4);
  device.lastAvailIdx = 0xfffe;
  for (const [slot, head] of [[0xfffe, 2], [0xffff, 1]] as const) {
    driver.writeDescriptor(head, DATA + head * 16, 16, WRITE, 0);
    driver.writeAvailEntry(slot, head);
  }
  driver.writeAvailIdx(0);
  assert.equal(device.pending(), 2);
  assert.equal(device.pop()!.head, 2);
  assert.equal(device.pop()!.head, 1);
  assert.equal(device.lastAvailIdx, 0);
  assert.equal(device.pop(), null);
});

test('70000 chains through a 4-entry ring: both u16 indices wrap, data and order kept', () => {
  const { mem, driver, device } = makeRig(4);
  let sent = 0;
  let received = 0;
  while (received < 70000) {
    while (driver.freeCount > 0) {
      const addr = DATA + 0x10 * (sent % 8);
      poke(mem, addr, [sent & 0xff]);
      driver.add([{ addr, len: 1 }], [], sent++);
    }
    driver.publish();
    for (let c = device.pop(); c !== null; c = device.pop()) device.push(c.head, c.readAll()[0]!);
    device.flush();
    for (let u = driver.popUsed(); u !== null; u = driver.popUsed()) {
      assert.equal(u.token, received++);
      assert.equal(u.len, u.token & 0xff);
    }
  }
  assert.equal(device.lastAvailIdx, 70000 & 0xffff);
  assert.equal(driver.readUsedIdx(), 70000 & 0xffff);
});

test('flush without EVENT_IDX: notify unless the driver set NO_INTERRUPT', () => {
  const { driver, device } = makeRig(8);
  assert.equal(device.flush(), false, 'nothing pushed');
  driver.writeDescriptor(0, DATA, 4, WRITE, 0);
  offer(driver, 0);
  device.push(device.pop()!.head, 4);
  driver.writeAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  assert.equal(device.flush(), false);
  assert.equal(driver.readUsedIdx(), 1, 'published anyway');
  driver.writeAvailFlags(0);
  device.push(0, 4);
  assert.equal(device.flush(), true);
  assert.equal(driver.readUsedIdx(), 2);
});

test('flush with EVENT_IDX follows used_event, including across the u16 wrap', () => {
  const cases: { start: number; pushes: number; usedEvent: number; expect: boolean }[] = [
    { start: 0, pushes: 1, usedEvent: 0, expect: true }, // driver waits for entry 0
    { start: 0, pushes: 1, usedEvent: 1, expect: false }, // driver waits for entry 1: not yet
    { start: 0, pushes: 2, usedEvent: 1, expect: true },
    { start: 5, pushes: 3, usedEvent: 4, expect: false }, // event already behind old index
    { start: 5, pushes: 3, usedEvent: 7, expect: true },
    { start: 5, pushes: 3, usedEvent: 8, expect: false },
    { start: 0xfffe, pushes: 3, usedEvent: 0xffff, expect: true }, // wraps: 0xfffe -> 0x0001
    { start: 0xfffe, pushes: 3, usedEvent: 0x0000, expect: true },
    { start: 0xfffe, pushes: 3, usedEvent: 0x0001, expect: false },
    { start: 0xfffe, pushes: 3, usedEvent: 0xfffd, expect: false },
    { start: 0xffff, pushes: 1, usedEvent: 0xffff, expect: true },
  ];
  for (const { start, pushes, usedEvent, expect } of cases) {
    const rig = makeRig(8, { eventIdx: true });
    // Put the ring's used index at `start` before the device maps it.
    const used = rig.mem.gpaSlice(RINGS.used, 4);
    new DataView(used.buffer, used.byteOffset, 4).setUint16(2, start, true);
    rig.device.configure(rig.mem, toVa(rig.mem, RINGS));
    rig.driver.setUsedEvent(usedEvent);
    for (let i = 0; i < pushes; i++) rig.device.push(i, 0);
    assert.equal(rig.device.flush(), expect, JSON.stringify({ start, pushes, usedEvent }));
    assert.equal(rig.driver.readUsedIdx(), (start + pushes) & 0xffff);
  }
});

test('EVENT_IDX: the old index is the one published by the previous flush', () => {
  const rig = makeRig(8, { eventIdx: true });
  rig.driver.setUsedEvent(2);
  rig.device.push(0, 0);
  assert.equal(rig.device.flush(), false); // 0 -> 1, waiting for 2
  rig.device.push(1, 0);
  rig.device.push(2, 0);
  assert.equal(rig.device.flush(), true); // 1 -> 3 passes 2
  rig.device.push(3, 0);
  assert.equal(rig.device.flush(), false); // 3 -> 4, event 2 is behind
});

test('publish makes entries visible at once; flush decides the interrupt over everything since the last flush', () => {
  const rig = makeRig(8, { eventIdx: true });
  rig.driver.setUsedEvent(1);
  rig.device.push(0, 0);
  assert.equal(rig.device.publish(), true);
  assert.equal(rig.driver.readUsedIdx(), 1, 'visible before any flush');
  assert.equal(rig.device.publish(), false, 'nothing new');
  rig.device.push(1, 0);
  assert.equal(rig.device.publish(), true);
  assert.equal(rig.driver.readUsedIdx(), 2);
  // used_event 1 was passed by the second publication: the flush still sees it (range 0 -> 2).
  assert.equal(rig.device.flush(), true);
  assert.equal(rig.device.flush(), false, 'nothing since');
  rig.driver.setUsedEvent(3);
  rig.device.push(2, 0);
  rig.device.publish();
  assert.equal(rig.device.flush(), false, '2 -> 3 has not passed used_event 3');
  rig.device.push(3, 0);
  assert.equal(rig.device.flush(), true, 'flush publishes what is pushed: 3 -> 4 passes 3');
  assert.equal(rig.driver.readUsedIdx(), 4);

  // Without EVENT_IDX: a flush after publications notifies unless NO_INTERRUPT.
  const plain = makeRig(8);
  plain.device.push(0, 0);
  plain.device.publish();
  assert.equal(plain.device.flush(), true);
  plain.device.push(1, 0);
  plain.device.publish();
  plain.driver.writeAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  assert.equal(plain.device.flush(), false);
});

test('pop takes every chain up to the avail.idx it read, and reads it again only when those run out', () => {
  const { driver, device } = makeRig(8);
  for (let i = 0; i < 3; i++) driver.writeDescriptor(i, DATA, 4, WRITE, 0);
  for (let i = 0; i < 2; i++) driver.writeAvailEntry(i, i);
  driver.writeAvailIdx(2);
  assert.equal(device.pop()!.head, 0);
  // Added after the read: taken once the first two are gone, without waiting for anything else.
  driver.writeAvailEntry(2, 2);
  driver.writeAvailIdx(3);
  assert.equal(device.pop()!.head, 1);
  assert.equal(device.pop()!.head, 2);
  assert.equal(device.pop(), null);
  // SET_VRING_BASE forgets what was read: nothing beyond avail.idx is taken after a base moved back.
  device.lastAvailIdx = 1;
  assert.equal(device.pending(), 2);
  device.lastAvailIdx = 3;
  assert.equal(device.pop(), null);
});

test('EVENT_IDX: an empty pop asks for a kick at the next buffer, and the driver honours it', () => {
  const { driver, device } = makeRig(8, { eventIdx: true });
  driver.add([{ addr: DATA, len: 4 }], [], 1);
  driver.add([{ addr: DATA, len: 4 }], [], 2);
  driver.publish();
  driver.needsKick();
  assert.ok(device.pop());
  assert.ok(device.pop());
  assert.equal(device.pop(), null);
  assert.equal(driver.readAvailEvent(), 2, 'avail_event = lastAvailIdx once the ring is seen empty');

  driver.add([{ addr: DATA, len: 4 }], [], 3);
  driver.publish();
  assert.equal(driver.needsKick(), true, 'the next buffer crosses avail_event');
  driver.add([{ addr: DATA, len: 4 }], [], 4);
  driver.publish();
  assert.equal(driver.needsKick(), false, 'the device has not drained the ring since');
  assert.ok(device.pop());
  assert.ok(device.pop());
  assert.equal(device.pop(), null);
  driver.add([{ addr: DATA, len: 4 }], [], 5);
  driver.publish();
  assert.equal(driver.needsKick(), true);
  assert.equal(driver.needsKick(), false, 'nothing published since the last check');
});

test('setNotification without EVENT_IDX toggles VRING_USED_F_NO_NOTIFY', () => {
  const { driver, device } = makeRig(8);
  assert.equal(device.setNotification(false), false);
  assert.equal(driver.readUsedFlags(), VRING_USED_F_NO_NOTIFY);
  driver.add([{ addr: DATA, len: 4 }], [], 1);
  driver.publish();
  assert.equal(driver.needsKick(), false);
  assert.equal(device.setNotification(true), true, 'a buffer is already pending');
  assert.equal(driver.readUsedFlags(), 0);
  device.pop();
  assert.equal(device.setNotification(true), false);
  driver.add([{ addr: DATA, len: 4 }], [], 2);
  driver.publish();
  assert.equal(driver.needsKick(), true);
});

test('setNotification with EVENT_IDX writes avail_event when enabling, and pop stops updating it when off', () => {
  const { driver, device } = makeRig(8, { eventIdx: true });
  device.lastAvailIdx = 0;
  device.setNotification(false);
  assert.equal(device.pop(), null);
  assert.equal(driver.readAvailEvent(), 0);
  for (let i = 0; i < 3; i++) driver.add([{ addr: DATA, len: 4 }], [], i);
  driver.publish();
  device.pop();
  device.pop();
  device.pop();
  assert.equal(device.pop(), null);
  assert.equal(driver.readAvailEvent(), 0, 'not updated while notifications are off');
  assert.equal(driver.readUsedFlags(), 0, 'EVENT_IDX does not use the flag');
  assert.equal(device.setNotification(true), false);
  assert.equal(driver.readAvailEvent(), 3);
});

test('eventIdx cannot be enabled on a mapped ring with no room for the event fields', () => {
  const mem = makeMemory();
  // Available ring for 8 entries without used_event is 20 bytes: put it flush against the end of region A.
  const availVa = A.userAddr + A.size - 20;
  const va = { ...toVa(mem, RINGS), avail: availVa };
  const q = new SplitQueue(0, 8);
  q.configure(mem, va);
  assert.throws(() => { q.eventIdx = true; }, QueueError);
  assert.equal(q.eventIdx, false);
  const withEvents = new SplitQueue(0, 8);
  withEvents.eventIdx = true;
  assert.throws(() => withEvents.configure(mem, va), QueueError);
  // With room, it can be switched on after configure.
  const ok = new SplitQueue(0, 8);
  ok.configure(mem, toVa(mem, RINGS));
  ok.eventIdx = true;
  assert.equal(ok.eventIdx, true);
});

test('push checks its arguments and needs a configured queue', () => {
  const { device } = makeRig(8);
  assert.throws(() => device.push(8, 0), RangeError);
  assert.throws(() => device.push(-1, 0), RangeError);
  assert.throws(() => device.push(0, 2 ** 32), RangeError);
  assert.throws(() => device.push(0, -1), RangeError);
  assert.throws(() => new SplitQueue(0, 8).push(0, 0), QueueError);
});

test('remap keeps the indices and follows the rings to a new mapping', () => {
  const rig = makeRig(8);
  rig.driver.add([{ addr: DATA, len: 4 }], [], 1);
  rig.driver.publish();
  rig.device.push(rig.device.pop()!.head, 0);
  rig.device.flush();
  // The frontend re-sends the table with the same layout: new region objects over the same buffers.
  const old = rig.mem.regions;
  rig.mem.replace(old.map((r) => MemoryRegion.fromBuffer(r, r.buffer)));
  rig.device.remap(rig.mem);
  assert.equal(rig.device.lastAvailIdx, 1);
  assert.equal(rig.device.usedIdx, 1);
  rig.driver.add([{ addr: DATA, len: 4 }], [], 2);
  rig.driver.publish();
  assert.equal(rig.device.pop()!.readableLength, 4);
  // After the rings' region goes away, remap fails and the queue stops.
  rig.mem.clear();
  assert.throws(() => rig.device.remap(rig.mem), QueueError);
  assert.equal(rig.device.configured, false);
  assert.throws(() => new SplitQueue(1, 8).remap(rig.mem), QueueError);
});

test('a queue of size 1 works', () => {
  const mem = makeMemory();
  const driver = new DriverQueue<string>(mem, 1, RINGS);
  const device = new SplitQueue(0, 1);
  device.configure(mem, toVa(mem, RINGS));
  assert.equal(driver.add([{ addr: DATA, len: 1 }], [], 'a'), 0);
  assert.equal(driver.add([{ addr: DATA, len: 1 }], [], 'b'), -1);
  driver.publish();
  device.push(device.pop()!.head, 0);
  device.flush();
  assert.equal(driver.popUsed()!.token, 'a');
});

test('applyFeatures takes EVENT_IDX (29) and INDIRECT_DESC (28) from a feature mask', () => {
  const q = new SplitQueue(0, 8);
  q.applyFeatures((1n << 29n) | (1n << 32n));
  assert.deepEqual([q.eventIdx, q.indirect], [true, false]);
  q.applyFeatures(1n << 28n);
  assert.deepEqual([q.eventIdx, q.indirect], [false, true]);
});

// ---- pooled chains ----

test('pop refills one chain object per head: same object, same arrays, same views for the same buffers', () => {
  const rig = makeRig(8);
  const { driver, device } = rig;
  driver.writeDescriptor(2, DATA, 16, NEXT, 3);
  driver.writeDescriptor(3, DATA + 0x100, 512, NEXT | WRITE, 4);
  driver.writeDescriptor(4, DATA + 0x400, 1, WRITE, 0);
  driver.writeDescriptor(5, DATA + 0x800, 4, 0, 0);
  offer(driver, 2, 0);
  const first = device.pop()!;
  const { readable, writable } = first;
  const views = [...readable, ...writable];
  assert.equal(device.inFlight, 1);
  device.push(first.head, 0);
  assert.equal(device.inFlight, 0);
  for (let slot = 1; slot < 20; slot++) {
    offer(driver, 2, slot);
    const again = device.pop()!;
    assert.equal(again, first, 'the pooled object of head 2');
    assert.equal(again.readable, readable, 'no new readable array');
    assert.equal(again.writable, writable, 'no new writable array');
    assert.deepEqual([...again.readable, ...again.writable], views);
    for (const [k, v] of [...again.readable, ...again.writable].entries()) assert.equal(v, views[k], `view ${k} reused`);
    device.push(again.head, 0);
  }
  // Another head has its own object.
  offer(driver, 5, 20);
  const other = device.pop()!;
  assert.notEqual(other, first);
  assert.equal(other.head, 5);
  assert.equal(first.head, 2, 'a pooled chain is not touched by pops of other heads');
  assert.equal(first.writableLength, 513);
});

test('a refilled chain takes the new layout: lengths, counts and views follow the descriptors', () => {
  const rig = makeRig(8);
  const { driver, device, mem } = rig;
  poke(mem, DATA, [1, 2, 3]);
  poke(mem, DATA + 0x40, [9]);
  driver.writeDescriptor(0, DATA, 2, NEXT, 1);
  driver.writeDescriptor(1, DATA + 2, 1, NEXT, 6);
  driver.writeDescriptor(6, DATA + 0x100, 8, NEXT | WRITE, 7);
  driver.writeDescriptor(7, DATA + 0x200, 8, WRITE, 0);
  offer(driver, 0, 0);
  const c = device.pop()!;
  assert.deepEqual([c.readable.length, c.writable.length, c.readableLength, c.writableLength, c.descriptorCount],
    [2, 2, 3, 16, 4]);
  assert.deepEqual([...c.readAll()], [1, 2, 3]);
  device.push(0, 0);
  // Same head, now one readable buffer elsewhere and nothing writable.
  driver.writeDescriptor(0, DATA + 0x40, 1, 0, 0);
  offer(driver, 0, 1);
  const d = device.pop()!;
  assert.equal(d, c);
  assert.deepEqual([d.readable.length, d.writable.length, d.readableLength, d.writableLength, d.descriptorCount],
    [1, 0, 1, 0, 1]);
  assert.deepEqual([...d.readAll()], [9]);
  assert.equal(d.readable[0]!.byteOffset, mem.gpaSlice(DATA + 0x40, 1).byteOffset);
  device.push(0, 0);
  // And back to writable only, longer.
  driver.writeDescriptor(0, DATA + 0x300, 4, NEXT | WRITE, 1);
  driver.writeDescriptor(1, DATA + 0x310, 4, NEXT | WRITE, 2);
  driver.writeDescriptor(2, DATA + 0x320, 4, WRITE, 0);
  offer(driver, 0, 2);
  const e = device.pop()!;
  assert.deepEqual([e.readable.length, e.writable.length, e.readableLength, e.writableLength, e.descriptorCount],
    [0, 3, 0, 12, 3]);
  assert.equal(e.writeFrom(Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9])), 9);
  assert.deepEqual(peek(mem, DATA + 0x310, 4), [5, 6, 7, 8]);
});

test('HEAD_IN_USE: a head made available again before its chain was pushed breaks the queue', () => {
  const rig = makeRig(8);
  const { driver, device, mem } = rig;
  poke(mem, DATA, [0xaa]);
  driver.writeDescriptor(1, DATA, 1, NEXT, 2);
  driver.writeDescriptor(2, DATA + 0x100, 1, WRITE, 0);
  offer(driver, 1, 0);
  const held = device.pop()!;
  // The driver reuses the descriptors it gave away, pointing them elsewhere, and offers the head again.
  driver.writeDescriptor(1, DATA + 0x200, 7, 0, 0);
  offer(driver, 1, 1);
  assert.throws(() => device.pop(), (e: unknown) => {
    assert.ok(e instanceof ChainError);
    assert.equal(e.kind, ChainErrorKind.HEAD_IN_USE);
    assert.equal(e.head, 1);
    return true;
  });
  assert.equal(device.broken, true);
  assert.equal(device.error?.kind, ChainErrorKind.HEAD_IN_USE);
  assert.equal(device.pop(), null);
  assert.equal(device.lastAvailIdx, 1, 'the offending entry is not consumed');
  // The chain the device holds is untouched: same buffers as when it was popped.
  assert.deepEqual([held.readableLength, held.writableLength, held.descriptorCount], [1, 1, 2]);
  assert.deepEqual([...held.readAll()], [0xaa]);
  assert.equal(held.writable[0]!.byteOffset, mem.gpaSlice(DATA + 0x100, 1).byteOffset);
  // It can still be completed.
  device.push(held.head, 1);
  assert.equal(device.inFlight, 0);
});

test('a head may come back once pushed, even before the used index is flushed', () => {
  const rig = makeRig(4);
  const { driver, device } = rig;
  driver.writeDescriptor(0, DATA, 4, 0, 0);
  for (let slot = 0; slot < 10; slot++) {
    offer(driver, 0, slot);
    const c = device.pop()!;
    assert.equal(c.head, 0);
    device.push(0, 0);
  }
  device.flush();
  assert.equal(device.broken, false);
  assert.equal(device.usedIdx, 10);
});

test('reset starts a new pool: a chain held across a reset is never refilled', () => {
  const rig = makeRig(8);
  const { driver, device, mem } = rig;
  driver.writeDescriptor(0, DATA, 4, 0, 0);
  offer(driver, 0, 0);
  const held = device.pop()!;
  assert.equal(device.inFlight, 1);
  device.reset();
  assert.equal(device.inFlight, 0);
  device.configure(mem, toVa(mem, RINGS));
  driver.writeDescriptor(0, DATA + 0x100, 8, WRITE, 0);
  offer(driver, 0, 0);
  const fresh = device.pop()!;
  assert.notEqual(fresh, held);
  assert.deepEqual([held.readableLength, held.writableLength], [4, 0]);
  assert.deepEqual([fresh.readableLength, fresh.writableLength], [0, 8]);
});

test('popSingle takes one-buffer readable chains as numbers and leaves every other chain, untouched, to pop', () => {
  const { mem, driver, device } = makeRig(8, { eventIdx: true });
  const single = new SingleBuffer();
  const region = mem.regions[0]!;
  const h1 = driver.add([{ addr: DATA, len: 100 }], [], 1);
  // Two readable descriptors; a writable one; a buffer crossing from region A into B: not single buffers.
  const h2 = driver.add([{ addr: DATA, len: 10 }, { addr: DATA + 64, len: 10 }], [], 2);
  const h3 = driver.add([], [{ addr: DATA, len: 10 }], 3);
  const h4 = driver.add([{ addr: 0xfff0, len: 0x20 }], [], 4);
  driver.publish();
  assert.equal(device.popSingle(single), h1);
  assert.equal(single.region, region);
  assert.equal(single.offset, A.mmapOffset + DATA);
  assert.equal(single.length, 100);
  assert.equal(device.inFlight, 1);
  for (const [head, readable, writable] of [[h2, 2, 0], [h3, 0, 1], [h4, 2, 0]] as const) {
    assert.equal(device.popSingle(single), -2, `head ${head}`);
    const chain = device.pop()!;
    assert.equal(chain.head, head);
    assert.equal(chain.readable.length, readable);
    assert.equal(chain.writable.length, writable);
    device.push(chain.head, 0);
  }
  // Empty: -1, and with EVENT_IDX the driver is asked to kick for the next buffer, as an empty pop does.
  assert.equal(device.popSingle(single), -1);
  assert.equal(driver.readAvailEvent(), 4);
  device.push(h1, 0);
  assert.equal(device.inFlight, 0);
  device.flush();
  const got = [];
  for (let u = driver.popUsed(); u !== null; u = driver.popUsed()) got.push(u.token);
  assert.deepEqual(got, [2, 3, 4, 1]);

  // A head still in flight is left to pop, which raises HEAD_IN_USE.
  const h5 = driver.add([{ addr: DATA, len: 8 }], [], 5);
  driver.publish();
  assert.equal(device.popSingle(single), h5);
  offer(driver, h5, 6);
  assert.equal(device.popSingle(single), -2);
  assert.throws(() => device.pop(), (e: unknown) => e instanceof ChainError && e.kind === ChainErrorKind.HEAD_IN_USE);
});

test('popSingle ignores reserved descriptor flag bits, as pop does (the fuzzer found it leaving such a buffer)', () => {
  const { driver, device } = makeRig(8);
  const single = new SingleBuffer();
  driver.writeDescriptor(0, DATA + 0x40, 24, 0x6800, 0);
  offer(driver, 0, 0);
  assert.equal(device.popSingle(single), 0);
  assert.deepEqual([single.offset, single.length], [A.mmapOffset + DATA + 0x40, 24]);
  device.push(0, 0);
  // pop sees the same: one readable buffer of 24 bytes.
  offer(driver, 0, 1);
  const c = device.pop()!;
  assert.deepEqual([c.head, c.readable.length, c.readableLength, c.writableLength], [0, 1, 24, 0]);
});
