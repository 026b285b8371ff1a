import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { ConsoleFeature, hasFeature } from '../../../src/virtio/constants.js';
import { RequestFailed } from '../../../src/protocol/frontend.js';
import {
  BAD_ID, ControlEvent, ControlQueue, controlEventName, encodeControl, rxQueueOf, txQueueOf,
} from '../../../src/devices/console/protocol.js';
import { PortRemovedError, type ConsolePort } from '../../../src/devices/console/port.js';
import type { ConsoleDriver, ControlRecord } from '../../../src/devices/console/driver.js';
import { readBytes, until, within, withConsole } from './helpers.js';

/** The control messages about one port, as `dir EVENT value` strings. */
function portLog(driver: ConsoleDriver, id: number): string[] {
  return driver.controlLog.filter((r) => r.id === id).map((r) => `${r.direction} ${controlEventName(r.event)} ${r.value}`);
}

function find(driver: ConsoleDriver, pred: (r: ControlRecord) => boolean): ControlRecord | undefined {
  return driver.controlLog.find(pred);
}

test('handshake in the Linux order, with every event of a console, a named port and a closed port', async () => {
  await withConsole({ maxPorts: 4, cols: 100, rows: 40 }, (device) => {
    device.addPort({ id: 0 });
    device.addPort({ id: 1, name: 'org.test.one' });
    device.addPort({ id: 2, hostConnected: false });
  }, async ({ device, connect }) => {
    const readyPorts: number[] = [];
    device.on('port-added', () => assert.fail('no port is added after start'));
    for (const p of device.ports.values()) p.on('ready', () => readyPorts.push(p.id));
    const driverReady = once(device, 'driver-ready');
    const guestOpened = once(device.port(0)!, 'guest-open');
    const driver = await connect();
    assert.ok(driver.multiport);
    assert.ok(hasFeature(driver.virtio.features, ConsoleFeature.SIZE));
    assert.ok(hasFeature(driver.virtio.features, ConsoleFeature.EMERG_WRITE));
    assert.equal(driver.config.maxNrPorts, 4);
    assert.deepEqual([driver.config.cols, driver.config.rows], [100, 40]);
    await driverReady;
    await guestOpened;
    await until(() => driver.ports.size === 3 && readyPorts.length === 3, 'three ports set up');
    const p1 = driver.port(1)!;
    await until(() => p1.name !== undefined && p1.hostConnected, 'port 1 named and open');

    // DEVICE_READY came first, from the driver, with the unused id.
    const first = driver.controlLog[0]!;
    assert.deepEqual([first.direction, first.event, first.id, first.value], ['out', ControlEvent.DEVICE_READY, BAD_ID, 1]);
    // Per port, the exchange Linux and QEMU have.
    assert.deepEqual(portLog(driver, 0), [
      // The driver answers CONSOLE_PORT before it looks at the next message.
      'in DEVICE_ADD 1', 'out PORT_READY 1', 'in CONSOLE_PORT 1', 'out PORT_OPEN 1', 'in RESIZE 0', 'in PORT_OPEN 1',
    ]);
    assert.deepEqual(portLog(driver, 1), ['in DEVICE_ADD 1', 'out PORT_READY 1', 'in PORT_NAME 1', 'in PORT_OPEN 1']);
    assert.deepEqual(portLog(driver, 2), ['in DEVICE_ADD 1', 'out PORT_READY 1']);
    // Rows then cols, as Linux reads RESIZE.
    const resize = find(driver, (r) => r.event === ControlEvent.RESIZE)!;
    assert.deepEqual([...resize.payload], [40, 0, 100, 0]);
    assert.equal(driver.port(0)!.console, true);
    assert.deepEqual(driver.port(0)!.size, { cols: 100, rows: 40 });
    assert.equal(p1.name, 'org.test.one');
    assert.equal(p1.console, false);
    assert.equal(driver.port(2)!.hostConnected, false);
    assert.equal(device.port(0)!.guestOpen, true);
    assert.equal(device.port(1)!.guestOpen, false);

    // The guest opens port 1: an event here, and data flows both ways.
    const opened = once(device.port(1)!, 'guest-open');
    await p1.open();
    await opened;
    device.port(1)!.write('hello guest');
    assert.equal((await readBytes(p1, 11)).toString(), 'hello guest');
    p1.write('hello host');
    assert.equal((await readBytes(device.port(1)!, 10)).toString(), 'hello host');

    // The console port works without an open by a program.
    device.port(0)!.write('login: ');
    assert.equal((await readBytes(driver.port(0)!, 7)).toString(), 'login: ');
    driver.port(0)!.write('root\n');
    assert.equal((await readBytes(device.port(0)!, 5)).toString(), 'root\n');

    // Port 2: the guest's writes wait while our end is closed, and go through once it opens.
    const p2 = driver.port(2)!;
    await p2.open();
    p2.write('queued');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(device.port(2)!.readableLength, 0);
    assert.equal(p2.stats.sent, 0);
    device.port(2)!.setHostConnected(true);
    assert.equal((await readBytes(device.port(2)!, 6)).toString(), 'queued');
    assert.equal(p2.hostConnected, true);

    // Our end closes: PORT_OPEN 0; the guest closes: an event here.
    const hostClosed = once(p1, 'host-close');
    device.port(1)!.setHostConnected(false);
    await hostClosed;
    const guestClosed = once(device.port(1)!, 'guest-close');
    await p1.close();
    await guestClosed;
    assert.equal(device.stats.ignored, 0);
    assert.equal(driver.dropped, 0);
  });
});

test('31 named ports: all announced, named and usable both ways', async () => {
  await withConsole({ maxPorts: 31 }, (device) => {
    for (let i = 0; i < 31; i++) device.addPort({ id: i, name: `org.test.port${i}`, console: i === 0 });
  }, async ({ device, connect }) => {
    const driver = await connect({ rxBuffers: 4, txBuffers: 4, queueSize: 64 });
    assert.equal(driver.virtio.maxQueues, 64);
    await until(() => driver.ports.size === 31 && [...driver.ports.values()].every((p) => p.name !== undefined && p.hostConnected),
      '31 ports named and open');
    for (let i = 0; i < 31; i++) assert.equal(driver.port(i)!.name, `org.test.port${i}`);
    await Promise.all([...driver.ports.values()].filter((p) => !p.console).map((p) => p.open()));
    await until(() => [...device.ports.values()].every((p) => p.guestOpen), 'every port open in the guest');
    for (let i = 0; i < 31; i++) {
      device.port(i)!.write(`to ${i}`);
      driver.port(i)!.write(`from ${i}`);
    }
    for (let i = 0; i < 31; i++) {
      assert.equal((await readBytes(driver.port(i)!, `to ${i}`.length)).toString(), `to ${i}`);
      assert.equal((await readBytes(device.port(i)!, `from ${i}`.length)).toString(), `from ${i}`);
    }
    assert.equal(device.stats.ignored, 0);
    assert.throws(() => device.addPort({}), /all 31 ports are in use/);
  });
});

test('hot add and remove while the guest runs', async () => {
  await withConsole({ maxPorts: 8 }, (device) => {
    device.addPort({ id: 0 });
  }, async ({ device, connect }) => {
    const driver = await connect();
    await until(() => driver.port(0)?.guestOpen === true, 'console up');

    // Add: the driver sets the port up and sees its name.
    const added = device.addPort({ id: 5, name: 'org.test.hot' });
    const g5 = await driver.waitForPort(5);
    await until(() => g5.name === 'org.test.hot' && g5.hostConnected, 'hot-added port named and open');
    assert.equal(added.guestReady, true);
    await g5.open();
    await until(() => added.guestOpen, 'guest opened the hot-added port');
    added.write('ping');
    assert.equal((await readBytes(g5, 4)).toString(), 'ping');

    // Remove: the driver drops the port and closes its end (which the device takes quietly).
    const removedHere = once(added, 'removed');
    const removedThere = once(driver, 'port-removed');
    assert.equal(device.removePort(5), true);
    await removedHere;
    await removedThere;
    assert.equal(driver.port(5), undefined);
    await until(() => driver.controlLog.some((r) => r.id === 5 && r.direction === 'out' && r.event === ControlEvent.PORT_OPEN && r.value === 0),
      'the guest closed the removed port');
    // Writes to a removed port fail with a typed error; its readable side ended.
    const failed = once(added, 'error');
    added.write('too late');
    const [err] = await failed;
    assert.ok(err instanceof PortRemovedError);
    assert.equal(device.removePort(5), false);

    // Add again under another name: a new port on the same queues works.
    const again = device.addPort({ id: 5, name: 'org.test.again' });
    const g5b = await driver.waitForPort(5);
    assert.notEqual(g5b, g5);
    await until(() => g5b.name === 'org.test.again', 'second incarnation named');
    await g5b.open();
    await until(() => again.guestOpen, 'guest opened the port again');
    g5b.write('pong');
    assert.equal((await readBytes(again, 4)).toString(), 'pong');
    again.write('ping2');
    assert.equal((await readBytes(g5b, 5)).toString(), 'ping2');

    // Removing a port with a write waiting for a guest that is not reading fails the write.
    await g5b.close();
    await until(() => !again.guestOpen, 'closed');
    const pending = new Promise<Error | null | undefined>((resolve) => again.write('never', resolve));
    again.on('error', () => { /* reported through the callback */ });
    device.removePort(5);
    assert.ok((await pending) instanceof PortRemovedError);
    assert.equal(device.stats.ignored, 0);
  });
});

test('control messages wait for control buffers; a port removed before its DEVICE_ADD went out is never announced',
  async () => {
    await withConsole({ maxPorts: 4 }, (device) => device.addPort({ id: 0 }), async ({ device, connect }) => {
      // No control receive buffers: DEVICE_READY gets its answers queued in the device.
      const driver = await connect({ controlBuffers: 0 });
      await until(() => device.driverReady, 'DEVICE_READY');
      assert.equal(device.pendingControl, 1);
      // Buffers that cannot hold a message are given back unused; the message waits for a real one.
      const reasons: string[] = [];
      device.on('ignored', (r: string) => reasons.push(r));
      const ram = driver.virtio.ram;
      const readableOnly = driver.virtio.submit(ControlQueue.RX, [{ addr: ram.alloc(8, 8), len: 8 }], []);
      const tiny = driver.virtio.submit(ControlQueue.RX, [], [{ addr: ram.alloc(4, 8), len: 4 }]);
      assert.deepEqual(await Promise.all([readableOnly, tiny]), [0, 0]);
      assert.equal(reasons.length, 2);
      assert.match(reasons[0]!, /control receive buffer of 0 bytes/);
      assert.match(reasons[1]!, /control receive buffer of 4 bytes/);
      assert.equal(device.pendingControl, 1);
      device.addPort({ id: 3 });
      assert.equal(device.pendingControl, 2);
      device.removePort(3);
      assert.equal(device.pendingControl, 1);
      device.addPort({ id: 2, name: 'org.test.two' });
      // Repeated size changes collapse into the latest.
      device.resize(10, 10);
      device.resize(20, 20);
      assert.equal(driver.controlLog.filter((r) => r.direction === 'in').length, 0);
      driver.addControlBuffers(1);
      await driver.waitForPort(0);
      await driver.waitForPort(2);
      await until(() => driver.port(2)!.hostConnected && driver.port(0)!.guestOpen, 'ports set up');
      assert.equal(driver.controlLog.filter((r) => r.id === 3).length, 0);
      assert.equal(driver.port(3), undefined);
      assert.deepEqual(driver.port(0)!.size, { cols: 20, rows: 20 });
      assert.equal(driver.controlLog.filter((r) => r.event === ControlEvent.RESIZE).length, 1);
      assert.equal(device.pendingControl, 0);
      assert.equal(device.stats.ignored, 2);
    });
  });

test('resize: config space, a config-change notification and RESIZE to the console', async () => {
  await withConsole({ maxPorts: 2, cols: 80, rows: 24 }, (device) => device.addPort({ id: 0 }), async ({ device, connect }) => {
    const driver = await connect();
    const g0 = await driver.waitForPort(0);
    await until(() => g0.size?.cols === 80, 'initial size');
    const configChange = once(driver, 'config-change');
    const resized = once(g0, 'resize');
    device.resize(132, 43);
    const [config] = await configChange;
    assert.equal(config.cols, 132);
    assert.equal(config.rows, 43);
    assert.deepEqual((await resized)[0], { cols: 132, rows: 43 });
    assert.deepEqual(device.size, { cols: 132, rows: 43 });
    // A per-port size goes to that port only.
    const resized2 = once(g0, 'resize');
    device.port(0)!.resize(90, 30);
    assert.deepEqual((await resized2)[0], { cols: 90, rows: 30 });
    assert.throws(() => device.resize(70000, 1), RangeError);
  });
});

test('without MULTIPORT: port 0 only, size through config space', async () => {
  await withConsole({ cols: 80, rows: 25 }, (device) => device.addPort({ id: 0 }), async ({ device, connect }) => {
    const driver = await connect({ multiport: false });
    assert.equal(driver.multiport, false);
    assert.equal(device.multiport, false);
    const g0 = driver.port(0)!;
    assert.equal(g0.console, true);
    await until(() => device.port(0)!.guestOpen, 'console open');
    device.port(0)!.write('boot ok\r\n');
    assert.equal((await readBytes(g0, 9)).toString(), 'boot ok\r\n');
    g0.write('ls\n');
    assert.equal((await readBytes(device.port(0)!, 3)).toString(), 'ls\n');
    const resized = once(g0, 'resize');
    device.resize(100, 50);
    assert.deepEqual((await resized)[0], { cols: 100, rows: 50 });
    assert.equal(driver.controlLog.length, 0);
  });
});

test('emergency write: characters reach the console port, config is otherwise read-only', async () => {
  await withConsole({ maxPorts: 2 }, (device) => device.addPort({ id: 0 }), async ({ device, connect }) => {
    const chars: number[] = [];
    device.on('emergency-write', (b: number) => chars.push(b));
    const driver = await connect({ deviceReady: false });
    for (const c of Buffer.from('Oops!\n')) await driver.emergencyWrite(c);
    assert.equal(Buffer.from(chars).toString(), 'Oops!\n');
    assert.equal((await readBytes(device.port(0)!, 6)).toString(), 'Oops!\n');
    assert.equal(device.stats.emergencyChars, 6);
    await assert.rejects(driver.virtio.frontend.setConfig(0, new Uint8Array([1, 2])), RequestFailed);
    await assert.rejects(driver.virtio.frontend.setConfig(4, new Uint8Array(4)), RequestFailed);
    // Upper bytes of emerg_wr alone carry no character.
    await driver.virtio.frontend.setConfig(9, new Uint8Array([0x41]));
    assert.equal(chars.length, 6);
  });
});

test('malformed control messages are ignored and logged; other ports keep working', async () => {
  await withConsole({ maxPorts: 4 }, (device) => {
    device.addPort({ id: 0 });
    device.addPort({ id: 1, name: 'org.test.ok' });
  }, async ({ device, connect }) => {
    const reasons: string[] = [];
    device.on('ignored', (r: string) => reasons.push(r));
    const driver = await connect({ deviceReady: false });
    // Before DEVICE_READY, port events make no sense.
    await driver.sendControl(0, ControlEvent.PORT_READY, 1);
    await driver.sendControl(BAD_ID, ControlEvent.DEVICE_READY, 1);
    await until(() => driver.ports.size === 2 && driver.port(1)!.hostConnected, 'ports set up');
    const before = reasons.length;
    assert.equal(before, 1);
    const bad: [string, Uint8Array[]][] = [
      ['unknown port id', [encodeControl(3, ControlEvent.PORT_READY, 1)]],
      ['port id past max_nr_ports', [encodeControl(1000, ControlEvent.PORT_OPEN, 1)]],
      ['huge port id', [encodeControl(0xfffffffe, ControlEvent.PORT_READY, 1)]],
      ['short message', [new Uint8Array([1, 0, 0, 0])]],
      ['long message', [new Uint8Array(12)]],
      ['device-only event', [encodeControl(1, ControlEvent.DEVICE_ADD, 1)]],
      ['device-only RESIZE', [encodeControl(0, ControlEvent.RESIZE, 0)]],
      ['unknown event', [encodeControl(1, 42, 1)]],
      ['bad value', [encodeControl(1, ControlEvent.PORT_OPEN, 7)]],
      ['bad DEVICE_READY value', [encodeControl(BAD_ID, ControlEvent.DEVICE_READY, 9)]],
      ['huge readable chain', [new Uint8Array(4096), new Uint8Array(4096)]],
    ];
    for (const [, parts] of bad) await driver.sendRaw(parts);
    // A chain with only a device-writable buffer on the control transmit queue.
    await driver.virtio.submit(3, [], [{ addr: driver.virtio.ram.alloc(8), len: 8 }]);
    assert.equal(reasons.length - before, bad.length + 1, reasons.join('\n'));
    const afterControl = reasons.length;
    assert.match(reasons[before]!, /no such port/);
    assert.match(reasons[before + 1]!, /max_nr_ports is 4/);
    assert.match(reasons[before + 3]!, /4 bytes \(8 expected\)/);
    assert.match(reasons[before + 5]!, /only the device sends/);
    assert.match(reasons[before + 7]!, /unknown event/);
    // Data queues misused: a transmit buffer the device should write, a receive buffer it should read, data for
    // a port that does not exist. Each is returned untouched and reported.
    const ram = driver.virtio.ram;
    assert.equal(await driver.virtio.submit(txQueueOf(1), [], [{ addr: ram.alloc(8, 8), len: 8 }]), 0);
    assert.match(reasons.at(-1)!, /transmit buffer of port 1 has no device-readable part/);
    assert.equal(await driver.virtio.submit(txQueueOf(3), [{ addr: ram.alloc(100, 8), len: 100 }], []), 0);
    assert.match(reasons.at(-1)!, /100 bytes in 1 buffer\(s\) on the transmit queue of port 3, which does not exist/);
    assert.equal(device.stats.discardedBytes, 100);
    const badRx = driver.virtio.submit(rxQueueOf(1), [{ addr: ram.alloc(64, 8), len: 64 }], []);
    const misuse = 3;
    // A message split over two descriptors is fine.
    const msg = encodeControl(1, ControlEvent.PORT_OPEN, 1);
    const opened = once(device.port(1)!, 'guest-open');
    await driver.sendRaw([msg.subarray(0, 3), msg.subarray(3)]);
    await opened;
    // The other ports are unharmed: data both ways on ports 0 and 1.
    const g1 = driver.port(1)!;
    await g1.open();
    device.port(1)!.write('still here');
    assert.equal((await readBytes(g1, 10)).toString(), 'still here');
    // Enough data to cycle through the guest's 16 receive buffers reaches the bad one, which is skipped.
    const bulk = Buffer.alloc(100_000, 0x5a);
    device.port(1)!.write(bulk);
    assert.ok((await readBytes(g1, bulk.byteLength)).equals(bulk));
    assert.equal(await badRx, 0);
    assert.match(reasons.at(-1)!, /receive buffer of port 1 has no device-writable part/);
    g1.write('me too');
    assert.equal((await readBytes(device.port(1)!, 6)).toString(), 'me too');
    device.port(0)!.write('console');
    assert.equal((await readBytes(driver.port(0)!, 7)).toString(), 'console');
    assert.equal(reasons.length - afterControl, misuse);
    assert.equal(device.stats.ignored, reasons.length);
    // The device never sent anything the driver had to drop.
    assert.equal(driver.dropped, 0);
  });
});

test('a new frontend after the first left: ports announced again, output written meanwhile delivered', async () => {
  await withConsole({ maxPorts: 2 }, (device) => {
    device.addPort({ id: 0 });
    device.addPort({ id: 1, name: 'org.test.persist' });
  }, async ({ device, connect }) => {
    const first = await connect();
    const g1 = await first.waitForPort(1);
    await g1.open();
    const p1 = device.port(1)!;
    await until(() => p1.guestOpen, 'open');
    const closed = once(p1, 'guest-close');
    const reset = once(device, 'reset');
    first.close();
    await within(reset, 'device reset');
    await within(closed, 'guest-close on disconnect');
    assert.equal(device.driverReady, false);
    assert.equal(p1.guestReady, false);
    // Written while no guest is there: it waits (bounded by the stream's buffer), then goes to the next guest.
    p1.write('while you were away');
    const second = await connect();
    const h1 = await second.waitForPort(1);
    await until(() => h1.name === 'org.test.persist', 'named again');
    await h1.open();
    assert.equal((await readBytes(h1, 19)).toString(), 'while you were away');
    // Ending our side of the stream closes our end for the guest.
    const hostClosed = once(h1, 'host-close');
    p1.end();
    await within(hostClosed, 'host-close after end()');
    assert.equal(p1.hostConnected, false);
  });
});

test('transmit buffers are never held: with a stalled reader the queues still stop at once',
  async () => {
    await withConsole({ maxPorts: 2 }, (device) => {
      device.addPort({ id: 0 });
      device.addPort({ id: 1 });
    }, async ({ device, connect }) => {
      const driver = await connect({ txBuffers: 4, txBufferSize: 256 * 1024 });
      const g1 = await driver.waitForPort(1);
      await until(() => g1.hostConnected, 'host end open');
      await g1.open();
      const p1 = device.port(1)!;
      // Nobody reads p1: the device takes the first 256 KiB buffer whole, then leaves the rest in the ring.
      const data = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      g1.write(data);
      await until(() => p1.readableLength > 0, 'first buffer delivered');
      await until(() => driver.virtio.queue(txQueueOf(1)).usedPending() === 0 && g1.txInFlight === 3, 'three left in the ring');
      assert.equal(p1.readableLength, 256 * 1024);
      // GET_VRING_BASE waits for popped buffers: none are held, so stopping finishes with the reader stalled.
      await within(driver.virtio.stopQueues(), 'queues to stop');
      assert.equal(p1.readableLength, 256 * 1024);
      assert.ok((await readBytes(p1, 256 * 1024)).equals(data.subarray(0, 256 * 1024)));
      assert.equal(device.stats.ignored, 0);
    });
  });

test('a transmit buffer over the size limit is returned unread and reported', async () => {
  await withConsole({ maxPorts: 2 }, (device) => {
    device.addPort({ id: 0 });
    device.addPort({ id: 1 });
  }, async ({ device, connect }) => {
    const driver = await connect({ ramSize: 32 * 1024 * 1024 });
    const g1 = await driver.waitForPort(1);
    await g1.open();
    const reasons: string[] = [];
    device.on('ignored', (r: string) => reasons.push(r));
    const ram = driver.virtio.ram;
    // 2 MiB made of one 64 KiB area named 32 times: cheap for the guest, refused by the device.
    const area = { addr: ram.alloc(64 * 1024, 8), len: 64 * 1024 };
    assert.equal(await driver.virtio.submit(txQueueOf(1), Array.from({ length: 32 }, () => area), []), 0);
    assert.match(reasons[0]!, /transmit buffer of 2097152 bytes on port 1 \(at most 1048576 taken\)/);
    assert.equal(device.port(1)!.readableLength, 0);
    g1.write('fine');
    assert.equal((await readBytes(device.port(1)!, 4)).toString(), 'fine');
  });
});

test('a destroyed port: the guest is told our end closed, and console output is thrown away instead of blocking it',
  async () => {
    await withConsole({ maxPorts: 1 }, (device) => device.addPort({ id: 0 }), async ({ device, connect }) => {
      const driver = await connect({ txBuffers: 2, txBufferSize: 4096 });
      const g0 = await driver.waitForPort(0);
      await until(() => g0.guestOpen && g0.hostConnected, 'console up');
      const p0 = device.port(0)!;
      const hostClosed = once(g0, 'host-close');
      p0.destroy();
      await within(hostClosed, 'host-close');
      // The console writes regardless of the host end (as hvc does): 64 KiB through 2 buffers of 4 KiB.
      const written = new Promise<void>((resolve) => g0.write(Buffer.alloc(64 * 1024, 1), () => resolve()));
      await within(written, 'guest write');
      await until(() => g0.txInFlight === 0, 'buffers back');
      assert.equal(p0.stats.discarded, 64 * 1024);
      assert.equal(device.stats.ignored, 0);
    });
  });

test('driver failure reports and a driver that starts over', async () => {
  await withConsole({ maxPorts: 2 }, (device) => {
    device.addPort({ id: 0 });
    device.addPort({ id: 1, name: 'org.test.again' });
  }, async ({ device, connect }) => {
    const driver = await connect({ deviceReady: false });
    const failed = once(device, 'driver-failed');
    await driver.sendControl(BAD_ID, ControlEvent.DEVICE_READY, 0);
    await within(failed, 'driver-failed');
    assert.equal(device.driverReady, false);
    await driver.sendControl(BAD_ID, ControlEvent.DEVICE_READY, 1);
    const g1 = await driver.waitForPort(1);
    await until(() => g1.name !== undefined && driver.port(0)?.guestOpen === true, 'ports set up');
    // The guest could not set port 1 up after all.
    const p1 = device.port(1)!;
    const guestFailed = once(p1, 'guest-failed');
    await driver.sendControl(1, ControlEvent.PORT_READY, 0);
    await within(guestFailed, 'guest-failed');
    assert.equal(p1.guestReady, false);
    // A driver that starts over (module reloaded) sends DEVICE_READY again: every port is announced again, and
    // Linux answers DEVICE_ADD for a port it has with PORT_READY, which brings its settings again.
    const closed = once(device.port(0)!, 'guest-close');
    const before = driver.controlLog.length;
    await driver.sendControl(BAD_ID, ControlEvent.DEVICE_READY, 1);
    await within(closed, 'console closed by the restart');
    await until(() => p1.guestReady && device.port(0)!.guestReady, 'set up again');
    // (A reloaded Linux driver would open its new console again; this one still has its old console open.)
    const reopened = once(device.port(0)!, 'guest-open');
    await driver.sendControl(0, ControlEvent.PORT_OPEN, 1);
    await within(reopened, 'console open again');
    const again = driver.controlLog.slice(before).filter((r) => r.direction === 'in').map((r) => `${controlEventName(r.event)} ${r.id}`);
    assert.deepEqual(again.filter((e) => e.startsWith('DEVICE_ADD')), ['DEVICE_ADD 0', 'DEVICE_ADD 1']);
    assert.ok(again.includes('CONSOLE_PORT 0'));
    assert.ok(again.includes('PORT_NAME 1'));
    assert.equal(device.stats.ignored, 0);
  });
});
