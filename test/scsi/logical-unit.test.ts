import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { NullStorage } from '../../src/devices/blk/storage/null.js';
import type { IoCallback } from '../../src/devices/blk/storage/storage.js';
import { Sense, ScsiStatus, SenseKey } from '../../src/scsi/constants.js';
import { LogicalUnit } from '../../src/scsi/logical-unit.js';
import { ScsiTask, TaskResponse } from '../../src/scsi/task.js';
import { Cdb, memoryUnit, run, type Result } from './helpers.js';
import { TestStorage } from '../helpers/test-storage.js';

const MiB = 1 << 20;
const { GOOD, CHECK_CONDITION } = ScsiStatus;

function assertSense(r: Result, code: { key: number; asc: number; ascq: number }, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, CHECK_CONDITION, message);
  assert.equal(r.senseLength, 18, message);
  assert.deepEqual([r.sense!.key, r.sense!.asc, r.sense!.ascq], [code.key, code.asc, code.ascq], message);
  assert.equal(r.dataInTransferred, 0, message);
  assert.equal(r.completions, 1);
}

function assertGood(r: Result, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, GOOD, `${message ?? ''} ${r.sense ? JSON.stringify(r.sense) : ''}`);
  assert.equal(r.senseLength, 0, message);
  assert.equal(r.completions, 1);
}

test('refuses bad options', () => {
  const storage = new MemoryStorage({ size: MiB });
  assert.throws(() => new LogicalUnit({ storage, blockSize: 1000 }), /block size/);
  assert.throws(() => new LogicalUnit({ storage, blockSize: 256 }), /block size/);
  assert.throws(() => new LogicalUnit({ storage, physicalBlockSize: 768 }), /physical block size/);
  assert.throws(() => new LogicalUnit({ storage, serial: 'x'.repeat(65) }), /serial/);
  assert.throws(() => new LogicalUnit({ storage, serial: 'caf\u00e9' }), /serial/);
  assert.throws(() => new LogicalUnit({ storage, serial: ' lead' }), /serial/);
  assert.throws(() => new LogicalUnit({ storage, vendor: 'NINECHARS' }), /vendor/);
  assert.throws(() => new LogicalUnit({ storage, product: 'x'.repeat(17) }), /product/);
  assert.throws(() => new LogicalUnit({ storage, revision: '12345' }), /revision/);
  assert.throws(() => new LogicalUnit({ storage: new MemoryStorage({ size: 100 }) }), /smaller than one/);
  assert.throws(() => new LogicalUnit({ storage, maxUnmapDescriptors: 5000 }), /maxUnmapDescriptors/);
});

test('TEST UNIT READY: GOOD with no data', async () => {
  const { exec } = memoryUnit();
  const r = await run(exec, Cdb.testUnitReady(), { in: 16 });
  assertGood(r);
  assert.equal(r.dataInTransferred, 0);
  assert.equal(r.residual, 16);
});

test('unknown and unsupported operation codes: ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE', async () => {
  const { exec, unit } = memoryUnit();
  // REPORT SUPPORTED OPERATION CODES, LOG SENSE, PERSISTENT RESERVE IN, ATA PASS-THROUGH(16), READ(32), vendor.
  for (const op of [0xa3, 0x4d, 0x5e, 0x85, 0x7f, 0x04, 0xc0, 0xff]) {
    const r = await run(exec, [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], { in: 64 });
    assertSense(r, Sense.INVALID_OPCODE, `opcode 0x${op.toString(16)}`);
  }
  assert.equal(unit.stats.checkConditions, 8);
});

test('NACA in the control byte is refused with a field pointer to it', async () => {
  const { exec } = memoryUnit();
  const cdb = Cdb.read10(0, 1);
  cdb[9] = 0x04;
  const r = await run(exec, cdb, { in: 512 });
  assertSense(r, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(r.sense!.field, { inCdb: true, byte: 9, bit: 2 });
  const six = Cdb.testUnitReady();
  six[5] = 0x04;
  assert.deepEqual((await run(exec, six)).sense!.field, { inCdb: true, byte: 5, bit: 2 });
});

test('INQUIRY standard data: disk, SPC-4, HISUP, CMDQUE, padded identification, version descriptors', async () => {
  const { exec } = memoryUnit({ vendor: 'ACME', product: 'DISK ONE', revision: '7' });
  const r = await run(exec, Cdb.inquiry(96), { in: 96 });
  assertGood(r);
  const d = r.data;
  assert.equal(d.length, 64);
  assert.equal(r.residual, 96 - 64);
  assert.equal(d[0], 0x00, 'peripheral qualifier 0, direct-access device');
  assert.equal(d[1], 0, 'not removable');
  assert.equal(d[2], 0x06, 'SPC-4');
  assert.equal(d[3] & 0x0f, 2, 'response data format 2');
  assert.equal(d[3] & 0x10, 0x10, 'HISUP');
  assert.equal(d[4], 64 - 5, 'additional length');
  assert.equal(d[7] & 0x02, 0x02, 'CMDQUE');
  assert.equal(d.subarray(8, 16).toString('latin1'), 'ACME    ');
  assert.equal(d.subarray(16, 32).toString('latin1'), 'DISK ONE        ');
  assert.equal(d.subarray(32, 36).toString('latin1'), '7   ');
  assert.deepEqual([d.readUInt16BE(58), d.readUInt16BE(60), d.readUInt16BE(62)], [0x00a0, 0x0460, 0x04c0]);
});

test('INQUIRY: default identification, allocation length and short buffers truncate', async () => {
  const { exec } = memoryUnit();
  const full = await run(exec, Cdb.inquiry(255), { in: 255 });
  assert.equal(full.data.subarray(8, 36).toString('latin1'), 'VHOSTUSRVIRTUAL-DISK    0001');
  const five = await run(exec, Cdb.inquiry(5), { in: 96 });
  assertGood(five);
  assert.equal(five.dataInTransferred, 5);
  assert.deepEqual(five.data, full.data.subarray(0, 5));
  assert.equal(five.residual, 91);
  const small = await run(exec, Cdb.inquiry(96), { in: 36 });
  assertGood(small);
  assert.deepEqual(small.data, full.data.subarray(0, 36));
  // Data-in spread over several views.
  const split = await run(exec, Cdb.inquiry(96), { in: [7, 1, 30, 100] });
  assert.deepEqual(split.data, full.data);
  // Allocation length 0: nothing transferred, still GOOD.
  const none = await run(exec, Cdb.inquiry(0), { in: 96 });
  assertGood(none);
  assert.equal(none.dataInTransferred, 0);
});

test('INQUIRY: CMDDT, a page code without EVPD and an unknown VPD page are invalid fields', async () => {
  const { exec } = memoryUnit();
  const cmddt = await run(exec, [0x12, 0x02, 0, 0, 96, 0], { in: 96 });
  assertSense(cmddt, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(cmddt.sense!.field, { inCdb: true, byte: 1, bit: 1 });
  const page = await run(exec, Cdb.inquiry(96, false, 0x80), { in: 96 });
  assertSense(page, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(page.sense!.field, { inCdb: true, byte: 2 });
  for (const p of [0x01, 0x86, 0x89, 0xb3, 0xb9, 0xff]) {
    const r = await run(exec, Cdb.inquiry(255, true, p), { in: 255 });
    assertSense(r, Sense.INVALID_FIELD_IN_CDB, `page 0x${p.toString(16)}`);
    assert.deepEqual(r.sense!.field, { inCdb: true, byte: 2 });
  }
});

test('VPD 00h lists the pages in order; 80h only with a serial', async () => {
  const withSerial = memoryUnit({ serial: 'SN-0001' });
  const r = await run(withSerial.exec, Cdb.inquiry(255, true, 0x00), { in: 255 });
  assertGood(r);
  assert.deepEqual([...r.data], [0, 0x00, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  const without = memoryUnit();
  const r2 = await run(without.exec, Cdb.inquiry(255, true, 0x00), { in: 255 });
  assert.deepEqual([...r2.data], [0, 0x00, 0, 5, 0x00, 0x83, 0xb0, 0xb1, 0xb2]);
  assertSense(await run(without.exec, Cdb.inquiry(255, true, 0x80), { in: 255 }), Sense.INVALID_FIELD_IN_CDB);
});

test('VPD 80h: the unit serial number', async () => {
  const { exec } = memoryUnit({ serial: 'scsi-serial-42' });
  const r = await run(exec, Cdb.inquiry(255, true, 0x80), { in: 255 });
  assertGood(r);
  assert.deepEqual([...r.data.subarray(0, 4)], [0, 0x80, 0, 14]);
  assert.equal(r.data.subarray(4).toString('latin1'), 'scsi-serial-42');
});

test('VPD 83h: NAA locally assigned and T10 vendor ID designators; stable per serial, unique without', async () => {
  const a = memoryUnit({ serial: 'S1' });
  const r = await run(a.exec, Cdb.inquiry(255, true, 0x83), { in: 255 });
  assertGood(r);
  const d = r.data;
  assert.equal(d[1], 0x83);
  assert.equal(d.readUInt16BE(2), d.length - 4);
  // First designator: binary, LU association, NAA, 8 bytes, NAA 3h.
  assert.deepEqual([...d.subarray(4, 8)], [0x01, 0x03, 0x00, 8]);
  assert.equal(d[8]! >> 4, 3);
  const naa = Buffer.from(d.subarray(8, 16));
  // Second: ASCII, LU association, T10 vendor ID.
  assert.deepEqual([...d.subarray(16, 19)], [0x02, 0x01, 0x00]);
  assert.equal(d.subarray(20, 20 + d[19]!).toString('latin1'), 'VHOSTUSRVIRTUAL-DISK    S1');
  assert.equal(20 + d[19]!, d.length);
  const again = await run(memoryUnit({ serial: 'S1' }).exec, Cdb.inquiry(255, true, 0x83), { in: 255 });
  assert.deepEqual(again.data.subarray(8, 16), naa, 'same identity, same NAA');
  const other = await run(memoryUnit({ serial: 'S2' }).exec, Cdb.inquiry(255, true, 0x83), { in: 255 });
  assert.notDeepEqual(other.data.subarray(8, 16), naa);
  const anon1 = await run(memoryUnit().exec, Cdb.inquiry(255, true, 0x83), { in: 255 });
  const anon2 = await run(memoryUnit().exec, Cdb.inquiry(255, true, 0x83), { in: 255 });
  assert.notDeepEqual(anon1.data.subarray(8, 16), anon2.data.subarray(8, 16), 'units without a serial differ');
  assert.equal(anon1.data[8]! >> 4, 3);
});

test('VPD B0h block limits, B1h characteristics, B2h provisioning of a writable unit', async () => {
  const { exec } = memoryUnit({ maxTransferBytes: 4 * MiB, maxUnmapBytes: 64 * MiB, maxUnmapDescriptors: 16 });
  const b0 = (await run(exec, Cdb.inquiry(255, true, 0xb0), { in: 255 })).data;
  assert.equal(b0.length, 64);
  assert.equal(b0.readUInt16BE(2), 0x3c);
  assert.equal(b0[4]! & 1, 1, 'WSNZ');
  assert.equal(b0.readUInt32BE(8), 4 * MiB / 512, 'maximum transfer length');
  assert.equal(b0.readUInt32BE(20), 64 * MiB / 512, 'maximum unmap LBA count');
  assert.equal(b0.readUInt32BE(24), 16, 'maximum unmap block descriptor count');
  assert.equal(b0.readUInt32BE(28), 8, 'optimal unmap granularity: 4 KiB');
  assert.equal(b0[32]! & 0x80, 0x80, 'UGAVALID');
  assert.equal(Number(b0.readBigUInt64BE(36)), 64 * MiB / 512, 'maximum write same length');
  const b1 = (await run(exec, Cdb.inquiry(255, true, 0xb1), { in: 255 })).data;
  assert.equal(b1.length, 64);
  assert.equal(b1.readUInt16BE(4), 1, 'non-rotating medium');
  const b2 = (await run(exec, Cdb.inquiry(255, true, 0xb2), { in: 255 })).data;
  assert.equal(b2.length, 8);
  assert.equal(b2[5], 0x80 | 0x40 | 0x20 | 0x04, 'LBPU, LBPWS, LBPWS10, LBPRZ');
  assert.equal(b2[6]! & 0x07, 2, 'thin provisioned');
});

test('VPD B0h/B2h of a read-only unit and of a null disk: no unmap; no LBPRZ for null', async () => {
  const ro = memoryUnit({ readOnly: true });
  const b0 = (await run(ro.exec, Cdb.inquiry(255, true, 0xb0), { in: 255 })).data;
  assert.equal(b0.readUInt32BE(20), 0);
  assert.equal(b0.readUInt32BE(24), 0);
  const b2 = (await run(ro.exec, Cdb.inquiry(255, true, 0xb2), { in: 255 })).data;
  assert.equal(b2[5], 0);
  assert.equal(b2[6], 0);
  const nul = new LogicalUnit({ storage: new NullStorage({ size: MiB }) });
  const r = await run((t) => nul.execute(t), Cdb.inquiry(255, true, 0xb2), { in: 255 });
  assert.equal(r.data[5], 0x80 | 0x40 | 0x20, 'null storage does not read back zeros');
});

test('READ CAPACITY(10): last LBA and block size; capped at FFFFFFFFh; PMI rules', async () => {
  const { exec } = memoryUnit({ size: 8 * MiB, blockSize: 4096 });
  const r = await run(exec, Cdb.readCapacity10(), { in: 8 });
  assertGood(r);
  assert.equal(r.data.readUInt32BE(0), 8 * MiB / 4096 - 1);
  assert.equal(r.data.readUInt32BE(4), 4096);
  const pmi = await run(exec, Cdb.readCapacity10(5, true), { in: 8 });
  assertGood(pmi);
  const bad = await run(exec, Cdb.readCapacity10(5, false), { in: 8 });
  assertSense(bad, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(bad.sense!.field, { inCdb: true, byte: 2 });
  // 2^32 + 16 blocks of 512 bytes: READ CAPACITY(10) says "use (16)".
  const big = new LogicalUnit({ storage: new NullStorage({ size: (2 ** 32 + 16) * 512 }) });
  const rb = await run((t) => big.execute(t), Cdb.readCapacity10(), { in: 8 });
  assert.equal(rb.data.readUInt32BE(0), 0xffffffff);
  const r16 = await run((t) => big.execute(t), Cdb.readCapacity16(), { in: 32 });
  assert.equal(r16.data.readBigUInt64BE(0), BigInt(2 ** 32 + 15));
});

test('READ CAPACITY(16): 64-bit last LBA, block size, physical exponent, LBPME/LBPRZ, allocation length', async () => {
  const { exec } = memoryUnit({ size: 4 * MiB, physicalBlockSize: 4096 });
  const r = await run(exec, Cdb.readCapacity16(32), { in: 32 });
  assertGood(r);
  assert.equal(r.data.length, 32);
  assert.equal(r.data.readBigUInt64BE(0), BigInt(4 * MiB / 512 - 1));
  assert.equal(r.data.readUInt32BE(8), 512);
  assert.equal(r.data[12], 0, 'no protection');
  assert.equal(r.data[13]! & 0x0f, 3, '8 logical blocks per physical block');
  assert.equal(r.data[14]! & 0xc0, 0xc0, 'LBPME and LBPRZ');
  const short = await run(exec, Cdb.readCapacity16(12), { in: 32 });
  assert.equal(short.dataInTransferred, 12);
  const ro = await run(memoryUnit({ readOnly: true }).exec, Cdb.readCapacity16(32), { in: 32 });
  assert.equal(ro.data[14]! & 0xc0, 0, 'a read-only unit is not thin provisioned');
  const sa = await run(exec, Cdb.readCapacity16(32, 0x11), { in: 32 });
  assertSense(sa, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(sa.sense!.field, { inCdb: true, byte: 1, bit: 4 });
  assertSense(await run(exec, Cdb.readCapacity16(32, 0x10, 7, false), { in: 32 }), Sense.INVALID_FIELD_IN_CDB);
  assertGood(await run(exec, Cdb.readCapacity16(32, 0x10, 7, true), { in: 32 }));
});

test('REQUEST SENSE: NO SENSE normally; DESC refused; allocation length', async () => {
  const { exec } = memoryUnit();
  const r = await run(exec, Cdb.requestSense(252), { in: 252 });
  assertGood(r);
  assert.equal(r.dataInTransferred, 18);
  assert.deepEqual([r.data[0], r.data[2], r.data[7], r.data[12], r.data[13]], [0x70, SenseKey.NO_SENSE, 10, 0, 0]);
  const eight = await run(exec, Cdb.requestSense(8), { in: 252 });
  assert.equal(eight.dataInTransferred, 8);
  const desc = await run(exec, Cdb.requestSense(252, true), { in: 252 });
  assertSense(desc, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(desc.sense!.field, { inCdb: true, byte: 1, bit: 0 });
});

test('unit attention: reported once by the next command, not by INQUIRY/REPORT LUNS; REQUEST SENSE returns and clears it', async () => {
  const { exec, unit } = memoryUnit();
  unit.addUnitAttention(Sense.RESET_OCCURRED);
  unit.addUnitAttention(Sense.RESET_OCCURRED); // no duplicates
  unit.addUnitAttention(Sense.REPORTED_LUNS_CHANGED);
  assert.equal(unit.unitAttentions.length, 2);
  assertGood(await run(exec, Cdb.inquiry(96), { in: 96 }));
  assertGood(await run(exec, Cdb.reportLuns(), { in: 64 }));
  assertSense(await run(exec, Cdb.testUnitReady()), Sense.RESET_OCCURRED);
  // Even an unknown command reports it.
  assertSense(await run(exec, [0xc5, 0, 0, 0, 0, 0]), Sense.REPORTED_LUNS_CHANGED);
  assertGood(await run(exec, Cdb.testUnitReady()));
  unit.addUnitAttention(Sense.CAPACITY_CHANGED);
  const rs = await run(exec, Cdb.requestSense(), { in: 252 });
  assertGood(rs);
  assert.deepEqual([rs.data[2], rs.data[12], rs.data[13]], [SenseKey.UNIT_ATTENTION, 0x2a, 0x09]);
  assertGood(await run(exec, Cdb.read10(0, 1), { in: 512 }));
  unit.addUnitAttention(Sense.REPORTED_LUNS_CHANGED);
  unit.clearUnitAttention(Sense.REPORTED_LUNS_CHANGED);
  assertGood(await run(exec, Cdb.testUnitReady()));
});

test('START STOP UNIT: a stopped unit is NOT READY for media access, flushed on stop unless NO_FLUSH', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  const { exec, unit } = memoryUnit({ storage });
  assertGood(await run(exec, Cdb.startStop(false)));
  assert.deepEqual(storage.calls, ['flush']);
  assert.equal(unit.started, false);
  for (const cdb of [Cdb.testUnitReady(), Cdb.read10(0, 1), Cdb.write10(0, 1), Cdb.readCapacity10(), Cdb.syncCache10(),
    Cdb.unmap(24), Cdb.verify10(0, 1)]) {
    assertSense(await run(exec, cdb, { in: 512, out: new Uint8Array(512) }), Sense.NOT_READY_STOPPED, `opcode 0x${cdb[0]!.toString(16)}`);
  }
  // Not media access: still answered.
  assertGood(await run(exec, Cdb.inquiry(), { in: 96 }));
  assertGood(await run(exec, Cdb.modeSense6(0x08), { in: 255 }));
  const rs = await run(exec, Cdb.requestSense(), { in: 252 });
  assert.deepEqual([rs.data[2], rs.data[12], rs.data[13]], [SenseKey.NOT_READY, 0x04, 0x02]);
  assertGood(await run(exec, Cdb.startStop(true)));
  assert.equal(unit.started, true);
  assertGood(await run(exec, Cdb.testUnitReady()));
  storage.calls.length = 0;
  assertGood(await run(exec, Cdb.startStop(false, 0x04)));
  assert.deepEqual(storage.calls, [], 'NO_FLUSH');
  assert.equal(unit.started, false);
  // A power condition leaves the state alone.
  assertGood(await run(exec, Cdb.startStop(true, 0, 1)));
  assert.equal(unit.started, false);
  // LOEJ on a fixed medium: ignored.
  assertGood(await run(exec, Cdb.startStop(true, 0x02)));
  assert.equal(unit.started, true);
  unit.powerOn();
  assert.equal(unit.started, true);
});

test('powerOn restores the default cache mode and drops unit attentions', async () => {
  const { exec, unit } = memoryUnit({ writeCache: false });
  assert.equal(unit.writeCache, false);
  const page = new Uint8Array([0, 0, 0, 0, 0x08, 0x12, 0x04, ...new Array(17).fill(0)]);
  assertGood(await run(exec, Cdb.modeSelect6(page.length), { out: page }));
  assert.equal(unit.writeCache, true);
  unit.addUnitAttention(Sense.RESET_OCCURRED);
  unit.powerOn();
  assert.equal(unit.writeCache, false);
  assert.equal(unit.unitAttentions.length, 0);
});

test('a storage that throws: HARDWARE ERROR 44/00, the task completes once', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  storage.throwFrom = 'read';
  const { exec, unit } = memoryUnit({ storage });
  const r = await run(exec, Cdb.read10(0, 1), { in: 512 });
  assertSense(r, Sense.INTERNAL_FAILURE);
  assert.equal(unit.taskCount, 0);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(r.completions, 1);
});

test('a storage that calls back twice: the task still completes once', async () => {
  const inner = new MemoryStorage({ size: MiB });
  const storage = new TestStorage(inner);
  const twice = Object.create(storage) as TestStorage;
  twice.read = <C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C) => {
    inner.read(buffers, position, done, context);
    inner.read(buffers, position, done, context);
  };
  const unit = new LogicalUnit({ storage: twice });
  const r = await run((t) => unit.execute(t), Cdb.read10(0, 2), { in: 1024 });
  assertGood(r);
  assert.equal(r.completions, 1);
});

test('running tasks: one waiting for storage is listed once (also when started again from its own completion); one done at once never is', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: 1 << 20 }));
  const { unit, exec } = memoryUnit({ storage });
  let completions = 0;
  const task = new ScsiTask(() => {
    completions++;
    if (completions === 1) {
      // Started again from its completion, this time on storage that holds the read.
      storage.hold.add('read');
      task.prepare();
      task.dataIn = [new Uint8Array(512)];
      task.dataInLength = 512;
      task.tagLo = 2;
      exec(task);
    }
  });
  task.prepare();
  task.clearCdb();
  task.cdb.set(Cdb.read10(0, 1));
  task.dataIn = [new Uint8Array(512)];
  task.dataInLength = 512;
  task.tagLo = 1;
  exec(task);
  assert.equal(completions, 1);
  assert.equal(unit.taskCount, 1);
  assert.deepEqual(unit.runningTasks(), [task]);
  assert.equal(unit.findTask(2, 0), task);
  assert.equal(unit.findTask(1, 0), undefined);
  const idle = unit.whenIdle();
  storage.release();
  await idle;
  assert.equal(completions, 2);
  assert.equal(unit.taskCount, 0);
  assert.deepEqual(unit.runningTasks(), []);
  // Done at once: never listed, nothing to wait for.
  storage.hold.clear();
  const r = await run(exec, Cdb.read10(0, 1), { in: 512 });
  assert.equal(r.status, ScsiStatus.GOOD);
  assert.equal(unit.taskCount, 0);
  await unit.whenIdle();
});
