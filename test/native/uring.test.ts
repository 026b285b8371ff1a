import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { IoUringSetup, native, type IoUring, type SystemError } from '../../src/native/index.js';
import { needUring } from '../helpers/uring.js';

const indexUrl = new URL('../../src/native/index.js', import.meta.url).href;
/** Safety net for child processes that would otherwise hang a broken build; not a performance bound. */
const CHILD_TIMEOUT_MS = 60_000;

function getGc(): () => void {
  if (globalThis.gc) return globalThis.gc;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}
const gc = getGc();

/** Completions as [slot, res] pairs, from `submit(true)` and then from the callback until `want` arrived. */
class Collector {
  readonly ring: IoUring;
  readonly got = new Map<number, number>();
  callbacks = 0;
  #wake: (() => void) | null = null;

  constructor(entries: number) {
    this.ring = native.ioUring(entries, (count) => {
      this.callbacks++;
      this.#take(count);
    });
  }

  #take(count: number): void {
    const c = this.ring.completions;
    for (let i = 0; i < count; i++) {
      assert.equal(this.got.has(c[2 * i]!), false, `slot ${c[2 * i]} completed twice`);
      this.got.set(c[2 * i]!, c[2 * i + 1]!);
    }
    this.#wake?.();
  }

  /** Submit (reaping inline when asked) and wait until `slots` have all completed. */
  async run(slots: number[], reap = true): Promise<Map<number, number>> {
    this.#take(this.ring.submit(reap));
    while (!slots.every((s) => this.got.has(s))) await new Promise<void>((resolve) => (this.#wake = resolve));
    this.#wake = null;
    const out = new Map(slots.map((s) => [s, this.got.get(s)!]));
    for (const s of slots) this.got.delete(s);
    return out;
  }
}

function tempFile(bytes: Uint8Array | number): { file: string; fd: number; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-uring-'));
  const file = path.join(dir, 'data');
  fs.writeFileSync(file, typeof bytes === 'number' ? Buffer.alloc(bytes) : bytes);
  const fd = fs.openSync(file, 'r+');
  return { file, fd, cleanup: () => { fs.closeSync(fd); fs.rmSync(dir, { recursive: true, force: true }); } };
}

function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
  return out;
}

test('writev, readv, fsync and fallocate round trip; views in an mmap are filled in place', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(64 * 1024);
  const c = new Collector(8);
  try {
    assert.equal(c.ring.slots, 8);
    assert.equal(c.ring.completions.length, 16);
    assert.ok(c.ring.completions.buffer instanceof SharedArrayBuffer);
    assert.notEqual(c.ring.setupFlags & IoUringSetup.CLAMP, 0);
    const data = pattern(12288, 1);
    c.ring.writev(0, t.fd, [data.subarray(0, 100), data.subarray(100, 4096), data.subarray(4096)], 8192);
    assert.deepEqual([...await c.run([0])], [[0, 12288]]);

    // Guest-memory-like destination: views into a shared mapping, one of them empty (left out of the iovecs).
    const memfd = native.memfdCreate('uring-test', 16384);
    const sab = native.mmap(memfd, 16384, true);
    native.close(memfd);
    const a = new Uint8Array(sab, 0, 5000);
    const b = new Uint8Array(sab, 8192, 7288);
    c.ring.readv(1, t.fd, [a, new Uint8Array(0), b], 8192);
    c.ring.fsync(2, t.fd, true);
    c.ring.fsync(3, t.fd, false);
    assert.deepEqual([...await c.run([1, 2, 3])].sort(), [[1, 12288], [2, 0], [3, 0]]);
    assert.deepEqual(Buffer.concat([a, b]), Buffer.from(data));

    // IOSQE_ASYNC (straight to a kernel worker): same result.
    const viaWorker = new Uint8Array(12288);
    c.ring.readv(6, t.fd, viaWorker, 8192, true);
    assert.deepEqual([...await c.run([6])], [[6, 12288]]);
    assert.deepEqual(Buffer.from(viaWorker), Buffer.from(data));

    // Punch a hole (PUNCH_HOLE | KEEP_SIZE): the range reads back as zeros, the size stays.
    c.ring.fallocate(4, t.fd, 0x03, 8192, 4096);
    assert.deepEqual([...await c.run([4])], [[4, 0]]);
    const back = new Uint8Array(8192).fill(1);
    c.ring.readv(5, t.fd, back, 8192);
    assert.deepEqual([...await c.run([5])], [[5, 8192]]);
    assert.deepEqual(back.subarray(0, 4096), new Uint8Array(4096));
    assert.deepEqual(Buffer.from(back.subarray(4096)), Buffer.from(data.subarray(4096, 8192)));
    assert.equal(fs.fstatSync(t.fd).size, 64 * 1024);
  } finally {
    c.ring.close();
    t.cleanup();
  }
});

test('errors come back as negative errno in the completion; a read past the end transfers 0', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(4096);
  const c = new Collector(4);
  try {
    const buf = new Uint8Array(512);
    c.ring.readv(0, 1_000_000, buf, 0); // not an open fd
    c.ring.readv(1, t.fd, buf, 8192); // past the end
    c.ring.fallocate(2, t.fd, 0x7fff, 0, 4096); // no such mode
    const ro = fs.openSync(t.file, 'r');
    c.ring.writev(3, ro, buf, 0); // not open for writing
    const res = await c.run([0, 1, 2, 3]);
    fs.closeSync(ro);
    assert.equal(res.get(0), -os.constants.errno.EBADF);
    assert.equal(res.get(1), 0);
    assert.ok(res.get(2)! < 0, `fallocate with a bad mode gave ${res.get(2)}`);
    assert.equal(res.get(3), -os.constants.errno.EBADF);
  } finally {
    c.ring.close();
    t.cleanup();
  }
});

test('completions also arrive through the eventfd callback when not reaped inline', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(pattern(8192, 3));
  const c = new Collector(4);
  try {
    const buf = new Uint8Array(8192);
    c.ring.readv(0, t.fd, buf, 0);
    c.ring.fsync(1, t.fd, true);
    assert.deepEqual([...await c.run([0, 1], false)].sort(), [[0, 8192], [1, 0]]);
    assert.ok(c.callbacks >= 1, 'the callback delivered them');
    assert.deepEqual(Buffer.from(buf), Buffer.from(pattern(8192, 3)));
  } finally {
    c.ring.close();
    t.cleanup();
  }
});

test('more than IOV_MAX views: the first 1024 non-empty ones are used and the transfer is short', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(pattern(2000 * 16, 5));
  const c = new Collector(2);
  try {
    const views = Array.from({ length: 2000 }, () => new Uint8Array(16));
    c.ring.readv(0, t.fd, views, 0);
    assert.deepEqual([...await c.run([0])], [[0, 1024 * 16]]);
    assert.deepEqual(Buffer.from(views[1023]!), Buffer.from(pattern(2000 * 16, 5).subarray(1023 * 16, 1024 * 16)));
    assert.deepEqual(views[1024], new Uint8Array(16));
  } finally {
    c.ring.close();
    t.cleanup();
  }
});

test('all slots in flight at once, each completing exactly once with its own data', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(256 * 4096);
  const c = new Collector(256);
  try {
    const slots = Array.from({ length: 256 }, (_, i) => i);
    // The caller keeps what it writes referenced until the completion (the ring's contract): a temporary could
    // be collected, and its memory reused, before the kernel reads it.
    const data = slots.map((i) => pattern(4096, i));
    for (const i of slots) c.ring.writev(i, t.fd, data[i]!, i * 4096);
    const w = await c.run(slots);
    assert.ok([...w.values()].every((r) => r === 4096));
    const bufs = slots.map(() => new Uint8Array(4096));
    // Reverse order, half of them through the callback only.
    for (const i of slots.reverse()) c.ring.readv(i, t.fd, bufs[i]!, i * 4096);
    const r = await c.run(slots, false);
    assert.ok([...r.values()].every((x) => x === 4096));
    for (const i of slots) assert.deepEqual(Buffer.from(bufs[i]!), Buffer.from(data[i]!), `block ${i}`);
  } finally {
    c.ring.close();
    t.cleanup();
  }
});

test('arguments, slots and life cycle are checked', async (tc) => {
  if (!needUring(tc)) return;
  const t = tempFile(4096);
  const c = new Collector(2);
  const ring = c.ring;
  const isSys = (code: string, syscall: string) => (e: SystemError) => e.code === code && e.syscall === syscall &&
    e.errno === os.constants.errno[code as keyof typeof os.constants.errno];
  try {
    assert.throws(() => ring.readv(2, t.fd, new Uint8Array(1), 0), RangeError);
    assert.throws(() => ring.readv(-1, t.fd, new Uint8Array(1), 0), RangeError);
    assert.throws(() => ring.readv(0, t.fd, 'nope' as unknown as Uint8Array, 0), TypeError);
    assert.throws(() => ring.readv(0, t.fd, [new Uint8Array(1), {} as Uint8Array], 0), TypeError);
    assert.throws(() => ring.readv(0, t.fd, new Uint8Array(1), -1), RangeError);
    assert.throws(() => ring.writev(0, t.fd, new Uint8Array(1), 0, 1 as unknown as boolean), TypeError);
    assert.throws(() => ring.fallocate(0, t.fd, 0, 2 ** 53, 1), RangeError);
    assert.throws(() => (ring.readv as (...a: unknown[]) => void).call({}, 0, t.fd, new Uint8Array(1), 0), TypeError);
    // Nothing of the refused calls was queued.
    assert.equal(ring.submit(true), 0);

    ring.fsync(0, t.fd, true);
    assert.throws(() => ring.fsync(0, t.fd, true), isSys('EBUSY', 'fdatasync'));
    assert.throws(() => ring.close(), isSys('EBUSY', 'close'));
    await c.run([0]);
    ring.close();
    ring.close();
    assert.throws(() => ring.fsync(1, t.fd, false), isSys('EBADF', 'fsync'));
    assert.throws(() => ring.submit(true), isSys('EBADF', 'io_uring_enter'));

    assert.throws(() => native.ioUring(0, () => {}), isSys('EINVAL', 'io_uring_setup'));
    assert.throws(() => native.ioUring(65536, () => {}), RangeError);
    assert.throws(() => native.ioUring(4, null as unknown as () => void), TypeError);
  } finally {
    t.cleanup();
  }
});

test('an idle ring is collected with its fds; one with work in flight is kept until it completes', async (tc) => {
  if (!needUring(tc)) return;
  const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;
  const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
  for (let i = 0; i < 5; i++) await turn(); // earlier tests' close callbacks
  const before = fdCount();
  let collected = 0;
  const registry = new FinalizationRegistry(() => collected++);
  (() => {
    for (let i = 0; i < 4; i++) registry.register(native.ioUring(4, () => {}), i);
  })();
  for (let i = 0; i < 50 && collected < 4; i++) {
    gc();
    await turn();
  }
  assert.equal(collected, 4, 'idle rings are collectable');
  for (let i = 0; i < 5; i++) await turn(); // close callbacks
  assert.equal(fdCount(), before, 'their ring fds and eventfds are closed');

  // Unreferenced, but a read of a pipe is in flight: it must stay and call back when the data comes.
  const [rd, wr] = pipeFds();
  let result: number[] = [];
  let kept = false;
  const keeper = new FinalizationRegistry(() => (kept = false));
  const buf = new Uint8Array(5);
  (() => {
    const ring: IoUring = native.ioUring(2, (count) => {
      result = [...ring.completions.subarray(0, 2 * count)];
    });
    keeper.register(ring, 'ring');
    kept = true;
    ring.readv(1, rd, buf, 0);
    ring.submit(true);
  })();
  for (let i = 0; i < 10; i++) {
    gc();
    await turn();
  }
  assert.equal(kept, true, 'a ring with work in flight stays');
  fs.writeSync(wr, 'hello');
  for (let i = 0; i < 200 && result.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.deepEqual(result, [1, 5]);
  assert.equal(Buffer.from(buf).toString(), 'hello');
  fs.closeSync(rd);
  fs.closeSync(wr);
});

/** A pipe as two fds (read end, write end), from a FIFO. */
function pipeFds(): [number, number] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-uring-fifo-'));
  const fifo = path.join(dir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const rd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const wr = fs.openSync(fifo, fs.constants.O_WRONLY);
  // Blocking reads: io_uring then waits for data (poll-armed) instead of returning EAGAIN.
  native.setNonBlocking(rd, false);
  fs.rmSync(dir, { recursive: true });
  return [rd, wr];
}

test('work in flight keeps the process alive; an idle ring does not', async (tc) => {
  if (!needUring(tc)) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-uring-alive-'));
  const fifo = path.join(dir, 'fifo');
  try {
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import fs from 'node:fs';
      import { native } from ${JSON.stringify(indexUrl)};
      native.ioUring(4, () => {}); // idle and forgotten: must not hold the process
      const fd = fs.openSync(${JSON.stringify(fifo)}, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      native.setNonBlocking(fd, false);
      const buf = new Uint8Array(4);
      const ring = native.ioUring(4, (n) => {
        console.log('read:' + ring.completions[1] + ':' + Buffer.from(buf).toString());
        fs.closeSync(fd);
      });
      ring.readv(0, fd, buf, 0);
      ring.submit(true);
      console.log('armed');
    `], { stdio: ['ignore', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('armed')) resolve();
      });
    });
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(w, 'ping');
    fs.closeSync(w);
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0, stderr);
    assert.deepEqual(stdout.trim().split('\n'), ['armed', 'read:4:ping']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('rings in worker threads; terminating a worker with reads in flight is clean', (tc) => {
  if (!needUring(tc)) return;
  const code = `
    import { Worker } from 'node:worker_threads';
    import { once } from 'node:events';
    const workerCode = (hang) => \`
      const { parentPort } = require('node:worker_threads');
      const fs = require('node:fs');
      import(${JSON.stringify(indexUrl)}).then(async ({ native }) => {
        const file = '/proc/self/status';
        const fd = fs.openSync(file, 'r');
        const buf = new Uint8Array(64);
        const done = new Promise((resolve) => {
          const ring = native.ioUring(8, (n) => resolve(ring.completions[1]));
          ring.readv(0, fd, buf, 0);
          ring.submit(false);
        });
        const n = await done;
        if (\${hang}) {
          // A read of a socket nobody writes to: only cancelling ends it.
          const ring2 = native.ioUring(4, () => {});
          const p = native.socketPair();
          native.setNonBlocking(p[0], false);
          // Kept referenced while the read is in flight (the ring's contract).
          globalThis.pending = new Uint8Array(8);
          ring2.readv(0, p[0], globalThis.pending, 0);
          ring2.submit(true);
        }
        parentPort.postMessage(n > 0 && Buffer.from(buf).toString().startsWith('Name:') ? 'ok' : 'bad:' + n);
      });
    \`;
    for (const hang of [false, true, true, false]) {
      const worker = new Worker(workerCode(hang), { eval: true, execArgv: [] });
      const [msg] = await once(worker, 'message');
      await worker.terminate();
      console.log(msg);
    }
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: CHILD_TIMEOUT_MS });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['ok', 'ok', 'ok', 'ok']);
});
