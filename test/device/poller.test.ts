import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DeviceServer } from '../../src/device/server.js';
import { PASS_BUDGET } from '../../src/device/processing.js';
import type { Vring } from '../../src/device/vring.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { CommonFeature, featureMask } from '../../src/virtio/constants.js';
import type { DescriptorChain } from '../../src/virtqueue/chain.js';
import { VRING_USED_F_NO_NOTIFY } from '../../src/virtqueue/layout.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { sleep, tempDir, waitUntil } from '../helpers/tmp.js';

async function withServer(pollUs: number, fn: (driver: VirtioDriver, server: DeviceServer) => Promise<void>,
  features?: bigint): Promise<void> {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'echo.sock');
  const server = new DeviceServer(new EchoDevice(1), { socketPath, pollUs }).listen();
  const driver = await VirtioDriver.connect({ socketPath, ...(features === undefined ? {} : { features }) });
  try {
    await driver.startQueues(1, 64);
    await fn(driver, server);
  } finally {
    driver.close();
    await server.close();
    cleanup();
  }
}

async function echo(driver: VirtioDriver, text: string): Promise<string> {
  const data = Buffer.from(text);
  const addr = driver.ram.alloc(data.length, 8);
  driver.ram.bytes(addr, data.length).set(data);
  const out = driver.ram.alloc(64, 8);
  const len = await driver.submit(0, [{ addr, len: data.length }], [{ addr: out, len: 64 }]);
  return Buffer.from(driver.ram.bytes(out, len)).toString();
}

const NO_EVENT_IDX = ~featureMask(CommonFeature.EVENT_IDX) & ((1n << 64n) - 1n);

test('notification mode (poll 0): every request is a kick', async () => {
  await withServer(0, async (driver, server) => {
    for (let i = 0; i < 20; i++) assert.equal(await echo(driver, `n${i}`), `N${i}`);
    const stats = server.backend!.poller.stats;
    assert.equal(stats.polledPasses, 0);
    assert.ok(stats.kicks >= 20, `${stats.kicks} kicks`);
  });
});

test('poll mode: after the first kick the ring is watched with kicks off, and requests need no kick', async () => {
  // A 1 s window: the requests below come far faster than that.
  await withServer(1_000_000, async (driver, server) => {
    assert.equal(await echo(driver, 'first'), 'FIRST');
    const poller = server.backend!.poller;
    assert.equal(poller.polling, true);
    assert.equal(driver.queue(0).readUsedFlags() & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
    const kicksBefore = poller.stats.kicks;
    for (let i = 0; i < 20; i++) assert.equal(await echo(driver, `p${i}`), `P${i}`);
    assert.equal(poller.stats.kicks, kicksBefore, 'no wake-up by kick while polling');
    assert.ok(poller.stats.polledPasses >= 20, `${poller.stats.polledPasses} polled passes`);
  }, NO_EVENT_IDX);
});

test('poll mode: when the window passes, kicks are re-enabled and the next request is still served', async () => {
  await withServer(2_000, async (driver, server) => {
    assert.equal(await echo(driver, 'a'), 'A');
    const poller = server.backend!.poller;
    await waitUntil(() => !poller.polling, 2000, 'polling to end');
    assert.equal(driver.queue(0).readUsedFlags() & VRING_USED_F_NO_NOTIFY, 0, 'kicks are on again');
    assert.ok(poller.stats.sleeps >= 1);
    assert.equal(await echo(driver, 'b'), 'B');
  }, NO_EVENT_IDX);
});

test('poll mode with EVENT_IDX: kicks are asked for again (avail_event) when polling ends', async () => {
  await withServer(2_000, async (driver, server) => {
    assert.equal(await echo(driver, 'a'), 'A');
    const poller = server.backend!.poller;
    await waitUntil(() => !poller.polling, 2000, 'polling to end');
    const q = driver.queue(0);
    assert.equal(q.readAvailEvent(), q.availIdx, 'avail_event asks for a kick at the next buffer');
    assert.equal(await echo(driver, 'b'), 'B');
  });
});

test('adaptive window: slow kicks shrink it to nothing, fast requests grow it back', async () => {
  await withServer(2_000, async (driver, server) => {
    const poller = server.backend!.poller;
    assert.equal(poller.windowUs, 2_000);
    // Requests 30 ms apart: polling 2 ms after each never catches the next.
    for (let i = 0; i < 12 && poller.windowUs > 0; i++) {
      await echo(driver, `s${i}`);
      await sleep(30);
    }
    assert.equal(poller.windowUs, 0);
    // Back-to-back requests come much sooner than 2 ms after the previous: polling would pay again.
    for (let i = 0; i < 50 && poller.windowUs === 0; i++) await echo(driver, `f${i}`);
    assert.ok(poller.windowUs > 0, `window ${poller.windowUs}`);
  });
});

/** Queue 0 echoes; queue 1 is like a receive ring: it keeps the driver's buffers and never takes them. */
class HoldingDevice extends EchoDevice {
  rxPasses = 0;
  constructor() {
    super(2);
  }

  pollQueue(): boolean {
    return true;
  }

  onAvailable(vring: Vring): void {
    if (vring.index === 1) {
      this.rxPasses++;
      return;
    }
    for (let c = vring.pop(); c; c = vring.pop()) this.handleChain(vring, c);
  }
}

test('poll mode: buffers a device keeps waiting (a receive ring) do not keep the loop busy', async () => {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'hold.sock');
  const device = new HoldingDevice();
  const server = new DeviceServer(device, { socketPath, pollUs: 2_000 }).listen();
  const driver = await VirtioDriver.connect({ socketPath });
  try {
    await driver.startQueues(2, 16);
    // Receive buffers posted once: the device is told once, then the loop must go idle with them still there.
    for (let i = 0; i < 4; i++) void driver.submit(1, [], [{ addr: driver.ram.alloc(64, 8), len: 64 }]).catch(() => 0);
    await sleep(20);
    const poller = server.backend!.poller;
    assert.equal(await echo(driver, 'go'), 'GO');
    await waitUntil(() => !poller.polling, 2000, 'polling to end while receive buffers wait');
    assert.ok(device.rxPasses >= 1 && device.rxPasses <= 3, `${device.rxPasses} passes over the receive ring`);
  } finally {
    driver.close();
    await server.close();
    cleanup();
  }
});

/** Echo on a 1024-entry ring, noting how many chains it handled before the event loop first got a turn. */
class BigRingDevice extends EchoDevice {
  firstStretch = -1;
  constructor() {
    super(1);
    Object.defineProperty(this, 'maxQueueSize', { value: 1024 });
  }

  override handleChain(vring: Vring, chain: DescriptorChain): void {
    if (this.handled === 0) setImmediate(() => { this.firstStretch = this.handled; });
    super.handleChain(vring, chain);
  }
}

// In notification mode the event loop gets a turn after every cut pass; in poll mode the spin goes on to the next
// pass at once (the event loop gets its turn at the end of the spin's time slice), so there the passes are counted.
for (const pollUs of [0, 1_000_000]) {
  test(`a pass takes at most ${PASS_BUDGET} chains, and the rest follow without a kick (poll ${pollUs})`, async () => {
    const { dir, cleanup } = tempDir();
    const socketPath = path.join(dir, 'big.sock');
    const device = new BigRingDevice();
    const server = new DeviceServer(device, { socketPath, pollUs }).listen();
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(1, 1024);
      const n = PASS_BUDGET + 200; // two descriptors each: 912 of the ring's 1024
      const done: Promise<number>[] = [];
      for (let i = 0; i < n; i++) {
        const addr = driver.ram.alloc(2, 8);
        driver.ram.bytes(addr, 2).set([0x61, 0x62]);
        done.push(driver.submit(0, [{ addr, len: 2 }], [{ addr: driver.ram.alloc(8, 8), len: 8 }]));
      }
      const passesBefore = server.backend!.poller.stats.polledPasses;
      const lens = await Promise.all(done);
      assert.ok(lens.every((l) => l === 2));
      assert.equal(device.handled, n);
      if (pollUs === 0) {
        assert.equal(device.firstStretch, PASS_BUDGET, 'the first pass stopped at the budget');
      } else {
        assert.equal(server.backend!.poller.stats.polledPasses - passesBefore, 2, 'two passes: the budget, then the rest');
      }
    } finally {
      driver.close();
      await server.close();
      cleanup();
    }
  });
}

test(`notification mode with EVENT_IDX: a pass that ends exactly at the budget still asks for the next kick`, async () => {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'big.sock');
  const device = new BigRingDevice();
  const server = new DeviceServer(device, { socketPath, pollUs: 0 }).listen();
  const driver = await VirtioDriver.connect({ socketPath });
  try {
    await driver.startQueues(1, 1024);
    const submit = (): Promise<number> => {
      const addr = driver.ram.alloc(2, 8);
      driver.ram.bytes(addr, 2).set([0x61, 0x62]);
      return driver.submit(0, [{ addr, len: 2 }], [{ addr: driver.ram.alloc(8, 8), len: 8 }]);
    };
    const first: Promise<number>[] = [];
    for (let i = 0; i < PASS_BUDGET; i++) first.push(submit());
    await Promise.all(first);
    // The next requests come one at a time: each needs a kick, which the driver sends only if asked to.
    for (let i = 0; i < 3; i++) {
      const len = await Promise.race([submit(), sleep(3000).then(() => -1)]);
      assert.equal(len, 2, `request ${i} after the full pass was served`);
    }
    assert.equal(device.handled, PASS_BUDGET + 3);
  } finally {
    driver.close();
    await server.close();
    cleanup();
  }
});

/** Takes at most 100 chains per call and says so when it stops with more left. */
class BudgetDevice extends EchoDevice {
  calls = 0;
  constructor() {
    super(1);
  }

  onAvailable(vring: Vring): boolean {
    this.calls++;
    let n = 0;
    for (let c = n < 100 ? vring.pop() : null; c !== null; c = n < 100 ? vring.pop() : null) {
      n++;
      this.handleChain(vring, c);
    }
    return n >= 100;
  }
}

test('an onAvailable handler that stops at its own budget gets another pass without a kick', async () => {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'budget.sock');
  const device = new BudgetDevice();
  const server = new DeviceServer(device, { socketPath, pollUs: 0 }).listen();
  const driver = await VirtioDriver.connect({ socketPath });
  try {
    await driver.startQueues(1, 256);
    const done: Promise<number>[] = [];
    for (let i = 0; i < 120; i++) {
      const addr = driver.ram.alloc(2, 8);
      driver.ram.bytes(addr, 2).set([0x61, 0x62]);
      done.push(driver.submit(0, [{ addr, len: 2 }], [{ addr: driver.ram.alloc(8, 8), len: 8 }]));
    }
    const all = await Promise.race([Promise.all(done), sleep(3000).then(() => null)]);
    assert.ok(all !== null, `only ${device.handled} of 120 served: the cut pass was not followed up`);
    assert.equal(device.handled, 120);
    assert.ok(device.calls >= 2, `${device.calls} passes`);
  } finally {
    driver.close();
    await server.close();
    cleanup();
  }
});
