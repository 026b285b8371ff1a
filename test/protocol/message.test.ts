import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  INFLIGHT_PAYLOAD_SIZE,
  ProtocolError,
  decodeConfig,
  decodeInflight,
  decodeLog,
  decodeMemoryTable,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddress,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringState,
  type RegionDescription,
} from '../../src/protocol/message.js';
import { Bytes, configPayload, inflightPayload, memTable, singleRegion, u64, vringAddr, vringState } from '../helpers/wire.js';

const MAX = Number.MAX_SAFE_INTEGER; // 2^53 - 1
const TWO_53 = 2n ** 53n;

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ProtocolError, `expected ProtocolError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

const regionA: RegionDescription = { guestPhysAddr: 0, size: 0x10000, userAddr: 0x7f0000000000, mmapOffset: 0 };
const regionB: RegionDescription = { guestPhysAddr: 0x100000000, size: 0x200000, userAddr: 0x7e0000000000, mmapOffset: 0x1000 };

// ---- u64 ----

test('u64: round trip of 0, 2^53 and 2^64-1; encoded little-endian', () => {
  for (const v of [0n, 1n, TWO_53, 2n ** 64n - 1n]) assert.equal(decodeU64(encodeU64(v)), v);
  assert.deepEqual([...encodeU64(0x0102030405060708n)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.equal(decodeU64(u64(0x1234n)), 0x1234n);
  assert.equal(decodeU64(encodeU64(42)), 42n);
});

test('u64: any size other than 8 is rejected, naming the request', () => {
  for (const n of [0, 1, 7, 9, 16]) rejects(() => decodeU64(new Uint8Array(n), 'SET_FEATURES'), new RegExp(`SET_FEATURES: payload is ${n} bytes, expected 8`));
});

test('u64: decodes from a view that does not start at offset 0 of its buffer', () => {
  const backing = new Uint8Array(20);
  backing.set(u64(0xdeadbeefn), 5);
  assert.equal(decodeU64(backing.subarray(5, 13)), 0xdeadbeefn);
});

// ---- vring state ----

test('vring state: round trip and wire layout', () => {
  const s = { index: 3, num: 0xffffffff };
  assert.deepEqual(decodeVringState(encodeVringState(s)), s);
  assert.deepEqual([...encodeVringState({ index: 1, num: 256 })], [...vringState(1, 256)]);
});

test('vring state: wrong sizes are rejected', () => {
  for (const n of [0, 4, 7, 9, 12]) rejects(() => decodeVringState(new Uint8Array(n)), /vring state: payload is \d+ bytes, expected 8/);
});

// ---- vring address ----

test('vring address: round trip in the order desc, used, avail, log', () => {
  const a = { index: 1, flags: 1, desc: 0x7f0000001000, used: 0x7f0000003000, avail: 0x7f0000002000, log: 0x1234 };
  assert.deepEqual(decodeVringAddress(encodeVringAddress(a)), a);
  assert.deepEqual([...encodeVringAddress(a)], [...vringAddr(1, a.desc, a.used, a.avail, a.log, 1)]);
  const d = decodeVringAddress(vringAddr(0, 0x10, 0x30, 0x20));
  assert.deepEqual([d.desc, d.used, d.avail], [0x10, 0x30, 0x20]);
});

test('vring address: 2^53-1 is accepted, 2^53 and above rejected in every address field', () => {
  assert.equal(decodeVringAddress(vringAddr(0, MAX, 0, 0)).desc, MAX);
  const fields = [
    [(v: bigint) => vringAddr(0, v, 0, 0), /descriptor table address/],
    [(v: bigint) => vringAddr(0, 0, v, 0), /used ring address/],
    [(v: bigint) => vringAddr(0, 0, 0, v), /available ring address/],
    [(v: bigint) => vringAddr(0, 0, 0, 0, v), /log address/],
  ] as const;
  for (const [build, name] of fields) {
    for (const v of [TWO_53, 2n ** 64n - 1n]) rejects(() => decodeVringAddress(build(v)), name);
  }
});

test('vring address: wrong sizes are rejected', () => {
  for (const n of [0, 8, 32, 39, 41, 48]) rejects(() => decodeVringAddress(new Uint8Array(n)), /vring address: payload is/);
});

// ---- memory table ----

test('memory table: round trip of 1, 2 and 8 regions', () => {
  for (const regions of [[regionA], [regionA, regionB], Array.from({ length: 8 }, (_, i) => ({
    guestPhysAddr: i * 0x100000, size: 0x100000, userAddr: 0x7f0000000000 + i * 0x100000, mmapOffset: i * 4096,
  }))]) {
    const wire = encodeMemoryTable(regions);
    assert.equal(wire.byteLength, 8 + 32 * regions.length);
    assert.deepEqual(decodeMemoryTable(wire), regions);
  }
});

test('memory table: the legacy full 8-slot form is accepted for fewer regions', () => {
  const padded = new Uint8Array(8 + 8 * 32);
  padded.set(encodeMemoryTable([regionA, regionB]));
  assert.deepEqual(decodeMemoryTable(padded), [regionA, regionB]);
});

test('memory table: 0, 9 and 1000 regions are rejected', () => {
  rejects(() => decodeMemoryTable(memTable([])), /0 regions \(1\.\.8 allowed\)/);
  const nine = Array.from({ length: 9 }, (_, i) => ({ gpa: i * 4096, size: 4096, uaddr: i * 4096 }));
  rejects(() => decodeMemoryTable(memTable(nine)), /9 regions/);
  // A count that does not match the payload is caught before the payload is read.
  rejects(() => decodeMemoryTable(memTable([{ gpa: 0, size: 4096, uaddr: 0 }], 1000)), /1000 regions/);
  rejects(() => decodeMemoryTable(memTable([], 0xffffffff)), /4294967295 regions/);
});

test('memory table: payload sizes that fit neither form are rejected', () => {
  rejects(() => decodeMemoryTable(new Uint8Array(0)), /payload is 0 bytes/);
  rejects(() => decodeMemoryTable(new Uint8Array(7)), /payload is 7 bytes/);
  const one = memTable([{ gpa: 0, size: 4096, uaddr: 0 }]);
  rejects(() => decodeMemoryTable(one.subarray(0, one.length - 1)), /39 bytes for 1 regions/);
  const extra = new Uint8Array(one.length + 8);
  extra.set(one);
  rejects(() => decodeMemoryTable(extra), /48 bytes for 1 regions/);
  // Two regions announced, one sent.
  rejects(() => decodeMemoryTable(memTable([{ gpa: 0, size: 4096, uaddr: 0 }], 2)), /40 bytes for 2 regions/);
});

test('memory table: a region of size 0 is rejected', () => {
  rejects(() => decodeMemoryTable(memTable([{ gpa: 0, size: 4096, uaddr: 0 }, { gpa: 8192, size: 0, uaddr: 8192 }])),
    /region 1 has size 0/);
});

test('memory table and single region: values at 2^53 are rejected, ranges may end at 2^53-1', () => {
  const fits = { gpa: MAX - 4096, size: 4096, uaddr: MAX - 4096, offset: MAX - 4096 };
  assert.deepEqual(decodeSingleRegion(singleRegion(fits)),
    { guestPhysAddr: MAX - 4096, size: 4096, userAddr: MAX - 4096, mmapOffset: MAX - 4096 });
  const cases: [Partial<Parameters<typeof singleRegion>[0]>, RegExp][] = [
    [{ gpa: TWO_53 }, /guest address .* beyond 2\^53/],
    [{ size: TWO_53 }, /size .* beyond 2\^53/],
    [{ uaddr: 2n ** 64n - 1n }, /user address .* beyond 2\^53/],
    [{ offset: TWO_53 + 1n }, /mmap offset .* beyond 2\^53/],
    [{ gpa: MAX - 4095, size: 4097 }, /wraps around/],
    [{ uaddr: MAX - 4095, size: 4097 }, /wraps around/],
    [{ offset: MAX - 4095, size: 4097 }, /wraps around/],
    [{ gpa: MAX, size: MAX }, /wraps around/],
  ];
  for (const [override, pattern] of cases) {
    const r = { gpa: 0, size: 4096, uaddr: 0, offset: 0, ...override };
    rejects(() => decodeSingleRegion(singleRegion(r)), pattern);
    rejects(() => decodeMemoryTable(memTable([r])), pattern);
  }
});

// ---- single region ----

test('single region: round trip, 40 bytes with leading padding', () => {
  const wire = encodeSingleRegion(regionB);
  assert.equal(wire.byteLength, 40);
  assert.deepEqual([...wire.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(decodeSingleRegion(wire), regionB);
});

test('single region: sizes other than 40 and size 0 are rejected', () => {
  for (const n of [0, 32, 39, 41, 72]) rejects(() => decodeSingleRegion(new Uint8Array(n)), /single memory region: payload is/);
  rejects(() => decodeSingleRegion(singleRegion({ gpa: 0, size: 0, uaddr: 0 })), /size 0/);
});

// ---- config ----

test('config: round trip with offset, flags and data; a view into the payload', () => {
  const data = Uint8Array.from({ length: 57 }, (_, i) => i);
  const wire = encodeConfig({ offset: 4, flags: 1, data });
  assert.equal(wire.byteLength, 12 + 57);
  const c = decodeConfig(wire);
  assert.deepEqual({ offset: c.offset, size: c.size, flags: c.flags }, { offset: 4, size: 57, flags: 1 });
  assert.deepEqual([...c.data], [...data]);
  assert.equal(c.data.buffer, wire.buffer);
  assert.deepEqual([...encodeConfig({ offset: 0, data: new Uint8Array(0) })], [...configPayload(0, [])]);
});

test('config: the whole 256-byte space is accepted; one byte more is not', () => {
  assert.equal(decodeConfig(configPayload(0, new Uint8Array(256))).size, 256);
  assert.equal(decodeConfig(configPayload(255, [9])).data[0], 9);
  assert.equal(decodeConfig(configPayload(256, [])).size, 0);
  rejects(() => decodeConfig(configPayload(0, new Uint8Array(257))), /size 257 over 256/);
  rejects(() => decodeConfig(configPayload(1, new Uint8Array(256))), /range 1\+256 is outside/);
  rejects(() => decodeConfig(configPayload(250, new Uint8Array(8))), /range 250\+8 is outside/);
  rejects(() => decodeConfig(configPayload(257, [])), /range 257\+0 is outside/);
  // offset + size would overflow 32 bits
  rejects(() => decodeConfig(configPayload(0xffffffff, new Uint8Array(8))), /outside the config space/);
});

test('config: a size field that disagrees with the payload is rejected', () => {
  rejects(() => decodeConfig(new Uint8Array(11)), /payload is 11 bytes/);
  rejects(() => decodeConfig(configPayload(0, new Uint8Array(8), 0, 9)), /payload is 20 bytes for a 9-byte config/);
  rejects(() => decodeConfig(configPayload(0, new Uint8Array(8), 0, 7)), /payload is 20 bytes for a 7-byte config/);
  rejects(() => decodeConfig(configPayload(0, [], 0, 0xffffffff)), /size 4294967295 over 256/);
});

// ---- inflight ----

test('inflight: 24-byte wire struct with tail padding; round trip', () => {
  const d = { mmapSize: 4352, mmapOffset: 0, numQueues: 2, queueSize: 128 };
  const wire = encodeInflight(d);
  assert.equal(wire.byteLength, 24);
  assert.equal(INFLIGHT_PAYLOAD_SIZE, 24);
  assert.deepEqual([...wire], [...inflightPayload(4352, 0, 2, 128)]);
  assert.deepEqual([...wire.subarray(20)], [0, 0, 0, 0]);
  assert.deepEqual(decodeInflight(wire), d);
  assert.deepEqual(decodeInflight(inflightPayload(MAX, 4096, 0xffff, 0xffff)),
    { mmapSize: MAX, mmapOffset: 4096, numQueues: 0xffff, queueSize: 0xffff });
});

test('inflight: the unpadded 20-byte form and other sizes are rejected', () => {
  rejects(() => decodeInflight(inflightPayload(4096, 0, 1, 64, 20)), /inflight: payload is 20 bytes, expected 24/);
  for (const n of [0, 16, 23, 25, 32]) rejects(() => decodeInflight(new Uint8Array(n)), /inflight: payload is/);
});

test('inflight: sizes and offsets at 2^53 are rejected', () => {
  rejects(() => decodeInflight(new Bytes().u64(TWO_53).u64(0).u16(1).u16(64).zeros(4).build()), /inflight mmap size/);
  rejects(() => decodeInflight(new Bytes().u64(4096).u64(2n ** 64n - 1n).u16(1).u16(64).zeros(4).build()), /inflight mmap offset/);
});

// ---- log ----

test('log: 16 bytes {size, offset}; other sizes and 2^53 rejected', () => {
  assert.deepEqual(decodeLog(new Bytes().u64(0x10000).u64(0x1000).build()), { mmapSize: 0x10000, mmapOffset: 0x1000 });
  for (const n of [0, 8, 15, 17, 24]) rejects(() => decodeLog(new Uint8Array(n)), /log: payload is/);
  rejects(() => decodeLog(new Bytes().u64(TWO_53).u64(0).build()), /log size/);
  rejects(() => decodeLog(new Bytes().u64(0).u64(TWO_53).build()), /log offset/);
});
