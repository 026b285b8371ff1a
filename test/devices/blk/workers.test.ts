import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { DeviceServer } from '../../../src/device/server.js';
import { BlkDevice } from '../../../src/devices/blk/device.js';
import { BlkStatus } from '../../../src/devices/blk/request.js';
import { FileStorage, MemoryStorage, NullStorage, type BlockStorage } from '../../../src/devices/blk/storage/index.js';
import { openSharedStorage, shareStorage } from '../../../src/devices/blk/storage/shared.js';
import { tempDir } from '../../helpers/tmp.js';
import { BlkClient, pattern } from './helpers.js';

const MiB = 1024 * 1024;

/** Serve `storage` with two queues on two workers; run `fn` with a connected client. */
async function withWorkers(storage: BlockStorage, fn: (c: BlkClient, device: BlkDevice, server: DeviceServer) => Promise<void>):
  Promise<void> {
  const { dir, cleanup } = tempDir('vhost-user-blkw-');
  const device = new BlkDevice({ storage, numQueues: 2 });
  const socketPath = path.join(dir, 'blk.sock');
  const server = new DeviceServer(device, { socketPath, workers: 2, pollUs: 20 }).listen();
  let client: BlkClient | undefined;
  try {
    await server.ready;
    client = await BlkClient.connect(socketPath, { queues: 2 });
    await fn(client, device, server);
  } finally {
    client?.close();
    await server.close();
    await storage.close();
    cleanup();
  }
}

test('memory disk on two workers: writes on both queues land in the one disk the main thread sees', async () => {
  const storage = new MemoryStorage({ size: 8 * MiB });
  await withWorkers(storage, async (c, device, server) => {
    for (let i = 0; i < 32; i++) {
      const r = await c.write(i * 8, pattern(4096, i), { q: i % 2 });
      assert.equal(r.status, BlkStatus.OK);
    }
    // Read back through the main thread's own storage object: the workers wrote into shared memory.
    for (let i = 0; i < 32; i++) {
      const buf = new Uint8Array(4096);
      await new Promise<void>((resolve, reject) => storage.read([buf], i * 4096, (e) => (e ? reject(e) : resolve())));
      assert.deepEqual(buf, pattern(4096, i), `block ${i}`);
      const back = await c.read(i * 8, 4096, { q: (i + 1) % 2 });
      assert.deepEqual(new Uint8Array(back.data), pattern(4096, i));
    }
    assert.equal(device.stats.requests, 0, 'the main thread served no request');
    const perWorker = (await server.workers!.stats()) as { requests: number; perQueue: number[] }[];
    assert.deepEqual(perWorker.map((s) => s.requests), [32, 32]);
    assert.deepEqual(perWorker[0]!.perQueue, [32, 0]);
    assert.deepEqual(perWorker[1]!.perQueue, [0, 32]);
  });
});

test('file image on two workers: data written through the workers is in the image file', async () => {
  const { dir, cleanup } = tempDir('vhost-user-blkw-img-');
  try {
    const image = path.join(dir, 'disk.img');
    const storage = FileStorage.open(image, { size: 4 * MiB });
    await withWorkers(storage, async (c) => {
      for (let i = 0; i < 16; i++) assert.equal((await c.write(i * 16, pattern(8192, 100 + i), { q: i % 2 })).status, BlkStatus.OK);
      assert.equal((await c.flush(1)).status, BlkStatus.OK);
    });
    const bytes = fs.readFileSync(image);
    for (let i = 0; i < 16; i++) assert.deepEqual(bytes.subarray(i * 8192, (i + 1) * 8192), Buffer.from(pattern(8192, 100 + i)));
  } finally {
    cleanup();
  }
});

test('the cache mode chosen on the main thread reaches the workers (a read-only disk refuses writes there too)', async () => {
  const storage = new NullStorage({ size: 4 * MiB, readOnly: true });
  await withWorkers(storage, async (c) => {
    assert.equal((await c.read(0, 4096, { q: 1 })).status, BlkStatus.OK);
    assert.equal((await c.write(0, pattern(512, 1), { q: 1 })).status, BlkStatus.IOERR);
    assert.equal((await c.write(0, pattern(512, 1), { q: 0 })).status, BlkStatus.IOERR);
  });
});

test('storage shares: file, memory and null open on another thread; a custom storage cannot', async () => {
  const { dir, cleanup } = tempDir('vhost-user-share-');
  try {
    const file = FileStorage.open(path.join(dir, 'x.img'), { size: MiB, aio: 'threads' });
    const share = shareStorage(file);
    assert.deepEqual(share, { kind: 'file', path: path.join(dir, 'x.img'), size: MiB, readOnly: false, aio: 'threads' });
    const again = openSharedStorage(share!);
    assert.equal(again.size, MiB);
    await again.close();
    await file.close();
    const mem = new MemoryStorage({ size: MiB });
    const other = openSharedStorage(shareStorage(mem)!);
    await new Promise<void>((resolve) => other.write([pattern(512, 7)], 512, () => resolve()));
    const seen = new Uint8Array(512);
    await new Promise<void>((resolve) => mem.read([seen], 512, () => resolve()));
    assert.deepEqual(seen, pattern(512, 7), 'the same bytes');
    assert.throws(() => new MemoryStorage({ size: 2 * MiB, chunks: mem.sharedChunks() }), /does not fit/);
    const custom = { ...new NullStorage({ size: MiB }) } as unknown as BlockStorage;
    assert.equal(shareStorage(custom), undefined);
  } finally {
    cleanup();
  }
});
