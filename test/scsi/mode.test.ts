import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { NullStorage } from '../../src/devices/blk/storage/null.js';
import { Sense, ScsiStatus } from '../../src/scsi/constants.js';
import { LogicalUnit } from '../../src/scsi/logical-unit.js';
import { TaskResponse } from '../../src/scsi/task.js';
import { Cdb, memoryUnit, run, type Result } from './helpers.js';
import { TestStorage } from '../helpers/test-storage.js';

const MiB = 1 << 20;

function assertSense(r: Result, code: { key: number; asc: number; ascq: number }, message?: string): void {
  assert.equal(r.status, ScsiStatus.CHECK_CONDITION, message);
  assert.deepEqual([r.sense!.key, r.sense!.asc, r.sense!.ascq], [code.key, code.asc, code.ascq], message);
}

function assertGood(r: Result, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, ScsiStatus.GOOD, `${message ?? ''} ${r.sense ? JSON.stringify(r.sense) : ''}`);
}

/** The caching page as MODE SELECT sends it, with WCE as given. */
function cachingPage(wce: boolean, extra: (p: Uint8Array) => void = () => undefined): Uint8Array {
  const p = new Uint8Array(20);
  p[0] = 0x08;
  p[1] = 0x12;
  p[2] = wce ? 0x04 : 0;
  extra(p);
  return p;
}

function select6(...pages: Uint8Array[]): Uint8Array {
  return Uint8Array.from([0, 0, 0, 0, ...pages.flatMap((p) => [...p])]);
}

function select10(...pages: Uint8Array[]): Uint8Array {
  return Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, ...pages.flatMap((p) => [...p])]);
}

test('MODE SENSE(6) caching page: header with DPOFUA, short block descriptor, WCE set by default', async () => {
  const { exec } = memoryUnit({ size: 8 * MiB });
  const r = await run(exec, Cdb.modeSense6(0x08), { in: 255 });
  assertGood(r);
  const d = r.data;
  assert.equal(d.length, 4 + 8 + 20);
  assert.equal(d[0], d.length - 1, 'mode data length');
  assert.equal(d[1], 0, 'medium type');
  assert.equal(d[2], 0x10, 'not write protected; DPOFUA');
  assert.equal(d[3], 8, 'block descriptor length');
  assert.equal(d.readUInt32BE(4), 8 * MiB / 512, 'number of blocks');
  assert.equal(d.readUInt32BE(8) & 0xffffff, 512, 'block length');
  assert.deepEqual([d[12], d[13]], [0x08, 0x12], 'caching page code and length');
  assert.equal(d[14]! & 0x04, 0x04, 'WCE');
  assert.equal(d[14]! & 0x01, 0, 'RCD clear');
});

test('MODE SENSE(6) of a read-only unit sets WP; DBD drops the block descriptor', async () => {
  const { exec } = memoryUnit({ readOnly: true });
  const r = await run(exec, Cdb.modeSense6(0x08, 0, 255, true), { in: 255 });
  assertGood(r);
  assert.equal(r.data[2], 0x80 | 0x10);
  assert.equal(r.data[3], 0);
  assert.equal(r.data.length, 4 + 20);
  assert.equal(r.data[4], 0x08);
});

test('MODE SENSE(10): 8-byte header, long LBA descriptor with LLBAA, all pages with 3Fh', async () => {
  const { exec } = memoryUnit({ size: 4 * MiB, blockSize: 4096 });
  const r = await run(exec, Cdb.modeSense10(0x3f, 0, 1024, false, true), { in: 1024 });
  assertGood(r);
  const d = r.data;
  assert.equal(d.readUInt16BE(0), d.length - 2);
  assert.equal(d[3], 0x10);
  assert.equal(d[4]! & 1, 1, 'LONGLBA');
  assert.equal(d.readUInt16BE(6), 16);
  assert.equal(Number(d.readBigUInt64BE(8)), 4 * MiB / 4096);
  assert.equal(d.readUInt32BE(20), 4096);
  // Caching then control.
  assert.deepEqual([d[24], d[25]], [0x08, 0x12]);
  assert.deepEqual([d[44], d[45]], [0x0a, 0x0a]);
  assert.equal(d[46]! & 0x04, 0, 'D_SENSE clear: fixed-format sense');
  assert.equal(d[46]! & 0x02, 0x02, 'GLTSD');
  assert.equal(d[47]! >> 4, 1, 'QAM: unrestricted reordering');
  assert.equal(d.length, 8 + 16 + 20 + 12);
  const short = await run(exec, Cdb.modeSense10(0x0a, 0, 1024, false, false), { in: 1024 });
  assert.equal(short.data[4]! & 1, 0);
  assert.equal(short.data.readUInt16BE(6), 8);
  // All pages with subpage FFh is the same list.
  const ff = await run(exec, Cdb.modeSense10(0x3f, 0, 1024, true, false, 0xff), { in: 1024 });
  assertGood(ff);
  assert.equal(ff.data.length, 8 + 20 + 12);
});

test('MODE SENSE: changeable values show WCE only; default values; allocation length truncates', async () => {
  const { exec } = memoryUnit({ writeCache: false });
  const ch = await run(exec, Cdb.modeSense6(0x3f, 1, 255, true), { in: 255 });
  assertGood(ch);
  assert.equal(ch.data[6], 0x04, 'caching: WCE changeable');
  assert.ok(ch.data.subarray(7, 24).every((b) => b === 0));
  assert.ok(ch.data.subarray(26).every((b) => b === 0), 'control page: nothing changeable');
  const cur = await run(exec, Cdb.modeSense6(0x08, 0, 255, true), { in: 255 });
  assert.equal(cur.data[6], 0, 'write cache off');
  const def = await run(exec, Cdb.modeSense6(0x08, 2, 255, true), { in: 255 });
  assert.equal(def.data[6], 0);
  const four = await run(exec, Cdb.modeSense6(0x08, 0, 4), { in: 255 });
  assertGood(four);
  assert.equal(four.dataInTransferred, 4);
  assert.equal(four.data[0], 4 + 8 + 20 - 1, 'the header still gives the full length');
});

test('MODE SENSE errors: saved values, unknown pages, subpages', async () => {
  const { exec } = memoryUnit();
  const saved = await run(exec, Cdb.modeSense6(0x08, 3), { in: 255 });
  assertSense(saved, Sense.SAVING_PARAMETERS_NOT_SUPPORTED);
  assert.deepEqual(saved.sense!.field, { inCdb: true, byte: 2, bit: 7 });
  for (const page of [0x01, 0x02, 0x1c, 0x00]) {
    const r = await run(exec, Cdb.modeSense10(page), { in: 1024 });
    assertSense(r, Sense.INVALID_FIELD_IN_CDB, `page ${page}`);
    assert.deepEqual(r.sense!.field, { inCdb: true, byte: 2, bit: 5 });
  }
  const sub = await run(exec, Cdb.modeSense6(0x08, 0, 255, false, 1), { in: 255 });
  assertSense(sub, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(sub.sense!.field, { inCdb: true, byte: 3 });
});

test('MODE SELECT(6/10) turns the write cache off (flushing first) and on again', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  const { exec, unit } = memoryUnit({ storage });
  const off = select6(cachingPage(false));
  const r = await run(exec, Cdb.modeSelect6(off.length), { out: off });
  assertGood(r);
  assert.equal(r.dataOutTransferred, off.length);
  assert.equal(unit.writeCache, false);
  assert.deepEqual(storage.calls, ['flush'], 'what was cached is made durable');
  const sense = await run(exec, Cdb.modeSense6(0x08, 0, 255, true), { in: 255 });
  assert.equal(sense.data[6]! & 0x04, 0);
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.write10(0, 1), { out: new Uint8Array(512) }));
  assert.deepEqual(storage.calls, ['write 0+512', 'flush'], 'write-through');
  storage.calls.length = 0;
  const on = select10(cachingPage(true));
  assertGood(await run(exec, Cdb.modeSelect10(on.length), { out: on }));
  assert.equal(unit.writeCache, true);
  assert.deepEqual(storage.calls, [], 'turning the cache on needs no flush');
  // Setting the same value again, with the control page as it is, with a block descriptor keeping the size.
  const control = new Uint8Array([0x0a, 0x0a, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
  const withDescriptor = Uint8Array.from([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00, ...cachingPage(true), ...control]);
  assertGood(await run(exec, Cdb.modeSelect6(withDescriptor.length), { out: withDescriptor }));
  assertGood(await run(exec, Cdb.modeSelect6(0)), 'an empty parameter list');
});

test('MODE SELECT is refused: non-changeable bits, wrong page length, unknown pages, subpages, truncation', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  const { exec, unit } = memoryUnit({ storage });
  const cases: [Uint8Array, { key: number; asc: number; ascq: number }, number | undefined, string][] = [
    [select6(cachingPage(false, (p) => (p[2] |= 0x01))), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4 + 2, 'RCD is not changeable'],
    [select6(cachingPage(true, (p) => (p[12] = 0x20))), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4 + 12, 'DRA is not changeable'],
    [select6(cachingPage(false, (p) => (p[1] = 0x0a))), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4 + 1, 'page length'],
    [select6(new Uint8Array([0x0a, 0x0a, 0x06, 0x10, 0, 0, 0, 0, 0, 0, 0, 0])), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4 + 2,
      'D_SENSE is not changeable'],
    [select6(new Uint8Array([0x1c, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4, 'unknown page'],
    [select6(new Uint8Array([0x48, 0x01, 0x00, 0x12])), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 4, 'subpage format'],
    [select6(cachingPage(false)).subarray(0, 20), Sense.PARAMETER_LIST_LENGTH_ERROR, undefined, 'truncated page'],
    [new Uint8Array([0, 0, 0]), Sense.PARAMETER_LIST_LENGTH_ERROR, undefined, 'truncated header'],
    [Uint8Array.from([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x00, ...cachingPage(false)]), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 9,
      'block descriptor with another block size'],
    [Uint8Array.from([0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, ...cachingPage(false)]), Sense.INVALID_FIELD_IN_PARAMETER_LIST, 3,
      'block descriptor length not a multiple of 8'],
    [Uint8Array.from([0, 0, 0, 16, 0, 0, 0, 0]), Sense.PARAMETER_LIST_LENGTH_ERROR, undefined, 'descriptors past the end'],
  ];
  for (const [params, code, byte, what] of cases) {
    const r = await run(exec, Cdb.modeSelect6(params.length), { out: params });
    assertSense(r, code, what);
    if (byte !== undefined) assert.equal(r.sense!.field?.byte, byte, what);
    if (byte !== undefined) assert.equal(r.sense!.field?.inCdb, false, what);
  }
  assert.equal(unit.writeCache, true, 'nothing changed');
  const sp = select6(cachingPage(false));
  const spr = await run(exec, Cdb.modeSelect6(sp.length, true, true), { out: sp });
  assertSense(spr, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(spr.sense!.field, { inCdb: true, byte: 1, bit: 0 });
  const pf = await run(exec, Cdb.modeSelect6(sp.length, false), { out: sp });
  assertSense(pf, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(pf.sense!.field, { inCdb: true, byte: 1, bit: 4 });
  assert.equal((await run(exec, Cdb.modeSelect6(sp.length), { out: sp.subarray(0, 10) })).response, TaskResponse.OVERRUN);
  // MODE SELECT(10) with a long-LBA block descriptor.
  const long = Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00, ...cachingPage(false)]);
  assertGood(await run(exec, Cdb.modeSelect10(long.length), { out: long }));
  assert.equal(unit.writeCache, false);
  assert.deepEqual(storage.calls, ['flush']);
});

test('a null disk still answers the mode pages', async () => {
  const unit = new LogicalUnit({ storage: new NullStorage({ size: MiB }) });
  assertGood(await run((t) => unit.execute(t), Cdb.modeSense10(0x3f), { in: 1024 }));
});
