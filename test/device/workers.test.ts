import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { threadId } from 'node:worker_threads';
import { native } from '../../src/native/index.js';
import { DeviceServer, type DeviceServerOptions } from '../../src/device/server.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { DeviceStatus } from '../../src/virtio/constants.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { WorkerEchoDevice } from '../helpers/worker-echo.js';
import { openFdCount, sleep, tempDir, waitUntil } from '../helpers/tmp.js';

async function withServer(device: EchoDevice, options: Partial<DeviceServerOptions>,
  fn: (socketPath: string, server: DeviceServer) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'echo.sock');
  const server = new DeviceServer(device, { socketPath, ...options }).listen();
  try {
    await server.ready;
    await fn(socketPath, server);
  } finally {
    await server.close();
    cleanup();
  }
}

async function echo(driver: VirtioDriver, q: number, text: string): Promise<string> {
  const data = Buffer.from(text);
  const addr = driver.ram.alloc(data.length, 8);
  driver.ram.bytes(addr, data.length).set(data);
  const out = driver.ram.alloc(64, 8);
  const len = await driver.submit(q, [{ addr, len: data.length }], [{ addr: out, len: 64 }]);
  return Buffer.from(driver.ram.bytes(out, len)).toString();
}

/** The open fd count once a frontend has come and gone (lazily opened fds, the addon's and libuv's, included). */
async function fdBaseline(socketPath: string): Promise<number> {
  const warm = await VirtioDriver.connect({ socketPath });
  await warm.startQueues(2, 16);
  await echo(warm, 0, 'warm');
  await echo(warm, 1, 'warm');
  warm.close();
  await sleep(200);
  return openFdCount();
}

/** "HELLO@7" -> 7 */
function servedBy(reply: string): number {
  return Number(reply.slice(reply.lastIndexOf('@') + 1));
}

test('queues on two workers: each queue is served by its own worker thread, none by the main thread', async () => {
  const device = new WorkerEchoDevice(2);
  await withServer(device, { workers: 2 }, async (socketPath, server) => {
    assert.equal(server.workers?.size, 2);
    assert.equal(server.workers?.describe([0, 1]), 'queue 0 -> worker 0, queue 1 -> worker 1');
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(2, 64);
      const threads = [new Set<number>(), new Set<number>()];
      for (let i = 0; i < 100; i++) {
        const q = i % 2;
        const reply = await echo(driver, q, `hello ${i}`);
        assert.equal(reply.slice(0, reply.lastIndexOf('@')), `HELLO ${i}`);
        threads[q]!.add(servedBy(reply));
      }
      assert.equal(threads[0]!.size, 1);
      assert.equal(threads[1]!.size, 1);
      const [t0] = threads[0]!;
      const [t1] = threads[1]!;
      assert.notEqual(t0, t1);
      assert.notEqual(t0, threadId);
      assert.equal(device.handled, 0, 'the main thread handled no chain');
    } finally {
      driver.close();
    }
  });
});

test('a queue kept local runs on the main thread next to a worker queue', async () => {
  const device = new WorkerEchoDevice(2);
  device.local.add(0);
  await withServer(device, { workers: 1 }, async (socketPath) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(2, 16);
      assert.equal(await echo(driver, 0, 'local'), 'LOCAL');
      assert.notEqual(servedBy(await echo(driver, 1, 'remote')), threadId);
      assert.equal(device.handled, 1);
    } finally {
      driver.close();
    }
  });
});

test('GET_VRING_BASE on a worker queue waits for its chains in flight; a stopped ring is not processed', async () => {
  const device = new WorkerEchoDevice(1);
  device.delayMsOnWorker = 50;
  await withServer(device, { workers: 1, pollUs: 200 }, async (socketPath) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(1, 16);
      const pending = [0, 1, 2].map((i) => echo(driver, 0, `x${i}`));
      // The chains reach the worker (the echo takes 50 ms); then stop while they are in flight.
      await sleep(10);
      const bases = await driver.stopQueues();
      assert.deepEqual(bases, [3]);
      const used = driver.queue(0).readUsedIdx();
      assert.equal(used, 3, 'every chain was completed before GET_VRING_BASE answered');
      driver.reapCompletions(0);
      assert.deepEqual((await Promise.all(pending)).map((r) => r.slice(0, 2)), ['X0', 'X1', 'X2']);
      // More buffers on the stopped ring: nothing may touch them.
      const q = driver.queue(0);
      const a = driver.ram.alloc(8, 8);
      q.add([{ addr: a, len: 4 }], [{ addr: driver.ram.alloc(8, 8), len: 8 }], 99);
      q.publish();
      native_kick(driver);
      await sleep(100);
      assert.equal(q.readUsedIdx(), 3);
    } finally {
      driver.close();
    }
  });
});

function native_kick(driver: VirtioDriver): void {
  // The driver still has its end of the kick eventfd; the worker stopped watching its copy.
  try {
    native.eventfdWrite(driver.kickFd(0), 1);
  } catch {
    // the driver closed it: nothing to kick
  }
}

test('a chain that throws on a worker breaks the ring: NEEDS_RESET', async () => {
  const device = new WorkerEchoDevice(1);
  await withServer(device, { workers: 1 }, async (socketPath) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(1, 16);
      assert.match(await echo(driver, 0, 'ok'), /^OK@/);
      void echo(driver, 0, 'fail').catch(() => undefined);
      let status = 0;
      for (let i = 0; i < 100 && !(status & DeviceStatus.NEEDS_RESET); i++) {
        status = await driver.frontend.getStatus();
        await sleep(20);
      }
      assert.ok(status & DeviceStatus.NEEDS_RESET, `status 0x${status.toString(16)}`);
    } finally {
      driver.close();
    }
  });
});

async function waitForStatus(driver: VirtioDriver, bit: number): Promise<number> {
  let status = 0;
  for (let i = 0; i < 250 && !(status & bit); i++) {
    status = await driver.frontend.getStatus();
    if (!(status & bit)) await sleep(20);
  }
  return status;
}

test('a queue worker that dies is restarted: its connection gets NEEDS_RESET, the next frontend is served with the last update', async () => {
  const device = new WorkerEchoDevice(2);
  await withServer(device, { workers: 2 }, async (socketPath, server) => {
    device.broadcast!('#u');
    const baseline = await fdBaseline(socketPath);
    const first = await VirtioDriver.connect({ socketPath });
    let dead: number;
    try {
      await first.startQueues(2, 16);
      const reply = await echo(first, 0, 'a');
      assert.match(reply, /^A@\d+#u$/);
      dead = servedBy(reply.slice(0, -2));
      void echo(first, 0, 'crash').catch(() => undefined);
      const status = await waitForStatus(first, DeviceStatus.NEEDS_RESET);
      assert.ok(status & DeviceStatus.NEEDS_RESET, `status 0x${status.toString(16)}`);
      await waitUntil(() => server.workers!.restarts === 1, 5000, 'worker 0 restarted');
      // The other worker's queue goes on serving this connection.
      assert.match(await echo(first, 1, 'b'), /^B@\d+#u$/);
      // The driver restarts its rings without a new memory table: the new worker has the table already.
      const bases = await first.stopQueues();
      assert.equal(bases.length, 2, 'GET_VRING_BASE answered for the lost ring too');
      await first.startQueues(2, 16);
      const again = await echo(first, 0, 'e');
      assert.match(again, /^E@\d+#u$/);
      assert.notEqual(servedBy(again.slice(0, -2)), dead);
    } finally {
      first.close();
    }
    // Twice: the second death comes soon after the restart (the quick-death path, with a delay).
    for (let round = 1; round <= 2; round++) {
      const driver = await VirtioDriver.connect({ socketPath });
      try {
        await driver.startQueues(2, 16);
        assert.equal(await driver.frontend.getStatus() & DeviceStatus.NEEDS_RESET, 0, 'a new frontend starts clean');
        const reply = await echo(driver, 0, `c${round}`);
        assert.match(reply, new RegExp(`^C${round}@\\d+#u$`), 'the restarted worker has the device update');
        const thread = servedBy(reply.slice(0, -2));
        assert.notEqual(thread, dead, 'served by a new worker thread');
        assert.notEqual(thread, threadId);
        dead = thread;
        assert.match(await echo(driver, 1, 'd'), /^D@\d+#u$/);
        if (round === 1) {
          void echo(driver, 0, 'crash').catch(() => undefined);
          await waitUntil(() => server.workers!.restarts === 2, 5000, 'worker 0 restarted twice');
        }
      } finally {
        driver.close();
      }
    }
    // The eventfds the dead workers held (kick, call, err of their rings) were closed with them.
    await waitUntil(() => openFdCount() <= baseline, 5000, `fds back to ${baseline} after three worker deaths`);
    // A death with the server closing right after: the pending restart is dropped.
    const last = await VirtioDriver.connect({ socketPath });
    await last.startQueues(2, 16);
    void echo(last, 0, 'crash').catch(() => undefined);
    await waitForStatus(last, DeviceStatus.NEEDS_RESET);
    last.close();
  });
});

test('device updates reach every worker; disconnects return every fd and the workers serve the next frontend', async () => {
  const device = new WorkerEchoDevice(2);
  await withServer(device, { workers: 2 }, async (socketPath) => {
    const baseline = await fdBaseline(socketPath);
    for (let round = 0; round < 5; round++) {
      device.broadcast!(`#${round}`);
      const driver = await VirtioDriver.connect({ socketPath });
      try {
        await driver.startQueues(2, 16);
        for (const q of [0, 1]) assert.match(await echo(driver, q, 'r'), new RegExp(`^R@\\d+#${round}$`));
      } finally {
        driver.close();
      }
      await waitUntil(() => openFdCount() <= baseline, 5000, `fds back to ${baseline} after round ${round}`);
    }
  });
});

test('a device without worker support: ready rejects with a clear error', async () => {
  const { dir, cleanup } = tempDir();
  const server = new DeviceServer(new EchoDevice(1), { socketPath: path.join(dir, 's.sock'), workers: 1 }).listen();
  try {
    await assert.rejects(server.ready, /cannot serve its queues on worker threads/);
  } finally {
    await server.close();
    cleanup();
  }
});
