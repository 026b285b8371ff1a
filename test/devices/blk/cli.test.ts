import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus } from '../../../src/devices/blk/request.js';
import { MAIN, runCli, withCliDaemon } from '../../helpers/cli.js';
import { tempDir } from '../../helpers/tmp.js';
import { BlkClient, pattern } from './helpers.js';
import type { VhostDaemon } from '../../helpers/daemon.js';

const MiB = 1 << 20;

const cli = runCli;
const withDaemon = (args: string[], fn: (d: VhostDaemon) => Promise<void>, cwd?: string): Promise<void> =>
  withCliDaemon('blk', args, fn, cwd);

test('--print-capabilities and --print-qemu print and exit without opening anything', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const caps = await cli(['blk', '--print-capabilities']);
    assert.equal(caps.code, 0);
    assert.deepEqual(JSON.parse(caps.stdout), { type: 'block', features: ['read-only', 'blk-file'] });
    const image = path.join(dir, 'not-created.img');
    const sock = path.join(dir, 'q.sock');
    const q = await cli(['blk', '--print-qemu', '--image', image, '--size', '1G', '--num-queues', '2', '--socket-path', sock]);
    assert.equal(q.code, 0);
    assert.match(q.stdout, /-object memory-backend-memfd,id=mem,size=\d+M,share=on/);
    assert.match(q.stdout, /-machine memory-backend=mem/);
    assert.ok(q.stdout.includes(`-chardev socket,id=blk0,path=${sock},reconnect=1`), q.stdout);
    assert.ok(q.stdout.includes('-device vhost-user-blk-pci,chardev=blk0,num-queues=2'), q.stdout);
    assert.equal(fs.existsSync(image), false, '--print-qemu did not create the image');
    assert.equal(fs.existsSync(sock), false);
    const client = await cli(['blk', '--print-qemu', '--client', '--socket-path', sock]);
    assert.ok(client.stdout.includes(`path=${sock},server=on,wait=off`), 'QEMU is the server when we connect out');
    const help = await cli(['blk', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--write-through/);
  } finally {
    cleanup();
  }
});

test('usage errors exit non-zero with a message and leave no socket behind', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'e.sock');
    const cases: [string[], RegExp][] = [
      [['--memory', '1M', '--null', '1M'], /only one of --image, --memory and --null/],
      [['--block-size', '1024'], /--block-size must be 512 or 4096/],
      [['--num-queues', '0'], /--num-queues/],
      [['--size', '1M'], /--size goes with --image/],
      [['--memory', 'lots'], /not a size/],
      [['--writeback', '--write-through'], /not both/],
      [['--serial', 'x'.repeat(21)], /serial/],
      [['--image', path.join(dir, 'missing.img')], /does not exist/],
      [['--bogus'], /Unknown option/],
      [['--aio', 'threads'], /--aio goes with --image/],
      [['--image', path.join(dir, 'x.img'), '--size', '1M', '--aio', 'posix'], /--aio takes io_uring or threads/],
      [['--workers', '65'], /workers/],
      [['--poll-us', '-1'], /poll-us/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(['blk', '--socket-path', sock, ...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
      assert.equal(fs.existsSync(sock), false, args.join(' '));
    }
  } finally {
    cleanup();
  }
});

test('a memory disk in a child process: probe sees it, SIGTERM stops it and removes the socket', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'mem.sock');
    await withDaemon(['--socket-path', sock, '--memory', '64M', '--num-queues', '2', '--block-size', '4096'], async (d) => {
      assert.match(d.stdout, /memory disk of 67108864 bytes, 2 queues, write-back, block size 4096/);
      const probe = await cli(['probe', '--socket-path', sock, '--json']);
      assert.equal(probe.code, 0, probe.stderr);
      const r = JSON.parse(probe.stdout);
      assert.equal(r.deviceType, 'blk');
      assert.equal(r.queues, 2);
      assert.equal(r.config.capacity, 64 * MiB / 512);
      assert.equal(r.config.blk_size, 4096);
      assert.equal(r.config.num_queues, 2);
      assert.ok(r.featureNames.includes('DISCARD') && r.featureNames.includes('CONFIG_WCE'));
      assert.equal(fs.statSync(sock).isSocket(), true);
      assert.equal((await d.stop('SIGTERM')).code, 0);
      assert.equal(fs.existsSync(sock), false, 'socket file removed');
    });
  } finally {
    cleanup();
  }
});

test('with no options it serves a 256 MiB memory disk on ./vhost-user-blk.sock (npm start)', async () => {
  const { dir, cleanup } = tempDir();
  try {
    await withDaemon([], async (d) => {
      const sock = path.join(dir, 'vhost-user-blk.sock');
      assert.ok(d.stdout.includes(`listening on ${sock}`), d.stdout);
      assert.ok(d.stdout.includes('vhost-user-blk-pci'), 'prints how to attach QEMU');
      const c = await BlkClient.connect(sock);
      try {
        assert.equal((await c.config()).capacity, 256 * MiB / 512);
        assert.equal((await c.write(1000, pattern(4096, 1))).status, BlkStatus.OK);
        assert.deepEqual((await c.read(1000, 4096)).data, Buffer.from(pattern(4096, 1)));
      } finally {
        c.close();
      }
      assert.equal((await d.stop('SIGINT')).code, 0);
      assert.equal(fs.existsSync(sock), false);
    }, dir);
  } finally {
    cleanup();
  }
});

test('an image served by the daemon keeps its data across restarts; read-only and serial work', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'img.sock');
    const image = path.join(dir, 'disk.img');
    const writes = [0, 8, 5000, 32760].map((sector, i) => ({ sector, data: pattern(4096, 70 + i) }));
    await withDaemon(['--socket-path', sock, '--image', image, '--size', '16M', '--write-through', '--serial', 'SN-1'], async (d) => {
      assert.match(d.stdout, /created/);
      assert.equal(fs.statSync(image).size, 16 * MiB);
      const c = await BlkClient.connect(sock, { queues: 1 });
      try {
        assert.equal((await c.config()).writeback, 0);
        for (const w of writes) assert.equal((await c.write(w.sector, w.data)).status, BlkStatus.OK);
        assert.equal(Buffer.from((await c.getId()).id).toString('latin1').replace(/\0+$/, ''), 'SN-1');
      } finally {
        c.close();
      }
      assert.equal((await d.stop()).code, 0);
    });
    // The data is in the file itself.
    const raw = fs.readFileSync(image);
    for (const w of writes) assert.deepEqual(raw.subarray(w.sector * 512, w.sector * 512 + 4096), Buffer.from(w.data));

    await withDaemon(['--socket-path', sock, '--image', image, '--read-only'], async (d) => {
      assert.match(d.stdout, /read-only/);
      const c = await BlkClient.connect(sock);
      try {
        for (const w of writes) assert.deepEqual((await c.read(w.sector, 4096)).data, Buffer.from(w.data));
        assert.equal((await c.write(0, pattern(512, 9))).status, BlkStatus.IOERR);
      } finally {
        c.close();
      }
      assert.equal((await d.stop()).code, 0);
    });
    assert.deepEqual(fs.readFileSync(image).subarray(0, 4096), Buffer.from(writes[0]!.data));
  } finally {
    cleanup();
  }
});

test('--workers 2: the queue-to-worker mapping is printed, both queues serve I/O, the exit statistics count it', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'w.sock');
    await withDaemon(['--socket-path', sock, '--memory', '16M', '--num-queues', '2', '--workers', '2'], async (d) => {
      const end = Date.now() + 20_000;
      while (!d.stderr.includes('queue worker(s)') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      assert.match(d.stderr, /2 queue worker\(s\): queue 0 -> worker 0, queue 1 -> worker 1/);
      const c = await BlkClient.connect(sock, { queues: 2 });
      try {
        for (let i = 0; i < 10; i++) assert.equal((await c.write(i * 8, pattern(4096, i), { q: i % 2 })).status, BlkStatus.OK);
        for (let i = 0; i < 10; i++) {
          const r = await c.read(i * 8, 4096, { q: (i + 1) % 2 });
          assert.deepEqual(new Uint8Array(r.data), pattern(4096, i));
        }
      } finally {
        c.close();
      }
      assert.equal((await d.stop()).code, 0);
      assert.match(d.stderr, /served 20 requests: 10 reads .* 10 writes .*per queue \[10, 10\]/);
    });
  } finally {
    cleanup();
  }
});

test('--workers with a device that cannot use them fails at start with a clear message', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [MAIN, 'console', '--socket-path', path.join(dir, 'c.sock'), '--workers', '1'],
        { timeout: 20_000 }, (err, _out, stderr) => resolve({ code: err ? (err.code as number) : 0, stderr }));
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot start the queue workers: this device cannot serve its queues on worker threads/);
  } finally {
    cleanup();
  }
});
