import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { FileStorage } from '../../src/devices/blk/storage/file.js';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { NullStorage } from '../../src/devices/blk/storage/null.js';
import { StorageError, StorageErrorCode } from '../../src/devices/blk/storage/storage.js';
import { Sense, ScsiStatus } from '../../src/scsi/constants.js';
import { ScsiTask, TaskResponse } from '../../src/scsi/task.js';
import { tempDir } from '../helpers/tmp.js';
import { Cdb, memoryUnit, pattern, run, start, unmapParams, type Result } from './helpers.js';
import { TestStorage, systemError } from '../helpers/test-storage.js';

const MiB = 1 << 20;
const { GOOD, CHECK_CONDITION } = ScsiStatus;

function assertSense(r: Result, code: { key: number; asc: number; ascq: number }, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, CHECK_CONDITION, message);
  assert.deepEqual([r.sense!.key, r.sense!.asc, r.sense!.ascq], [code.key, code.asc, code.ascq], message);
  assert.equal(r.completions, 1);
}

function assertGood(r: Result, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, GOOD, `${message ?? ''} ${r.sense ? JSON.stringify(r.sense) : ''}`);
  assert.equal(r.completions, 1);
}

/** Split `data` into views of the given sizes. */
function views(data: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  for (const s of sizes) {
    out.push(data.subarray(at, at + s));
    at += s;
  }
  assert.equal(at, data.byteLength);
  return out;
}

function spyUnit(options: { size?: number; readOnly?: boolean; writeCache?: boolean; blockSize?: number; unmap?: boolean } = {}) {
  const storage = new TestStorage(new MemoryStorage({ size: options.size ?? 8 * MiB }));
  return { storage, ...memoryUnit({ ...options, storage }) };
}

const variants = [
  { name: '6', read: Cdb.read6, write: Cdb.write6 },
  { name: '10', read: Cdb.read10, write: Cdb.write10 },
  { name: '12', read: Cdb.read12, write: Cdb.write12 },
  { name: '16', read: Cdb.read16, write: Cdb.write16 },
];

for (const v of variants) {
  test(`READ(${v.name}) / WRITE(${v.name}): data round trip through scattered buffers`, async () => {
    const { exec, storage, unit } = spyUnit();
    const data = pattern(8 * 512, Number(v.name));
    const w = await run(exec, v.write(1000, 8), { out: views(data, [100, 412, 2048, 1536]) });
    assertGood(w);
    assert.equal(w.dataOutTransferred, data.length);
    assert.equal(w.residual, 0);
    assert.deepEqual(storage.calls, [`write ${1000 * 512}+${data.length}`]);
    const r = await run(exec, v.read(1000, 8), { in: [512, 1000, 24, 2560] });
    assertGood(r);
    assert.equal(r.dataInTransferred, data.length);
    assert.deepEqual(r.data, Buffer.from(data));
    assert.equal(unit.stats.reads, 1);
    assert.equal(unit.stats.writes, 1);
    assert.equal(unit.stats.bytesRead, data.length);
    assert.equal(unit.stats.bytesWritten, data.length);
  });
}

test('READ/WRITE hand the transport\'s own views to the storage (no copy)', async () => {
  const { exec, storage } = spyUnit();
  const out = [new Uint8Array(1024).fill(1), new Uint8Array(1024).fill(2)];
  assertGood(await run(exec, Cdb.write10(8, 4), { out }));
  assert.equal(storage.lastBuffers.length, 2);
  assert.ok(storage.lastBuffers[0] === out[0] && storage.lastBuffers[1] === out[1], 'the same Uint8Array objects');
  // A buffer larger than the transfer: a sub-view of the same memory.
  const { task, done } = start(exec, Cdb.read10(8, 4), { in: 4096 });
  await done;
  const given = storage.lastBuffers[0]!;
  const mine = task.dataIn[0]!;
  assert.equal(storage.lastBuffers.length, 1);
  assert.equal(given.buffer, mine.buffer);
  assert.equal(given.byteOffset, mine.byteOffset);
  assert.equal(given.byteLength, 2048);
});

test('READ(6) with transfer length 0 moves 256 blocks; READ(10) with 0 moves nothing', async () => {
  const { exec, storage } = spyUnit();
  const r6 = await run(exec, Cdb.read6(0, 0), { in: 256 * 512 });
  assertGood(r6);
  assert.equal(r6.dataInTransferred, 256 * 512);
  storage.calls.length = 0;
  const r10 = await run(exec, Cdb.read10(5, 0), { in: 512 });
  assertGood(r10);
  assert.equal(r10.dataInTransferred, 0);
  assert.equal(r10.residual, 512);
  const w10 = await run(exec, Cdb.write10(5, 0));
  assertGood(w10);
  assert.deepEqual(storage.calls, [], 'no storage operation for zero blocks');
});

test('4 KiB blocks: positions and lengths scale with the block size', async () => {
  const { exec, storage } = spyUnit({ blockSize: 4096 });
  const data = pattern(8192, 3);
  assertGood(await run(exec, Cdb.write16(3, 2), { out: data }));
  assert.deepEqual(storage.calls, [`write ${3 * 4096}+8192`]);
  const r = await run(exec, Cdb.read12(3, 2), { in: 8192 });
  assert.deepEqual(r.data, Buffer.from(data));
});

test('LBA out of range: start past the end, crossing the end, huge 64-bit LBAs; nothing reaches the storage', async () => {
  const { exec, storage } = spyUnit({ size: MiB });
  const blocks = MiB / 512;
  assertGood(await run(exec, Cdb.read10(blocks - 1, 1), { in: 512 }));
  storage.calls.length = 0;
  for (const [cdb, what] of [
    [Cdb.read10(blocks, 1), 'read at capacity'],
    [Cdb.read10(blocks - 1, 2), 'read across the end'],
    [Cdb.write10(blocks - 3, 4), 'write across the end'],
    [Cdb.read16(0xffffffffffffffffn, 1), 'read at 2^64-1'],
    [Cdb.write16(2n ** 53n, 1), 'write at 2^53'],
    [Cdb.read6(0x1fffff, 1), 'read(6) at the top of its range'],
    [Cdb.read10(blocks + 1, 0), 'empty read past the end'],
  ] as const) {
    const r = await run(exec, cdb, { in: 4096, out: new Uint8Array(4096) });
    assertSense(r, Sense.LBA_OUT_OF_RANGE, what);
  }
  assert.deepEqual(storage.calls, []);
  assertGood(await run(exec, Cdb.read10(blocks, 0)), 'an empty read at the capacity is fine');
});

test('transfer length above the block limits: INVALID FIELD IN CDB pointing at the length', async () => {
  const { exec } = memoryUnit({ size: 8 * MiB, maxTransferBytes: 64 * 1024 });
  assertGood(await run(exec, Cdb.read10(0, 128), { in: 64 * 1024 }));
  const r = await run(exec, Cdb.read10(0, 129), { in: 129 * 512 });
  assertSense(r, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(r.sense!.field, { inCdb: true, byte: 7 });
  const r16 = await run(exec, Cdb.write16(0, 129), { out: new Uint8Array(129 * 512) });
  assert.deepEqual(r16.sense!.field, { inCdb: true, byte: 10 });
  const r6 = await run(exec, Cdb.read6(0, 0), { in: 256 * 512 });
  assert.deepEqual(r6.sense!.field, { inCdb: true, byte: 4 });
});

test('RDPROTECT / WRPROTECT are refused (no protection information)', async () => {
  const { exec } = memoryUnit();
  for (const cdb of [Cdb.read10(0, 1, 0x20), Cdb.write10(0, 1, 0x40), Cdb.read16(0, 1, 0xe0), Cdb.write12(0, 1, 0x20)]) {
    const r = await run(exec, cdb, { in: 512, out: new Uint8Array(512) });
    assertSense(r, Sense.INVALID_FIELD_IN_CDB);
    assert.deepEqual(r.sense!.field, { inCdb: true, byte: 1, bit: 7 });
  }
});

test('writes to a read-only unit: DATA PROTECT, WRITE PROTECTED, the medium unchanged', async () => {
  const inner = new MemoryStorage({ size: MiB });
  inner.write([pattern(512, 9)], 0, () => undefined);
  const storage = new TestStorage(inner);
  const { exec, unit } = memoryUnit({ storage, readOnly: true });
  assert.equal(unit.readOnly, true);
  for (const cdb of [Cdb.write6(0, 1), Cdb.write10(0, 1), Cdb.write12(0, 1), Cdb.write16(0, 1), Cdb.writeSame10(0, 1),
    Cdb.writeSame16(0, 1), Cdb.unmap(24)]) {
    const r = await run(exec, cdb, { out: cdb[0] === 0x42 ? unmapParams([{ lba: 0, blocks: 1 }]) : new Uint8Array(512) });
    assertSense(r, Sense.WRITE_PROTECTED, `opcode 0x${cdb[0]!.toString(16)}`);
  }
  assert.ok(!storage.calls.some((c) => !c.startsWith('read')), storage.calls.join(', '));
  const back = await run(exec, Cdb.read10(0, 1), { in: 512 });
  assert.deepEqual(back.data, Buffer.from(pattern(512, 9)));
  // Reads, flushes and verifies still work.
  assertGood(await run(exec, Cdb.syncCache10()));
  // A read-only storage makes a read-only unit whatever the options say.
  const roStorage = memoryUnit({ storage: new MemoryStorage({ size: MiB, readOnly: true }) });
  assert.equal(roStorage.unit.readOnly, true);
});

test('buffers too small for the transfer, or in the wrong direction: OVERRUN, nothing done', async () => {
  const { exec, storage, unit } = spyUnit();
  const short = await run(exec, Cdb.read10(0, 4), { in: 2047 });
  assert.equal(short.response, TaskResponse.OVERRUN);
  assert.equal(short.dataInTransferred, 0);
  const wrongWay = await run(exec, Cdb.read10(0, 1), { out: new Uint8Array(512) });
  assert.equal(wrongWay.response, TaskResponse.OVERRUN);
  const shortWrite = await run(exec, Cdb.write10(0, 2), { out: new Uint8Array(1000) });
  assert.equal(shortWrite.response, TaskResponse.OVERRUN);
  assert.equal(shortWrite.completions, 1);
  assert.deepEqual(storage.calls, []);
  assert.equal(unit.stats.overruns, 3);
  // Longer buffers are fine: the rest is the residual.
  const long = await run(exec, Cdb.write10(0, 1), { out: new Uint8Array(4096) });
  assertGood(long);
  assert.equal(long.dataOutTransferred, 512);
  assert.equal(long.residual, 4096 - 512);
});

test('write cache: FUA and write-through (WCE 0) flush after the write; write-back does not', async () => {
  const { exec, storage, unit } = spyUnit();
  assertGood(await run(exec, Cdb.write10(0, 1), { out: new Uint8Array(512) }));
  assert.deepEqual(storage.calls, ['write 0+512']);
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.write10(0, 1, 0x08), { out: new Uint8Array(512) }));
  assert.deepEqual(storage.calls, ['write 0+512', 'flush'], 'FUA');
  storage.calls.length = 0;
  const wt = spyUnit({ writeCache: false });
  assertGood(await run(wt.exec, Cdb.write16(1, 1), { out: new Uint8Array(512) }));
  assert.deepEqual(wt.storage.calls, ['write 512+512', 'flush'], 'write-through');
  assert.equal(unit.stats.flushes, 1);
});

test('SYNCHRONIZE CACHE(10/16): flush; range checked; zero blocks means to the end', async () => {
  const { exec, storage, unit } = spyUnit({ size: MiB });
  assertGood(await run(exec, Cdb.syncCache10()));
  assertGood(await run(exec, Cdb.syncCache16(100, 20)));
  assertGood(await run(exec, Cdb.syncCache10(2047, 0)));
  assert.deepEqual(storage.calls, ['flush', 'flush', 'flush']);
  assertSense(await run(exec, Cdb.syncCache10(2048, 0)), Sense.LBA_OUT_OF_RANGE);
  assertSense(await run(exec, Cdb.syncCache16(2000, 100)), Sense.LBA_OUT_OF_RANGE);
  assert.equal(unit.stats.flushes, 3);
});

test('I/O errors: MEDIUM ERROR with the LBA for reads and writes, DATA PROTECT when the disk is full', async () => {
  const { exec, storage, unit } = spyUnit();
  storage.fail.set('read', systemError('EIO'));
  const r = await run(exec, Cdb.read10(77, 2), { in: 1024 });
  assertSense(r, Sense.READ_ERROR);
  assert.equal(r.sense!.valid, true);
  assert.equal(r.sense!.information, 77);
  assert.equal(r.dataInTransferred, 0);
  storage.fail.set('write', systemError('EIO'));
  const w = await run(exec, Cdb.write16(2n ** 32n + 5n, 1), { out: new Uint8Array(512) });
  // Out of range on this small disk: checked before any I/O.
  assertSense(w, Sense.LBA_OUT_OF_RANGE);
  const w2 = await run(exec, Cdb.write10(9, 1), { out: new Uint8Array(512) });
  assertSense(w2, Sense.WRITE_ERROR);
  assert.equal(w2.sense!.information, 9);
  storage.fail.set('write', systemError('ENOSPC'));
  assertSense(await run(exec, Cdb.write10(9, 1), { out: new Uint8Array(512) }), Sense.SPACE_ALLOCATION_FAILED);
  storage.fail.set('write', new StorageError(StorageErrorCode.READ_ONLY, 'ro'));
  assertSense(await run(exec, Cdb.write10(9, 1), { out: new Uint8Array(512) }), Sense.WRITE_PROTECTED);
  storage.fail.set('read', new StorageError(StorageErrorCode.RANGE, 'range'));
  assertSense(await run(exec, Cdb.read10(9, 1), { in: 512 }), Sense.LBA_OUT_OF_RANGE);
  storage.fail.clear();
  storage.fail.set('flush', systemError('EIO'));
  const f = await run(exec, Cdb.syncCache10());
  assertSense(f, Sense.WRITE_ERROR);
  assert.equal(f.sense!.valid, false);
  // A FUA write whose flush fails.
  assertSense(await run(exec, Cdb.write10(3, 1, 0x08), { out: new Uint8Array(512) }), Sense.WRITE_ERROR);
  assert.equal(unit.stats.ioErrors, 7);
  assert.equal(unit.taskCount, 0);
});

test('an I/O error on a file image (closed under the unit) is a medium error, not a crash', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const storage = FileStorage.open(path.join(dir, 'disk.img'), { size: MiB });
    const { exec } = memoryUnit({ storage });
    assertGood(await run(exec, Cdb.write10(0, 1), { out: pattern(512, 1) }));
    await storage.close();
    const r = await run(exec, Cdb.read10(0, 1), { in: 512 });
    assertSense(r, Sense.READ_ERROR);
  } finally {
    cleanup();
  }
});

test('VERIFY(10/16): BYTCHK 0 checks the range only; 1 compares the data; 3 compares one block against each', async () => {
  const { exec, storage, unit } = spyUnit();
  const data = pattern(4 * 512, 5);
  assertGood(await run(exec, Cdb.write10(40, 4), { out: data }));
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.verify10(40, 4)));
  assert.deepEqual(storage.calls, [], 'BYTCHK 0: no I/O');
  const ok = await run(exec, Cdb.verify10(40, 4, 1), { out: data });
  assertGood(ok);
  assert.equal(ok.dataOutTransferred, data.length);
  const bad = Uint8Array.from(data);
  bad[1234] ^= 0xff;
  const mis = await run(exec, Cdb.verify16(40, 4, 1), { out: bad });
  assertSense(mis, Sense.MISCOMPARE_DURING_VERIFY);
  assert.equal(mis.sense!.valid, true);
  assert.equal(mis.sense!.information, 1234);
  // BYTCHK 3: one block compared with each block of the range.
  const block = pattern(512, 8);
  for (let i = 0; i < 3; i++) assertGood(await run(exec, Cdb.write10(60 + i, 1), { out: block }));
  assertGood(await run(exec, Cdb.verify10(60, 3, 3), { out: block }));
  const mis3 = await run(exec, Cdb.verify10(59, 3, 3), { out: block });
  assertSense(mis3, Sense.MISCOMPARE_DURING_VERIFY);
  assert.equal(mis3.sense!.information, 0);
  const b2 = await run(exec, Cdb.verify10(40, 4, 2), { out: data });
  assertSense(b2, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(b2.sense!.field, { inCdb: true, byte: 1, bit: 2 });
  const vr = await run(exec, Cdb.verify10(40, 4, 0, 0x20));
  assert.deepEqual(vr.sense!.field, { inCdb: true, byte: 1, bit: 7 });
  assertSense(await run(exec, Cdb.verify16(2n ** 40n, 1)), Sense.LBA_OUT_OF_RANGE);
  assert.equal((await run(exec, Cdb.verify10(40, 4, 1), { out: data.subarray(0, 100) })).response, TaskResponse.OVERRUN);
  storage.fail.set('read', systemError('EIO'));
  assertSense(await run(exec, Cdb.verify10(40, 4, 1), { out: data }), Sense.READ_ERROR);
  assert.ok(unit.stats.verifies >= 5);
});

test('WRITE SAME: a zero block becomes write-zeroes (unmapping with UNMAP); a pattern is written to every block', async () => {
  const { exec, storage, unit } = spyUnit();
  assertGood(await run(exec, Cdb.write10(0, 16), { out: pattern(16 * 512, 1) }));
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.writeSame10(2, 4, 0x08), { out: new Uint8Array(512) }));
  assertGood(await run(exec, Cdb.writeSame16(8, 2), { out: new Uint8Array(512) }));
  assertGood(await run(exec, Cdb.writeSame16(12, 1, 0x08 | 0x01)), 'NDOB: no data-out buffer, zeros');
  assert.deepEqual(storage.calls, ['write-zeroes 1024+2048 unmap', 'write-zeroes 4096+1024', 'write-zeroes 6144+512 unmap']);
  const after = (await run(exec, Cdb.read10(0, 16), { in: 16 * 512 })).data;
  const expected = Buffer.from(pattern(16 * 512, 1));
  expected.fill(0, 1024, 3072);
  expected.fill(0, 4096, 5120);
  expected.fill(0, 6144, 6656);
  assert.deepEqual(after, expected);
  // A pattern: every block gets it, even with UNMAP set.
  const block = pattern(512, 7);
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.writeSame10(100, 5, 0x08), { out: block }));
  assert.deepEqual(storage.calls, [`write ${100 * 512}+${5 * 512}`]);
  const five = (await run(exec, Cdb.read10(100, 5), { in: 5 * 512 })).data;
  for (let i = 0; i < 5; i++) assert.deepEqual(five.subarray(i * 512, (i + 1) * 512), Buffer.from(block));
  assert.equal(unit.stats.writeSames, 4);
});

test('WRITE SAME: a pattern over more than one chunk is written in several writes; write-through flushes once', async () => {
  const { exec, storage } = spyUnit({ size: 8 * MiB, writeCache: false });
  const block = pattern(512, 3);
  const blocks = (2 * MiB + 4096) / 512;
  assertGood(await run(exec, Cdb.writeSame16(0, blocks), { out: block }));
  assert.deepEqual(storage.calls, [`write 0+${MiB}`, `write ${MiB}+${MiB}`, `write ${2 * MiB}+4096`, 'flush']);
  const tail = (await run(exec, Cdb.read10(blocks - 1, 1), { in: 512 })).data;
  assert.deepEqual(tail, Buffer.from(block));
});

test('WRITE SAME: invalid fields, zero blocks (WSNZ), limits, range, missing data', async () => {
  const { exec, storage } = spyUnit({ size: MiB });
  const block = new Uint8Array(512);
  const cases: [number[], number, number | undefined][] = [
    [Cdb.writeSame10(0, 1, 0x20), 1, 7], // WRPROTECT
    [Cdb.writeSame16(0, 1, 0x10), 1, 4], // ANCHOR
    [Cdb.writeSame10(0, 1, 0x02), 1, 2], // LBDATA
    [Cdb.writeSame10(0, 1, 0x04), 1, 2], // PBDATA
    [Cdb.writeSame10(0, 1, 0x01), 1, 0], // reserved in (10)
    [Cdb.writeSame10(0, 0), 7, undefined], // WSNZ
    [Cdb.writeSame16(0, 0), 10, undefined],
  ];
  for (const [cdb, byte, bit] of cases) {
    const r = await run(exec, cdb, { out: block });
    assertSense(r, Sense.INVALID_FIELD_IN_CDB, JSON.stringify(cdb));
    assert.deepEqual(r.sense!.field, bit === undefined ? { inCdb: true, byte } : { inCdb: true, byte, bit });
  }
  assertSense(await run(exec, Cdb.writeSame10(2040, 9), { out: block }), Sense.LBA_OUT_OF_RANGE);
  assert.equal((await run(exec, Cdb.writeSame10(0, 1), { out: block.subarray(0, 100) })).response, TaskResponse.OVERRUN);
  const limited = memoryUnit({ size: 8 * MiB, maxUnmapBytes: MiB });
  const over = await run(limited.exec, Cdb.writeSame16(0, MiB / 512 + 1), { out: block });
  assertSense(over, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(over.sense!.field, { inCdb: true, byte: 10 });
  assert.deepEqual(storage.calls, []);
});

test('UNMAP: every descriptor discarded in order, reads zeros afterwards; zero-length descriptors skipped', async () => {
  const { exec, storage, unit } = spyUnit();
  assertGood(await run(exec, Cdb.write10(0, 64), { out: pattern(64 * 512, 2) }));
  storage.calls.length = 0;
  const params = unmapParams([{ lba: 8, blocks: 8 }, { lba: 32, blocks: 0 }, { lba: 40, blocks: 16 }]);
  const r = await run(exec, Cdb.unmap(params.length), { out: params });
  assertGood(r);
  assert.equal(r.dataOutTransferred, params.length);
  assert.deepEqual(storage.calls, [`discard ${8 * 512}+${8 * 512}`, `discard ${40 * 512}+${16 * 512}`]);
  const back = (await run(exec, Cdb.read10(0, 64), { in: 64 * 512 })).data;
  const expected = Buffer.from(pattern(64 * 512, 2));
  expected.fill(0, 8 * 512, 16 * 512);
  expected.fill(0, 40 * 512, 56 * 512);
  assert.deepEqual(back, expected);
  assert.equal(unit.stats.unmaps, 1);
  // Parameter list length 0: nothing to do.
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.unmap(0)));
  // A block descriptor data length that is not a multiple of 16: the partial descriptor is ignored.
  const partial = unmapParams([{ lba: 1, blocks: 1 }, { lba: 2, blocks: 1 }], 24);
  assertGood(await run(exec, Cdb.unmap(partial.length), { out: partial }));
  assert.deepEqual(storage.calls, ['discard 512+512']);
});

test('UNMAP errors: ANCHOR, short list, too many descriptors, too many blocks, range (nothing unmapped), overrun', async () => {
  const { exec, storage } = spyUnit({ size: MiB });
  const one = unmapParams([{ lba: 0, blocks: 1 }]);
  const anchor = await run(exec, Cdb.unmap(one.length, true), { out: one });
  assertSense(anchor, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(anchor.sense!.field, { inCdb: true, byte: 1, bit: 0 });
  assertSense(await run(exec, Cdb.unmap(7), { out: one }), Sense.PARAMETER_LIST_LENGTH_ERROR);
  const many = unmapParams(Array.from({ length: 65 }, (_, i) => ({ lba: i, blocks: 1 })));
  const tooMany = await run(exec, Cdb.unmap(many.length), { out: many });
  assertSense(tooMany, Sense.INVALID_FIELD_IN_PARAMETER_LIST);
  assert.deepEqual(tooMany.sense!.field, { inCdb: false, byte: 2 });
  const limited = spyUnit({ size: 8 * MiB });
  const huge = unmapParams([{ lba: 0, blocks: 1 }, { lba: 0, blocks: 2 ** 21 + 1 }]);
  const big = await run(limited.exec, Cdb.unmap(huge.length), { out: huge });
  assertSense(big, Sense.INVALID_FIELD_IN_PARAMETER_LIST);
  assert.deepEqual(big.sense!.field, { inCdb: false, byte: 24 + 8 });
  const range = unmapParams([{ lba: 0, blocks: 1 }, { lba: 2047, blocks: 2 }]);
  assertSense(await run(exec, Cdb.unmap(range.length), { out: range }), Sense.LBA_OUT_OF_RANGE);
  assert.equal((await run(exec, Cdb.unmap(one.length), { out: one.subarray(0, 10) })).response, TaskResponse.OVERRUN);
  assert.deepEqual(storage.calls, [], 'nothing was unmapped');
  assert.deepEqual(limited.storage.calls, []);
  // Without logical block provisioning, UNMAP does not exist.
  const plain = spyUnit({ unmap: false });
  assertSense(await run(plain.exec, Cdb.unmap(one.length), { out: one }), Sense.INVALID_OPCODE);
  // WRITE SAME with UNMAP still works there, without unmapping.
  assertGood(await run(plain.exec, Cdb.writeSame10(0, 1, 0x08), { out: new Uint8Array(512) }));
  assert.deepEqual(plain.storage.calls, ['write-zeroes 0+512']);
});

test('UNMAP and WRITE SAME in write-through mode flush afterwards; a discard error is a WRITE ERROR', async () => {
  const { exec, storage } = spyUnit({ writeCache: false });
  const one = unmapParams([{ lba: 4, blocks: 4 }]);
  assertGood(await run(exec, Cdb.unmap(one.length), { out: one }));
  assertGood(await run(exec, Cdb.writeSame10(0, 2), { out: new Uint8Array(512) }));
  assert.deepEqual(storage.calls, ['discard 2048+2048', 'flush', 'write-zeroes 0+1024', 'flush']);
  storage.fail.set('discard', systemError('EIO'));
  assertSense(await run(exec, Cdb.unmap(one.length), { out: one }), Sense.WRITE_ERROR);
});

test('READ/WRITE(16) above 2^32 blocks: the LBA\'s high half counts (general path), crossing 2^32 too', async () => {
  const blocks = 2 ** 32 + 64;
  const storage = new TestStorage(new NullStorage({ size: blocks * 512 }));
  const { exec } = memoryUnit({ storage });
  assertGood(await run(exec, Cdb.read16(2 ** 32 + 8, 2), { in: 1024 }));
  assertGood(await run(exec, Cdb.write16(2 ** 32 - 1, 2), { out: new Uint8Array(1024) }));
  assertGood(await run(exec, Cdb.read16(2 ** 32 - 1, 2), { in: 1024 }));
  assert.deepEqual(storage.calls, [`read ${(2 ** 32 + 8) * 512}+1024`, `write ${(2 ** 32 - 1) * 512}+1024`,
    `read ${(2 ** 32 - 1) * 512}+1024`]);
  assertSense(await run(exec, Cdb.read16(blocks - 1, 2), { in: 1024 }), Sense.LBA_OUT_OF_RANGE);
  assertSense(await run(exec, Cdb.read10(0, 1, 0x20), { in: 512 }), Sense.INVALID_FIELD_IN_CDB);
  assert.equal(storage.calls.length, 3);
});

test('a transfer shorter than the buffers: the part it fills, in one list per task reused from command to command', async () => {
  const { exec, storage } = spyUnit();
  const data = pattern(4096, 9);
  assertGood(await run(exec, Cdb.write10(0, 8), { out: data }));
  const completed: ScsiTask[] = [];
  const task = new ScsiTask((t) => completed.push(t));
  const submit = (cdb: number[], sizes: number[]): Uint8Array[] => {
    task.prepare();
    task.clearCdb();
    task.cdb.set(cdb);
    const bufs = sizes.map((n) => new Uint8Array(n).fill(0xee));
    task.dataIn = bufs;
    task.dataInLength = sizes.reduce((a, b) => a + b, 0);
    exec(task);
    return bufs;
  };
  const first = submit(Cdb.read10(0, 3), [2048, 2048]);
  const list = storage.lastBuffers;
  assert.deepEqual(list.map((v) => v.byteLength), [1536]);
  assert.equal(list[0]!.buffer, first[0]!.buffer);
  assert.deepEqual(first[0]!.subarray(0, 1536), data.subarray(0, 1536));
  assert.ok(first[0]!.subarray(1536).every((b) => b === 0xee), 'nothing past the transfer');
  const second = submit(Cdb.read10(1, 4), [512, 512, 4096]);
  assert.equal(storage.lastBuffers, list, 'the same list object');
  assert.deepEqual(list.map((v) => v.byteLength), [512, 512, 1024]);
  assert.ok(list[0] === second[0] && list[1] === second[1], 'whole views as they are');
  assert.deepEqual(Buffer.concat(second.map((b) => Buffer.from(b))).subarray(0, 2048), Buffer.from(data.subarray(512, 2560)));
  submit(Cdb.read10(2, 1), [1024]);
  assert.equal(storage.lastBuffers, list);
  assert.equal(list.length, 1, 'trimmed, no stale views left at the end');
  // A transfer that fills the buffers exactly: the task's own list.
  const exact = submit(Cdb.read10(0, 2), [1024]);
  assert.equal(storage.lastBuffers, task.dataIn);
  assert.deepEqual(exact[0], data.subarray(0, 1024));
  assert.equal(completed.length, 4);
  assert.ok(completed.every((t) => t.status === GOOD && t.response === TaskResponse.COMPLETE));
});

test('READ/WRITE take the general path whenever a check fails: unit attention, stopped unit, NACA, limits', async () => {
  const { exec, unit, storage } = spyUnit({ size: MiB });
  unit.addUnitAttention(Sense.RESET_OCCURRED);
  assertSense(await run(exec, Cdb.read16(0, 1), { in: 512 }), Sense.RESET_OCCURRED);
  assertGood(await run(exec, Cdb.read16(0, 1), { in: 512 }));
  const naca = await run(exec, [...Cdb.read10(0, 1).slice(0, 9), 0x04], { in: 512 });
  assertSense(naca, Sense.INVALID_FIELD_IN_CDB);
  assertSense(await run(exec, [...Cdb.write16(0, 1).slice(0, 15), 0x04], { out: new Uint8Array(512) }), Sense.INVALID_FIELD_IN_CDB);
  assertSense(await run(exec, Cdb.read10(2047, 2), { in: 1024 }), Sense.LBA_OUT_OF_RANGE);
  assertGood(await run(exec, Cdb.read10(2046, 2), { in: 1024 }), 'the last two blocks');
  assertGood(await run(exec, Cdb.startStop(false)));
  assertSense(await run(exec, Cdb.write10(0, 1), { out: new Uint8Array(512) }), Sense.NOT_READY_STOPPED);
  assertGood(await run(exec, Cdb.startStop(true)));
  const zero = await run(exec, Cdb.write10(0, 0), { out: new Uint8Array(512) });
  assertGood(zero);
  assert.equal(zero.dataOutTransferred, 0);
  assert.deepEqual(storage.calls.filter((c) => !c.startsWith('flush')), ['read 0+512', `read ${2046 * 512}+1024`]);
});

test('the READ/WRITE(10/16) fast path takes every CDB field in the right byte order (LBAs and lengths of distinct bytes)', async () => {
  // A null disk past 2^32 blocks: LBAs with the top bit set are in range.
  const storage = new TestStorage(new NullStorage({ size: (2 ** 32 + 2 ** 20) * 512 }));
  const { exec, unit } = memoryUnit({ storage });
  const lba32 = 0x87654321;
  assertGood(await run(exec, Cdb.read10(0x12345678, 0x0102), { in: 0x0102 * 512 }));
  assertGood(await run(exec, Cdb.write10(lba32, 0x0201), { out: new Uint8Array(0x0201 * 512) }));
  assertGood(await run(exec, Cdb.read16(lba32, 0x0000_0103), { in: 0x0103 * 512 }));
  // FUA (flags bit 3) on the fast path: the write is flushed before GOOD.
  assertGood(await run(exec, Cdb.write16(0x00abcdef, 0x0000_0301, 0x08), { out: new Uint8Array(0x0301 * 512) }));
  // The top half of READ(16)'s LBA is not zero: the general path, which reads all 64 bits.
  assertGood(await run(exec, Cdb.read16(2 ** 32 + 0x0405, 1), { in: 512 }));
  assert.deepEqual(storage.calls, [
    `read ${0x12345678 * 512}+${0x0102 * 512}`,
    `write ${lba32 * 512}+${0x0201 * 512}`,
    `read ${lba32 * 512}+${0x0103 * 512}`,
    `write ${0x00abcdef * 512}+${0x0301 * 512}`,
    'flush',
    `read ${(2 ** 32 + 0x0405) * 512}+512`,
  ]);
  assert.equal(unit.stats.reads, 3);
  assert.equal(unit.stats.writes, 2);
  // A transfer length over the limit (its top byte set) is refused with a pointer to the length field.
  const long = await run(exec, Cdb.read16(0, 0x0100_0001), { in: 512 });
  assertSense(long, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(long.sense!.field, { inCdb: true, byte: 10 });
  // RDPROTECT in the flags byte: the general path refuses it.
  assertSense(await run(exec, Cdb.read16(0, 1, 0x20), { in: 512 }), Sense.INVALID_FIELD_IN_CDB);
  assert.equal(storage.calls.length, 6);
});

test('a task reused after being aborted, or after a multi-step command, runs the next command afresh', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  const { exec, unit } = memoryUnit({ storage });
  const results: { response: number; status: number; senseLength: number; dataInTransferred: number }[] = [];
  const task = new ScsiTask((t) => results.push({
    response: t.response, status: t.status, senseLength: t.senseLength, dataInTransferred: t.dataInTransferred,
  }));
  const submit = (cdb: number[], dataIn: number, dataOut?: Uint8Array) => {
    task.prepare();
    task.clearCdb();
    task.cdb.set(cdb);
    task.tagLo = 7;
    if (dataIn > 0) {
      task.dataIn = [new Uint8Array(dataIn)];
      task.dataInLength = dataIn;
    }
    if (dataOut) {
      task.dataOut = [dataOut];
      task.dataOutLength = dataOut.byteLength;
    }
    exec(task);
  };
  // Aborted while its read waits for the storage.
  storage.hold.add('read');
  submit(Cdb.read10(0, 1), 512);
  assert.equal(unit.findTask(7, 0), task, 'task management finds the running read by its tag');
  const aborted = unit.abortTasks(TaskResponse.ABORTED, (t) => t.tagLo === 7);
  storage.hold.delete('read');
  storage.release();
  assert.equal(await aborted, 1);
  assert.equal(results.length, 1);
  assert.equal(results[0]!.response, TaskResponse.ABORTED);
  // The same task again: not aborted a second time.
  submit(Cdb.read10(0, 1), 512);
  assert.deepEqual(results[1], { response: TaskResponse.COMPLETE, status: GOOD, senseLength: 0, dataInTransferred: 512 });
  // A CHECK CONDITION, then a good command: no sense left over.
  submit(Cdb.read10(1 << 20, 1), 512);
  assert.equal(results[2]!.status, CHECK_CONDITION);
  assert.equal(results[2]!.senseLength, 18);
  submit(Cdb.read16(1, 1), 512);
  assert.deepEqual(results[3], { response: TaskResponse.COMPLETE, status: GOOD, senseLength: 0, dataInTransferred: 512 });
  // WRITE SAME with a pattern and UNMAP (multi-step: chunks, descriptors), then a plain write and read.
  submit(Cdb.writeSame10(0, 8), 0, pattern(512, 3));
  submit(Cdb.unmap(24), 0, unmapParams([{ lba: 16, blocks: 8 }]));
  submit(Cdb.write10(32, 1), 0, pattern(512, 4));
  submit(Cdb.read10(32, 1), 512);
  assert.deepEqual(results.slice(4).map((r) => [r.response, r.status, r.senseLength]), [[0, GOOD, 0], [0, GOOD, 0], [0, GOOD, 0], [0, GOOD, 0]]);
  assert.deepEqual(new Uint8Array(task.dataIn[0]!), pattern(512, 4));
  assert.equal(unit.stats.aborted, 1);
  assert.equal(unit.taskCount, 0);
});
