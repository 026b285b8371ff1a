import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EOF, MessageParser, encodeMessage, type Receive, type Received } from '../../src/protocol/codec.js';
import { ProtocolError, type Message } from '../../src/protocol/message.js';
import { native, closeQuietly } from '../../src/native/index.js';
import { frame, u64, V1 } from '../helpers/wire.js';
import { fdsOpenedSince, openFds } from '../helpers/tmp.js';

/**
 * A fake socket: a queue of sendmsg-like chunks. Like a Unix stream socket, a receive never crosses from one
 * chunk into the next when fds are involved, a chunk's fds arrive with its first byte, and fds beyond the
 * receiver's room are closed and flagged. `maxBytes` caps each receive (1 = byte by byte); `blockEvery` makes every
 * other call would-block.
 */
class FakeSocket {
  readonly chunks: { bytes: Uint8Array; fds: number[] }[] = [];
  readonly closed: number[] = [];
  consumed = 0;
  calls = 0;
  eof = false;
  maxBytes = Infinity;
  blockEvery = false;
  #blockNext = false;

  push(bytes: Uint8Array, fds: number[] = []): this {
    this.chunks.push({ bytes: bytes.slice(), fds: [...fds] });
    return this;
  }

  readonly receive: Receive = (buf, maxFds): Received | null => {
    this.calls++;
    if (this.blockEvery) {
      this.#blockNext = !this.#blockNext;
      if (this.#blockNext) return null;
    }
    const chunk = this.chunks[0];
    if (!chunk) return this.eof ? { bytes: 0, fds: [], fdsTruncated: false } : null;
    const n = Math.min(buf.length, chunk.bytes.length, this.maxBytes);
    buf.set(chunk.bytes.subarray(0, n));
    chunk.bytes = chunk.bytes.subarray(n);
    this.consumed += n;
    let fds = chunk.fds;
    chunk.fds = [];
    let fdsTruncated = false;
    if (fds.length > maxFds) {
      for (const fd of fds.slice(maxFds)) this.closed.push(fd);
      fds = fds.slice(0, maxFds);
      fdsTruncated = true;
    }
    if (chunk.bytes.length === 0) this.chunks.shift();
    return { bytes: n, fds, fdsTruncated };
  };
}

function parser(closed: number[] = [], options: { maxPayload?: number; maxFds?: number } = {}): MessageParser {
  return new MessageParser({ ...options, closeFd: (fd) => closed.push(fd) });
}

/** Call next() until it returns something other than null (bounded). */
function drive(p: MessageParser, sock: FakeSocket, limit = 100000): Message | typeof EOF {
  for (let i = 0; i < limit; i++) {
    const m = p.next(sock.receive);
    if (m !== null) return m;
  }
  throw new Error('parser made no progress');
}

function expectMessage(m: Message | typeof EOF | null): Message {
  assert.ok(m !== null && m !== EOF, 'expected a message');
  return m;
}

function protocolError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof ProtocolError && pattern.test(err.message));
}

test('encodeMessage: header fields little-endian, then the payload; no payload means size 0', () => {
  const wire = encodeMessage(0x01020304, 0x9, Uint8Array.from([0xaa, 0xbb]));
  assert.deepEqual([...wire], [4, 3, 2, 1, 9, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb]);
  assert.deepEqual([...encodeMessage(1, 1)], [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...encodeMessage(5, V1, u64(7))], [...frame({ request: 5, payload: u64(7) })]);
});

test('parser: a whole message in one read; fds come with it', () => {
  const sock = new FakeSocket().push(frame({ request: 2, payload: u64(0x55) }), [10, 11]);
  const m = expectMessage(parser().next(sock.receive));
  assert.equal(m.request, 2);
  assert.equal(m.flags, V1);
  assert.deepEqual([...m.payload], [...u64(0x55)]);
  assert.deepEqual(m.fds, [10, 11]);
  assert.equal(parser().next(new FakeSocket().receive), null, 'nothing to read: would block');
});

test('parser: byte by byte with would-block between bytes gives the same message', () => {
  const payload = Uint8Array.from({ length: 40 }, (_, i) => i * 3);
  const sock = new FakeSocket().push(frame({ request: 37, flags: 0x9, payload }), [7]);
  sock.maxBytes = 1;
  sock.blockEvery = true;
  const p = parser();
  let nulls = 0;
  let m: Message | typeof EOF | null = null;
  while (m === null) {
    m = p.next(sock.receive);
    if (m === null) nulls++;
  }
  const msg = expectMessage(m);
  assert.equal(msg.request, 37);
  assert.equal(msg.flags, 0x9);
  assert.deepEqual([...msg.payload], [...payload]);
  assert.deepEqual(msg.fds, [7]);
  assert.equal(nulls, 52, 'one would-block per byte');
});

test('parser: reads no further than one message, so the next message keeps its own fds', () => {
  const a = frame({ request: 1 });
  const b = frame({ request: 12, payload: u64(0) });
  const both = new Uint8Array(a.length + b.length);
  both.set(a);
  both.set(b, a.length);
  const sock = new FakeSocket().push(both);
  const p = parser();
  expectMessage(p.next(sock.receive));
  assert.equal(sock.consumed, a.length);
  const second = expectMessage(p.next(sock.receive));
  assert.equal(second.request, 12);
  assert.equal(sock.consumed, a.length + b.length);

  // Separate sendmsgs: fds of the second message are not attached to the first.
  const sock2 = new FakeSocket().push(frame({ request: 1 }), [20]).push(frame({ request: 13, payload: u64(0) }), [21]);
  const p2 = parser();
  assert.deepEqual(expectMessage(p2.next(sock2.receive)).fds, [20]);
  assert.deepEqual(expectMessage(p2.next(sock2.receive)).fds, [21]);
});

test('parser: fds arriving with the payload rather than the header belong to the message', () => {
  const whole = frame({ request: 5, payload: new Uint8Array(40) });
  const sock = new FakeSocket().push(whole.subarray(0, 12)).push(whole.subarray(12, 20), [30]).push(whole.subarray(20), [31]);
  const m = expectMessage(drive(parser(), sock));
  assert.deepEqual(m.fds, [30, 31]);
  assert.equal(m.payload.length, 40);
});

test('parser: fds split between header and payload add up; eight is the limit', () => {
  const whole = frame({ request: 5, payload: new Uint8Array(8 + 32 * 8) });
  const sock = new FakeSocket().push(whole.subarray(0, 12), [1, 2, 3, 4]).push(whole.subarray(12), [5, 6, 7, 8]);
  assert.deepEqual(expectMessage(drive(parser(), sock)).fds, [1, 2, 3, 4, 5, 6, 7, 8]);

  const closed: number[] = [];
  const p = parser(closed);
  const over = new FakeSocket().push(whole.subarray(0, 12), [1, 2, 3, 4, 5]).push(whole.subarray(12), [6, 7, 8, 9]);
  protocolError(() => drive(p, over), /more than 8 file descriptors/);
  p.dispose();
  assert.deepEqual(closed.sort((x, y) => x - y), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'every fd received is closed');
});

test('parser: surplus fds in one sendmsg are detected, whether or not the kernel had to truncate', () => {
  for (const count of [9, 12, 253]) {
    const closed: number[] = [];
    const p = parser(closed);
    const fds = Array.from({ length: count }, (_, i) => 100 + i);
    const sock = new FakeSocket().push(frame({ request: 1 }), fds);
    protocolError(() => p.next(sock.receive), /more than 8 file descriptors/);
    p.dispose();
    // The parser asked for room for 9: the rest were closed by the (fake) kernel side, the 9 by dispose.
    assert.deepEqual([...closed, ...sock.closed].sort((x, y) => x - y), fds);
    assert.equal(closed.length, 9);
  }
});

test('parser: maxFds option', () => {
  const closed: number[] = [];
  const p = parser(closed, { maxFds: 1 });
  protocolError(() => p.next(new FakeSocket().push(frame({ request: 12, payload: u64(0) }), [1, 2]).receive), /more than 1 file/);
  p.dispose();
  assert.deepEqual(closed, [1, 2]);
});

test('parser: EOF between messages is EOF; EOF inside a header or payload is a ProtocolError', () => {
  const clean = new FakeSocket();
  clean.eof = true;
  assert.equal(parser().next(clean.receive), EOF);

  const after = new FakeSocket().push(frame({ request: 1 }));
  after.eof = true;
  const p = parser();
  expectMessage(p.next(after.receive));
  assert.equal(p.next(after.receive), EOF);

  for (const cut of [1, 5, 11]) {
    const closed: number[] = [];
    const q = parser(closed);
    const sock = new FakeSocket().push(frame({ request: 5, payload: new Uint8Array(40) }).subarray(0, cut), [44]);
    sock.eof = true;
    protocolError(() => drive(q, sock), new RegExp(`inside a message header \\(${cut} of 12 bytes\\)`));
    q.dispose();
    assert.deepEqual(closed, [44], 'the fd of the unfinished message is closed');
  }
  for (const cut of [12, 13, 51]) {
    const closed: number[] = [];
    const q = parser(closed);
    const sock = new FakeSocket().push(frame({ request: 5, payload: new Uint8Array(40) }).subarray(0, cut), [45, 46]);
    sock.eof = true;
    protocolError(() => drive(q, sock), new RegExp(`inside a message payload \\(${cut - 12} of 40 bytes\\)`));
    q.dispose();
    assert.deepEqual(closed, [45, 46]);
  }
});

test('parser: header version other than 1 is rejected as soon as the header is complete', () => {
  for (const flags of [0x0, 0x2, 0x3, 0x4, 0x8, 0xfffffffc]) {
    const closed: number[] = [];
    const p = parser(closed);
    const sock = new FakeSocket().push(frame({ request: 1, flags, payload: u64(0) }), [3]);
    sock.maxBytes = 12;
    protocolError(() => p.next(sock.receive), /header version \d, expected 1/);
    assert.equal(sock.consumed, 12, 'the payload was not read');
    p.dispose();
    assert.deepEqual(closed, [3]);
  }
  // Version 1 with other bits set passes the parser (REPLY/NEED_REPLY are judged by the handler).
  for (const flags of [0x1, 0x5, 0x9, 0xd, 0xfffffff1]) {
    assert.equal(expectMessage(parser().next(new FakeSocket().push(frame({ request: 1, flags })).receive)).flags, flags >>> 0);
  }
});

test('parser: payload size over 4096 is rejected from the header alone; 4096 is accepted', () => {
  const big = new FakeSocket().push(frame({ request: 25, size: 4097 }));
  protocolError(() => parser().next(big.receive), /payload size 4097 over the 4096-byte limit/);
  const huge = new FakeSocket().push(frame({ request: 25, size: 0xffffffff }));
  protocolError(() => parser().next(huge.receive), /payload size 4294967295 over/);
  const max = new FakeSocket().push(frame({ request: 25, payload: new Uint8Array(4096).fill(7) }));
  const m = expectMessage(drive(parser(), max));
  assert.equal(m.payload.length, 4096);
  assert.equal(m.payload[4095], 7);
  protocolError(() => parser([], { maxPayload: 16 }).next(new FakeSocket().push(frame({ request: 1, size: 17 })).receive),
    /payload size 17 over the 16-byte limit/);
});

test('parser: a message with fds but no payload; zero-size payload is an empty array', () => {
  const m = expectMessage(parser().next(new FakeSocket().push(frame({ request: 21 }), [9]).receive));
  assert.equal(m.payload.length, 0);
  assert.deepEqual(m.fds, [9]);
});

test('parser: state resets between messages; a payload buffer is never shared', () => {
  const sock = new FakeSocket().push(frame({ request: 2, payload: u64(1) })).push(frame({ request: 2, payload: u64(2) }));
  const p = parser();
  const a = expectMessage(p.next(sock.receive));
  const b = expectMessage(p.next(sock.receive));
  assert.notEqual(a.payload.buffer, b.payload.buffer);
  assert.deepEqual([...a.payload], [...u64(1)]);
  assert.deepEqual([...b.payload], [...u64(2)]);
  assert.deepEqual(a.fds, []);
  assert.notEqual(a.fds, b.fds);
});

test('parser over a real socketpair: surplus fds are closed on every path', () => {
  const before = openFds();
  const [a, b] = native.socketPair();
  const fds = Array.from({ length: 12 }, () => native.eventfd(0));
  assert.equal(native.sendMsg(a, frame({ request: 1 }), fds), 12);
  for (const fd of fds) native.close(fd);
  const p = new MessageParser({ closeFd: closeQuietly });
  protocolError(() => p.next((buf, maxFds) => native.recvMsg(b, buf, maxFds)), /more than 8 file descriptors/);
  p.dispose();
  native.close(a);
  native.close(b);
  assert.deepEqual(fdsOpenedSince(before), []);
});

test('parser over a real socketpair: byte-at-a-time arrival', () => {
  let [a, b] = native.socketPair();
  const memfd = native.memfdCreate('codec-test', 4096);
  try {
    const wire = frame({ request: 37, payload: new Uint8Array(40).fill(1) });
    const p = new MessageParser({ closeFd: closeQuietly });
    const sock = b;
    const receive: Receive = (buf, maxFds) => native.recvMsg(sock, buf, maxFds);
    let got: Message | typeof EOF | null = null;
    for (let i = 0; i < wire.length; i++) {
      assert.equal(got, null);
      native.sendMsg(a, wire.subarray(i, i + 1), i === 0 ? [memfd] : []);
      got = p.next(receive);
    }
    const m = expectMessage(got);
    assert.equal(m.fds.length, 1);
    assert.equal(native.fstat(m.fds[0]!).size, 4096, 'the received fd is the memfd');
    closeQuietly(m.fds[0]!);
    native.close(a);
    a = -1;
    assert.equal(p.next(receive), EOF);
  } finally {
    closeQuietly(memfd);
    closeQuietly(a);
    closeQuietly(b);
    b = -1;
  }
});
