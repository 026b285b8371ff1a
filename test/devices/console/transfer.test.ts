import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ConsoleDevice } from '../../../src/devices/console/device.js';
import type { ConsoleDriver, GuestPort } from '../../../src/devices/console/driver.js';
import type { ConsolePort } from '../../../src/devices/console/port.js';
import { rxQueueOf, txQueueOf } from '../../../src/devices/console/protocol.js';
import { sleep } from '../../helpers/tmp.js';
import { until, withConsole } from './helpers.js';
import { HashSink, PatternSource, liveMemory } from './streams.js';

const MiB = 1024 * 1024;
const TOTAL = 100 * MiB;
const BUFFERS = 32;
const BUFFER_SIZE = 64 * 1024;

const driverOptions = {
  ramSize: 64 * MiB, queueSize: 256,
  rxBuffers: BUFFERS, rxBufferSize: BUFFER_SIZE, txBuffers: BUFFERS, txBufferSize: BUFFER_SIZE,
};

function threePorts(device: ConsoleDevice): void {
  for (let id = 0; id < 3; id++) device.addPort({ id });
}

/** Open ports 1 and 2 in the guest and wait until both ends are open. */
async function openPorts(device: ConsoleDevice, driver: ConsoleDriver): Promise<[GuestPort, GuestPort]> {
  const g1 = await driver.waitForPort(1);
  const g2 = await driver.waitForPort(2);
  await until(() => g1.hostConnected && g2.hostConnected, 'host ends open');
  await g1.open();
  await g2.open();
  await until(() => device.port(1)!.guestOpen && device.port(2)!.guestOpen, 'guest ends open');
  return [g1, g2];
}

interface Flow {
  name: string;
  source: PatternSource;
  sink: HashSink;
}

/** host -> guest on a port. */
function down(name: string, port: ConsolePort, guest: GuestPort, seed: number, stalls: number[] = []): Flow {
  const source = new PatternSource(TOTAL, seed);
  const sink = new HashSink(stalls);
  source.pipe(port, { end: false });
  guest.pipe(sink);
  return { name, source, sink };
}

/** guest -> host on a port. */
function up(name: string, port: ConsolePort, guest: GuestPort, seed: number, stalls: number[] = []): Flow {
  const source = new PatternSource(TOTAL, seed);
  const sink = new HashSink(stalls);
  source.pipe(guest, { end: false });
  port.pipe(sink);
  return { name, source, sink };
}

function checkHashes(flows: Flow[]): void {
  for (const f of flows) {
    assert.equal(f.sink.received, TOTAL, `${f.name}: bytes`);
    assert.equal(f.sink.hash.digest('hex'), f.source.hash.digest('hex'), `${f.name}: sha256`);
  }
}

test('100 MiB each way on two ports at once arrives intact (sha256)', async (t) => {
  await withConsole({ maxPorts: 3 }, threePorts, async ({ device, connect }) => {
    const driver = await connect(driverOptions);
    const [g1, g2] = await openPorts(device, driver);
    const started = process.hrtime.bigint();
    const flows = [
      down('port 1 host->guest', device.port(1)!, g1, 1),
      up('port 1 guest->host', device.port(1)!, g1, 2),
      down('port 2 host->guest', device.port(2)!, g2, 3),
      up('port 2 guest->host', device.port(2)!, g2, 4),
    ];
    await until(() => flows.every((f) => f.sink.received >= TOTAL), 'all four transfers', 120_000);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    checkHashes(flows);
    const moved = (4 * TOTAL) / MiB;
    t.diagnostic(`moved ${moved} MiB (4 x 100 MiB) in ${seconds.toFixed(2)} s: ${(moved / seconds).toFixed(0)} MiB/s in total, ` +
      `${(TOTAL / MiB / seconds).toFixed(0)} MiB/s per stream`);
    assert.equal(device.stats.ignored, 0);
    assert.equal(g1.stats.discarded + g2.stats.discarded, 0);
  });
});

test('back-pressure: a stalled reader on either side holds the writer back; memory stays bounded', async (t) => {
  await withConsole({ maxPorts: 3 }, threePorts, async ({ device, connect }) => {
    const driver = await connect(driverOptions);
    const [g1, g2] = await openPorts(device, driver);
    const p1 = device.port(1)!;
    const p2 = device.port(2)!;
    const before = await liveMemory();
    // Port 1: the guest stops reading now and then. Port 2: we stop reading now and then.
    const stalls = [10, 35, 60, 85].map((m) => m * MiB);
    const guestStalls = down('port 1 host->guest, guest reader stalls', p1, g1, 5, stalls);
    const hostStalls = up('port 2 guest->host, host reader stalls', p2, g2, 6, stalls.map((s) => s + 5 * MiB));
    const flows = [guestStalls, hostStalls];
    // Everything that can sit between a stalled reader and the writer: stream buffers, the guest's 32 buffers of
    // 64 KiB on the ring, a chunk or two in hand. Unbounded buffering would show as tens of MiB here.
    const bound = 8 * MiB;
    // A stall is complete when the driver has taken every completion the device made (none left to reap).
    const reaped = (queue: number) => driver.virtio.queue(queue).usedPending() === 0;
    const stalled = {
      // Guest not reading: it posts no receive buffers, so our writes wait.
      [guestStalls.name]: () => g1.postedBuffers === 0 && reaped(rxQueueOf(1)) && p1.writableNeedDrain,
      // We are not reading: the guest's transmit buffers stay in the ring, so its writer waits.
      [hostStalls.name]: () => g2.txInFlight === BUFFERS && reaped(txQueueOf(2)) && g2.writableNeedDrain &&
        p2.readableLength >= p2.readableHighWaterMark,
    };
    let peak = { rss: 0, arrayBuffers: 0 };
    let stallsSeen = 0;
    const deadline = Date.now() + 120_000;
    while (!flows.every((f) => f.sink.received >= TOTAL)) {
      assert.ok(Date.now() < deadline, 'transfers did not finish');
      for (const f of flows) {
        if (!f.sink.stalled || !stalled[f.name]!()) continue;
        const inFlight = f.source.produced - f.sink.received;
        assert.ok(inFlight <= bound, `${f.name}: ${inFlight} bytes between writer and stalled reader`);
        const produced = f.source.produced;
        await sleep(20);
        assert.equal(f.source.produced, produced, `${f.name}: the writer went on while the reader was stalled`);
        const m = await liveMemory();
        peak = { rss: Math.max(peak.rss, m.rss - before.rss), arrayBuffers: Math.max(peak.arrayBuffers, m.arrayBuffers - before.arrayBuffers) };
        stallsSeen++;
        f.sink.resume();
      }
      await sleep(2);
    }
    checkHashes(flows);
    assert.equal(stallsSeen, 8);
    t.diagnostic(`peak live growth over ${stallsSeen} stalls: rss ${(peak.rss / MiB).toFixed(1)} MiB, ` +
      `arrayBuffers ${(peak.arrayBuffers / MiB).toFixed(1)} MiB (200 MiB moved)`);
    // Generous: guest RAM pages touched by the transfer count in rss; 200 MiB went through.
    assert.ok(peak.rss < 64 * MiB, `rss grew by ${peak.rss} bytes`);
    assert.ok(peak.arrayBuffers < 32 * MiB, `arrayBuffers grew by ${peak.arrayBuffers} bytes`);
    assert.equal(device.stats.ignored, 0);
  });
});
