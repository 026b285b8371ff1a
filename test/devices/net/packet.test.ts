import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HEAD_BYTES, Packet } from '../../../src/devices/net/packet.js';
import { MemoryRegion } from '../../../src/memory/region.js';

/** A frame in guest-like memory, split over views the way a driver may hand it over. */
function guestFrame(len: number, cuts: number[], offset = 12): { views: Uint8Array[]; bytes: Uint8Array } {
  const mem = new Uint8Array(new SharedArrayBuffer(offset + len + 64));
  const bytes = Uint8Array.from({ length: len }, (_, i) => (i * 31 + 9) & 0xff);
  mem.set(bytes, offset);
  const edges = [0, ...cuts, offset + len];
  const views = edges.slice(1).map((end, i) => mem.subarray(edges[i]!, end));
  return { views, bytes };
}

function key(bytes: Uint8Array, at: number): number {
  return bytes.subarray(at, at + 6).reduce((k, b) => k * 256 + b, 0);
}

test('a guest frame is attached, not copied: its addresses are read, the rest comes from the sender\'s views', () => {
  for (const cuts of [[], [5], [12], [20, 21], [23, 24], [40, 41], [12, 200, 1000]]) {
    const { views, bytes } = guestFrame(1514, cuts);
    const p = new Packet();
    p.attach(views, 12, 1514);
    assert.equal(p.length, 1514);
    assert.equal(p.dstKey, key(bytes, 0));
    assert.equal(p.srcKey, key(bytes, 6));
    assert.equal(p.multicast, (bytes[0]! & 1) === 1);
    for (const pulled of [false, true]) {
      if (pulled) {
        p.pull(HEAD_BYTES);
        assert.equal(p.headLength, HEAD_BYTES);
        assert.deepEqual([...p.buffer.subarray(0, HEAD_BYTES)], [...bytes.subarray(0, HEAD_BYTES)]);
      }
      // Any range, straddling the addresses, the head and the views' edges, short and long, into plain and
      // shared memory.
      for (const [from, n] of [[0, 1514], [0, 14], [0, 64], [3, 5], [100, 60], [13, 1], [HEAD_BYTES, 1], [1000, 514], [7, 1200]] as const) {
        for (const out of [new Uint8Array(1600), new Uint8Array(new SharedArrayBuffer(1601), 1)]) {
          out.fill(0xcc);
          p.copyTo(out, 3, from, n);
          assert.deepEqual([...out.subarray(3, 3 + n)], [...bytes.subarray(from, from + n)], `cuts ${cuts} ${from}+${n}`);
          assert.equal(out[2], 0xcc);
          assert.equal(out[3 + n], 0xcc);
        }
      }
    }
    assert.deepEqual([...p.frame], [...bytes], 'materialized');
    assert.equal(p.headLength, 1514);
  }
});

test('decisions rest on the addresses read at attach: a guest rewriting its buffer changes only the rest', () => {
  const { views, bytes } = guestFrame(600, []);
  const p = new Packet();
  p.attach(views, 12, 600);
  views[0]!.fill(0xff, 12, 12 + 600);
  assert.equal(p.dstKey, key(bytes, 0));
  assert.equal(p.srcKey, key(bytes, 6));
  assert.equal(p.multicast, (bytes[0]! & 1) === 1);
  const out = new Uint8Array(600);
  p.copyTo(out, 0, 0, 600);
  assert.deepEqual([...out.subarray(0, 12)], [...bytes.subarray(0, 12)], 'the addresses as decided');
  assert.ok(out.subarray(12).every((b) => b === 0xff), 'the rest from the buffer as it is now');
  p.attach(views, 12, 600);
  assert.equal(p.dstKey, 0xffff_ffff_ffff);
  assert.equal(p.multicast, true);
});

test('addresses split over buffers are gathered; release forgets the views; reset reads the buffer', () => {
  const { views, bytes } = guestFrame(80, [16, 18]);
  const p = new Packet();
  p.attach(views, 12, 80);
  assert.equal(p.dstKey, key(bytes, 0));
  assert.equal(p.srcKey, key(bytes, 6));
  assert.equal(p.headLength, 12);
  assert.deepEqual([...p.frame], [...bytes]);

  const big = guestFrame(300, []);
  p.attach(big.views, 12, 300);
  p.pull(HEAD_BYTES);
  p.release();
  // Released with the tail still in the views: the head stays usable, the packet holds no reference.
  assert.deepEqual([...p.buffer.subarray(0, HEAD_BYTES)], [...big.bytes.subarray(0, HEAD_BYTES)]);

  const small = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
  p.buffer.set(small, 0);
  p.reset(64);
  assert.equal(p.headLength, 64);
  assert.equal(p.needsCsum, false);
  assert.equal(p.dstKey, key(small, 0));
  assert.equal(p.srcKey, key(small, 6));
  assert.equal(p.multicast, true, '01:02:03:... is a group address');
  assert.deepEqual([...p.frame], [...small]);
  assert.throws(() => p.reset(p.buffer.length + 1), RangeError);
  assert.throws(() => p.attach(big.views, 12, p.buffer.length + 1), RangeError);
});

test('completing a checksum first copies the whole frame, so the guest\'s buffer is never written', () => {
  // UDP/IPv4 with the pseudo-header sum (here 0) in the checksum field, checksum left partial.
  const len = 14 + 20 + 8 + 400;
  const { views } = guestFrame(len, [200]);
  const mem = views[0]!;
  const before = Uint8Array.from([...views[0]!, ...views[1]!]);
  const p = new Packet();
  p.attach(views, 12, len);
  p.needsCsum = true;
  p.csumStart = 34;
  p.csumOffset = 6;
  assert.equal(p.completeChecksum(), true);
  assert.equal(p.needsCsum, false);
  assert.equal(p.headLength, len);
  assert.deepEqual(Uint8Array.from([...views[0]!, ...views[1]!]), before, 'the sender\'s buffer is untouched');
  assert.notDeepEqual([...p.buffer.subarray(40, 42)], [...mem.subarray(12 + 40, 12 + 42)]);
});

test('copyWhole: one native copy of the sender\'s buffer when it fits, with the copied head on top', () => {
  const { views, bytes } = guestFrame(1000, []);
  const p = new Packet();
  p.attach(views, 12, 1000);
  // The sender rewrites its destination address after the switch decided: the receiver gets the decided one.
  views[0]!.fill(0xab, 12, 18);
  const dst = new Uint8Array(new SharedArrayBuffer(1100));
  dst.fill(0x11);
  assert.equal(p.copyWhole(dst, 14), true);
  assert.deepEqual([...dst.subarray(14, 1014)], [...bytes]);
  assert.equal(dst[1014], 0x11, 'nothing past the frame');
  assert.deepEqual([...dst.subarray(0, 2)], [0x11, 0x11], 'nothing before the sender\'s header');
  // Where it does not apply, nothing is written.
  dst.fill(0x22);
  assert.equal(p.copyWhole(dst, 10), false, 'no room for the sender\'s 12-byte header in front');
  assert.equal(p.copyWhole(dst.subarray(0, 1011), 12), false, 'no room for the frame');
  assert.ok(dst.every((b) => b === 0x22));
  const split = guestFrame(1000, [500]);
  p.attach(split.views, 12, 1000);
  assert.equal(p.copyWhole(dst, 12), false, 'the frame is in two pieces');
  p.attach(views, 12, 1000);
  p.materialize();
  assert.equal(p.copyWhole(dst, 12), false, 'materialized: the sender\'s buffer is no longer used');
  assert.ok(dst.every((b) => b === 0x22));
});

test('attachWords reads the addresses from words; copyToWords writes the frame by words or one native copy', () => {
  for (const len of [14, 15, 16, 17, 60, 63, 64, 255, 256, 257, 1514]) {
    // The sender's buffer: a 12-byte header, then the frame, word-aligned in a larger buffer.
    const mem = new SharedArrayBuffer(4096);
    const at = 64;
    const view = new Uint8Array(mem, at, 12 + len);
    const bytes = Uint8Array.from({ length: len }, (_, i) => (i * 37 + len) & 0xff);
    bytes[0] = 0x33; // multicast bit set in the destination
    view.set(bytes, 12);
    // A region whose data starts 32 bytes into the mapping (offsets are the mapping's; the tail bytes come from
    // the region's own byte view, which starts at mmapOffset).
    const region = MemoryRegion.fromBuffer({ guestPhysAddr: 0x1000, size: 4096 - 32, userAddr: 0, mmapOffset: 32 }, mem);
    const p = new Packet();
    p.attachWords(region, (at + 12) / 4, len);
    const plain = new Packet();
    plain.attach([view], 12, len);
    for (const k of ['dstHi', 'dstLo', 'srcHi', 'srcLo', 'dstKey', 'srcKey', 'multicast', 'length'] as const) {
      assert.equal(p[k], plain[k], `${k} len ${len}`);
    }
    assert.equal(p.dstKey, key(bytes, 0));
    assert.equal(p.srcKey, key(bytes, 6));
    // The guest rewrites its buffer after the decision: receivers still get the addresses read at attach.
    view.fill(0xaa, 12, 24);
    const out = new SharedArrayBuffer(4096);
    const dst = new Uint8Array(out, 128, 2048);
    dst.fill(0xee);
    assert.equal(p.copyToWords(new Uint32Array(out), (128 + 12) / 4, [dst], 12), true);
    const expect = Uint8Array.from(bytes);
    expect.fill(0xaa, 12, Math.min(12, len));
    assert.deepEqual([...dst.subarray(12, 12 + len)], [...expect.subarray(0, 12), ...bytes.subarray(12)], `len ${len}`);
    assert.ok(dst.subarray(12 + len).every((b) => b === 0xee), `len ${len}: nothing past the frame`);
    // Short frames touch nothing in front of the frame; long ones may write the sender's header there.
    if (len <= 256) assert.ok(dst.subarray(0, 12).every((b) => b === 0xee), `len ${len}: nothing in front`);
    // Materialized (a checksum completed) or released: the frame is no longer (only) in the sender's buffer.
    // (Materializing makes a view of the sender's buffer only now: what is there, with the addresses decided on.)
    p.materialize();
    assert.deepEqual([...p.frame], [...expect.subarray(0, 12), ...bytes.subarray(12)], `len ${len}: materialized`);
    assert.equal(p.copyToWords(new Uint32Array(out), (128 + 12) / 4, [dst], 12), false);
    // The general copy from a frame attached by region (a view made on demand).
    p.attachWords(region, (at + 12) / 4, len);
    const byCopy = new Uint8Array(len + 5);
    p.copyTo(byCopy, 5, 0, len);
    // (Attached again after the guest's rewrite: the addresses are the new ones.)
    assert.deepEqual([...byCopy.subarray(5)], [...view.subarray(12)], `len ${len}: copyTo`);
    p.attachWords(region, (at + 12) / 4, len);
    p.release();
    assert.equal(p.copyToWords(new Uint32Array(out), (128 + 12) / 4, [dst], 12), false);
    // Attached the byte way, or reset from our own buffer: not for the word path either.
    p.attach([view], 12, len);
    assert.equal(p.copyToWords(new Uint32Array(out), (128 + 12) / 4, [dst], 12), false);
    p.attachWords(region, (at + 12) / 4, len);
    p.buffer.set(bytes);
    p.reset(len);
    assert.equal(p.copyToWords(new Uint32Array(out), (128 + 12) / 4, [dst], 12), false);
  }
  // Shorter than an Ethernet header: attached the byte way, so never written by words past its end.
  const mem = new SharedArrayBuffer(256);
  const view = new Uint8Array(mem, 64, 12 + 13);
  view.set(Uint8Array.from({ length: 13 }, (_, i) => i + 1), 12);
  const p = new Packet();
  p.attachWords(MemoryRegion.fromBuffer({ guestPhysAddr: 0, size: 256, userAddr: 0, mmapOffset: 0 }, mem), (64 + 12) / 4, 13);
  assert.equal(p.length, 13);
  assert.equal(p.dstKey, 0x0102_0304_0506);
  assert.equal(p.copyToWords(new Uint32Array(256), 3, [new Uint8Array(1024)], 12), false);
  assert.deepEqual([...p.frame], Array.from({ length: 13 }, (_, i) => i + 1));
});
