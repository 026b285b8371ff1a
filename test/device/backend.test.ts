import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DeviceServer } from '../../src/device/server.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { ProtocolFeature } from '../../src/protocol/constants.js';
import { CommonFeature, DeviceStatus, hasFeature } from '../../src/virtio/constants.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { tempDir, waitUntil } from '../helpers/tmp.js';

async function withServer(fn: (socketPath: string, device: EchoDevice, server: DeviceServer) => Promise<void>,
  device = new EchoDevice()): Promise<void> {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'echo.sock');
  const server = new DeviceServer(device, { socketPath }).listen();
  try {
    await fn(socketPath, device, server);
  } finally {
    await server.close();
    cleanup();
  }
}

function put(driver: VirtioDriver, text: string): { addr: number; len: number } {
  const data = Buffer.from(text);
  const addr = driver.ram.alloc(data.length, 8);
  driver.ram.bytes(addr, data.length).set(data);
  return { addr, len: data.length };
}

test('negotiates features and protocol features with our backend', async () => {
  await withServer(async (socketPath) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      assert.ok(hasFeature(driver.features, CommonFeature.VERSION_1));
      assert.ok(hasFeature(driver.features, CommonFeature.EVENT_IDX));
      assert.ok(driver.hasProtocolFeature(ProtocolFeature.REPLY_ACK));
      assert.ok(driver.hasProtocolFeature(ProtocolFeature.CONFIGURE_MEM_SLOTS));
      assert.equal(driver.maxQueues, 2);
      assert.deepEqual([...await driver.getConfig(2, 4)], [3, 4, 5, 6]);
      assert.equal(await driver.frontend.getMaxMemSlots(), 32);
    } finally {
      driver.close();
    }
  });
});

test('round trip: chains on two queues are completed with the data transformed', async () => {
  await withServer(async (socketPath, device) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(2, 64);
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) {
        const q = i % 2;
        const input = put(driver, `hello ${i} from queue ${q}`);
        const out = { addr: driver.ram.alloc(64, 8), len: 64 };
        jobs.push((async () => {
          // The ring holds 64 chains; wait for room by submitting in waves.
          const len = await driver.submit(q, [input], [out]);
          assert.equal(len, input.len);
          assert.equal(Buffer.from(driver.ram.bytes(out.addr, len)).toString(), `HELLO ${i} FROM QUEUE ${q}`);
        })());
        if (jobs.length % 50 === 0) await Promise.all(jobs);
      }
      await Promise.all(jobs);
      assert.equal(device.handled, 200);
      assert.equal(await driver.frontend.getStatus(), DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER |
        DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
    } finally {
      driver.close();
    }
  });
});

test('GET_VRING_BASE waits for chains in flight and returns the next avail index', async () => {
  const device = new EchoDevice(1);
  device.delayMs = 30;
  await withServer(async (socketPath) => {
    const driver = await VirtioDriver.connect({ socketPath });
    try {
      await driver.startQueues(1, 16);
      const pending = [0, 1, 2].map((i) => driver.submit(0, [put(driver, `x${i}`)], [{ addr: driver.ram.alloc(8), len: 8 }]));
      await waitUntil(() => device.handled === 3, 2000, 'chains to reach the device');
      const bases = await driver.stopQueues();
      assert.deepEqual(bases, [3]);
      // Every chain was completed before the ring stopped.
      driver.reapCompletions(0);
      assert.deepEqual(await Promise.all(pending), [2, 2, 2]);
    } finally {
      driver.close();
    }
  }, device);
});

test('a second frontend is refused while one is connected; the next is served after', async () => {
  await withServer(async (socketPath, device, server) => {
    const first = await VirtioDriver.connect({ socketPath });
    await assert.rejects(VirtioDriver.connect({ socketPath }), /closed/);
    first.close();
    await waitUntil(() => device.resets === 1, 2000, 'the device reset after disconnect');
    const third = await VirtioDriver.connect({ socketPath });
    try {
      await third.startQueues(1, 8);
      assert.equal(await third.submit(0, [put(third, 'ok')], [{ addr: third.ram.alloc(8), len: 8 }]), 2);
      assert.equal(server.endpoint.connectionCount, 2);
    } finally {
      third.close();
    }
  });
});
