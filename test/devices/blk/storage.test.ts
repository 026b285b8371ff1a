import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  FallocateMode, FileStorage, MemoryStorage, NullStorage, StorageError, openStorage, skipBytes, type BlockStorage,
  type FallocateFn, type FileAio, type IoCallback,
} from '../../../src/devices/blk/storage/index.js';
import { tempDir } from '../../helpers/tmp.js';
import { needUring } from '../../helpers/uring.js';
import { pattern } from './helpers.js';

/** Promise form of a storage call. */
function run(op: (done: (err: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => op((err) => (err ? reject(err) : resolve())));
}

function readBack(s: BlockStorage, position: number, len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len).fill(0x5a);
  return run((d) => s.read([out], position, d)).then(() => out);
}

/** Behaviour every writable backend that stores data shares. */
async function roundTrips(s: BlockStorage): Promise<void> {
  const data = pattern(8192, 1);
  // Scattered: three views of different sizes in, two out.
  await run((d) => s.write([data.subarray(0, 512), data.subarray(512, 4096), data.subarray(4096)], 4096, d));
  const a = new Uint8Array(1000);
  const b = new Uint8Array(8192 - 1000);
  await run((d) => s.read([a, b], 4096, d));
  assert.deepEqual(Buffer.concat([a, b]), Buffer.from(data));
  // The last byte of the storage is reachable, one past it is not.
  await run((d) => s.write([new Uint8Array([7])], s.size - 1, d));
  assert.deepEqual([...await readBack(s, s.size - 1, 1)], [7]);
  await assert.rejects(run((d) => s.read([new Uint8Array(2)], s.size - 1, d)), (e: StorageError) => e.code === 'ERANGE');
  await assert.rejects(run((d) => s.write([new Uint8Array(1)], -1, d)), (e: StorageError) => e.code === 'ERANGE');
  await assert.rejects(run((d) => s.read([new Uint8Array(1)], 0.5, d)), (e: StorageError) => e.code === 'ERANGE');
  // Write-zeroes and discard leave zeros.
  await run((d) => s.writeZeroes(4096, 1024, false, d));
  assert.deepEqual(await readBack(s, 4096, 1024), new Uint8Array(1024));
  assert.deepEqual(Buffer.from(await readBack(s, 5120, 512)), Buffer.from(data.subarray(1024, 1536)));
  await run((d) => s.discard(5120, 7168, d));
  assert.deepEqual(await readBack(s, 4096, 8192), new Uint8Array(8192));
  await run((d) => s.flush(d));
}

test('skipBytes continues a transfer after a short one', () => {
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array([4, 5]);
  assert.deepEqual(skipBytes([a, b], 0).map((v) => [...v]), [[1, 2, 3], [4, 5]]);
  assert.deepEqual(skipBytes([a, b], 2).map((v) => [...v]), [[3], [4, 5]]);
  assert.deepEqual(skipBytes([a, b], 3).map((v) => [...v]), [[4, 5]]);
  assert.deepEqual(skipBytes([a, b], 5), []);
});

test('memory storage: round trips, bounds, zeroing; completes synchronously', async () => {
  const s = new MemoryStorage({ size: 1 << 20 });
  assert.equal(s.kind, 'memory');
  assert.equal(s.canUnmap, false);
  let called = false;
  s.read([new Uint8Array(4)], 0, () => (called = true));
  assert.ok(called, 'memory completes before returning');
  await roundTrips(s);
  await s.close();
  await assert.rejects(readBack(s, 0, 1), (e: StorageError) => e.code === 'EBADF');
});

test('memory storage: I/O across the 1 GiB chunk boundary', async () => {
  const s = new MemoryStorage({ size: 2 ** 30 + 8192 });
  const data = pattern(8192, 3);
  await run((d) => s.write([data], 2 ** 30 - 4096, d));
  assert.deepEqual(Buffer.from(await readBack(s, 2 ** 30 - 4096, 8192)), Buffer.from(data));
  await run((d) => s.writeZeroes(2 ** 30 - 100, 200, false, d));
  const back = await readBack(s, 2 ** 30 - 4096, 8192);
  assert.deepEqual(back.subarray(3996, 4196), new Uint8Array(200));
  assert.equal(back[3995], data[3995]);
  assert.equal(back[4196], data[4196]);
  await s.close();
});

test('memory storage: page-sized reads come from cached page views that always show the current bytes', async () => {
  // 32 pages and a partial one; the cache has a slot per page, so later reads of a page reuse its view.
  const size = 32 * 4096 + 1000;
  const s = new MemoryStorage({ size });
  const mirror = new Uint8Array(size);
  let seed = 1;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  for (let i = 0; i < 400; i++) {
    const op = rand(3);
    // Positions and lengths aligned to pages, to sectors, or to nothing; views cut at odd places.
    const align = [4096, 512, 1][rand(3)]!;
    const pos = Math.floor(rand(size) / align) * align;
    const len = Math.min(size - pos, 1 + rand(3 * 4096));
    const cut = rand(len + 1);
    if (op === 0) {
      const data = pattern(len, i);
      await run((d) => s.write([data.subarray(0, cut), data.subarray(cut)].filter((v) => v.byteLength > 0), pos, d));
      mirror.set(data, pos);
    } else if (op === 1) {
      const out = new Uint8Array(len + 8).fill(0xee);
      const views = [out.subarray(0, cut), out.subarray(cut, len)].filter((v) => v.byteLength > 0);
      await run((d) => s.read(views, pos, d));
      assert.deepEqual(out.subarray(0, len), mirror.subarray(pos, pos + len), `read ${pos}+${len} (cut ${cut})`);
      assert.ok(out.subarray(len).every((b) => b === 0xee), 'nothing written past the views');
    } else {
      await run((d) => s.writeZeroes(pos, len, false, d));
      mirror.fill(0, pos, pos + len);
    }
  }
  assert.deepEqual(await readBack(s, 0, size), mirror);
  await s.close();
  await assert.rejects(readBack(s, 0, 4096), (e: StorageError) => e.code === 'EBADF');
});

test('read-only storage refuses every kind of write', async () => {
  for (const s of [new MemoryStorage({ size: 4096, readOnly: true }), new NullStorage({ size: 4096, readOnly: true })]) {
    const isRo = (e: StorageError) => e.code === 'EROFS';
    await assert.rejects(run((d) => s.write([new Uint8Array(512)], 0, d)), isRo);
    await assert.rejects(run((d) => s.discard(0, 512, d)), isRo);
    await assert.rejects(run((d) => s.writeZeroes(0, 512, true, d)), isRo);
    await readBack(s, 0, 512);
    await run((d) => s.flush(d));
  }
});

test('null storage: reads leave buffers untouched unless readZeroes; writes are dropped', async () => {
  const s = new NullStorage({ size: 1 << 20 });
  assert.equal(s.kind, 'null');
  const buf = new Uint8Array(512).fill(0xab);
  await run((d) => s.write([new Uint8Array(512).fill(1)], 0, d));
  await run((d) => s.read([buf], 0, d));
  assert.ok(buf.every((b) => b === 0xab));
  await assert.rejects(run((d) => s.read([buf], (1 << 20) - 256, d)), (e: StorageError) => e.code === 'ERANGE');
  const z = new NullStorage({ size: 4096, readZeroes: true });
  await run((d) => z.read([buf], 0, d));
  assert.ok(buf.every((b) => b === 0));
});

test('file storage: creates a sparse image, round trips, reopens with the data', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    const s = FileStorage.open(file, { size: 4 << 20 });
    assert.equal(s.created, true);
    assert.equal(fs.statSync(file).size, 4 << 20);
    assert.equal(fs.statSync(file).blocks, 0, 'created sparse');
    await roundTrips(s);
    await run((d) => s.write([pattern(4096, 9)], 1 << 20, d));
    await s.close();
    await assert.rejects(readBack(s, 0, 1), (e: StorageError) => e.code === 'EBADF');

    const again = FileStorage.open(file, { size: 4 << 20 });
    assert.equal(again.created, false);
    assert.deepEqual(Buffer.from(await readBack(again, 1 << 20, 4096)), Buffer.from(pattern(4096, 9)));
    await again.close();

    const ro = FileStorage.open(file, { readOnly: true });
    assert.equal(ro.size, 4 << 20);
    await assert.rejects(run((d) => ro.write([new Uint8Array(512)], 0, d)), (e: StorageError) => e.code === 'EROFS');
    assert.deepEqual(Buffer.from(await readBack(ro, 1 << 20, 4096)), Buffer.from(pattern(4096, 9)));
    await run((d) => ro.flush(d));
    await ro.close();
  } finally {
    cleanup();
  }
});

test('file storage: refuses a missing image without a size, a size mismatch, a directory, an empty file', () => {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'x.img');
    assert.throws(() => FileStorage.open(file), /does not exist/);
    assert.throws(() => FileStorage.open(file, { size: 4096, readOnly: true }), /read-only image is not created/);
    assert.equal(fs.existsSync(file), false);
    fs.writeFileSync(file, Buffer.alloc(8192));
    assert.throws(() => FileStorage.open(file, { size: 4096 }), /has 8192 bytes/);
    assert.throws(() => FileStorage.open(dir), /EISDIR/);
    assert.throws(() => FileStorage.open(dir, { readOnly: true }), /neither a regular file nor a block device/);
    assert.throws(() => FileStorage.open('/dev/null', { readOnly: true }), /neither a regular file nor a block device/);
    fs.writeFileSync(path.join(dir, 'empty.img'), '');
    assert.throws(() => FileStorage.open(path.join(dir, 'empty.img')), /is empty/);
    assert.throws(() => openStorage({ kind: 'memory', size: 0 }), RangeError);
  } finally {
    cleanup();
  }
});

test('file storage: more views than IOV_MAX, and a file truncated under us reads zeros past its end', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    const s = FileStorage.open(file, { size: 4 << 20 });
    // 2100 views of 512 bytes: libuv passes at most IOV_MAX (1024) per preadv, so this needs the short-read loop.
    const data = pattern(2100 * 512, 4);
    const views = Array.from({ length: 2100 }, (_, i) => data.subarray(i * 512, (i + 1) * 512));
    await run((d) => s.write(views, 0, d));
    const out = Array.from({ length: 2100 }, () => new Uint8Array(512));
    await run((d) => s.read(out, 0, d));
    assert.deepEqual(Buffer.concat(out), Buffer.from(data));
    fs.truncateSync(file, 4096);
    const tail = new Uint8Array(8192).fill(1);
    await run((d) => s.read([tail], 0, d));
    assert.deepEqual(Buffer.from(tail.subarray(0, 4096)), Buffer.from(data.subarray(0, 4096)));
    assert.deepEqual(tail.subarray(4096), new Uint8Array(4096));
    await s.close();
  } finally {
    cleanup();
  }
});

test('file storage: discard and write-zeroes use fallocate modes when given one, and fall back on EOPNOTSUPP', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    const calls: [number, number, number][] = [];
    let refuse = false;
    // A stand-in for the native call: records the mode and zeroes the range so reads can be checked.
    const fallocate: FallocateFn = (fd, mode, offset, length) => {
      if (refuse) throw Object.assign(new Error('not supported'), { code: 'EOPNOTSUPP' });
      calls.push([mode, offset, length]);
      fs.writeSync(fd, Buffer.alloc(length), 0, length, offset);
    };
    const s = FileStorage.open(file, { size: 1 << 20, fallocate });
    assert.equal(s.canUnmap, true);
    await run((d) => s.write([pattern(65536, 2)], 0, d));
    await run((d) => s.discard(0, 4096, d));
    await run((d) => s.writeZeroes(4096, 4096, true, d));
    await run((d) => s.writeZeroes(8192, 4096, false, d));
    const { KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE } = FallocateMode;
    assert.deepEqual(calls, [[PUNCH_HOLE | KEEP_SIZE, 0, 4096], [PUNCH_HOLE | KEEP_SIZE, 4096, 4096],
      [ZERO_RANGE | KEEP_SIZE, 8192, 4096]]);
    refuse = true;
    await run((d) => s.discard(12288, 4096, d));
    assert.equal(s.canUnmap, false, 'punching is given up after EOPNOTSUPP');
    await run((d) => s.writeZeroes(16384, 4096, false, d));
    assert.equal(calls.length, 3);
    assert.deepEqual(await readBack(s, 0, 20480), new Uint8Array(20480));
    assert.deepEqual(Buffer.from(await readBack(s, 20480, 512)), Buffer.from(pattern(65536, 2).subarray(20480, 20992)));
    await s.close();

    const plain = FileStorage.open(file, { fallocate: null });
    assert.equal(plain.canUnmap, false);
    await run((d) => plain.write([pattern(4096, 5)], 65536, d));
    await run((d) => plain.writeZeroes(65536, 4096, true, d));
    assert.deepEqual(await readBack(plain, 65536, 4096), new Uint8Array(4096));
    await plain.close();
  } finally {
    cleanup();
  }
});

test('file storage: the write-zeros fallback handles ranges larger than one pwritev', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'big.img');
    const size = 40 << 20;
    const s = FileStorage.open(file, { size, fallocate: null });
    const marks = [0, 20 << 20, size - 512];
    for (const m of marks) await run((d) => s.write([new Uint8Array(512).fill(0xcc)], m, d));
    await run((d) => s.writeZeroes(0, size, false, d));
    for (const m of marks) assert.deepEqual(await readBack(s, m, 512), new Uint8Array(512));
    await s.close();
  } finally {
    cleanup();
  }
});

/** Call `op` with a fresh context; resolves with the error once `done` got that same context back. */
function withContext(op: (done: IoCallback<object>, context: object) => void): Promise<Error | null> {
  const context = {};
  return new Promise((resolve, reject) => op((err, got) => {
    if (got === context) resolve(err);
    else reject(new Error(`the callback got ${String(got)}, not the operation's context`));
  }, context));
}

test('every backend passes each operation\'s context to its callback, on success and on refusal', async (t) => {
  const { dir, cleanup } = tempDir();
  const engines: FileAio[] = needUring(t) ? ['threads', 'io_uring'] : ['threads'];
  const backends: [string, BlockStorage][] = [
    ['null', new NullStorage({ size: 1 << 20 })],
    ['memory', new MemoryStorage({ size: 1 << 20 })],
    ...engines.map((aio): [string, BlockStorage] => [`file (${aio})`, FileStorage.open(path.join(dir, `${aio}.img`), { size: 1 << 20, aio })]),
    // A file on a filesystem without fallocate: write-zeroes goes through the zero-writing fallback.
    ['file (no fallocate)', FileStorage.open(path.join(dir, 'plain.img'), { size: 1 << 20, fallocate: null, aio: 'threads' })],
  ];
  try {
    for (const [name, s] of backends) {
      const buf = new Uint8Array(4096).fill(3);
      assert.equal(await withContext((d, c) => s.write([buf], 8192, d, c)), null, name);
      assert.equal(await withContext((d, c) => s.read([buf], 8192, d, c)), null, name);
      assert.equal(await withContext((d, c) => s.flush(d, c)), null, name);
      assert.equal(await withContext((d, c) => s.discard(8192, 4096, d, c)), null, name);
      assert.equal(await withContext((d, c) => s.writeZeroes(0, 65536, false, d, c)), null, name);
      // Refused before any I/O: the context comes back with the error.
      const range = await withContext((d, c) => s.read([buf], (1 << 20) - 1, d, c));
      assert.equal((range as StorageError).code, 'ERANGE', name);
      assert.equal(((await withContext((d, c) => s.write([buf], -1, d, c))) as StorageError).code, 'ERANGE', name);
      await s.close();
      assert.equal(((await withContext((d, c) => s.read([buf], 0, d, c))) as StorageError).code, 'EBADF', name);
      assert.equal(((await withContext((d, c) => s.flush(d, c))) as StorageError).code, 'EBADF', name);
    }
    const ro = new MemoryStorage({ size: 4096, readOnly: true });
    assert.equal(((await withContext((d, c) => ro.writeZeroes(0, 512, true, d, c))) as StorageError).code, 'EROFS');
  } finally {
    cleanup();
  }
});
