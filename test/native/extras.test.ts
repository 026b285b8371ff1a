import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../src/native/index.js';

test('fallocate punches a hole that reads back as zeros and frees the blocks', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'falloc-'));
  try {
    const file = path.join(dir, 'img');
    fs.writeFileSync(file, Buffer.alloc(4 << 20, 0xab));
    const fd = fs.openSync(file, 'r+');
    try {
      const before = fs.fstatSync(fd).blocks;
      native.fallocate(fd, 0x01 | 0x02, 1 << 20, 2 << 20);
      const after = fs.fstatSync(fd);
      assert.equal(after.size, 4 << 20, 'KEEP_SIZE keeps the size');
      assert.ok(after.blocks < before, `blocks ${after.blocks} < ${before}`);
      const buf = Buffer.alloc(2 << 20);
      fs.readSync(fd, buf, 0, buf.length, 1 << 20);
      assert.ok(buf.every((b) => b === 0));
      const edge = Buffer.alloc(1);
      fs.readSync(fd, edge, 0, 1, (1 << 20) - 1);
      assert.equal(edge[0], 0xab);
    } finally {
      fs.closeSync(fd);
    }
    assert.throws(() => native.fallocate(-1, 3, 0, 1), (e: NodeJS.ErrnoException) => e.code === 'EBADF' &&
      (e as unknown as { syscall: string }).syscall === 'fallocate');
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});

test('openpty gives a working terminal pair', () => {
  const pty = native.openpty();
  try {
    assert.match(pty.path, /^\/dev\/pts\/\d+$/);
    // What the controller writes, the terminal reads (line discipline in canonical mode).
    fs.writeSync(pty.controller, 'hello\n');
    const buf = Buffer.alloc(64);
    const n = fs.readSync(pty.terminal, buf, 0, 64, null);
    assert.equal(buf.subarray(0, n).toString(), 'hello\n');
  } finally {
    native.close(pty.controller);
    native.close(pty.terminal);
  }
});

test('tapOpen reports a clear error when it cannot open a TAP device', (t) => {
  // Creating a TAP needs CAP_NET_ADMIN and /dev/net/tun; either way the answer is a TAP or a system error.
  try {
    const tap = native.tapOpen('vhutest0', false);
    assert.equal(tap.name, 'vhutest0');
    native.close(tap.fd);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { syscall: string };
    t.diagnostic(`tapOpen failed as a system error: ${e.message}`);
    assert.ok(['open', 'TUNSETIFF'].includes(e.syscall));
    assert.equal(typeof e.errno, 'number');
  }
  assert.throws(() => native.tapOpen('x'.repeat(20), false), /ENAMETOOLONG/);
});
