import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStorage } from '../../../src/devices/blk/storage/memory.js';
import { ScsiDevice } from '../../../src/devices/scsi/device.js';
import {
  ControlType, EventType, ResetReason, ScsiResponse, TmfSubtype, VirtioScsi, decodeLun, decodeResponseHeader, encodeLunField,
  encodeRequestHeader, lunTarget,
} from '../../../src/devices/scsi/protocol.js';
import { ProtocolFeature } from '../../../src/protocol/constants.js';
import { ScsiBus } from '../../../src/scsi/bus.js';
import { Sense, ScsiStatus, WLUN_REPORT_LUNS } from '../../../src/scsi/constants.js';
import { LogicalUnit } from '../../../src/scsi/logical-unit.js';
import { decodeFixedSense } from '../../../src/scsi/sense.js';
import { CommonFeature, ScsiFeature, featureMask, hasFeature } from '../../../src/virtio/constants.js';
import { waitUntil } from '../../helpers/tmp.js';
import { Cdb, pattern } from '../../scsi/helpers.js';
import { withScsi, type CommandReply } from './helpers.js';
import { TestStorage } from '../../helpers/test-storage.js';

const MiB = 1 << 20;
const RESPONSE = VirtioScsi.RESPONSE_HEADER_BASE + VirtioScsi.DEFAULT_SENSE_SIZE;

function memoryUnit(size = 4 * MiB, options: { serial?: string; readOnly?: boolean } = {}): LogicalUnit {
  return new LogicalUnit({ storage: new MemoryStorage({ size }), ...options });
}

function busWith(...units: [number, number, LogicalUnit][]): ScsiBus {
  const bus = new ScsiBus();
  for (const [t, l, u] of units) bus.add(t, l, u);
  for (const [, , u] of units) for (const s of Object.values(Sense)) u.clearUnitAttention(s);
  return bus;
}

function assertGood(r: CommandReply, message?: string): void {
  assert.equal(r.response, ScsiResponse.OK, message);
  assert.equal(r.status, ScsiStatus.GOOD, `${message ?? ''} ${JSON.stringify(r.decoded)}`);
  assert.equal(r.senseLen, 0, message);
}

function assertSense(r: CommandReply, code: { key: number; asc: number; ascq: number }, message?: string): void {
  assert.equal(r.response, ScsiResponse.OK, message);
  assert.equal(r.status, ScsiStatus.CHECK_CONDITION, message);
  assert.equal(r.senseLen, 18, message);
  assert.deepEqual([r.decoded!.key, r.decoded!.asc, r.decoded!.ascq], [code.key, code.asc, code.ascq], message);
}

test('LUN fields: target, peripheral and flat LUNs, the well-known LUN, and what is not a LUN', () => {
  const f = encodeLunField(3, 7);
  assert.deepEqual([...f], [1, 3, 0, 7, 0, 0, 0, 0]);
  assert.deepEqual([...encodeLunField(3, 7, true)], [1, 3, 0x40, 7, 0, 0, 0, 0]);
  assert.deepEqual([...encodeLunField(0, 300)], [1, 0, 0x41, 0x2c, 0, 0, 0, 0]);
  assert.equal(lunTarget(f), 3);
  assert.equal(decodeLun(f), 7);
  assert.equal(decodeLun(encodeLunField(3, 7, true)), 7);
  assert.equal(decodeLun(encodeLunField(0, 16383)), 16383);
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0xc1, 0x01, 0, 0, 0, 0)), WLUN_REPORT_LUNS);
  assert.equal(lunTarget(Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0)), -1);
  assert.equal(lunTarget(Uint8Array.of(0xc1, 0x01, 0, 0, 0, 0, 0, 0)), -1);
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0, 1, 0, 0, 0, 1)), -1, 'second level');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0x80, 1, 0, 0, 0, 0)), -1, 'logical unit addressing');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0x05, 1, 0, 0, 0, 0)), -1, 'peripheral with a bus number');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0xc1, 0x02, 0, 0, 0, 0)), -1, 'other well-known LUNs');
});

test('offers HOTPLUG, control + event + request queues, and a config space with the defaults', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]), numQueues: 3 }, async ({ connect }) => {
    const c = await connect();
    const f = c.driver.offeredFeatures;
    assert.ok(hasFeature(f, ScsiFeature.HOTPLUG));
    assert.ok(hasFeature(f, ScsiFeature.CHANGE), 'QEMU 7.2 passes the guest\'s CHANGE bit through');
    assert.ok(!hasFeature(f, ScsiFeature.INOUT));
    assert.ok(!hasFeature(f, ScsiFeature.T10_PI));
    assert.ok(hasFeature(f, CommonFeature.VERSION_1));
    assert.ok(c.driver.hasProtocolFeature(ProtocolFeature.CONFIG));
    assert.equal(c.driver.maxQueues, 5);
    assert.deepEqual(await c.config(), {
      num_queues: 3, seg_max: 254, max_sectors: 0xffff, cmd_per_lun: 128, event_info_size: 16, sense_size: 96,
      cdb_size: 32, max_channel: 0, max_target: 255, max_lun: 16383,
    });
  });
  assert.throws(() => new ScsiDevice({ numQueues: 0 }), /numQueues/);
  assert.throws(() => new ScsiDevice({ maxQueueSize: 100 }), /power of two/);
  assert.equal(new ScsiDevice({ hotplug: false }).features, featureMask(ScsiFeature.CHANGE));
});

test('INQUIRY through a request queue: response OK, data, residual, used length = response + data', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit(4 * MiB, { serial: 'dev-serial' })]) }, async ({ connect }) => {
    const c = await connect();
    const r = await c.command(0, 0, Cdb.inquiry(96), { in: 96 });
    assertGood(r);
    assert.equal(r.len, RESPONSE + 64);
    assert.equal(r.residual, 96 - 64);
    assert.equal(r.data.subarray(8, 16).toString('latin1'), 'VHOSTUSR');
    const serial = await c.command(0, 0, Cdb.inquiry(255, true, 0x80), { in: [3, 100] });
    assertGood(serial);
    assert.equal(serial.data.subarray(4, 14).toString('latin1'), 'dev-serial');
    // Flat addressing, as Linux sends it, reaches the same unit.
    assertGood(await c.command(0, 0, Cdb.testUnitReady(), { flat: true }));
  });
});

test('writes and reads through several request queues and scattered buffers; per-queue counts', async () => {
  const unit = memoryUnit(8 * MiB);
  await withScsi({ bus: busWith([2, 5, unit]), numQueues: 2 }, async ({ connect, device }) => {
    const c = await connect();
    const data = pattern(64 * 1024, 4);
    const w = await c.command(2, 5, Cdb.write10(100, 128), { out: [data.subarray(0, 1000), data.subarray(1000, 40000), data.subarray(40000)], q: 1 });
    assertGood(w);
    assert.equal(w.len, RESPONSE, 'nothing written to the guest but the response');
    assert.equal(w.residual, 0);
    const r = await c.command(2, 5, Cdb.read16(100, 128), { in: [512, 30000, 65536 - 30512], q: 0 });
    assertGood(r);
    assert.equal(r.len, RESPONSE + data.length);
    assert.deepEqual(r.data, Buffer.from(data));
    const both = await Promise.all([0, 1, 0, 1].map((q, i) => c.command(2, 5, Cdb.read10(100 + i, 1), { in: 512, q })));
    for (const b of both) assertGood(b);
    assert.deepEqual(device.stats.perQueue, [3, 3]);
    assert.equal(unit.stats.reads, 5);
  });
});

test('sense data: CHECK CONDITION with 18 bytes of sense; a smaller sense_size truncates it', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect }) => {
    const c = await connect();
    const r = await c.command(0, 0, Cdb.read10(0xfffffff0, 1), { in: 512 });
    assertSense(r, Sense.LBA_OUT_OF_RANGE);
    assert.equal(r.len, RESPONSE);
    assert.equal(r.residual, 512);
    await c.driver.frontend.setConfig(VirtioScsi.SENSE_SIZE_OFFSET, Uint8Array.of(8, 0, 0, 0));
    c.senseSize = 8;
    const s = await c.command(0, 0, Cdb.read10(0xfffffff0, 1), { in: 512 });
    assert.equal(s.status, ScsiStatus.CHECK_CONDITION);
    assert.equal(s.senseLen, 8);
    assert.equal(s.len, 12 + 8);
    assert.deepEqual([...s.sense], [0x70, 0, 0x05, 0, 0, 0, 0, 10]);
  });
});

test('cdb_size and sense_size are writable, nothing else; the next driver gets the defaults back', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect }) => {
    const c = await connect();
    await c.driver.frontend.setConfig(VirtioScsi.CDB_SIZE_OFFSET, Uint8Array.of(16, 0, 0, 0));
    c.cdbSize = 16;
    assertGood(await c.command(0, 0, Cdb.read16(1, 1), { in: 512 }), '16-byte CDB in a 35-byte header');
    assert.equal((await c.config()).cdb_size, 16);
    await assert.rejects(c.driver.frontend.setConfig(0, Uint8Array.of(9, 0, 0, 0)));
    await assert.rejects(c.driver.frontend.setConfig(24, Uint8Array.of(0, 1, 0, 0)), 'cdb_size 256');
    await assert.rejects(c.driver.frontend.setConfig(34, Uint8Array.of(0, 0, 0, 0)), 'past the end');
    // The whole struct with the same values elsewhere is fine.
    const whole = await c.driver.getConfig(0, 36);
    whole[20] = 32;
    await c.driver.frontend.setConfig(0, whole);
    assert.equal((await c.config()).sense_size, 32);
    c.close();
    const d = await connect();
    await waitUntil(() => true);
    const cfg = await d.config();
    assert.equal(cfg.cdb_size, 32);
    assert.equal(cfg.sense_size, 96);
  });
});

test('missing targets: BAD_TARGET without reaching any unit; missing LUNs: the target answers', async () => {
  const unit = memoryUnit();
  await withScsi({ bus: busWith([0, 1, unit]) }, async ({ connect, device }) => {
    const c = await connect();
    const bad = await c.command(7, 0, Cdb.inquiry(96), { in: 96 });
    assert.equal(bad.response, ScsiResponse.BAD_TARGET);
    assert.equal(bad.senseLen, 0);
    assert.equal(bad.residual, 96);
    assert.equal(bad.len, RESPONSE);
    assert.ok(bad.data.every((b) => b === 0xee), 'no data written');
    const field = Uint8Array.of(2, 0, 0, 1, 0, 0, 0, 0);
    assert.equal((await c.command(0, 0, Cdb.testUnitReady(), { lunField: field })).response, ScsiResponse.BAD_TARGET);
    assert.equal(device.stats.badTarget, 2);
    // LUN 0 of target 0 has no unit.
    const inq = await c.command(0, 0, Cdb.inquiry(96), { in: 96 });
    assertGood(inq);
    assert.equal(inq.data[0], 0x7f);
    assertSense(await c.command(0, 0, Cdb.testUnitReady()), Sense.LUN_NOT_SUPPORTED);
    // A LUN field with a second level: not a LUN of ours.
    assertSense(await c.command(0, 0, Cdb.testUnitReady(), { lunField: Uint8Array.of(1, 0, 0, 1, 0, 0, 0, 1) }), Sense.LUN_NOT_SUPPORTED);
    const luns = await c.command(0, 0, Cdb.reportLuns(), { in: 64 });
    assertGood(luns);
    assert.equal(luns.data.readUInt32BE(0), 8);
    assert.equal(luns.data.subarray(8, 16).toString('hex'), '0001000000000000');
    assert.equal(unit.stats.commands, 0);
  });
});

test('OVERRUN for buffers too small; FAILURE for short headers and responses and for data both ways', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect, device }) => {
    const c = await connect();
    assert.equal((await c.command(0, 0, Cdb.read10(0, 8), { in: 4095 })).response, ScsiResponse.OVERRUN);
    const shortHeader = await c.command(0, 0, Cdb.testUnitReady(), { cdbSize: 8 });
    assert.equal(shortHeader.response, ScsiResponse.FAILURE);
    const shortResponse = await c.command(0, 0, Cdb.testUnitReady(), { responseSize: 50 });
    assert.equal(shortResponse.response, ScsiResponse.FAILURE);
    assert.equal(shortResponse.len, 50);
    const both = await c.command(0, 0, Cdb.write10(0, 1), { out: new Uint8Array(512), in: 512 });
    assert.equal(both.response, ScsiResponse.FAILURE);
    assert.equal(device.stats.failures, 3);
    // No room for even a response header: completed with length 0.
    const tiny = c.alloc(4, 1, 0xee);
    const len = await c.driver.submit(2, [c.put(new Uint8Array(51))], [tiny]);
    assert.equal(len, 0);
    assert.equal(device.stats.noResponse, 1);
    // And the device goes on.
    assertGood(await c.command(0, 0, Cdb.testUnitReady()));
  });
});

/** A unit whose reads and writes wait until released. */
function heldUnit(): { unit: LogicalUnit; storage: TestStorage } {
  const storage = new TestStorage(new MemoryStorage({ size: 4 * MiB }));
  storage.hold.add('read');
  storage.hold.add('write');
  return { unit: new LogicalUnit({ storage }), storage };
}

test('ABORT TASK: the command completes ABORTED before the TMF completes; QUERY TASK sees it while it runs', async () => {
  const { unit, storage } = heldUnit();
  await withScsi({ bus: busWith([0, 0, unit]) }, async ({ connect, device }) => {
    const c = await connect();
    const order: string[] = [];
    const cmd = c.command(0, 0, Cdb.read10(0, 1), { in: 512, tag: 0x1_0000_0042n }).then((r) => {
      order.push('cmd');
      return r;
    });
    await waitUntil(() => storage.heldCount === 1);
    assert.equal(await c.tmf(TmfSubtype.QUERY_TASK, 0, 0, 0x1_0000_0042n), ScsiResponse.FUNCTION_SUCCEEDED);
    assert.equal(await c.tmf(TmfSubtype.QUERY_TASK, 0, 0, 0x42), ScsiResponse.OK, 'the tag is 64 bits');
    assert.equal(await c.tmf(TmfSubtype.QUERY_TASK_SET, 0, 0), ScsiResponse.FUNCTION_SUCCEEDED);
    const tmf = c.tmf(TmfSubtype.ABORT_TASK, 0, 0, 0x1_0000_0042n).then((r) => {
      order.push('tmf');
      return r;
    });
    await waitUntil(() => device.stats.tmfs === 4);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(order.length, 0, 'the TMF waits for the command');
    storage.release();
    assert.equal(await tmf, ScsiResponse.OK);
    const r = await cmd;
    assert.equal(r.response, ScsiResponse.ABORTED);
    assert.deepEqual(order, ['cmd', 'tmf']);
    assert.equal(await c.tmf(TmfSubtype.QUERY_TASK_SET, 0, 0), ScsiResponse.OK);
  });
});

test('headers and responses on word boundaries (read a word at a time) and off them (byte by byte) decode alike', async () => {
  const held = heldUnit();
  const bus = busWith([2, 0, memoryUnit(8 * MiB)], [2, 300, memoryUnit(8 * MiB)], [3, 0, held.unit]);
  await withScsi({ bus }, async ({ connect }) => {
    const c = await connect();
    for (const misalign of [false, true]) {
      const how = misalign ? 'off a word boundary' : 'on a word boundary';
      const data = pattern(2048, misalign ? 5 : 6);
      // Flat addressing and a LUN above 255; READ/WRITE(16) with an LBA above 2^32 is out of range, one below is not.
      assertGood(await c.command(2, 300, Cdb.write16(8000, 4), { out: data, flat: true, misalign }), how);
      const back = await c.command(2, 300, Cdb.read16(8000, 4), { in: 2048, flat: true, misalign });
      assertGood(back, how);
      assert.deepEqual([back.len, back.residual], [RESPONSE + 2048, 0], how);
      assert.deepEqual(back.data, Buffer.from(data), how);
      const other = await c.command(2, 0, Cdb.read16(8000, 4), { in: 2048, misalign });
      assertGood(other, how);
      assert.notDeepEqual(other.data, Buffer.from(data), `${how}: LUN 0 is another unit`);
      assertSense(await c.command(2, 300, Cdb.read16(2n ** 32n + 8000n, 1), { in: 512, flat: true, misalign }),
        Sense.LBA_OUT_OF_RANGE, how);
      // A residual: INQUIRY fills 36 of 100 bytes.
      const inq = await c.command(2, 0, Cdb.inquiry(36), { in: 100, misalign });
      assertGood(inq, how);
      assert.deepEqual([inq.residual, inq.len, inq.data[0]], [64, RESPONSE + 36, 0], how);
      // Bytes 4-7 of the LUN field must be zero: this names no LUN, and the target answers for it.
      const field = encodeLunField(2, 0, true);
      field[6] = 1;
      const none = await c.command(2, 0, Cdb.inquiry(36), { in: 36, lunField: field, misalign });
      assertGood(none, how);
      assert.equal(none.data[0], 0x7f, `${how}: peripheral qualifier 011b, no device`);
      assert.equal((await c.command(4, 0, Cdb.testUnitReady(), { misalign })).response, ScsiResponse.BAD_TARGET, how);
      // The 64-bit tag, as task management sees it.
      const tag = misalign ? 0xfedc_ba98_0000_0007n : 0x1_0000_0042n;
      const cmd = c.command(3, 0, Cdb.read10(0, 1), { in: 512, tag, misalign });
      await waitUntil(() => held.storage.heldCount === 1);
      assert.equal(await c.tmf(TmfSubtype.QUERY_TASK, 3, 0, tag), ScsiResponse.FUNCTION_SUCCEEDED, how);
      assert.equal(await c.tmf(TmfSubtype.QUERY_TASK, 3, 0, tag & 0xffff_ffffn), ScsiResponse.OK, how);
      held.storage.release();
      assertGood(await cmd, how);
    }
  });
});

test('LOGICAL UNIT RESET and I_T NEXUS RESET: RESET responses, then unit attentions', async () => {
  const one = heldUnit();
  const two = heldUnit();
  await withScsi({ bus: busWith([0, 0, one.unit], [0, 1, two.unit]) }, async ({ connect, device }) => {
    const c = await connect();
    const a = c.command(0, 0, Cdb.write10(0, 1), { out: new Uint8Array(512) });
    await waitUntil(() => one.storage.heldCount === 1);
    const reset = c.tmf(TmfSubtype.LOGICAL_UNIT_RESET, 0, 0);
    await waitUntil(() => device.stats.tmfs === 1);
    one.storage.release();
    assert.equal(await reset, ScsiResponse.OK);
    assert.equal((await a).response, ScsiResponse.RESET);
    assertSense(await c.command(0, 0, Cdb.testUnitReady()), Sense.LUN_RESET_OCCURRED);
    const b = c.command(0, 1, Cdb.read10(0, 1), { in: 512 });
    await waitUntil(() => two.storage.heldCount === 1);
    const nexus = c.tmf(TmfSubtype.I_T_NEXUS_RESET, 0, 9);
    await waitUntil(() => device.stats.tmfs === 2);
    two.storage.release();
    assert.equal(await nexus, ScsiResponse.OK);
    assert.equal((await b).response, ScsiResponse.RESET);
    assertSense(await c.command(0, 0, Cdb.testUnitReady()), Sense.NEXUS_LOSS_OCCURRED);
    assertSense(await c.command(0, 1, Cdb.testUnitReady()), Sense.NEXUS_LOSS_OCCURRED);
  });
});

test('task management answers: BAD_TARGET, INCORRECT_LUN, REJECTED for CLEAR ACA and unknown subtypes', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect, device }) => {
    const c = await connect();
    assert.equal(await c.tmf(TmfSubtype.ABORT_TASK_SET, 0, 0), ScsiResponse.OK);
    assert.equal(await c.tmf(TmfSubtype.CLEAR_TASK_SET, 0, 0), ScsiResponse.OK);
    assert.equal(await c.tmf(TmfSubtype.ABORT_TASK, 4, 0), ScsiResponse.BAD_TARGET);
    assert.equal(await c.tmf(TmfSubtype.LOGICAL_UNIT_RESET, 0, 3), ScsiResponse.INCORRECT_LUN);
    assert.equal(await c.tmf(TmfSubtype.I_T_NEXUS_RESET, 0, 3), ScsiResponse.OK, 'the LUN does not matter');
    assert.equal(await c.tmf(TmfSubtype.CLEAR_ACA, 0, 0), ScsiResponse.FUNCTION_REJECTED);
    assert.equal(await c.tmf(99, 0, 0), ScsiResponse.FUNCTION_REJECTED);
    assert.equal(device.stats.tmfs, 7);
  });
});

test('asynchronous notification queries: no events supported; BAD_TARGET and INCORRECT_LUN', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect, device }) => {
    const c = await connect();
    assert.deepEqual(await c.an(0, 0, 0x7e), { eventActual: 0, response: ScsiResponse.OK, len: 5 });
    assert.deepEqual(await c.an(0, 0, 0x10, ControlType.AN_SUBSCRIBE), { eventActual: 0, response: ScsiResponse.OK, len: 5 });
    assert.equal((await c.an(0, 1, 0x10)).response, ScsiResponse.INCORRECT_LUN);
    assert.equal((await c.an(5, 0, 0x10)).response, ScsiResponse.BAD_TARGET);
    assert.equal(device.stats.anQueries, 4);
  });
});

test('malformed control requests: FAILURE in the last byte; no writable byte: length 0', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect, device }) => {
    const c = await connect();
    const resp = c.alloc(3, 1, 0xee);
    const len = await c.driver.submit(0, [c.put(Uint8Array.of(7, 0, 0, 0))], [resp]);
    assert.equal(len, 3);
    assert.deepEqual([...c.view(resp)], [0xee, 0xee, ScsiResponse.FAILURE]);
    const shortTmf = c.alloc(1, 1, 0xee);
    await c.driver.submit(0, [c.put(new Uint8Array(10))], [shortTmf]);
    assert.equal(c.view(shortTmf)[0], ScsiResponse.FAILURE);
    assert.equal(await c.driver.submit(0, [c.put(new Uint8Array(24))], []), 0);
    assert.equal(device.stats.failures, 2);
    assert.equal(device.stats.noResponse, 1);
  });
});

test('hot-plug: units added and removed at run time are reported as TRANSPORT_RESET events', async () => {
  const bus = busWith([0, 0, memoryUnit()]);
  await withScsi({ bus }, async ({ connect, device }) => {
    const c = await connect();
    assert.ok(device.hotplugNegotiated);
    const first = c.event();
    const second = c.event();
    await new Promise((r) => setTimeout(r, 20));
    const added = memoryUnit(2 * MiB, { serial: 'hot' });
    device.addUnit(0, 3, added);
    const e1 = await first;
    assert.deepEqual({ event: e1.event, target: e1.target, lun: e1.lun, reason: e1.reason, len: e1.len },
      { event: EventType.TRANSPORT_RESET, target: 0, lun: 3, reason: ResetReason.RESCAN, len: 16 });
    assert.deepEqual([...e1.raw.subarray(4, 12)], [1, 0, 0, 3, 0, 0, 0, 0]);
    // The new unit answers; the old one was told the inventory changed.
    assertGood(await c.command(0, 3, Cdb.testUnitReady()));
    assertSense(await c.command(0, 0, Cdb.testUnitReady()), Sense.REPORTED_LUNS_CHANGED);
    // Removal waits for nothing here, and is reported.
    const removed = await device.removeUnit(0, 3);
    assert.equal(removed, added);
    const e2 = await second;
    assert.deepEqual([e2.event, e2.target, e2.lun, e2.reason], [EventType.TRANSPORT_RESET, 0, 3, ResetReason.REMOVED]);
    assertSense(await c.command(0, 3, Cdb.testUnitReady()), Sense.LUN_NOT_SUPPORTED);
    // A unit on a new target, with a LUN above 255 (flat addressing, as Linux numbers it).
    const third = c.event();
    device.addUnit(9, 300, memoryUnit());
    const e3 = await third;
    assert.deepEqual([...e3.raw.subarray(4, 12)], [1, 9, 0x41, 0x2c, 0, 0, 0, 0]);
    assert.equal(e3.lun, 0x412c);
    assertGood(await c.command(9, 300, Cdb.testUnitReady(), { flat: true }));
    assert.equal(await device.removeUnit(9, 1), undefined);
    assert.equal(device.stats.events, 3);
  });
});

test('hot-plug: events wait for event buffers; beyond the limit they are dropped and reported missed', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]), maxPendingEvents: 2 }, async ({ connect, device }) => {
    const c = await connect();
    await waitUntil(() => device.hotplugNegotiated);
    device.addUnit(0, 1, memoryUnit());
    assert.equal(device.pendingEvents, 1, 'no event buffer yet');
    const e = await c.event();
    assert.deepEqual([e.event, e.lun, e.reason], [EventType.TRANSPORT_RESET, 1, ResetReason.RESCAN]);
    for (let lun = 2; lun <= 5; lun++) device.addUnit(0, lun, memoryUnit());
    assert.equal(device.pendingEvents, 2);
    assert.equal(device.stats.eventsDropped, 2);
    const m = await c.event();
    assert.equal(m.event, (EventType.TRANSPORT_RESET | EventType.EVENTS_MISSED) >>> 0, 'the first delivered carries the missed flag');
    assert.equal(m.lun, 4);
    const last = await c.event();
    assert.deepEqual([last.event, last.lun], [EventType.TRANSPORT_RESET, 5]);
    // A buffer too small for an event is returned with what fits of NO_EVENT; the event stays pending.
    device.addUnit(0, 6, memoryUnit());
    const small = await c.event(8);
    assert.equal(small.len, 8);
    assert.deepEqual([...small.raw], [0, 0, 0, 0, 0, 0, 0, 0]);
    const six = await c.event();
    assert.equal(six.lun, 6);
  });
});

test('without HOTPLUG no events are sent; the other units still see REPORTED LUNS DATA HAS CHANGED', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect, device }) => {
    const all = (1n << 64n) - 1n;
    const c = await connect({ features: all & ~featureMask(ScsiFeature.HOTPLUG) });
    assert.equal(device.hotplugNegotiated, false);
    let delivered = false;
    void c.event().then(() => (delivered = true), () => undefined);
    device.addUnit(0, 2, memoryUnit());
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(delivered, false);
    assert.equal(device.pendingEvents, 0);
    assertSense(await c.command(0, 0, Cdb.testUnitReady()), Sense.REPORTED_LUNS_CHANGED);
  });
});

test('removeUnit resolves only once the unit\'s running commands have ended', async () => {
  const { unit, storage } = heldUnit();
  await withScsi({ bus: busWith([1, 0, unit]) }, async ({ connect, device }) => {
    const c = await connect();
    const cmd = c.command(1, 0, Cdb.read10(0, 1), { in: 512 });
    await waitUntil(() => storage.heldCount === 1);
    let removed = false;
    const removing = device.removeUnit(1, 0).then(() => (removed = true));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(removed, false);
    assert.equal((await c.command(1, 0, Cdb.testUnitReady())).response, ScsiResponse.BAD_TARGET, 'the target is gone');
    storage.release();
    await removing;
    assertGood(await cmd, 'the running command still completes normally');
  });
});

test('stopping the rings does not wait for event buffers; a new driver finds the units powered on again', async () => {
  const unit = memoryUnit();
  await withScsi({ bus: busWith([0, 0, unit]) }, async ({ connect }) => {
    const c = await connect();
    void c.event().catch(() => undefined);
    void c.event().catch(() => undefined);
    const page = new Uint8Array([0, 0, 0, 0, 0x08, 0x12, 0, ...new Array(17).fill(0)]);
    assertGood(await c.command(0, 0, Cdb.modeSelect6(page.length), { out: page }));
    assert.equal(unit.writeCache, false);
    await c.driver.stopQueues();
    c.close();
    await waitUntil(() => unit.writeCache, 5000, 'the unit back in its default cache mode');
    const d = await connect();
    assertGood(await d.command(0, 0, Cdb.testUnitReady()));
  });
});

test('a disabled request ring is left alone until it is enabled again (commands have side effects)', async () => {
  const unit = memoryUnit();
  await withScsi({ bus: busWith([0, 0, unit]) }, async ({ connect }) => {
    const c = await connect();
    assertGood(await c.command(0, 0, Cdb.testUnitReady()));
    await c.driver.frontend.setVringEnable(2, false);
    let done = false;
    const w = c.command(0, 0, Cdb.write10(0, 1), { out: pattern(512, 1) }).then((r) => {
      done = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(done, false, 'not processed while disabled');
    assert.equal(unit.stats.writes, 0);
    await c.driver.frontend.setVringEnable(2, true);
    assertGood(await w);
    assert.equal(unit.stats.writes, 1);
  });
});

test('request state is pooled: sequential commands hand the storage the same list of data views', async () => {
  const storage = new TestStorage(new MemoryStorage({ size: 4 * MiB }));
  const unit = new LogicalUnit({ storage });
  await withScsi({ bus: busWith([0, 0, unit]) }, async ({ connect }) => {
    const c = await connect();
    const lists = new Set<readonly Uint8Array[]>();
    for (let i = 0; i < 20; i++) {
      const data = pattern(4096, i);
      assertGood(await c.command(0, 0, Cdb.write10(8 * i, 8), { out: data }));
      lists.add(storage.lastBuffers);
      const r = await c.command(0, 0, Cdb.read16(8 * i, 8), { in: 4096 });
      assertGood(r);
      assert.deepEqual(r.data, Buffer.from(data));
      lists.add(storage.lastBuffers);
    }
    // One request object serves every command in turn: its data-out list and its data-in list.
    assert.equal(lists.size, 2);
    // Four at a time: at most four request objects, each with its two lists.
    const many = await Promise.all([0, 1, 2, 3].map(async (i) => {
      const r = await c.command(0, 0, Cdb.read10(8 * i, 8), { in: 4096 });
      return { r, list: storage.lastBuffers };
    }));
    for (const { r } of many) assertGood(r);
    assert.ok(new Set(many.map((m) => m.list)).size <= 4);
  });
});

test('a request header split across buffers, a response in pieces, sense included; cdb_size 10', async () => {
  await withScsi({ bus: busWith([0, 0, memoryUnit()]) }, async ({ connect }) => {
    const c = await connect();
    const data = pattern(1024, 3);
    assertGood(await c.command(0, 0, Cdb.write10(4, 2), { out: data }));
    const split = async (cdb: number[], inSizes: number[], responseParts: number[]) => {
      const header = encodeRequestHeader(encodeLunField(0, 0, true), 77, cdb, c.cdbSize);
      const parts = [header.subarray(0, 10), header.subarray(10, 20), header.subarray(20)].map((p) => c.put(p));
      const resp = responseParts.map((n) => c.alloc(n, 1, 0xee));
      const ins = inSizes.map((n) => c.alloc(n, 8, 0xee));
      const len = await c.driver.submit(2, parts, [...resp, ...ins]);
      const raw = Buffer.concat(resp.map((r) => Buffer.from(c.view(r))));
      return { len, hdr: decodeResponseHeader(raw), data: Buffer.concat(ins.map((r) => Buffer.from(c.view(r)))) };
    };
    const ok = await split(Cdb.read10(4, 2), [1024], [5, 7, RESPONSE - 12]);
    assert.equal(ok.len, RESPONSE + 1024);
    assert.deepEqual([ok.hdr.response, ok.hdr.status, ok.hdr.senseLen, ok.hdr.residual], [ScsiResponse.OK, ScsiStatus.GOOD, 0, 0]);
    assert.deepEqual(ok.data, Buffer.from(data));
    const bad = await split(Cdb.read10(0xfffffff0, 1), [512], [3, 20, RESPONSE - 23]);
    assert.equal(bad.hdr.status, ScsiStatus.CHECK_CONDITION);
    assert.equal(bad.hdr.senseLen, 18);
    assert.equal(bad.hdr.residual, 512);
    const sense = decodeFixedSense(bad.hdr.sense);
    assert.deepEqual([sense.key, sense.asc], [Sense.LBA_OUT_OF_RANGE.key, Sense.LBA_OUT_OF_RANGE.asc]);
    // A 10-byte cdb_size: a 29-byte header, data-out right behind it in the same buffer.
    await c.driver.frontend.setConfig(VirtioScsi.CDB_SIZE_OFFSET, Uint8Array.of(10, 0, 0, 0));
    c.cdbSize = 10;
    const fresh = pattern(512, 8);
    const header = encodeRequestHeader(encodeLunField(0, 0, true), 78, Cdb.write10(20, 1), 10);
    const joined = new Uint8Array(header.byteLength + 512);
    joined.set(header);
    joined.set(fresh, header.byteLength);
    const resp = c.alloc(RESPONSE, 8, 0xee);
    assert.equal(await c.driver.submit(2, [c.put(joined)], [resp]), RESPONSE);
    assert.equal(decodeResponseHeader(c.view(resp)).status, ScsiStatus.GOOD);
    const back = await c.command(0, 0, Cdb.read10(20, 1), { in: 512 });
    assertGood(back);
    assert.deepEqual(back.data, Buffer.from(fresh));
  });
});

test('the framework may poll the control and request queues, not the event queue', () => {
  const device = new ScsiDevice({ numQueues: 2 });
  assert.deepEqual([0, 1, 2, 3].map((i) => device.pollQueue(i)), [true, false, true, true]);
  device.dispose();
});

/** A unit with a bug: it throws from execute, after running the command (`after`) or before. */
class ThrowingUnit extends LogicalUnit {
  after = true;
  armed = false;

  override execute(task: Parameters<LogicalUnit['execute']>[0]): void {
    if (this.armed && !this.after) throw new Error('bug before');
    super.execute(task);
    if (this.armed) throw new Error('bug after');
  }
}

// The timeout only turns a broken ring (requests that never come back) into a failure instead of a hang.
test('a bug after a command completed does not complete its chain twice; a bug before answers it with length 0', { timeout: 20_000 }, async () => {
  const unit = new ThrowingUnit({ storage: new MemoryStorage({ size: MiB }) });
  const errors: string[] = [];
  const log = { error: (m: string) => errors.push(m), warn() {}, info() {}, debug() {}, enabled: () => false, child: () => log };
  await withScsi({ bus: busWith([0, 0, unit]), logger: log }, async ({ connect }) => {
    const c = await connect();
    const data = pattern(512, 5);
    assertGood(await c.command(0, 0, Cdb.write10(1, 1), { out: data }));
    unit.armed = true;
    const r = await c.command(0, 0, Cdb.read10(1, 1), { in: 512 });
    assertGood(r, 'the response the command wrote');
    assert.equal(r.len, RESPONSE + 512);
    assert.deepEqual(r.data, Buffer.from(data));
    unit.after = false;
    const header = c.put(encodeRequestHeader(encodeLunField(0, 0, true), 9, Cdb.read10(1, 1)));
    assert.equal(await c.driver.submit(2, [header], [c.alloc(RESPONSE, 8, 0xee), c.alloc(512, 8, 0xee)]), 0);
    assert.equal(errors.length, 2);
    unit.armed = false;
    // The ring goes on: every head came back exactly once (a second completion would break the driver's ring).
    for (let i = 0; i < 8; i++) assertGood(await c.command(0, 0, Cdb.read10(1, 1), { in: 512 }));
  });
});

test('a pooled request answers each command afresh: no sense, status, residual or response left from the one before', async () => {
  const { unit, storage } = heldUnit();
  storage.hold.clear();
  await withScsi({ bus: busWith([0, 0, unit]) }, async ({ connect, device }) => {
    const c = await connect();
    assertSense(await c.command(0, 0, Cdb.read10(0xfffffff0, 1), { in: 512 }), Sense.LBA_OUT_OF_RANGE);
    const good = await c.command(0, 0, Cdb.read16(0, 1), { in: 512 });
    assertGood(good, 'after a CHECK CONDITION');
    assert.equal(good.residual, 0);
    assert.equal(good.len, RESPONSE + 512);
    const overrun = await c.command(0, 0, Cdb.read10(0, 8), { in: 512 });
    assert.equal(overrun.response, ScsiResponse.OVERRUN);
    const write = await c.command(0, 0, Cdb.write10(0, 1), { out: pattern(512, 1) });
    assertGood(write, 'after an OVERRUN');
    assert.equal(write.residual, 0);
    assert.equal(write.len, RESPONSE, 'no data-in left from the read before');
    const short = await c.command(0, 0, Cdb.read10(0, 1), { in: [512, 512] });
    assertGood(short);
    assert.equal(short.residual, 512);
    assert.deepEqual(short.data.subarray(0, 512), Buffer.from(pattern(512, 1)));
    // Aborted by ABORT TASK while its read waits for the storage, then the next command: not aborted again.
    storage.hold.add('read');
    const held = c.command(0, 0, Cdb.read16(1, 1), { in: 512, tag: 0x77 });
    await waitUntil(() => storage.heldCount === 1);
    assert.equal(await c.tmf(TmfSubtype.QUERY_TASK, 0, 0, 0x77), ScsiResponse.FUNCTION_SUCCEEDED, 'a READ(16) in flight is found by its tag');
    const tmf = c.tmf(TmfSubtype.ABORT_TASK, 0, 0, 0x77);
    await waitUntil(() => device.stats.tmfs === 2);
    storage.hold.delete('read');
    storage.release();
    assert.equal(await tmf, ScsiResponse.OK);
    assert.equal((await held).response, ScsiResponse.ABORTED);
    const after = await c.command(0, 0, Cdb.read16(1, 1), { in: 512, tag: 0x77 });
    assertGood(after, 'after an abort');
    assert.equal(after.len, RESPONSE + 512);
    assert.equal(unit.stats.aborted, 1);
    assert.equal(unit.taskCount, 0);
  });
});
