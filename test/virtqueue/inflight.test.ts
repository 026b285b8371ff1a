import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  INFLIGHT_ENTRY_BYTES, INFLIGHT_HEADER_BYTES, INFLIGHT_VERSION, InflightQueue, inflightQueueSize,
} from '../../src/virtqueue/inflight.js';
import { ChainError, ChainErrorKind, QueueError } from '../../src/virtqueue/errors.js';
import { SplitQueue } from '../../src/virtqueue/split-queue.js';
import { DATA, RINGS, makeRig, toVa, type Rig } from './rig.js';

test('inflightQueueSize matches libvhost-user: ALIGN_UP(16 * size + 2, 64)', () => {
  assert.equal(inflightQueueSize(1), 64);
  assert.equal(inflightQueueSize(2), 64);
  assert.equal(inflightQueueSize(4), 128);
  assert.equal(inflightQueueSize(128), 2112);
  assert.equal(inflightQueueSize(256), 4160);
  assert.equal(inflightQueueSize(1024), 16448);
  assert.equal(inflightQueueSize(32768), 524352);
  for (let size = 1; size <= 32768; size *= 2) {
    assert.ok(inflightQueueSize(size) >= INFLIGHT_HEADER_BYTES + INFLIGHT_ENTRY_BYTES * size, `room at ${size}`);
    assert.equal(inflightQueueSize(size) % 64, 0);
  }
  assert.throws(() => inflightQueueSize(3), QueueError);
  assert.throws(() => inflightQueueSize(0), QueueError);
});

test('InflightQueue refuses a region that does not fit the buffer', () => {
  const buf = new SharedArrayBuffer(2 * inflightQueueSize(8));
  assert.doesNotThrow(() => new InflightQueue(buf, inflightQueueSize(8), 8));
  assert.throws(() => new InflightQueue(buf, 2 * inflightQueueSize(8) - 100, 8), QueueError);
  assert.throws(() => new InflightQueue(buf, -16, 8), QueueError);
  assert.throws(() => new InflightQueue(buf, 0, 12), QueueError);
});

test('init writes the header: version 1, desc_num, used_idx; entries cleared', () => {
  const buf = new SharedArrayBuffer(inflightQueueSize(8));
  new Uint8Array(buf).fill(0xee);
  const q = new InflightQueue(buf, 0, 8);
  q.init(0x1234);
  const dv = new DataView(buf);
  assert.equal(dv.getBigUint64(0, true), 0n);
  assert.equal(dv.getUint16(8, true), INFLIGHT_VERSION);
  assert.equal(dv.getUint16(10, true), 8);
  assert.equal(dv.getUint16(12, true), 0);
  assert.equal(dv.getUint16(14, true), 0x1234);
  for (let i = 0; i < 8; i++) assert.equal(q.isInflight(i), false);
  assert.equal(q.initialized, true);
});

test('entry layout: inflight at +0, next at +6, counter at +8', () => {
  const buf = new SharedArrayBuffer(inflightQueueSize(8));
  const q = new InflightQueue(buf, 0, 8);
  q.init();
  q.markInflight(3);
  q.markInflight(5);
  q.linkUsed(5);
  q.linkUsed(3);
  const dv = new DataView(buf);
  const e = (i: number) => 16 + 16 * i;
  assert.equal(dv.getUint8(e(3)), 1);
  assert.equal(dv.getBigUint64(e(3) + 8, true), 1n);
  assert.equal(dv.getBigUint64(e(5) + 8, true), 2n);
  assert.equal(dv.getUint16(12, true), 3, 'last_batch_head');
  assert.equal(dv.getUint16(e(3) + 6, true), 5, 'next links to the previous push');
});

/** Push `heads` (in this order) on a rig whose queue has inflight attached, and flush. */
function complete(rig: Rig, ...heads: number[]): void {
  for (const h of heads) rig.device.push(h, 0);
  rig.device.flush();
}

function inflightRig(size = 8) {
  const rig = makeRig(size);
  const area = new SharedArrayBuffer(2 * inflightQueueSize(size));
  // Use the second queue's slot, to exercise the offset.
  const inflight = new InflightQueue(area, inflightQueueSize(size), size);
  assert.equal(rig.device.attachInflight(inflight), 0);
  return { ...rig, area, inflight };
}

test('pop marks heads inflight with rising counters; flush clears them and records used_idx', () => {
  const rig = inflightRig();
  for (let i = 0; i < 3; i++) rig.driver.add([{ addr: DATA, len: 4 }], [], i);
  rig.driver.publish();
  const heads = [rig.device.pop()!.head, rig.device.pop()!.head, rig.device.pop()!.head];
  assert.deepEqual(heads.map((h) => rig.inflight.isInflight(h)), [true, true, true]);
  assert.ok(rig.inflight.counterOf(heads[0]!) < rig.inflight.counterOf(heads[1]!));
  assert.ok(rig.inflight.counterOf(heads[1]!) < rig.inflight.counterOf(heads[2]!));

  rig.device.push(heads[1]!, 0);
  assert.equal(rig.inflight.isInflight(heads[1]!), true, 'still inflight until published');
  assert.equal(rig.inflight.usedIdx, 0);
  rig.device.flush();
  assert.equal(rig.inflight.isInflight(heads[1]!), false);
  assert.equal(rig.inflight.usedIdx, 1);
  complete(rig, heads[2]!, heads[0]!);
  assert.deepEqual(heads.map((h) => rig.inflight.isInflight(h)), [false, false, false]);
  assert.equal(rig.inflight.usedIdx, 3);
  assert.deepEqual(rig.inflight.pendingHeads(3), []);
});

/**
 * Drive a ring so that heads are popped in an order unlike their index order, then leave some inflight.
 * Returns the rig and the popped heads in pop order.
 */
function busyRig() {
  const rig = inflightRig(8);
  // Round 1: four chains through and back, which leaves the driver's free list as 3, 2, 1, 0, 4, ...
  for (let i = 0; i < 4; i++) rig.driver.add([{ addr: DATA, len: 4 }], [], i);
  rig.driver.publish();
  for (let c = rig.device.pop(); c !== null; c = rig.device.pop()) rig.device.push(c.head, 0);
  rig.device.flush();
  while (rig.driver.popUsed() !== null);
  // Round 2: five chains, heads 3, 2, 1, 0, 4 in pop order.
  for (let i = 0; i < 5; i++) rig.driver.add([{ addr: DATA + 16 * i, len: 4 }], [], 10 + i);
  rig.driver.publish();
  const popped: number[] = [];
  for (let c = rig.device.pop(); c !== null; c = rig.device.pop()) popped.push(c.head);
  assert.deepEqual(popped, [3, 2, 1, 0, 4]);
  return { rig, popped };
}

/** A new backend process: fresh queue objects over the same guest memory and inflight area. */
function restart(rig: ReturnType<typeof inflightRig>, vringBase: number) {
  const device = new SplitQueue(0, rig.device.size);
  device.lastAvailIdx = vringBase; // what the frontend sends in SET_VRING_BASE
  device.configure(rig.mem, toVa(rig.mem, RINGS));
  const inflight = new InflightQueue(rig.area, inflightQueueSize(rig.device.size), rig.device.size);
  const count = device.attachInflight(inflight);
  return { device, inflight, count };
}

test('after a crash with pushes not yet published, every unfinished head is recovered in pop order', () => {
  const { rig } = busyRig();
  complete(rig, 2); // published and recorded
  rig.device.push(0, 0); // pushed, never flushed: the driver never saw it
  rig.device.push(4, 0);
  // crash
  const after = restart(rig, 4);
  assert.equal(after.count, 4);
  assert.deepEqual(after.device.resubmitInflight().map((c) => c.head), [3, 1, 0, 4]);
  assert.deepEqual(after.device.resubmitInflight(), [], 'only once');
  // used.idx is 5 (4 from round 1 + head 2); every popped head is used or inflight: 5 + 4.
  assert.equal(after.device.usedIdx, 5);
  assert.equal(after.device.lastAvailIdx, 9);
});

test('after a crash between publishing used.idx and recording it, the last batch is not resubmitted', () => {
  const { rig } = busyRig();
  complete(rig, 2);
  // Push 0 and 4, publish used.idx by hand (what flush does first), crash before inflight is updated.
  rig.device.push(0, 0);
  rig.device.push(4, 0);
  const used = rig.mem.gpaSlice(RINGS.used, 4);
  Atomics.store(new Uint16Array(used.buffer, used.byteOffset, 2), 1, 7);
  assert.equal(rig.inflight.usedIdx, 5, 'inflight area still says 5');
  assert.equal(rig.inflight.isInflight(0), true);

  const after = restart(rig, 7);
  assert.equal(after.count, 2);
  assert.deepEqual(after.device.resubmitInflight().map((c) => c.head), [3, 1]);
  assert.equal(after.inflight.usedIdx, 7, 'recovery records the ring used index');
  assert.equal(after.inflight.isInflight(0), false);
  assert.equal(after.inflight.isInflight(4), false);
  assert.equal(after.device.lastAvailIdx, 9);
});

test('resubmitted chains complete normally and new pops continue after them', () => {
  const { rig } = busyRig();
  const after = restart(rig, 4);
  const chains = after.device.resubmitInflight();
  assert.deepEqual(chains.map((c) => c.head), [3, 2, 1, 0, 4]);
  assert.equal(chains[1]!.readableLength, 4);
  // New pops get counters after the recovered ones.
  const maxRecovered = Math.max(...chains.map((c) => after.inflight.counterOf(c.head)));
  const driverSide = rig.driver;
  // The driver has 3 free descriptors left (8 - 5).
  driverSide.add([{ addr: DATA, len: 4 }], [], 99);
  driverSide.publish();
  const fresh = after.device.pop()!;
  assert.ok(after.inflight.counterOf(fresh.head) > maxRecovered);
  for (const c of [...chains, fresh]) after.device.push(c.head, 0);
  after.device.flush();
  assert.deepEqual(after.inflight.pendingHeads(after.device.usedIdx), []);
  const tokens: number[] = [];
  for (let u = driverSide.popUsed(); u !== null; u = driverSide.popUsed()) tokens.push(u.token);
  assert.deepEqual(tokens, [10, 11, 12, 13, 14, 99]);
});

test('an uninitialised area is initialised on attach; a foreign one is refused', () => {
  const rig = makeRig(8);
  const area = new SharedArrayBuffer(inflightQueueSize(16));
  const q = new InflightQueue(area, 0, 8);
  assert.equal(q.initialized, false);
  rig.device.lastAvailIdx = 0;
  assert.equal(rig.device.attachInflight(q), 0);
  assert.equal(q.initialized, true);
  assert.throws(() => new SplitQueue(0, 8).attachInflight(q), QueueError, 'needs a configured queue');
  // An area laid out for another queue size.
  const other = new InflightQueue(area, 0, 16);
  assert.throws(() => rig.device.attachInflight(other), QueueError);
  const wrongDescNum = new InflightQueue(area, 0, 8);
  new DataView(area).setUint16(10, 16, true);
  assert.throws(() => wrongDescNum.pendingHeads(0), QueueError);
  new DataView(area).setUint16(8, 7, true);
  assert.throws(() => wrongDescNum.pendingHeads(0), QueueError, 'unknown version');
  rig.device.attachInflight(null);
  assert.equal(rig.device.inflight, null);
});

test('hostile recovery data stays bounded: huge counters keep their order, bad batch links are ignored', () => {
  const area = new SharedArrayBuffer(inflightQueueSize(8));
  const q = new InflightQueue(area, 0, 8);
  q.init(0);
  q.markInflight(6);
  q.markInflight(1);
  q.markInflight(2);
  const dv = new DataView(area);
  dv.setBigUint64(16 + 16 * 6 + 8, 0xfffffffffffffff0n, true);
  dv.setBigUint64(16 + 16 * 1 + 8, 0xffffffffffffff00n, true);
  // A last batch of 0x8000 entries whose list leaves the table at once.
  dv.setUint16(12, 0xffff, true);
  const heads = q.pendingHeads(0x8000);
  assert.deepEqual(heads, [2, 1, 6]);
  assert.equal(q.usedIdx, 0x8000);
  // The next counter is above every recovered one.
  q.markInflight(0);
  assert.deepEqual(q.pendingHeads(0x8000), [2, 1, 6, 0]);
});

test('resubmitted chains are in flight: the driver offering one of their heads again breaks the queue', () => {
  const { rig } = busyRig();
  const after = restart(rig, 4);
  const chains = after.device.resubmitInflight();
  assert.deepEqual(chains.map((c) => c.head), [3, 2, 1, 0, 4]);
  assert.equal(after.device.inFlight, 5);
  // Head 2 is still being resubmitted; a driver offering it again is reusing descriptors it does not own.
  rig.driver.writeAvailEntry(after.device.lastAvailIdx, 2);
  rig.driver.writeAvailIdx(after.device.lastAvailIdx + 1);
  assert.throws(() => after.device.pop(), (e: unknown) => e instanceof ChainError && e.kind === ChainErrorKind.HEAD_IN_USE);
  assert.equal(after.device.broken, true);
});

test('a head pushed after resubmission can be offered and popped again, into the same pooled chain', () => {
  const { rig } = busyRig();
  const after = restart(rig, 4);
  const chains = after.device.resubmitInflight();
  const two = chains[1]!;
  assert.equal(two.head, 2);
  after.device.push(2, 0);
  after.device.flush();
  rig.driver.writeAvailEntry(after.device.lastAvailIdx, 2);
  rig.driver.writeAvailIdx(after.device.lastAvailIdx + 1);
  const again = after.device.pop()!;
  assert.equal(again, two);
  assert.equal(again.readableLength, 4);
  assert.equal(after.device.inFlight, 5);
});
