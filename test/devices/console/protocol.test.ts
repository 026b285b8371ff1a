import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ControlEvent, ControlQueue, decodeConfig, decodeControl, decodeResize, encodeConfig, encodeControl, encodePortName,
  encodeResize, queueCount, queueRole, rxQueueOf, txQueueOf,
} from '../../../src/devices/console/protocol.js';
import { ControlOutbox } from '../../../src/devices/console/control-queue.js';

test('queue layout: rx0 tx0 ctrl-rx ctrl-tx rx1 tx1 ...', () => {
  assert.deepEqual([rxQueueOf(0), txQueueOf(0), rxQueueOf(1), txQueueOf(1), rxQueueOf(30), txQueueOf(30)], [0, 1, 4, 5, 62, 63]);
  assert.deepEqual([ControlQueue.RX, ControlQueue.TX], [2, 3]);
  assert.equal(queueCount(31, true), 64);
  assert.equal(queueCount(1, true), 4);
  assert.equal(queueCount(1, false), 2);
  assert.deepEqual(queueRole(0), { kind: 'rx', port: 0 });
  assert.deepEqual(queueRole(1), { kind: 'tx', port: 0 });
  assert.deepEqual(queueRole(2), { kind: 'control-rx' });
  assert.deepEqual(queueRole(3), { kind: 'control-tx' });
  for (let port = 1; port < 31; port++) {
    assert.deepEqual(queueRole(rxQueueOf(port)), { kind: 'rx', port });
    assert.deepEqual(queueRole(txQueueOf(port)), { kind: 'tx', port });
  }
});

test('control messages and config encode little-endian as the spec lays them out', () => {
  const m = encodeControl(0x01020304, ControlEvent.PORT_NAME, 1, new TextEncoder().encode('ab'));
  assert.deepEqual([...m], [4, 3, 2, 1, 7, 0, 1, 0, 0x61, 0x62]);
  const d = decodeControl(m)!;
  assert.deepEqual([d.id, d.event, d.value, [...d.payload]], [0x01020304, 7, 1, [0x61, 0x62]]);
  assert.equal(decodeControl(new Uint8Array(7)), null);
  // RESIZE carries rows first, as Linux reads it (not the spec's order).
  assert.deepEqual([...encodeResize(132, 43)], [43, 0, 132, 0]);
  assert.deepEqual(decodeResize(encodeResize(500, 2)), { cols: 500, rows: 2 });
  assert.equal(decodeResize(new Uint8Array(3)), null);
  const c = encodeConfig({ cols: 80, rows: 24, maxNrPorts: 31, emergWr: 0 });
  assert.deepEqual([...c], [80, 0, 24, 0, 31, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(decodeConfig(c), { cols: 80, rows: 24, maxNrPorts: 31, emergWr: 0 });
});

test('port names: usable as file names under /dev/virtio-ports', () => {
  assert.deepEqual([...encodePortName('org.qemu.guest_agent.0')], [...Buffer.from('org.qemu.guest_agent.0')]);
  assert.equal(encodePortName('é').byteLength, 2);
  for (const bad of ['', 'a/b', 'nul\0', 'tab\t', '.', '..', 'x'.repeat(256)]) assert.throws(() => encodePortName(bad), TypeError, bad);
});

test('outbox: repeats collapse, the latest size and open state win, a retracted DEVICE_ADD takes its followers', () => {
  const o = new ControlOutbox(8);
  o.push(1, ControlEvent.DEVICE_ADD, 1);
  o.push(1, ControlEvent.DEVICE_ADD, 1);
  assert.equal(o.length, 1);
  o.push(1, ControlEvent.RESIZE, 0, encodeResize(1, 1));
  o.push(1, ControlEvent.PORT_OPEN, 1);
  o.push(1, ControlEvent.RESIZE, 0, encodeResize(2, 2));
  o.push(1, ControlEvent.PORT_OPEN, 0);
  assert.deepEqual(take(o), ['1 DEVICE_ADD', '1 RESIZE 2x2', '1 PORT_OPEN 0']);
  // Past a DEVICE_REMOVE nothing collapses into messages meant for the previous port.
  o.push(2, ControlEvent.PORT_OPEN, 1);
  o.push(2, ControlEvent.DEVICE_REMOVE, 1);
  o.push(2, ControlEvent.DEVICE_ADD, 1);
  o.push(2, ControlEvent.PORT_OPEN, 1);
  o.push(3, ControlEvent.DEVICE_ADD, 1);
  assert.equal(o.length, 5);
  // Take back the second DEVICE_ADD of port 2: the PORT_OPEN after it goes too, the earlier ones stay.
  assert.equal(o.retractAdd(2), true);
  assert.deepEqual(take(o), ['2 PORT_OPEN 1', '2 DEVICE_REMOVE', '3 DEVICE_ADD']);
  assert.equal(o.retractAdd(2), false);
  // The hard cap.
  for (let i = 0; i < 10; i++) o.push(i, ControlEvent.DEVICE_ADD, 1);
  assert.equal(o.length, 8);
  assert.equal(o.dropped, 2);
});

function take(o: ControlOutbox): string[] {
  const out: string[] = [];
  for (let m = o.shift(); m; m = o.shift()) {
    const name = Object.entries(ControlEvent).find(([, v]) => v === m.event)![0];
    if (m.event === ControlEvent.RESIZE) {
      const size = decodeResize(m.bytes.subarray(8))!;
      out.push(`${m.id} ${name} ${size.cols}x${size.rows}`);
    } else if (m.event === ControlEvent.PORT_OPEN) {
      out.push(`${m.id} ${name} ${m.value}`);
    } else {
      out.push(`${m.id} ${name}`);
    }
  }
  return out;
}
