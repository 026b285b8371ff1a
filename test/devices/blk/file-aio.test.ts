import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  DEFAULT_FILE_AIO, FileStorage, openStorage, type BlockStorage, type FileAio, type StorageError,
} from '../../../src/devices/blk/storage/index.js';
import { native, type SystemError } from '../../../src/native/index.js';
import { setLogSink, type Logger } from '../../../src/util/log.js';
import { tempDir } from '../../helpers/tmp.js';
import { pattern } from './helpers.js';
import { needUring } from '../../helpers/uring.js';

const storageUrl = new URL('../../../src/devices/blk/storage/index.js', import.meta.url).href;
const ENGINES: FileAio[] = ['threads', 'io_uring'];

function run(op: (done: (err: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => op((err) => (err ? reject(err) : resolve())));
}

async function readBack(s: BlockStorage, position: number, len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len).fill(0x5a);
  await run((d) => s.read([out], position, d));
  return out;
}

/** A logger that keeps its lines. */
function captureLogger(lines: string[]): Logger {
  const log: Logger = {
    error: (m) => lines.push(`error ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    info: (m) => lines.push(`info ${m}`),
    debug: () => {},
    enabled: () => true,
    child: () => log,
  };
  return log;
}

const isSys = (code: string, syscall: string) => (e: SystemError) =>
  e.code === code && e.syscall === syscall && e.errno === os.constants.errno[code as keyof typeof os.constants.errno];

test('io_uring is the default engine, and each engine round trips data, flushes, discards and zeroes', async (t) => {
  if (!needUring(t)) return;
  assert.equal(DEFAULT_FILE_AIO, 'io_uring');
  const { dir, cleanup } = tempDir();
  try {
    for (const aio of ENGINES) {
      const file = path.join(dir, `${aio}.img`);
      const s = FileStorage.open(file, { size: 4 << 20, aio });
      assert.equal(s.aio, aio);
      assert.match(s.description, new RegExp(`, ${aio}\\)$`));
      assert.equal(s.uringStats === null, aio === 'threads');
      const data = pattern(16384, 7);
      // Scattered in, gathered differently out.
      await run((d) => s.write([data.subarray(0, 1), data.subarray(1, 4096), data.subarray(4096)], 65536, d));
      const a = new Uint8Array(3000);
      const b = new Uint8Array(16384 - 3000);
      await run((d) => s.read([a, b], 65536, d));
      assert.deepEqual(Buffer.concat([a, b]), Buffer.from(data), aio);
      await run((d) => s.write([new Uint8Array([9])], s.size - 1, d));
      assert.deepEqual([...await readBack(s, s.size - 1, 1)], [9]);
      await assert.rejects(readBack(s, s.size - 1, 2), (e: StorageError) => e.code === 'ERANGE');
      await run((d) => s.flush(d));

      // Discard punches a hole (ext4, tmpfs: the blocks go); write-zeroes without unmap zeroes in place.
      const before = fs.statSync(file).blocks;
      await run((d) => s.discard(65536, 8192, d));
      assert.ok(fs.statSync(file).blocks < before, `${aio}: discard frees blocks`);
      await run((d) => s.writeZeroes(65536 + 8192, 4096, false, d));
      const back = await readBack(s, 65536, 16384);
      assert.deepEqual(back.subarray(0, 12288), new Uint8Array(12288));
      assert.deepEqual(Buffer.from(back.subarray(12288)), Buffer.from(data.subarray(12288)));
      if (aio === 'io_uring') assert.ok(s.uringStats!.operations >= 8, 'the ring did the work');
      await s.close();

      const again = FileStorage.open(file, { aio });
      assert.deepEqual(Buffer.from(await readBack(again, 65536 + 12288, 4096)), Buffer.from(data.subarray(12288)));
      await again.close();
    }
    const viaSpec = openStorage({ kind: 'file', path: path.join(dir, 'threads.img'), aio: 'threads' }) as FileStorage;
    assert.equal(viaSpec.aio, 'threads');
    await viaSpec.close();
    assert.throws(() => FileStorage.open(path.join(dir, 'threads.img'), { aio: 'posix' as FileAio }), RangeError);
  } finally {
    cleanup();
  }
});

test('io_uring on tmpfs: ZERO_RANGE is unsupported there, so write-zeroes falls back to writing zeros', async (t) => {
  if (!needUring(t)) return;
  if (!fs.existsSync('/dev/shm')) return t.skip('no /dev/shm');
  const { dir, cleanup } = tempDir('vhost-aio-shm-');
  const shmDir = fs.mkdtempSync('/dev/shm/vhost-aio-');
  try {
    const s = FileStorage.open(path.join(shmDir, 'disk.img'), { size: 1 << 20, aio: 'io_uring' });
    await run((d) => s.write([pattern(65536, 3)], 0, d));
    await run((d) => s.writeZeroes(4096, 8192, false, d));
    await run((d) => s.writeZeroes(20480, 4096, false, d)); // the second goes straight to zeros
    await run((d) => s.discard(32768, 4096, d));
    assert.equal(s.canUnmap, true, 'tmpfs punches holes');
    const back = await readBack(s, 0, 65536);
    const want = Buffer.from(pattern(65536, 3));
    want.fill(0, 4096, 12288);
    want.fill(0, 20480, 24576);
    want.fill(0, 32768, 36864);
    assert.deepEqual(Buffer.from(back), want);
    await s.close();
  } finally {
    fs.rmSync(shmDir, { recursive: true, force: true });
    cleanup();
  }
});

test('io_uring on tmpfs: transfers of 64 KiB and more go to the thread pool, smaller ones to the ring', async (t) => {
  if (!needUring(t)) return;
  if (!fs.existsSync('/dev/shm')) return t.skip('no /dev/shm');
  const shmDir = fs.mkdtempSync('/dev/shm/vhost-aio-');
  const { dir, cleanup } = tempDir();
  try {
    const s = FileStorage.open(path.join(shmDir, 'disk.img'), { size: 1 << 20, aio: 'io_uring' });
    const ops = (): number => s.uringStats!.operations;
    const big = pattern(65536, 5);
    let before = ops();
    await run((d) => s.write([big.subarray(0, 32768), big.subarray(32768)], 0, d));
    assert.deepEqual(Buffer.from(await readBack(s, 0, 65536)), Buffer.from(big));
    assert.equal(ops(), before, '64 KiB write and read: not on the ring');
    before = ops();
    assert.deepEqual(Buffer.from(await readBack(s, 4096, 4096)), Buffer.from(big.subarray(4096, 8192)));
    await run((d) => s.write([big.subarray(0, 512)], 65536, d));
    assert.equal(ops(), before + 2, 'small transfers: on the ring');
    await s.close();

    // On a filesystem that reads without blocking (and with threadsFrom: Infinity on tmpfs) the ring does all.
    const TMPFS_MAGIC = 0x01021994;
    const cases = [[path.join(shmDir, 'disk2.img'), { threadsFrom: Infinity }]] as [string, { threadsFrom?: number }][];
    if (fs.statfsSync(dir).type !== TMPFS_MAGIC) cases.push([path.join(dir, 'disk.img'), {}]);
    for (const [file, options] of cases) {
      const f = FileStorage.open(file, { size: 1 << 20, aio: 'io_uring', ...options });
      const b = f.uringStats!.operations;
      await run((d) => f.write([big], 0, d));
      assert.deepEqual(Buffer.from(await readBack(f, 0, 65536)), Buffer.from(big));
      assert.equal(f.uringStats!.operations, b + 2, `${file}: on the ring`);
      await f.close();
    }
  } finally {
    fs.rmSync(shmDir, { recursive: true, force: true });
    cleanup();
  }
});

test('io_uring: I/O errors reach the callback as system errors with errno and syscall', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const s = FileStorage.open(path.join(dir, 'disk.img'), { size: 1 << 20, aio: 'io_uring' });
    // Pull the fd from under the storage: every operation then fails in the kernel, not before.
    const fd = s.fd;
    const saved = fs.openSync('/dev/null', 'r');
    fs.closeSync(fd);
    await assert.rejects(readBack(s, 0, 512), isSys('EBADF', 'preadv'));
    await assert.rejects(run((d) => s.write([new Uint8Array(512)], 0, d)), isSys('EBADF', 'pwritev'));
    await assert.rejects(run((d) => s.flush(d)), isSys('EBADF', 'fdatasync'));
    await assert.rejects(run((d) => s.discard(0, 4096, d)), isSys('EBADF', 'fallocate'));
    // Views that are not views fail through the callback too, and nothing stays in flight.
    await assert.rejects(run((d) => s.read([{ byteLength: 4, length: 4 } as unknown as Uint8Array], 0, d)), TypeError);
    assert.equal(s.uringStats!.operations >= 4, true);
    await assert.rejects(s.close(), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
    fs.closeSync(saved);
  } finally {
    cleanup();
  }
});

test('io_uring: a file truncated under us reads zeros past its end; more views than IOV_MAX round trip', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    const s = FileStorage.open(file, { size: 4 << 20, aio: 'io_uring' });
    const data = pattern(3000 * 512, 8);
    const views = Array.from({ length: 3000 }, (_, i) => data.subarray(i * 512, (i + 1) * 512));
    await run((d) => s.write(views, 512, d));
    const out = Array.from({ length: 3000 }, () => new Uint8Array(512));
    await run((d) => s.read(out, 512, d));
    assert.deepEqual(Buffer.concat(out), Buffer.from(data));
    fs.truncateSync(file, 4096 + 100);
    const tail = new Uint8Array(8192).fill(1);
    await run((d) => s.read([tail.subarray(0, 4000), tail.subarray(4000)], 512, d));
    assert.deepEqual(Buffer.from(tail.subarray(0, 3684)), Buffer.from(data.subarray(0, 3684)));
    assert.deepEqual(tail.subarray(3684), new Uint8Array(8192 - 3684));
    await s.close();
  } finally {
    cleanup();
  }
});

test('io_uring: thousands of concurrent operations, more than the ring has slots, all land correctly', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const n = 3000;
    const s = FileStorage.open(path.join(dir, 'disk.img'), { size: n * 4096, aio: 'io_uring', ringEntries: 64 });
    let completed = 0;
    const writes = Array.from({ length: n }, (_, i) => run((d) => s.write([pattern(4096, i)], i * 4096, (err) => {
      completed++;
      d(err);
    })));
    await Promise.all(writes);
    assert.equal(completed, n);
    const ringOps = s.uringStats!.operations;
    assert.ok(ringOps > 0 && ringOps < n, `the ring took ${ringOps} of ${n}, the thread pool the rest`);
    const bufs = Array.from({ length: n }, () => new Uint8Array(4096));
    await Promise.all(bufs.map((b, i) => run((d) => s.read([b], (n - 1 - i) * 4096, d))));
    for (let i = 0; i < n; i++) assert.deepEqual(Buffer.from(bufs[i]!), Buffer.from(pattern(4096, n - 1 - i)), `block ${n - 1 - i}`);
    await s.close();
  } finally {
    cleanup();
  }
});

test('io_uring: close when idle releases everything; close with work in flight waits for it', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
    const baseline = fdCount();
    const file = path.join(dir, 'disk.img');
    const idle = FileStorage.open(file, { size: 1 << 20, aio: 'io_uring' });
    await run((d) => idle.write([pattern(4096, 1)], 0, d));
    await idle.close();
    await idle.close();
    await assert.rejects(readBack(idle, 0, 1), (e: StorageError) => e.code === 'EBADF');
    for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(fdCount(), baseline, 'image fd, ring fd and eventfd are all closed');

    const busy = FileStorage.open(file, { aio: 'io_uring' });
    const done: number[] = [];
    const bufs = Array.from({ length: 100 }, () => new Uint8Array(4096));
    bufs.forEach((b, i) => busy.read([b], (i % 256) * 4096, () => done.push(i)));
    busy.flush(() => done.push(-1));
    await busy.close();
    assert.equal(done.length, 101, 'every callback ran before close resolved');
    assert.deepEqual(Buffer.from(bufs[0]!), Buffer.from(pattern(4096, 1)));
  } finally {
    cleanup();
  }
});

test('io_uring unavailable: falls back to the thread pool with one logged line', async () => {
  const { dir, cleanup } = tempDir();
  const sinkLines: string[] = [];
  const prev = setLogSink((line) => sinkLines.push(line));
  try {
    const file = path.join(dir, 'disk.img');
    const lines: string[] = [];
    // 0 entries: io_uring_setup itself refuses (EINVAL), as it would with ENOSYS or EPERM.
    const s = FileStorage.open(file, { size: 1 << 20, aio: 'io_uring', ringEntries: 0, logger: captureLogger(lines) });
    assert.equal(s.aio, 'threads');
    assert.equal(s.uringStats, null);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^warn .*disk\.img: io_uring unavailable \(io_uring_setup failed: E[A-Z]+ .*\); using the thread pool$/);
    await run((d) => s.write([pattern(8192, 4)], 4096, d));
    assert.deepEqual(Buffer.from(await readBack(s, 4096, 8192)), Buffer.from(pattern(8192, 4)));
    await run((d) => s.discard(4096, 4096, d));
    assert.deepEqual(await readBack(s, 4096, 4096), new Uint8Array(4096));
    await s.close();

    // Through the default logger: one line for any number of images failing the same way.
    for (let i = 0; i < 3; i++) await FileStorage.open(file, { aio: 'io_uring', ringEntries: 0 }).close();
    assert.equal(sinkLines.filter((l) => l.includes('io_uring unavailable')).length, 1, sinkLines.join('\n'));
  } finally {
    setLogSink(prev);
    cleanup();
  }
});

test('io_uring: a throwing callback is an uncaught exception, after the batch\'s other callbacks ran', (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(65536, 3));
    const code = `
      import { FileStorage } from ${JSON.stringify(storageUrl)};
      const s = FileStorage.open(${JSON.stringify(file)}, { aio: 'io_uring' });
      const seen = [];
      process.on('uncaughtException', (err) => {
        console.log('uncaught:' + err.message + ' after ' + seen.join(','));
        void s.close();
      });
      for (let i = 0; i < 4; i++) {
        s.read([new Uint8Array(512)], i * 4096, (err) => {
          seen.push(i);
          if (i === 1) throw new Error('boom');
        });
      }
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'uncaught:boom after 0,1,2,3');
  } finally {
    cleanup();
  }
});

test('io_uring storage in a worker thread; terminating the worker mid-I/O is clean', (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20, 5));
    const code = `
      import { Worker } from 'node:worker_threads';
      import { once } from 'node:events';
      const body = \`
        const { parentPort } = require('node:worker_threads');
        import(${JSON.stringify(storageUrl)}).then(({ FileStorage }) => {
          const s = FileStorage.open(${JSON.stringify(file)}, { aio: 'io_uring' });
          const buf = new Uint8Array(4096);
          s.read([buf], 0, (err) => {
            parentPort.postMessage(err ? 'error:' + err.message : s.aio + ':' + buf[100]);
            // Keep it busy until terminate() lands.
            const again = () => s.read([buf], 4096, again);
            again();
          });
        });
      \`;
      for (let i = 0; i < 3; i++) {
        const w = new Worker(body, { eval: true, execArgv: [] });
        const [msg] = await once(w, 'message');
        await w.terminate();
        console.log(msg);
      }
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['io_uring:5', 'io_uring:5', 'io_uring:5']);
  } finally {
    cleanup();
  }
});

test('io_uring: reads land in views of a shared guest-memory mapping', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const s = FileStorage.open(path.join(dir, 'disk.img'), { size: 1 << 20, aio: 'io_uring' });
    await run((d) => s.write([pattern(65536, 6)], 0, d));
    const memfd = native.memfdCreate('guest', 1 << 20);
    const sab = native.mmap(memfd, 1 << 20, true);
    const views = [new Uint8Array(sab, 4096, 1000), new Uint8Array(sab, 65536, 64536)];
    await run((d) => s.read(views, 0, d));
    // The bytes are in the memfd itself (what the frontend sees), not in a copy.
    const seen = Buffer.alloc(65536);
    fs.readSync(memfd, seen, 0, 1000, 4096);
    fs.readSync(memfd, seen, 1000, 64536, 65536);
    assert.deepEqual(seen, Buffer.from(pattern(65536, 6)));
    native.close(memfd);
    await s.close();
  } finally {
    cleanup();
  }
});

test('io_uring: reads of data not in the page cache, many completing at once, all arrive', async (t) => {
  if (!needUring(t)) return;
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'cold.img');
    const data = Buffer.alloc(8 << 20);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
    fs.writeFileSync(file, data);
    const fd = fs.openSync(file, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    /** Drop this file's (clean) pages (dd's nocache is posix_fadvise DONTNEED; nothing else is evicted). */
    const evict = (): boolean => {
      const dd = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
      const resident = spawnSync('fincore', ['-b', '-n', '-o', 'RES', file], { encoding: 'utf8' });
      return dd.status === 0 && resident.status === 0 && resident.stdout.trim() === '0';
    };
    let evicted = true;
    // Far more completions than the kernel runs per GETEVENTS (20 task-work items): none may be stranded.
    // Inline delivery first, then every completion through the eventfd and the event loop.
    for (const inlineCompletions of [true, false]) {
      evicted &&= evict();
      const s = FileStorage.open(file, { aio: 'io_uring', inlineCompletions });
      const bufs = Array.from({ length: 512 }, () => new Uint8Array(4096));
      await Promise.all(bufs.map((b, i) => run((d) => s.read([b], i * 16384, d))));
      for (let i = 0; i < 512; i++) assert.equal(Buffer.from(bufs[i]!.buffer).readUInt32LE(0), i * 16384, `block ${i}`);
      const stats = { ...s.uringStats! };
      await s.close();
      assert.equal(stats.inlineCompletions + stats.loopCompletions, 512);
      if (!inlineCompletions) assert.equal(stats.loopCompletions, 512, JSON.stringify(stats));
    }
    if (!evicted) t.diagnostic('could not evict the file\'s pages here: the reads were page-cache hits');
  } finally {
    cleanup();
  }
});
