/**
 * Interop with a real peer: our frontend against qemu-storage-daemon's vhost-user-blk export, and the probe
 * tool against it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { VirtioDriver } from '../../src/driver/driver.js';
import { CommonFeature, hasFeature, BlkFeature } from '../../src/virtio/constants.js';
import { decodeBlkConfig } from '../../src/virtio/config.js';
import { BlkClient } from '../helpers/blk-client.js';
import { StorageDaemon, requireCommand } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const cli = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '../../src/cli/main.js');

test('our frontend reads and writes blocks through qemu-storage-daemon (file export, 2 queues)', async (t) => {
  if (!requireCommand(t, 'qemu-storage-daemon', 'qemu-system-common')) return;
  const { dir, cleanup } = tempDir();
  const image = path.join(dir, 'disk.img');
  const original = crypto.randomBytes(16 * MiB);
  fs.writeFileSync(image, original);
  const socketPath = path.join(dir, 'qsd.sock');
  const qsd = await StorageDaemon.start(socketPath, `driver=file,node-name=n0,filename=${image}`, 2);
  let driver: VirtioDriver | undefined;
  try {
    driver = await VirtioDriver.connect({ socketPath, ramSize: 64 * MiB });
    assert.ok(hasFeature(driver.features, CommonFeature.VERSION_1));
    assert.equal(driver.maxQueues, 2);
    const config = decodeBlkConfig(await driver.getConfig(0, 60));
    assert.equal(config.capacity, (16 * MiB) / 512);
    await driver.startQueues(2, 128);
    const blk = new BlkClient(driver);

    // Reads see what the file holds.
    for (const sector of [0, 7, 4096, 32760]) {
      const got = await blk.read(sector % 2, sector, 4096);
      assert.deepEqual(Buffer.from(got), original.subarray(sector * 512, sector * 512 + 4096));
    }
    // Writes at many offsets on both queues, concurrently, then read back.
    const writes = new Map<number, Buffer>();
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) {
      const sector = (i * 509) % ((16 * MiB) / 512 - 16);
      if ([...writes.keys()].some((s) => Math.abs(s - sector) < 16)) continue;
      const data = crypto.randomBytes(8192);
      writes.set(sector, data);
      jobs.push(blk.write(i % 2, sector, data));
    }
    await Promise.all(jobs);
    assert.equal(await blk.flush(0), 0);
    for (const [sector, data] of writes) {
      assert.deepEqual(Buffer.from(await blk.read(sector % 2, sector, data.length)), data, `sector ${sector}`);
    }
    driver.close();
    driver = undefined;
    await qsd.stop();
    // The peer really wrote them to the file.
    const after = fs.readFileSync(image);
    for (const [sector, data] of writes) assert.deepEqual(after.subarray(sector * 512, sector * 512 + data.length), data);
  } finally {
    driver?.close();
    await qsd.stop();
    cleanup();
  }
});

test('vhost-user probe prints qemu-storage-daemon\'s features, queues and config', async (t) => {
  if (!requireCommand(t, 'qemu-storage-daemon', 'qemu-system-common')) return;
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'qsd.sock');
  const qsd = await StorageDaemon.start(socketPath, `driver=null-co,node-name=n0,size=${64 * MiB}`, 3);
  try {
    const json = JSON.parse(execFileSync(process.execPath, [cli, 'probe', '--socket-path', socketPath, '--json'],
      { encoding: 'utf8' })) as Record<string, unknown>;
    assert.equal(json.deviceType, 'blk');
    assert.equal(json.queues, 3);
    const names = json.featureNames as string[];
    for (const n of ['VERSION_1', 'EVENT_IDX', 'PROTOCOL_FEATURES', 'FLUSH', 'SEG_MAX', 'MQ']) assert.ok(names.includes(n), n);
    const proto = json.protocolFeatureNames as string[];
    for (const n of ['MQ', 'REPLY_ACK', 'CONFIG', 'CONFIGURE_MEM_SLOTS']) assert.ok(proto.includes(n), n);
    const config = json.config as Record<string, number>;
    assert.equal(config.capacity, (64 * MiB) / 512);
    assert.equal(config.num_queues, 3);
    assert.equal(BigInt(json.features as string) & (1n << BigInt(BlkFeature.FLUSH)), 1n << BigInt(BlkFeature.FLUSH));
    const text = execFileSync(process.execPath, [cli, 'probe', '--socket-path', socketPath], { encoding: 'utf8' });
    assert.match(text, /queues:\s+3/);
    assert.match(text, /capacity\s+131072/);
    assert.match(text, /REPLY_ACK/);
  } finally {
    await qsd.stop();
    cleanup();
  }
});
