import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { native, isSystemError } from '../../src/native/index.js';

const PAGE = 4096;
const indexUrl = new URL('../../src/native/index.js', import.meta.url).href;

/** The global gc(), enabling it at runtime when node was started without --expose-gc. */
function getGc(): () => void {
  if (globalThis.gc) return globalThis.gc;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}
const gc = getGc();

function maps(): string[] {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.length > 0);
}

function mappingsOf(memfdName: string): number {
  return maps().filter((l) => l.includes(`/memfd:${memfdName} `)).length;
}

/**
 * Collect garbage until `done()` holds. Backing stores may be freed by a background sweeper
 * after gc() returns, hence a bounded number of rounds rather than one call.
 */
async function collectUntil(done: () => boolean): Promise<boolean> {
  for (let round = 0; round < 200; round++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
    if (done()) return true;
  }
  return false;
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  assert.equal(fs.readSync(fd, buf, 0, length, offset), length);
  return buf;
}

test('mmap of a memfd is a shared, zero-copy view of the file', () => {
  const fd = native.memfdCreate('vhost-mmap', 2 * PAGE);
  try {
    const sab = native.mmap(fd, 2 * PAGE, true);
    assert.ok(sab instanceof SharedArrayBuffer);
    assert.equal(sab.byteLength, 2 * PAGE);
    const bytes = new Uint8Array(sab);
    bytes.set([1, 2, 3, 4], PAGE - 2);
    // The file changed: fs sees it, and so does an independent mapping.
    assert.deepEqual([...readAt(fd, PAGE - 2, 4)], [1, 2, 3, 4]);
    const second = new Uint8Array(native.mmap(fd, 2 * PAGE, false));
    assert.deepEqual([...second.subarray(PAGE - 2, PAGE + 2)], [1, 2, 3, 4]);
    // And the other way round: a write to the file shows through the mapping.
    fs.writeSync(fd, Buffer.from([0xaa, 0xbb]), 0, 2, 10);
    assert.equal(bytes[10], 0xaa);
    assert.equal(second[11], 0xbb);
  } finally {
    native.close(fd);
  }
});

test('Atomics work on an Int32Array over the mapping', () => {
  const fd = native.memfdCreate('vhost-atomics', PAGE);
  try {
    const ints = new Int32Array(native.mmap(fd, PAGE, true));
    Atomics.store(ints, 3, 41);
    assert.equal(Atomics.add(ints, 3, 1), 41);
    assert.equal(Atomics.load(ints, 3), 42);
    assert.equal(Atomics.compareExchange(ints, 3, 42, -7), 42);
    assert.equal(readAt(fd, 12, 4).readInt32LE(0), -7);
  } finally {
    native.close(fd);
  }
});

test('the mapping is shared with a worker, and a worker-made mapping outlives the worker', async () => {
  const fd = native.memfdCreate('vhost-worker-shared', PAGE);
  try {
    const sab = native.mmap(fd, PAGE, true);
    const view = new Int32Array(sab);
    const worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.indexUrl).then(({ native }) => {
        const view = new Int32Array(workerData.sab);
        Atomics.store(view, 1, 1234);
        const fd = native.memfdCreate('vhost-from-worker', 4096);
        const own = native.mmap(fd, 4096, true);
        new Uint8Array(own)[0] = 77;
        native.close(fd);
        parentPort.postMessage(own);
      });
    `, { eval: true, workerData: { sab, indexUrl } });
    const [own] = (await once(worker, 'message')) as [SharedArrayBuffer];
    await once(worker, 'exit');
    assert.equal(Atomics.load(view, 1), 1234);
    assert.equal(readAt(fd, 4, 4).readInt32LE(0), 1234);
    // The worker's isolate is gone; its mapping lives on through the shared backing store.
    const ownBytes = new Uint8Array(own);
    assert.equal(ownBytes[0], 77);
    ownBytes[1] = 78;
    assert.equal(ownBytes[1], 78);
    assert.equal(mappingsOf('vhost-from-worker'), 1);
    // The registry is process-wide: the main thread can drop a worker's mapping.
    native.unmapNow(own);
    assert.equal(mappingsOf('vhost-from-worker'), 0);
    assert.equal(ownBytes[0], 0);
  } finally {
    native.close(fd);
  }
});

test('unmapNow releases the file at once; the buffer stays valid and reads zeros', () => {
  const name = 'vhost-unmap-now';
  const fd = native.memfdCreate(name, 4 * PAGE);
  try {
    const sab = native.mmap(fd, 4 * PAGE, true);
    const bytes = new Uint8Array(sab);
    bytes.fill(0xab);
    assert.equal(mappingsOf(name), 1);
    native.unmapNow(sab);
    assert.equal(mappingsOf(name), 0, '/proc/self/maps must no longer list the memfd');
    assert.ok(bytes.every((b) => b === 0));
    // Later writes land in private anonymous pages, never in the file.
    bytes[0] = 5;
    assert.equal(bytes[0], 5);
    assert.ok(readAt(fd, 0, 4 * PAGE).every((b) => b === 0xab));
    // A second call is a no-op.
    native.unmapNow(sab);
    assert.equal(bytes[0], 5);
  } finally {
    native.close(fd);
  }
});

test('unmapNow rejects buffers it did not map', () => {
  assert.throws(() => native.unmapNow(new SharedArrayBuffer(PAGE)), (err: unknown) =>
    isSystemError(err, 'EINVAL') && err.syscall === 'unmapNow');
  assert.throws(() => native.unmapNow(new SharedArrayBuffer(0)), (err: unknown) => isSystemError(err, 'EINVAL'));
});

test('mmap errors: zero length, bad fd, writable mapping of a read-only fd', () => {
  const fd = native.memfdCreate('vhost-mmap-errors', PAGE);
  const ro = fs.openSync(`/proc/self/fd/${fd}`, 'r');
  try {
    assert.throws(() => native.mmap(fd, 0, true), (err: unknown) =>
      isSystemError(err, 'EINVAL') && err.syscall === 'mmap');
    assert.throws(() => native.mmap(-1, PAGE, true), (err: unknown) => isSystemError(err, 'EBADF'));
    assert.throws(() => native.mmap(ro, PAGE, true), (err: unknown) => isSystemError(err, 'EACCES'));
    fs.writeSync(fd, Buffer.from([9]), 0, 1, 0);
    const view = new Uint8Array(native.mmap(ro, PAGE, false));
    assert.equal(view[0], 9);
  } finally {
    fs.closeSync(ro);
    native.close(fd);
  }
});

test('a collected mapping is munmapped', async () => {
  const name = 'vhost-collected';
  const fd = native.memfdCreate(name, PAGE);
  (() => {
    new Uint8Array(native.mmap(fd, PAGE, true))[0] = 1;
  })();
  native.close(fd);
  assert.equal(mappingsOf(name), 1);
  assert.ok(await collectUntil(() => mappingsOf(name) === 0), 'the deleter never unmapped the memfd');
});

test('1000 x mmap (+ unmapNow on every other one) does not grow /proc/self/maps once collected', async () => {
  const name = 'vhost-loop';
  await collectUntil(() => true);
  const before = maps().length;
  // In a plain function: a suspended async frame would keep the last buffer alive.
  (() => {
    for (let i = 0; i < 1000; i++) {
      const fd = native.memfdCreate(name, 16 * PAGE);
      const sab = native.mmap(fd, 16 * PAGE, true);
      new Uint8Array(sab)[i % PAGE] = 1;
      if (i % 2 === 0) native.unmapNow(sab);
      native.close(fd);
    }
  })();
  assert.ok(mappingsOf(name) > 0, 'the loop should leave collectable mappings behind');
  const settled = await collectUntil(() => mappingsOf(name) === 0 && maps().length < before + 64);
  assert.ok(settled, `maps: ${before} lines before, ${maps().length} after; ${mappingsOf(name)} memfds left`);
});
