import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CtrlAck, CtrlClass, CtrlMac, CtrlMq, CtrlRx, executeControl, type ControlTarget } from '../../../src/devices/net/ctrl.js';
import { MAC_TABLE_ENTRIES, RxFilter } from '../../../src/devices/net/rx-filter.js';
import { featureMask, NetFeature } from '../../../src/virtio/constants.js';
import { mac, testFrame } from './net-guest.js';

function target(features = featureMask(NetFeature.CTRL_RX, NetFeature.CTRL_MAC_ADDR, NetFeature.MQ)) {
  const filter = new RxFilter();
  filter.reset(0x020000000001);
  const t = {
    negotiatedFeatures: features, filter, maxQueuePairs: 4, mac: undefined as Uint8Array | undefined, pairs: 0,
    setMac(m: Uint8Array) { t.mac = m; },
    setQueuePairs(n: number) { t.pairs = n; },
  } satisfies ControlTarget & Record<string, unknown>;
  return t;
}

function table(uni: string[], multi: string[]): Buffer {
  const count = (n: number) => Buffer.from([n & 0xff, (n >> 8) & 0xff, 0, 0]);
  return Buffer.concat([count(uni.length), ...uni.map(mac), count(multi.length), ...multi.map(mac)]);
}

function accepts(f: RxFilter, dst: string): boolean {
  return f.accepts(testFrame(dst, '02:00:00:00:00:99', 0));
}

test('MAC table: entries beyond the table size mean "accept all of that kind"', () => {
  const t = target();
  executeControl(t, CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0));
  const many = Array.from({ length: MAC_TABLE_ENTRIES + 1 }, (_, i) => `02:00:00:00:01:${i.toString(16).padStart(2, '0')}`);
  assert.equal(executeControl(t, CtrlClass.MAC, CtrlMac.TABLE_SET, table(many, ['01:00:5e:00:00:01'])), CtrlAck.OK);
  assert.ok(t.filter.unicastOverflow);
  assert.ok(accepts(t.filter, '02:99:99:99:99:99'));
  assert.ok(accepts(t.filter, '01:00:5e:00:00:01'));
  assert.ok(!accepts(t.filter, '01:00:5e:00:00:02'));
  assert.ok(accepts(t.filter, '02:00:00:00:00:01'), 'own address');
  // A table that fits replaces it.
  assert.equal(executeControl(t, CtrlClass.MAC, CtrlMac.TABLE_SET, table(['02:00:00:00:00:42'], [])), CtrlAck.OK);
  assert.ok(!accepts(t.filter, '02:99:99:99:99:99'));
  assert.ok(accepts(t.filter, '02:00:00:00:00:42'));
  assert.ok(!accepts(t.filter, '01:00:5e:00:00:01'));
  assert.ok(accepts(t.filter, 'ff:ff:ff:ff:ff:ff'), 'broadcast always');
});

test('MAC table: trailing bytes, short counts and huge counts are refused and change nothing', () => {
  const t = target();
  executeControl(t, CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0));
  executeControl(t, CtrlClass.MAC, CtrlMac.TABLE_SET, table(['02:00:00:00:00:42'], []));
  for (const bad of [
    Buffer.concat([table([], []), Buffer.from([0])]),
    Buffer.from([0, 0, 0]),
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
    Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]),
  ]) {
    assert.equal(executeControl(t, CtrlClass.MAC, CtrlMac.TABLE_SET, bad), CtrlAck.ERR);
  }
  assert.ok(accepts(t.filter, '02:00:00:00:00:42'));
});

test('queue pairs and MAC address need their features and sane values', () => {
  const t = target(featureMask(NetFeature.CTRL_RX));
  assert.equal(executeControl(t, CtrlClass.MAC, CtrlMac.ADDR_SET, mac('02:00:00:00:00:05')), CtrlAck.ERR);
  assert.equal(executeControl(t, CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(2, 0)), CtrlAck.ERR);
  const u = target();
  assert.equal(executeControl(u, CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(4, 0)), CtrlAck.OK);
  assert.equal(u.pairs, 4);
  assert.equal(executeControl(u, CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(5, 0)), CtrlAck.ERR);
  assert.equal(executeControl(u, CtrlClass.MQ, CtrlMq.RSS_CONFIG, Uint8Array.of(1, 0)), CtrlAck.ERR);
  assert.equal(executeControl(u, CtrlClass.MAC, CtrlMac.ADDR_SET, mac('02:00:00:00:00:05')), CtrlAck.OK);
  assert.deepEqual([...u.mac!], [...mac('02:00:00:00:00:05')]);
});
