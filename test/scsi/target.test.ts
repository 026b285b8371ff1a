import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { ScsiBus } from '../../src/scsi/bus.js';
import { Sense, ScsiStatus, SenseKey, WLUN_REPORT_LUNS } from '../../src/scsi/constants.js';
import { LogicalUnit } from '../../src/scsi/logical-unit.js';
import { ScsiTarget, TmfResponse } from '../../src/scsi/target.js';
import { TaskResponse } from '../../src/scsi/task.js';
import { Cdb, memoryUnit, run, start, type Result } from './helpers.js';
import { TestStorage } from '../helpers/test-storage.js';

const MiB = 1 << 20;

function assertSense(r: Result, code: { key: number; asc: number; ascq: number }, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, ScsiStatus.CHECK_CONDITION, message);
  assert.deepEqual([r.sense!.key, r.sense!.asc, r.sense!.ascq], [code.key, code.asc, code.ascq], message);
  assert.equal(r.completions, 1);
}

function assertGood(r: Result, message?: string): void {
  assert.equal(r.response, TaskResponse.COMPLETE, message);
  assert.equal(r.status, ScsiStatus.GOOD, `${message ?? ''} ${r.sense ? JSON.stringify(r.sense) : ''}`);
  assert.equal(r.completions, 1);
}

function unit(): LogicalUnit {
  return memoryUnit({ size: MiB }).unit;
}

/** The LUNs of a REPORT LUNS answer, as 8-byte hex strings. */
function lunList(data: Buffer): string[] {
  const n = data.readUInt32BE(0) / 8;
  const out: string[] = [];
  for (let i = 0; i < n && 8 + 8 * i + 8 <= data.length; i++) out.push(data.subarray(8 + 8 * i, 16 + 8 * i).toString('hex'));
  return out;
}

test('REPORT LUNS: peripheral addressing below 256, flat above, sorted; from any LUN, present or not', async () => {
  const t = new ScsiTarget(0);
  for (const lun of [300, 0, 7, 255]) t.attach(lun, unit());
  for (const from of [0, 7, 1000, WLUN_REPORT_LUNS]) {
    const r = await run((task) => t.execute(from, task), Cdb.reportLuns(), { in: 4096 });
    assertGood(r, `from LUN ${from}`);
    assert.equal(r.data.length, 8 + 4 * 8);
    assert.deepEqual(lunList(r.data), ['0000000000000000', '0007000000000000', '00ff000000000000', '412c000000000000']);
  }
});

test('REPORT LUNS: SELECT REPORT 1 and 2 add the well-known LUN; 3 and up are invalid; allocation truncates', async () => {
  const t = new ScsiTarget(3);
  t.attach(1, unit());
  const one = await run((task) => t.execute(1, task), Cdb.reportLuns(4096, 1), { in: 4096 });
  assert.deepEqual(lunList(one.data), ['c101000000000000']);
  const two = await run((task) => t.execute(1, task), Cdb.reportLuns(4096, 2), { in: 4096 });
  assert.deepEqual(lunList(two.data), ['0001000000000000', 'c101000000000000']);
  const bad = await run((task) => t.execute(1, task), Cdb.reportLuns(4096, 3), { in: 4096 });
  assertSense(bad, Sense.INVALID_FIELD_IN_CDB);
  assert.deepEqual(bad.sense!.field, { inCdb: true, byte: 2 });
  const short = await run((task) => t.execute(1, task), Cdb.reportLuns(8), { in: 4096 });
  assertGood(short);
  assert.equal(short.dataInTransferred, 8);
  assert.equal(short.data.readUInt32BE(0), 8, 'the list length still counts every LUN');
});

test('a LUN without a unit: INQUIRY peripheral qualifier 3, REQUEST SENSE and others LOGICAL UNIT NOT SUPPORTED', async () => {
  const t = new ScsiTarget(0);
  t.attach(1, unit());
  const exec = (task: Parameters<ScsiTarget['execute']>[1]) => t.execute(0, task);
  const inq = await run(exec, Cdb.inquiry(96), { in: 96 });
  assertGood(inq);
  assert.equal(inq.data[0], 0x7f);
  assert.equal(inq.data.length, 36);
  const vpd0 = await run(exec, Cdb.inquiry(96, true, 0), { in: 96 });
  assertGood(vpd0);
  assert.deepEqual([...vpd0.data], [0x7f, 0, 0, 1, 0]);
  assertSense(await run(exec, Cdb.inquiry(96, true, 0x83), { in: 96 }), Sense.INVALID_FIELD_IN_CDB);
  assertSense(await run(exec, Cdb.inquiry(96, false, 0x83), { in: 96 }), Sense.INVALID_FIELD_IN_CDB);
  const rs = await run(exec, Cdb.requestSense(), { in: 252 });
  assertGood(rs);
  assert.deepEqual([rs.data[2], rs.data[12], rs.data[13]], [SenseKey.ILLEGAL_REQUEST, 0x25, 0x00]);
  for (const cdb of [Cdb.testUnitReady(), Cdb.read10(0, 1), Cdb.readCapacity10(), Cdb.modeSense6(0x08), [0xc0, 0, 0, 0, 0, 0]]) {
    assertSense(await run(exec, cdb, { in: 512 }), Sense.LUN_NOT_SUPPORTED, `opcode 0x${cdb[0]!.toString(16)}`);
  }
  // Bad addresses (-1) are treated alike.
  assertSense(await run((task) => t.execute(-1, task), Cdb.testUnitReady()), Sense.LUN_NOT_SUPPORTED);
});

test('the REPORT LUNS well-known unit: INQUIRY type 1Eh, TEST UNIT READY, REQUEST SENSE; nothing else', async () => {
  const t = new ScsiTarget(0);
  t.attach(0, unit());
  const exec = (task: Parameters<ScsiTarget['execute']>[1]) => t.execute(WLUN_REPORT_LUNS, task);
  const inq = await run(exec, Cdb.inquiry(96), { in: 96 });
  assert.equal(inq.data[0], 0x1e);
  assertGood(await run(exec, Cdb.testUnitReady()));
  const rs = await run(exec, Cdb.requestSense(), { in: 252 });
  assert.equal(rs.data[2], SenseKey.NO_SENSE);
  assertSense(await run(exec, Cdb.read10(0, 1), { in: 512 }), Sense.INVALID_OPCODE);
});

test('attaching and detaching units: REPORTED LUNS DATA HAS CHANGED for the others, cleared by REPORT LUNS', async () => {
  const t = new ScsiTarget(0);
  const a = unit();
  const b = unit();
  const c = unit();
  t.attach(0, a);
  assert.equal(a.unitAttentions.length, 0, 'the first unit has nothing to be told');
  t.attach(1, b);
  assert.deepEqual(a.unitAttentions, [Sense.REPORTED_LUNS_CHANGED]);
  assert.equal(b.unitAttentions.length, 0, 'the new unit starts clean');
  assertSense(await run((task) => t.execute(0, task), Cdb.testUnitReady()), Sense.REPORTED_LUNS_CHANGED);
  assertGood(await run((task) => t.execute(0, task), Cdb.testUnitReady()));
  t.attach(2, c);
  assert.equal(a.unitAttentions.length, 1);
  assert.equal(b.unitAttentions.length, 1);
  await run((task) => t.execute(5, task), Cdb.reportLuns(), { in: 4096 });
  assert.equal(a.unitAttentions.length, 0, 'REPORT LUNS clears it on every unit');
  assert.equal(b.unitAttentions.length, 0);
  assert.equal(t.detach(1), b);
  assert.equal(t.detach(1), undefined);
  assert.deepEqual(c.unitAttentions, [Sense.REPORTED_LUNS_CHANGED]);
  assert.equal(b.address, '0:1');
  assert.throws(() => t.attach(0, unit()), /already has LUN 0/);
  assert.throws(() => t.attach(16384, unit()), /not in 0\.\.16383/);
  assert.throws(() => t.attach(-1, unit()), /not in/);
  const full = new ScsiTarget(1);
  for (let i = 0; i < 256; i++) full.attach(i, a);
  assert.throws(() => full.attach(300, a), /256 LUNs/);
});

/** A unit whose storage holds reads and writes until released. */
function heldUnit(): { unit: LogicalUnit; storage: TestStorage } {
  const storage = new TestStorage(new MemoryStorage({ size: MiB }));
  storage.hold.add('read');
  storage.hold.add('write');
  return { unit: new LogicalUnit({ storage }), storage };
}

test('ABORT TASK: the task ends ABORTED once its I/O returns, before the function completes; others go on', async () => {
  const t = new ScsiTarget(0);
  const { unit: u, storage } = heldUnit();
  t.attach(0, u);
  const exec = (task: Parameters<ScsiTarget['execute']>[1]) => t.execute(0, task);
  const a = start(exec, Cdb.read10(0, 1), { in: 512, tag: 11 });
  const b = start(exec, Cdb.read10(1, 1), { in: 512, tag: 12 });
  assert.equal(await t.taskManagement('query-task', 0, 11), TmfResponse.FUNCTION_SUCCEEDED);
  assert.equal(await t.taskManagement('query-task-set', 0), TmfResponse.FUNCTION_SUCCEEDED);
  const order: string[] = [];
  void a.done.then(() => order.push('a'));
  void b.done.then(() => order.push('b'));
  const tmf = t.taskManagement('abort-task', 0, 11).then((r) => {
    order.push('tmf');
    return r;
  });
  await new Promise((r) => setImmediate(r));
  assert.equal(order.length, 0, 'the function waits for the I/O under way');
  storage.release();
  assert.equal(await tmf, TmfResponse.FUNCTION_COMPLETE);
  const ra = await a.done;
  const rb = await b.done;
  assert.equal(ra.response, TaskResponse.ABORTED);
  assert.equal(ra.completions, 1);
  assertGood(rb);
  assert.equal(order.indexOf('a') < order.indexOf('tmf'), true, `aborted task before the TMF: ${order}`);
  assert.equal(await t.taskManagement('query-task', 0, 11), TmfResponse.FUNCTION_COMPLETE);
  assert.equal(await t.taskManagement('query-task-set', 0), TmfResponse.FUNCTION_COMPLETE);
  // A tag that is not running: nothing to do, still complete.
  assert.equal(await t.taskManagement('abort-task', 0, 99), TmfResponse.FUNCTION_COMPLETE);
  assert.equal(u.stats.aborted, 1);
});

test('an aborted write with FUA stops before the flush', async () => {
  const t = new ScsiTarget(0);
  const { unit: u, storage } = heldUnit();
  t.attach(0, u);
  const w = start((task) => t.execute(0, task), Cdb.write10(0, 1, 0x08), { out: new Uint8Array(512), tag: 5 });
  const tmf = t.taskManagement('abort-task', 0, 5);
  storage.release();
  assert.equal(await tmf, TmfResponse.FUNCTION_COMPLETE);
  assert.equal((await w.done).response, TaskResponse.ABORTED);
  assert.deepEqual(storage.calls, ['write 0+512'], 'no flush after the abort');
});

test('ABORT TASK SET / CLEAR TASK SET end every task of the unit, not of other units', async () => {
  const t = new ScsiTarget(0);
  const one = heldUnit();
  const two = heldUnit();
  t.attach(0, one.unit);
  t.attach(1, two.unit);
  one.unit.clearUnitAttention(Sense.REPORTED_LUNS_CHANGED);
  for (const fn of ['abort-task-set', 'clear-task-set'] as const) {
    const tasks = [0, 1, 2].map((i) => start((task) => t.execute(0, task), Cdb.read10(i, 1), { in: 512, tag: i }));
    const other = start((task) => t.execute(1, task), Cdb.read10(0, 1), { in: 512, tag: 0 });
    const tmf = t.taskManagement(fn, 0);
    one.storage.release();
    assert.equal(await tmf, TmfResponse.FUNCTION_COMPLETE);
    for (const x of tasks) assert.equal((await x.done).response, TaskResponse.ABORTED, fn);
    two.storage.release();
    assertGood(await other.done);
  }
});

test('LOGICAL UNIT RESET: tasks end with RESET, then a unit attention 29/03', async () => {
  const t = new ScsiTarget(0);
  const { unit: u, storage } = heldUnit();
  t.attach(0, u);
  const x = start((task) => t.execute(0, task), Cdb.write10(0, 1), { out: new Uint8Array(512) });
  const tmf = t.taskManagement('logical-unit-reset', 0);
  storage.release();
  assert.equal(await tmf, TmfResponse.FUNCTION_COMPLETE);
  assert.equal((await x.done).response, TaskResponse.RESET);
  assertSense(await run((task) => t.execute(0, task), Cdb.testUnitReady()), Sense.LUN_RESET_OCCURRED);
  assertGood(await run((task) => t.execute(0, task), Cdb.testUnitReady()));
  // With nothing running it completes at once.
  assert.equal(await t.taskManagement('logical-unit-reset', 0), TmfResponse.FUNCTION_COMPLETE);
});

test('I_T NEXUS RESET: every unit of the target resets its tasks and reports 29/07', async () => {
  const t = new ScsiTarget(0);
  const one = heldUnit();
  const two = heldUnit();
  t.attach(0, one.unit);
  t.attach(4, two.unit);
  one.unit.clearUnitAttention(Sense.REPORTED_LUNS_CHANGED);
  const a = start((task) => t.execute(0, task), Cdb.read10(0, 1), { in: 512 });
  const b = start((task) => t.execute(4, task), Cdb.read10(0, 1), { in: 512 });
  // The LUN is ignored for a nexus reset.
  const tmf = t.taskManagement('i-t-nexus-reset', 77);
  one.storage.release();
  two.storage.release();
  assert.equal(await tmf, TmfResponse.FUNCTION_COMPLETE);
  assert.equal((await a.done).response, TaskResponse.RESET);
  assert.equal((await b.done).response, TaskResponse.RESET);
  assertSense(await run((task) => t.execute(0, task), Cdb.testUnitReady()), Sense.NEXUS_LOSS_OCCURRED);
  assertSense(await run((task) => t.execute(4, task), Cdb.testUnitReady()), Sense.NEXUS_LOSS_OCCURRED);
});

test('task management on a LUN without a unit: INCORRECT LUN; CLEAR ACA is rejected', async () => {
  const t = new ScsiTarget(0);
  t.attach(0, unit());
  for (const fn of ['abort-task', 'abort-task-set', 'clear-task-set', 'logical-unit-reset', 'query-task', 'query-task-set', 'clear-aca'] as const) {
    assert.equal(await t.taskManagement(fn, 3), TmfResponse.INCORRECT_LUN, fn);
  }
  assert.equal(await t.taskManagement('clear-aca', 0), TmfResponse.FUNCTION_REJECTED);
});

test('whenIdle waits for running tasks; a task finished by the storage after the unit was detached still completes', async () => {
  const bus = new ScsiBus();
  const { unit: u, storage } = heldUnit();
  bus.add(0, 0, u);
  const x = start((task) => bus.target(0)!.execute(0, task), Cdb.read10(0, 1), { in: 512 });
  assert.equal(bus.remove(0, 0), u);
  let idle = false;
  const waiting = u.whenIdle().then(() => (idle = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(idle, false);
  storage.release();
  await waiting;
  assertGood(await x.done);
});
