import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { native, isSystemError, Readiness, type FdWatcher } from '../../src/native/index.js';

const indexUrl = new URL('../../src/native/index.js', import.meta.url).href;
/** Safety net for child processes that would otherwise hang a broken build; not a performance bound. */
const CHILD_TIMEOUT_MS = 60_000;

function getGc(): () => void {
  if (globalThis.gc) return globalThis.gc;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}
const gc = getGc();

/** Resolves on the next callback of a fresh watcher on a readable eventfd: one full loop turn. */
async function loopTurn(): Promise<void> {
  const efd = native.eventfd(1);
  await new Promise<void>((resolve) => {
    const w = native.watch(efd, () => {
      w.close();
      resolve();
    });
    w.start(Readiness.READABLE);
  });
  await new Promise((resolve) => setImmediate(resolve));
  native.close(efd);
}

/** Run an ES module snippet in a child node that has `native` and `Readiness` in scope. */
function runChild(body: string): { status: number | null; stdout: string; stderr: string } {
  const code = `import { native, Readiness } from ${JSON.stringify(indexUrl)};\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    encoding: 'utf8',
    timeout: CHILD_TIMEOUT_MS,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('an eventfd watcher fires READABLE, and stop() silences it', async () => {
  const efd = native.eventfd(0);
  const events: number[] = [];
  let wake: () => void = () => {};
  const w = native.watch(efd, (ev) => {
    events.push(ev);
    native.eventfdRead(efd);
    wake();
  });
  try {
    w.start(Readiness.READABLE);
    const fired = new Promise<void>((resolve) => (wake = resolve));
    native.eventfdWrite(efd, 1);
    await fired;
    assert.deepEqual(events, [Readiness.READABLE]);

    w.stop();
    native.eventfdWrite(efd, 1);
    await loopTurn();
    await loopTurn();
    assert.deepEqual(events, [Readiness.READABLE], 'a stopped watcher must not fire');

    // Restart: the pending count is seen.
    const again = new Promise<void>((resolve) => (wake = resolve));
    w.start(Readiness.READABLE);
    await again;
    assert.equal(events.length, 2);
  } finally {
    w.close();
    native.close(efd);
  }
});

test('WRITABLE is reported for a writable socket, with both bits when both hold', async () => {
  const [a, b] = native.socketPair();
  native.sendMsg(b, Uint8Array.of(1), []);
  const seen = await new Promise<number>((resolve) => {
    const w = native.watch(a, (ev) => {
      w.close();
      resolve(ev);
    });
    w.start(Readiness.READABLE | Readiness.WRITABLE);
  });
  assert.equal(seen, Readiness.READABLE | Readiness.WRITABLE);
  native.close(a);
  native.close(b);
});

test('peer hang-up is reported as READABLE so EOF is seen', async () => {
  const [a, b] = native.socketPair();
  const seen = new Promise<number>((resolve) => {
    const w = native.watch(b, (ev) => {
      w.close();
      resolve(ev);
    });
    w.start(Readiness.READABLE);
  });
  native.close(a);
  assert.equal(await seen, Readiness.READABLE);
  assert.equal(native.recvMsg(b, new Uint8Array(4), 0)?.bytes, 0);
  native.close(b);
});

test('a socket error reaches the callback as (events, errno)', async () => {
  const [a, b] = native.socketPair();
  // Closing b with unread data resets the connection: a gets POLLERR.
  native.sendMsg(a, Uint8Array.of(1), []);
  const args = await new Promise<unknown[]>((resolve) => {
    const w = native.watch(a, (...got: unknown[]) => {
      w.close();
      resolve(got);
    });
    w.start(Readiness.READABLE);
    native.close(b);
  });
  assert.equal(args.length, 2);
  assert.equal(typeof args[0], 'number');
  assert.equal(typeof args[1], 'number');
  assert.ok((args[1] as number) > 0, 'errno is positive');
  native.close(a);
});

test('close() inside the callback stops further calls; close() twice is fine', async () => {
  const efd = native.eventfd(1);  // stays readable: a level-triggered watcher would refire
  let calls = 0;
  const w = native.watch(efd, () => {
    calls++;
    w.close();
    w.close();
  });
  w.start(Readiness.READABLE);
  await loopTurn();
  await loopTurn();
  assert.equal(calls, 1);
  w.stop();
  w.close();
  assert.throws(() => w.start(Readiness.READABLE), (err: unknown) => isSystemError(err, 'EBADF'));
  native.close(efd);
});

test('a watcher can be started again from inside its own callback', async () => {
  const efd = native.eventfd(0);
  const events: number[] = [];
  await new Promise<void>((resolve) => {
    const w = native.watch(efd, (ev) => {
      events.push(ev);
      if (ev === Readiness.WRITABLE) {
        w.start(Readiness.READABLE);  // switch interest; the counter is 0, so wait for a write
        native.eventfdWrite(efd, 1);
      } else {
        w.close();
        resolve();
      }
    });
    w.start(Readiness.WRITABLE);
  });
  assert.deepEqual(events, [Readiness.WRITABLE, Readiness.READABLE]);
  native.close(efd);
});

test('methods check their receiver and arguments', () => {
  const efd = native.eventfd(0);
  const w = native.watch(efd, () => {});
  try {
    assert.throws(() => w.start.call({} as FdWatcher, 1), TypeError);
    assert.throws(() => w.start(4), RangeError);
    assert.throws(() => (w.start as (x: unknown) => void)('1'), TypeError);
    const Ctor = (w as unknown as { constructor: new () => FdWatcher }).constructor;
    assert.throws(() => new Ctor().stop(), TypeError);
  } finally {
    w.close();
    native.close(efd);
  }
  assert.throws(() => native.watch(-1, () => {}), (err: unknown) => isSystemError(err, 'EBADF'));
  // epoll refuses regular files.
  const file = fs.openSync(process.execPath, 'r');
  try {
    assert.throws(() => native.watch(file, () => {}), (err: unknown) => isSystemError(err, 'EPERM'));
  } finally {
    fs.closeSync(file);
  }
});

test('a started watcher is not collected even when unreferenced; a stopped one is', async () => {
  const efd = native.eventfd(0);
  let fired = 0;
  let collected = false;
  const registry = new FinalizationRegistry(() => {
    collected = true;
  });
  (() => {
    const w = native.watch(efd, () => {
      fired++;
      native.eventfdRead(efd);
      w.stop();  // from here on only the closure cycle keeps it, which must not
    });
    registry.register(w, 'w');
    w.start(Readiness.READABLE);
  })();
  for (let i = 0; i < 5; i++) {
    gc();
    await loopTurn();
  }
  assert.equal(collected, false, 'an active watcher must stay alive');
  native.eventfdWrite(efd, 1);
  await loopTurn();
  assert.equal(fired, 1);
  for (let i = 0; i < 200 && !collected; i++) {
    gc();
    await loopTurn();
  }
  assert.equal(collected, true, 'a stopped, unreferenced watcher must be collectable');
  // Its finalizer closed the handle: the fd can be watched again and the loop is unaffected.
  await loopTurn();
  const w2 = native.watch(efd, () => {});
  w2.start(Readiness.READABLE);
  w2.close();
  native.close(efd);
});

test('an exception thrown by the callback is an uncaught exception', () => {
  const handled = runChild(`
    const efd = native.eventfd(1);
    const w = native.watch(efd, () => { throw new Error('boom from watcher'); });
    process.on('uncaughtException', (err) => {
      console.log('caught:' + err.message);
      w.close();
      native.close(efd);
    });
    w.start(Readiness.READABLE);
  `);
  assert.equal(handled.status, 0, handled.stderr);
  assert.equal(handled.stdout.trim(), 'caught:boom from watcher');

  const unhandled = runChild(`
    const efd = native.eventfd(1);
    native.watch(efd, () => { throw new Error('boom from watcher'); }).start(Readiness.READABLE);
  `);
  assert.equal(unhandled.status, 1);
  assert.match(unhandled.stderr, /boom from watcher/);
});

test('promise jobs queued by the callback run right after it', async () => {
  const efd = native.eventfd(1);
  const order: string[] = [];
  await new Promise<void>((resolve) => {
    const w = native.watch(efd, () => {
      w.close();
      void Promise.resolve().then(() => order.push('microtask'));
      process.nextTick(() => order.push('tick'));
      setImmediate(() => {
        order.push('immediate');
        resolve();
      });
    });
    w.start(Readiness.READABLE);
  });
  assert.deepEqual(order, ['tick', 'microtask', 'immediate']);
  native.close(efd);
});

test('an active watcher keeps the process alive; stop() and close() release it', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-watch-'));
  const fifo = path.join(dir, 'fifo');
  try {
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import fs from 'node:fs';
      import { native, Readiness } from ${JSON.stringify(indexUrl)};
      const fd = fs.openSync(${JSON.stringify(fifo)}, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      const w = native.watch(fd, () => {
        const buf = Buffer.alloc(16);
        const n = fs.readSync(fd, buf);
        console.log('fired:' + buf.toString('utf8', 0, n));
        w.close();
        fs.closeSync(fd);
      });
      w.start(Readiness.READABLE);
      console.log('armed');
    `], { stdio: ['ignore', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS });
    let stdout = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('armed')) resolve();
      });
    });
    // The child's script is done; only the watcher can keep it alive to read this.
    // O_NONBLOCK: opening fails with ENXIO instead of hanging if the reader has gone.
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(w, 'ping');
    fs.closeSync(w);
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0);
    assert.match(stdout, /fired:ping/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  // stop() without close() and close() alone both let the process exit.
  for (const release of ['w.stop();', 'w.close();']) {
    const r = runChild(`
      const efd = native.eventfd(0);
      const w = native.watch(efd, () => {});
      w.start(Readiness.READABLE);
      ${release}
      process.on('exit', () => console.log('exited'));
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'exited');
  }
});

test('the addon loads in worker threads, and worker teardown with live watchers is clean', () => {
  const r = runChild(`
    import { Worker } from 'node:worker_threads';
    import { once } from 'node:events';
    const workerCode = (ending) => \`
      const { parentPort } = require('node:worker_threads');
      import(\${JSON.stringify(${JSON.stringify(indexUrl)})}).then(({ native, Readiness }) => {
        const efd = native.eventfd(0);
        const active = native.watch(efd, () => {});
        active.start(Readiness.READABLE);
        const [a, b] = native.socketPair();
        native.watch(a, () => {}).start(Readiness.READABLE);
        native.watch(b, () => {});                        // never started
        const closing = native.watch(native.eventfd(0), () => {});
        closing.start(Readiness.READABLE);
        closing.close();                                  // close callback still pending
        parentPort.postMessage('ready');
        \${ending}
      });
    \`;
    for (const ending of ['', 'process.exit(0);', 'active.close(); setImmediate(() => process.exit(3));']) {
      const worker = new Worker(workerCode(ending), { eval: true, execArgv: [] });
      const [msg] = await once(worker, 'message');
      const code = ending === '' ? await worker.terminate() : (await once(worker, 'exit'))[0];
      console.log(msg + ':' + code);
    }
    // Many short-lived workers, each leaving watchers behind.
    for (let i = 0; i < 20; i++) {
      const worker = new Worker(workerCode(''), { eval: true, execArgv: [] });
      await once(worker, 'message');
      await worker.terminate();
    }
    console.log('done');
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'ready:1\nready:0\nready:3\ndone');
});

test('in a worker: a throwing callback is the worker error; terminate() mid-callback is clean', () => {
  const r = runChild(`
    import { Worker } from 'node:worker_threads';
    import { once } from 'node:events';
    const start = (body) => new Worker(\`
      const { parentPort } = require('node:worker_threads');
      import(\${JSON.stringify(${JSON.stringify(indexUrl)})}).then(({ native, Readiness }) => {
        const efd = native.eventfd(1);
        native.watch(efd, () => { \${body} }).start(Readiness.READABLE);
      });
    \`, { eval: true, execArgv: [] });
    const thrower = start("throw new Error('boom in worker');");
    const [err] = await once(thrower, 'error');
    console.log('error:' + err.message);
    const busy = start("parentPort.postMessage('inside'); for (;;) {}");
    await once(busy, 'message');
    console.log('terminated:' + await busy.terminate());
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'error:boom in worker\nterminated:1');
});
