/**
 * Bounded resources: a frontend (or a guest) cannot make the daemon allocate without bound. Each test drives the
 * real `vhost-user blk` daemon (a child process, so /proc/<pid> shows only what the daemon holds) at or past one
 * limit and checks what it holds: open fds, memfd mappings, memory. The limits are documented in
 * docs/limits.md; the ones found missing are reproduced by known-issues.ts instead (they would fail here).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { native, closeQuietly } from '../../src/native/index.js';
import { EOF, MessageParser } from '../../src/protocol/codec.js';
import { FrontendRequest as R, Limits, ProtocolFeature } from '../../src/protocol/constants.js';
import { ProtocolError } from '../../src/protocol/message.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { inflightQueueSize } from '../../src/virtqueue/inflight.js';
import { featureMask } from '../../src/virtio/constants.js';
import { encodeHeader } from '../../src/devices/blk/request.js';
import { tempDir } from '../helpers/tmp.js';
import {
  NEED_REPLY, RawPeer, V1, configPayload, inflightPayload, readU64, singleRegion, u64, vringState, type WireMessage,
} from '../helpers/wire.js';
import { DaemonProcess } from './daemon-process.js';

let dir = '';
let cleanup: () => void = () => {};
let n = 0;

before(() => {
  ({ dir, cleanup } = tempDir('vhost-limits-'));
});
after(() => cleanup());

/** A fresh daemon for one test, stopped when the test ends. */
async function daemon(t: { after: (fn: () => Promise<void>) => void }, args: string[] = [], nodeArgs: string[] = []):
  Promise<DaemonProcess> {
  const d = await DaemonProcess.start(path.join(dir, `d${n++}.sock`), args, nodeArgs);
  t.after(() => d.stop());
  // One full connection first, so that lazily opened handles do not count against the first measurement.
  const p = RawPeer.connect(d.socketPath);
  await p.sendMessage({ request: R.GET_FEATURES });
  await p.readMessage();
  p.close();
  await new Promise((resolve) => setTimeout(resolve, 100));
  return d;
}

/** Send `messages` on a fresh connection and return how the daemon reacted (replies and whether it closed). */
async function exchange(d: DaemonProcess, messages: WireMessage[], expectClose: boolean) {
  const p = RawPeer.connect(d.socketPath);
  try {
    for (const m of messages) await p.sendMessage(m);
    if (expectClose) return await p.closedByPeer();
    await p.sendMessage({ request: R.GET_QUEUE_NUM });
    const replies = [];
    for (;;) {
      const m = await p.readMessage();
      for (const fd of m.fds) closeQuietly(fd);
      replies.push(m);
      if (m.request === R.GET_QUEUE_NUM) return { ending: undefined, messages: replies };
    }
  } finally {
    p.close();
  }
}

const acked = u64(featureMask(ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.CONFIG,
  ProtocolFeature.INFLIGHT_SHMFD));

test(`payload size: the parser never asks for or allocates more than MAX_PAYLOAD (${Limits.MAX_PAYLOAD}) bytes; ` +
  'a 4 GiB size field closes the connection without reading on', async (t) => {
  // In-process: a parser fed a header announcing 2^32-1 bytes reads the header and nothing else.
  let asked = 0;
  const header = new Uint8Array(12);
  new DataView(header.buffer).setUint32(4, 1, true);
  new DataView(header.buffer).setUint32(8, 0xffffffff, true);
  let given = 0;
  const parser = new MessageParser({ closeFd: () => undefined });
  assert.throws(() => parser.next((buf) => {
    asked = Math.max(asked, buf.length);
    const n = Math.min(buf.length, header.length - given);
    buf.set(header.subarray(given, given + n));
    given += n;
    return { bytes: n, fds: [], fdsTruncated: false };
  }), (err: unknown) => err instanceof ProtocolError && /payload size 4294967295 over the 4096-byte limit/.test(err.message));
  assert.equal(given, 12, 'nothing after the header was read');
  assert.ok(asked <= 12);
  // The largest allowed payload is read in full: the buffer asked for is exactly its size.
  const big = new Uint8Array(12 + Limits.MAX_PAYLOAD);
  new DataView(big.buffer).setUint32(4, 1, true);
  new DataView(big.buffer).setUint32(8, Limits.MAX_PAYLOAD, true);
  given = 0;
  asked = 0;
  const ok = new MessageParser({ closeFd: () => undefined });
  const m = ok.next((buf) => {
    asked = Math.max(asked, buf.length);
    const k = Math.min(buf.length, big.length - given);
    buf.set(big.subarray(given, given + k));
    given += k;
    return { bytes: k, fds: [], fdsTruncated: false };
  });
  assert.ok(m !== null && m !== EOF && m.payload.length === Limits.MAX_PAYLOAD);
  assert.equal(asked, Limits.MAX_PAYLOAD);
  // Live: the daemon closes at once, and stays at its memory.
  const d = await daemon(t);
  const rss = d.statusKb('VmRSS');
  const r = await exchange(d, [{ request: R.SET_CONFIG, size: 0xffffffff }], true);
  assert.ok(r.ending === 'eof' || r.ending === 'reset');
  assert.ok(d.statusKb('VmRSS') - rss < 64 * 1024, 'no 4 GiB allocation');
});

test(`fds per message: at most MAX_FDS (${Limits.MAX_FDS}) are accepted; 100 messages carrying 253 fds each ` +
  'leave the daemon with the fds it had', async (t) => {
  const d = await daemon(t);
  const base = d.fds();
  for (let i = 0; i < 100; i++) {
    const fds = Array.from({ length: 253 }, () => native.eventfd(0));
    try {
      const p = RawPeer.connect(d.socketPath);
      await p.sendMessage({ request: R.SET_VRING_CALL, payload: u64(0), fds });
      for (const fd of fds) closeQuietly(fd);
      const r = await p.closedByPeer();
      assert.ok(r.ending === 'eof' || r.ending === 'reset');
      p.close();
    } finally {
      for (const fd of fds) closeQuietly(fd);
    }
  }
  assert.equal(await d.settleFds(base), base, 'every fd received was closed');
  assert.ok(await d.waitForLines(/more than 8 file descriptors/, 100), 'each message was refused for its fds');
});

test('messages: 20 000 SET_CONFIG of the largest config size on one connection and 1000 connections each ' +
  `sending a ${Limits.MAX_PAYLOAD}-byte message leave fds and memory flat`, async (t) => {
  const d = await daemon(t, [], ['--max-semi-space-size=1']);
  const base = d.fds();
  const p = RawPeer.connect(d.socketPath);
  try {
    await p.sendMessage({ request: R.SET_PROTOCOL_FEATURES, payload: acked });
    const config = configPayload(0, new Uint8Array(Limits.MAX_CONFIG_SIZE));
    const round = async (count: number): Promise<void> => {
      for (let sent = 0; sent < count; sent += 500) {
        const batch = Array.from({ length: 500 }, () => ({ request: R.SET_CONFIG, flags: V1 | NEED_REPLY, payload: config }));
        await p.send(Buffer.concat(batch.map((m) => Buffer.from(frameOf(m)))));
        for (let k = 0; k < 500; k++) {
          const reply = await p.readMessage();
          // blk's config space is read-only apart from writeback: refused, and the connection stays.
          assert.equal(reply.request, R.SET_CONFIG);
          assert.notEqual(readU64(reply.payload), 0n);
        }
      }
    };
    await round(5000);
    const before = d.statusKb('RssAnon');
    await round(20_000);
    const grown = d.statusKb('RssAnon') - before;
    t.diagnostic(`daemon RssAnon ${before} kB -> ${before + grown} kB over 20 000 messages`);
    assert.ok(grown < 16 * 1024, `RssAnon grew by ${grown} kB over 20 000 messages`);
  } finally {
    p.close();
  }
  for (let i = 0; i < 1000; i++) {
    const q = RawPeer.connect(d.socketPath);
    await q.sendMessage({ request: 0x7fff, payload: new Uint8Array(Limits.MAX_PAYLOAD) });
    await q.closedByPeer();
    q.close();
  }
  assert.equal(await d.settleFds(base), base);
  assert.ok(d.running);
});

function frameOf(m: WireMessage): Uint8Array {
  const payload = m.payload ?? new Uint8Array(0);
  const out = new Uint8Array(12 + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, m.request, true);
  dv.setUint32(4, m.flags ?? V1, true);
  dv.setUint32(8, payload.length, true);
  out.set(payload, 12);
  return out;
}

test(`memory regions: GET_MAX_MEM_SLOTS is ${Limits.MAX_MEM_SLOTS}, that many ADD_MEM_REG are mapped, one more ` +
  'closes the connection, and every mapping and fd is released', async (t) => {
  const d = await daemon(t);
  const base = d.fds();
  const p = RawPeer.connect(d.socketPath);
  const ram: number[] = [];
  try {
    await p.sendMessage({ request: R.SET_PROTOCOL_FEATURES, payload: acked });
    await p.sendMessage({ request: R.GET_MAX_MEM_SLOTS });
    assert.equal(readU64((await p.readMessage()).payload), BigInt(Limits.MAX_MEM_SLOTS));
    for (let i = 0; i <= Limits.MAX_MEM_SLOTS; i++) {
      const fd = native.memfdCreate('limits-ram', 4096);
      ram.push(fd);
      await p.sendMessage({ request: R.ADD_MEM_REG, flags: V1 | NEED_REPLY, payload: singleRegion({ gpa: i * 0x10000, size: 4096, uaddr: 0x7f0000000000 + i * 0x10000 }), fds: [fd] });
      closeQuietly(fd);
      if (i < Limits.MAX_MEM_SLOTS) {
        assert.equal(readU64((await p.readMessage()).payload), 0n, `region ${i} accepted`);
        assert.equal(d.memfdMaps().filter((l) => l.includes('limits-ram')).length, i + 1);
      }
    }
    const r = await p.closedByPeer();
    assert.ok(r.ending === 'eof' || r.ending === 'reset', 'region 33 closes the connection');
    assert.ok(await d.waitForLines(/ADD_MEM_REG: too many memory regions: 33 > 32/), d.lines.join('\n'));
  } finally {
    p.close();
    for (const fd of ram) closeQuietly(fd);
  }
  assert.equal(await d.settleFds(base), base);
  assert.deepEqual(d.memfdMaps(), [], 'no region is still mapped');
});

test('queues: ring indexes, ring sizes and inflight areas are bounded by the device (1 queue of at most 1024)', async (t) => {
  const d = await daemon(t);
  const closes: [string, WireMessage[], RegExp][] = [
    ['ring index past the queues', [{ request: R.SET_VRING_NUM, payload: vringState(1, 64) }], /queue 1 does not exist/],
    ['kick for queue 255', [{ request: R.SET_VRING_KICK, payload: u64(255), fds: [] }], /carries 0 file descriptors|does not exist/],
    ['queue index beyond 8 bits', [{ request: R.SET_VRING_CALL, payload: u64(0x200) }], /reserved bits/],
    ['ring of 2048', [{ request: R.SET_VRING_NUM, payload: vringState(0, 2048) }], /size 2048 is not a power of two in 1\.\.1024/],
    ['ring of 32768', [{ request: R.SET_VRING_NUM, payload: vringState(0, 32768) }], /size 32768/],
    ['inflight for 2 queues', [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 2, 64) }], /2 queues \(the device has 1\)/],
    ['inflight for rings of 32768', [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 1, 32768) }], /queue size 32768/],
  ];
  for (const [what, messages, reason] of closes) {
    const mark = d.lines.length;
    const r = await exchange(d, messages, true);
    assert.ok(r.ending === 'eof' || r.ending === 'reset', what);
    assert.ok(await d.waitForLines(reason, 1, mark), `${what}: ${d.lines.slice(mark).join('\n')}`);
  }
  // The largest inflight area the daemon creates: one queue of 1024 entries.
  const r = await exchange(d, [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 1, 1024) }], false);
  const reply = r.messages.find((m) => m.request === R.GET_INFLIGHT_FD)!;
  assert.equal(Number(new DataView(reply.payload.buffer, reply.payload.byteOffset).getBigUint64(0, true)), inflightQueueSize(1024));
});

test(`config space: GET_CONFIG of MAX_CONFIG_SIZE (${Limits.MAX_CONFIG_SIZE}) is answered, one byte more closes`, async (t) => {
  const d = await daemon(t);
  const ok = await exchange(d, [{ request: R.GET_CONFIG, payload: configPayload(0, new Uint8Array(Limits.MAX_CONFIG_SIZE)) }], false);
  assert.equal(ok.messages[0]!.payload.length, 12 + Limits.MAX_CONFIG_SIZE);
  const bad = await exchange(d, [{ request: R.GET_CONFIG, payload: configPayload(0, new Uint8Array(Limits.MAX_CONFIG_SIZE + 1)) }], true);
  assert.ok(bad.ending === 'eof' || bad.ending === 'reset');
});

test('connections: 1000 attempts while a frontend is connected are all closed; the daemon never holds more than ' +
  'the active one and one waiting, and still serves the active one', async (t) => {
  const d = await daemon(t);
  const base = d.fds();
  const active = RawPeer.connect(d.socketPath);
  try {
    await active.sendMessage({ request: R.GET_FEATURES });
    await active.readMessage();
    assert.equal(await d.settleFds(base + 1), base + 1);
    let peak = 0;
    for (let b = 0; b < 5; b++) {
      const batch: RawPeer[] = [];
      for (let i = 0; i < 200; i++) {
        batch.push(RawPeer.connect(d.socketPath));
        if (i % 20 === 0) peak = Math.max(peak, d.fds());
      }
      // Every one is closed by the daemon: at once, or (the one waiting for the active one to go) a moment later.
      for (const p of batch) {
        const r = await p.closedByPeer(5000);
        assert.ok(r.ending === 'eof' || r.ending === 'reset');
        p.close();
        peak = Math.max(peak, d.fds());
      }
    }
    t.diagnostic(`daemon fds: ${base} idle, ${peak} at the peak of the flood`);
    assert.ok(peak <= base + 3, `the daemon held ${peak - base} connection fds at the peak (active + waiting + the one being refused)`);
    assert.equal(await d.settleFds(base + 1), base + 1, 'only the active frontend is left');
    await active.sendMessage({ request: R.GET_QUEUE_NUM });
    assert.equal(readU64((await active.readMessage()).payload), 1n, 'the active frontend is still served');
  } finally {
    active.close();
  }
  assert.equal(await d.settleFds(base), base);
});

test('guest flood: 20 000 malformed requests complete with IOERR/UNSUPP, are logged once per kind, and the ' +
  "daemon's memory stays flat", async (t) => {
  const d = await daemon(t, [], ['--max-semi-space-size=1']);
  const driver = await VirtioDriver.connect({ socketPath: d.socketPath, ramSize: 1 << 20 });
  try {
    await driver.startQueues(1, 256);
    const slots = Array.from({ length: 64 }, () => ({
      header: driver.ram.alloc(16, 8), data: driver.ram.alloc(512, 512), status: driver.ram.alloc(1, 1),
    }));
    const kinds = [
      (h: number) => driver.ram.bytes(h, 16).set(encodeHeader(0x55, 0)), // unknown type: UNSUPP
      (h: number) => driver.ram.bytes(h, 16).set(encodeHeader(0, 1n << 40n)), // read past the end: IOERR
      (h: number) => driver.ram.bytes(h, 16).set(encodeHeader(1, 0xffffffffffffffffn)), // write past the end: IOERR
    ];
    const flood = async (count: number): Promise<void> => {
      for (let done = 0; done < count; done += slots.length) {
        await Promise.all(slots.map(async (s, i) => {
          const kind = (done + i) % kinds.length;
          kinds[kind]!(s.header);
          const readable = [{ addr: s.header, len: 16 }];
          if (kind === 2) readable.push({ addr: s.data, len: 512 });
          const writable = kind === 1 ? [{ addr: s.data, len: 512 }, { addr: s.status, len: 1 }] : [{ addr: s.status, len: 1 }];
          const len = await driver.submit(0, readable, writable);
          assert.equal(len, 1);
          assert.equal(driver.ram.bytes(s.status, 1)[0], kind === 0 ? 2 : 1);
        }));
      }
    };
    await flood(4000);
    assert.ok(await d.waitForLines(/further ones of this kind/, 2), 'one warning per kind (range, type)');
    const before = d.statusKb('RssAnon');
    const mark = d.lines.length;
    await flood(20_000);
    const grown = d.statusKb('RssAnon') - before;
    t.diagnostic(`daemon RssAnon ${before} kB -> ${before + grown} kB over 20 000 requests`);
    assert.ok(grown < 16 * 1024, `RssAnon grew by ${grown} kB over 20 000 requests`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(d.lines.slice(mark), [], 'nothing more logged once each kind was reported');
    assert.equal(d.lines.filter((l) => /further ones of this kind/.test(l)).length, 2);
  } finally {
    driver.close();
  }
});
