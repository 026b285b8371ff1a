import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native, isSystemError, closeQuietly, Readiness } from '../../src/native/index.js';
import { fdsOpenedSince, openFds } from '../helpers/tmp.js';


function isOpen(fd: number): boolean {
  try {
    native.fstat(fd);
    return true;
  } catch (err) {
    if (isSystemError(err, 'EBADF')) return false;
    throw err;
  }
}

function tmpSocketPath(tag: string): string {
  return path.join(os.tmpdir(), `vhost-native-${process.pid}-${tag}.sock`);
}

test('socketPair passes an eventfd that still works on the other side', () => {
  const [a, b] = native.socketPair();
  const efd = native.eventfd(0);
  try {
    assert.equal(native.sendMsg(a, Buffer.from('hello'), [efd]), 5);
    const buf = new Uint8Array(16);
    const r = native.recvMsg(b, buf, 4);
    assert.ok(r !== null);
    assert.equal(r.bytes, 5);
    assert.equal(Buffer.from(buf.subarray(0, 5)).toString(), 'hello');
    assert.equal(r.fdsTruncated, false);
    assert.equal(r.fds.length, 1);
    const received = r.fds[0]!;
    assert.notEqual(received, efd);
    // Same eventfd object: a write on one fd is read on the other.
    assert.equal(native.eventfdWrite(efd, 7), true);
    assert.equal(native.eventfdRead(received), 7);
    assert.equal(native.eventfdRead(efd), 0);
    native.close(received);
  } finally {
    native.close(efd);
    native.close(a);
    native.close(b);
  }
});

test('recvMsg keeps maxFds fds and closes the surplus', () => {
  const [a, b] = native.socketPair();
  const sent = Array.from({ length: 8 }, () => native.eventfd(0));
  try {
    const before = openFds();
    assert.equal(native.sendMsg(a, Uint8Array.of(1, 2, 3), sent), 3);
    const r = native.recvMsg(b, new Uint8Array(8), 2);
    assert.ok(r !== null);
    assert.equal(r.bytes, 3);
    assert.equal(r.fds.length, 2);
    assert.equal(r.fdsTruncated, true);
    assert.deepEqual(fdsOpenedSince(before).map((f) => Number.parseInt(f, 10)).sort(), [...r.fds].sort(),
      'the 6 surplus fds must have been closed');
    for (const fd of r.fds) native.close(fd);
    assert.deepEqual(fdsOpenedSince(before), []);
  } finally {
    for (const fd of sent) native.close(fd);
    native.close(a);
    native.close(b);
  }
});

test('recvMsg with maxFds 0 drops all fds but still reads the bytes', () => {
  const [a, b] = native.socketPair();
  const efd = native.eventfd(0);
  try {
    const before = openFds();
    native.sendMsg(a, Uint8Array.of(9), [efd, efd]);
    const r = native.recvMsg(b, new Uint8Array(4), 0);
    assert.deepEqual(r, { bytes: 1, fds: [], fdsTruncated: true });
    assert.deepEqual(fdsOpenedSince(before), []);
  } finally {
    native.close(efd);
    native.close(a);
    native.close(b);
  }
});

test('would-block sentinels: recvMsg null, sendMsg -1, unixAccept -1, eventfd 0/false', () => {
  const [a, b] = native.socketPair();
  const efd = native.eventfd(0);
  const sockPath = tmpSocketPath('eagain');
  fs.rmSync(sockPath, { force: true });
  const listener = native.unixListen(sockPath, 4);
  try {
    assert.equal(native.recvMsg(b, new Uint8Array(8), 4), null);
    assert.equal(native.recvMsg(b, new Uint8Array(0), 0), null);
    let total = 0;
    let n = 0;
    let rounds = 0;
    while ((n = native.sendMsg(a, new Uint8Array(65536), [])) > 0) {
      total += n;
      assert.ok(++rounds < 10_000, 'socket buffer never filled');
    }
    assert.equal(n, -1);
    assert.ok(total > 0);
    assert.equal(native.unixAccept(listener), -1);
    assert.equal(native.eventfdRead(efd), 0);
    // The counter saturates at 2^64-2: fill it with the largest exact JS integer.
    let writes = 0;
    while (native.eventfdWrite(efd, Number.MAX_SAFE_INTEGER)) assert.ok(++writes <= 4096);
    assert.equal(writes, 2048);
  } finally {
    native.close(listener);
    fs.rmSync(sockPath, { force: true });
    native.close(efd);
    native.close(a);
    native.close(b);
  }
});

test('recvMsg returns bytes 0 at EOF', () => {
  const [a, b] = native.socketPair();
  native.sendMsg(a, Uint8Array.of(42), []);
  native.close(a);
  const buf = new Uint8Array(4);
  assert.deepEqual(native.recvMsg(b, buf, 1), { bytes: 1, fds: [], fdsTruncated: false });
  assert.equal(buf[0], 42);
  assert.deepEqual(native.recvMsg(b, buf, 1), { bytes: 0, fds: [], fdsTruncated: false });
  // Writing to a closed peer is EPIPE, not a SIGPIPE (MSG_NOSIGNAL).
  assert.throws(() => native.sendMsg(b, Uint8Array.of(1), []), (err: unknown) => isSystemError(err, 'EPIPE'));
  native.close(b);
});

test('recvMsg into a subarray writes at the view offset', () => {
  const [a, b] = native.socketPair();
  native.sendMsg(a, Uint8Array.of(1, 2, 3), []);
  const backing = new Uint8Array(8);
  const r = native.recvMsg(b, backing.subarray(4, 7), 0);
  assert.equal(r?.bytes, 3);
  assert.deepEqual([...backing], [0, 0, 0, 0, 1, 2, 3, 0]);
  native.close(a);
  native.close(b);
});

test('unixListen / unixConnect / unixAccept over a path', () => {
  const sockPath = tmpSocketPath('listen');
  fs.rmSync(sockPath, { force: true });
  const listener = native.unixListen(sockPath, 8);
  let client = -1;
  let server = -1;
  try {
    assert.equal(native.isListeningUnixSocket(listener), true);
    assert.equal(native.unixAccept(listener), -1);
    client = native.unixConnect(sockPath);
    server = native.unixAccept(listener);
    assert.ok(server >= 0);
    assert.equal(native.isListeningUnixSocket(client), false);
    assert.equal(native.isListeningUnixSocket(server), false);
    // The connected fd is non-blocking: an empty read is the null sentinel, not a hang.
    assert.equal(native.recvMsg(client, new Uint8Array(4), 0), null);
    const efd = native.eventfd(3);
    native.sendMsg(client, Uint8Array.of(5), [efd]);
    const r = native.recvMsg(server, new Uint8Array(4), 1);
    assert.equal(r?.fds.length, 1);
    assert.equal(native.eventfdRead(r!.fds[0]!), 3);
    native.close(r!.fds[0]!);
    native.close(efd);
    // Binding an existing path is the caller's problem: we unlink nothing.
    assert.throws(() => native.unixListen(sockPath, 1), (err: unknown) =>
      isSystemError(err, 'EADDRINUSE') && err.syscall === 'bind');
  } finally {
    closeQuietly(client);
    closeQuietly(server);
    native.close(listener);
    fs.rmSync(sockPath, { force: true });
  }
  assert.throws(() => native.unixConnect(sockPath), (err: unknown) =>
    isSystemError(err, 'ENOENT') && err.syscall === 'connect' && err.errno === 2);
});

test('unixConnect to a socket file nobody listens on is ECONNREFUSED', () => {
  const sockPath = tmpSocketPath('stale');
  fs.rmSync(sockPath, { force: true });
  native.close(native.unixListen(sockPath, 1));  // leaves a stale socket file behind
  try {
    assert.throws(() => native.unixConnect(sockPath), (err: unknown) => isSystemError(err, 'ECONNREFUSED'));
  } finally {
    fs.rmSync(sockPath, { force: true });
  }
});

test('socket paths that do not fit sun_path are ENAMETOOLONG', () => {
  const long = path.join(os.tmpdir(), 'x'.repeat(120));
  assert.throws(() => native.unixListen(long, 1), (err: unknown) =>
    isSystemError(err, 'ENAMETOOLONG') && err.syscall === 'bind');
  assert.throws(() => native.unixConnect(long), (err: unknown) => isSystemError(err, 'ENAMETOOLONG'));
  assert.throws(() => native.unixListen('/tmp/a\0b', 1), TypeError);
});

test('isListeningUnixSocket is false for non-sockets and throws for bad fds', () => {
  const efd = native.eventfd(0);
  assert.equal(native.isListeningUnixSocket(efd), false);
  native.close(efd);
  assert.throws(() => native.isListeningUnixSocket(efd), (err: unknown) => isSystemError(err, 'EBADF'));
});

test('errors carry code, positive errno and syscall', () => {
  const fd = native.eventfd(0);
  native.close(fd);
  for (const bad of [-5, fd]) {
    assert.throws(() => native.close(bad), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.ok(isSystemError(err));
      assert.equal(err.code, 'EBADF');
      assert.equal(err.errno, 9);
      assert.equal(err.syscall, 'close');
      assert.equal(err.message, 'close failed: EBADF (Bad file descriptor)');
      return true;
    });
  }
  assert.throws(() => native.fstat(-1), (err: unknown) => isSystemError(err, 'EBADF') && err.syscall === 'fstat');
});

test('wrong argument types throw TypeError', () => {
  const n = native as unknown as Record<string, (...args: unknown[]) => unknown>;
  assert.throws(() => n['close']!('3'), TypeError);
  assert.throws(() => n['close']!(), TypeError);
  assert.throws(() => n['sendMsg']!(0, 'abc', []), TypeError);
  assert.throws(() => n['sendMsg']!(0, new Uint8Array(1), [0.5]), RangeError);
  assert.throws(() => n['sendMsg']!(0, new Uint8Array(1), 3), TypeError);
  assert.throws(() => n['recvMsg']!(0, new Uint8Array(1), 254), RangeError);
  assert.throws(() => n['mmap']!(0, 4096, 1), TypeError);
  assert.throws(() => n['unmapNow']!(new ArrayBuffer(8)), TypeError);
  assert.throws(() => n['watch']!(0, null), TypeError);
  assert.throws(() => n['memfdCreate']!(1, 0), TypeError);
  assert.throws(() => n['setNonBlocking']!(0, 1), TypeError);
  assert.throws(() => n['pollFd']!(0, 4, 0), RangeError);
  assert.throws(() => n['close']!(2 ** 40), RangeError);
});

test('sendMsg limits: more than 253 fds, or fds without a data byte, are EINVAL', () => {
  const [a, b] = native.socketPair();
  try {
    assert.throws(() => native.sendMsg(a, Uint8Array.of(1), new Array<number>(254).fill(a)),
      (err: unknown) => isSystemError(err, 'EINVAL') && err.syscall === 'sendmsg');
    assert.throws(() => native.sendMsg(a, new Uint8Array(0), [a]), (err: unknown) => isSystemError(err, 'EINVAL'));
    assert.equal(native.sendMsg(a, new Uint8Array(0), []), 0);
    assert.throws(() => native.sendMsg(a, Uint8Array.of(1), [-1]), (err: unknown) => isSystemError(err, 'EBADF'));
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('setNonBlocking toggles O_NONBLOCK (checked in /proc/self/fdinfo)', () => {
  const [a, b] = native.socketPair();
  try {
    native.setNonBlocking(b, false);
    const flags = fs.readFileSync(`/proc/self/fdinfo/${b}`, 'utf8').match(/flags:\s+(\d+)/)![1]!;
    assert.equal(parseInt(flags, 8) & fs.constants.O_NONBLOCK, 0);
    native.setNonBlocking(b, true);
    const flags2 = fs.readFileSync(`/proc/self/fdinfo/${b}`, 'utf8').match(/flags:\s+(\d+)/)![1]!;
    assert.notEqual(parseInt(flags2, 8) & fs.constants.O_NONBLOCK, 0);
    assert.equal(native.recvMsg(b, new Uint8Array(1), 0), null);
  } finally {
    native.close(a);
    native.close(b);
  }
  assert.throws(() => native.setNonBlocking(a, true), (err: unknown) => isSystemError(err, 'EBADF'));
});

test('every fd the addon creates is close-on-exec', () => {
  const [a, b] = native.socketPair();
  const sockPath = tmpSocketPath('cloexec');
  fs.rmSync(sockPath, { force: true });
  const l = native.unixListen(sockPath, 1);
  const c = native.unixConnect(sockPath);
  const s = native.unixAccept(l);
  const e = native.eventfd(0);
  const m = native.memfdCreate('cloexec', 0);
  native.sendMsg(a, Uint8Array.of(0), [e]);
  const passed = native.recvMsg(b, new Uint8Array(1), 1)!.fds[0]!;
  const all = [a, b, l, c, s, e, m, passed];
  try {
    for (const fd of all) {
      const flags = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s+(\d+)/)![1]!;
      assert.notEqual(parseInt(flags, 8) & 0o2000000, 0, `fd ${fd} lacks O_CLOEXEC`);
    }
  } finally {
    for (const fd of all) native.close(fd);
    fs.rmSync(sockPath, { force: true });
  }
});

test('pollFd reports readiness bits and 0 on timeout', () => {
  const efd = native.eventfd(0);
  const [a, b] = native.socketPair();
  try {
    assert.equal(native.pollFd(efd, Readiness.READABLE, 0), 0);
    assert.equal(native.pollFd(efd, Readiness.WRITABLE, 0), Readiness.WRITABLE);
    native.eventfdWrite(efd, 1);
    assert.equal(native.pollFd(efd, Readiness.READABLE | Readiness.WRITABLE, 0),
      Readiness.READABLE | Readiness.WRITABLE);
    // Hang-up counts as readable so a reader sees EOF.
    native.close(a);
    assert.equal(native.pollFd(b, Readiness.READABLE, -1) & Readiness.READABLE, Readiness.READABLE);
  } finally {
    native.close(efd);
    native.close(b);
  }
  assert.throws(() => native.pollFd(efd, Readiness.READABLE, 0), (err: unknown) =>
    isSystemError(err, 'EBADF') && err.syscall === 'poll');
});

test('memfdCreate sizes the file and fstat reports size and mode', () => {
  const fd = native.memfdCreate('vhost-size', 12345);
  try {
    const st = native.fstat(fd);
    assert.equal(st.size, 12345);
    assert.equal(st.mode & fs.constants.S_IFMT, fs.constants.S_IFREG);
    assert.match(fs.readlinkSync(`/proc/self/fd/${fd}`), /^\/memfd:vhost-size/);
  } finally {
    native.close(fd);
  }
  const before = openFds();
  // The kernel caps memfd names at 249 bytes.
  assert.throws(() => native.memfdCreate('n'.repeat(300), 4096), (err: unknown) =>
    isSystemError(err, 'EINVAL') && err.syscall === 'memfd_create');
  assert.deepEqual(fdsOpenedSince(before), []);
});

test('byte arguments: any typed array or DataView by its bytes; anything else a TypeError naming the argument', () => {
  const [a, b] = native.socketPair();
  try {
    // A Uint32Array of 2 elements is 8 bytes; a DataView over 3 bytes is 3.
    assert.equal(native.sendMsg(a, Uint32Array.of(0x04030201, 0x08070605) as unknown as Uint8Array, []), 8);
    assert.equal(native.sendMsg(a, new DataView(Uint8Array.of(9, 10, 11).buffer) as unknown as Uint8Array, []), 3);
    const buf = new Uint8Array(16);
    assert.equal(native.recvMsg(b, new DataView(buf.buffer, 0, 16) as unknown as Uint8Array, 0)?.bytes, 11);
    assert.deepEqual([...buf.subarray(0, 11)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    for (const bad of ['text', [1, 2], {}, null, 7]) {
      assert.throws(() => native.sendMsg(a, bad as unknown as Uint8Array, []),
        (err: unknown) => err instanceof TypeError && /"data" argument/.test(err.message));
      assert.throws(() => native.recvMsg(b, bad as unknown as Uint8Array, 0),
        (err: unknown) => err instanceof TypeError && /"buf" argument/.test(err.message));
    }
  } finally {
    native.close(a);
    native.close(b);
  }
});
