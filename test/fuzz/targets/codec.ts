/**
 * Fuzz target "codec": the message parser (src/protocol/codec.ts) and the payload decoders
 * (src/protocol/message.ts).
 *
 * Parser: a random byte stream of messages (plausible ones, and ones with a bad version, an oversized size
 * field, too many fds, a size field that lies, a stream cut short) is cut into random sendmsg units carrying
 * fake fds, and fed to a MessageParser through a fake recvmsg that behaves as Linux does for AF_UNIX streams
 * (fds come with the read that takes the first byte of their sendmsg, a read stops after taking fds, surplus fds
 * are closed with MSG_CTRUNC) and sometimes reports would-block. An independent reference parser says what must
 * come out. Checked: the same messages (request, flags, payload, fds) in the same order, then the same ending
 * (EOF, would-block, or a ProtocolError and nothing else), no payload over the limit, and every fd ends exactly
 * once: delivered in a message, closed by the parser, or dropped by the "kernel"; never both, never twice.
 *
 * Decoders: every payload (parsed ones, encodings of plausible values, their mutations, random bytes) goes
 * through every decoder; a reference decoder says whether it is valid. Checked: a ProtocolError exactly for the
 * invalid ones, the same field values for the valid ones, and decode(encode(decode(p))) equal to decode(p).
 */
import { deepStrictEqual } from 'node:assert/strict';
import { EOF, MessageParser, type Received } from '../../../src/protocol/codec.js';
import { Limits } from '../../../src/protocol/constants.js';
import {
  ProtocolError, decodeConfig, decodeInflight, decodeLog, decodeMemoryTable, decodeSingleRegion, decodeU64,
  decodeVringAddress, decodeVringState, encodeConfig, encodeInflight, encodeMemoryTable, encodeSingleRegion, encodeU64,
  encodeVringAddress, encodeVringState, type Message,
} from '../../../src/protocol/message.js';
import { check, Stats, type FuzzTarget } from '../harness.js';
import { mutate, type Rng } from '../rng.js';

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const stats = new Stats();
const FAKE_FD_BASE = 1_000_000;

// ---- the stream ----

/** One sendmsg: bytes and the fds riding on its first byte. */
interface Skb {
  start: number;
  length: number;
  fds: number[];
}

interface Stream {
  bytes: Uint8Array;
  skbs: Skb[];
  /** The peer closed after the last byte (else the stream just stops: would-block). */
  ended: boolean;
}

function le32(out: number[], v: number): void {
  out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
}

/** A payload that is plausible for some request, or random. */
function plausiblePayload(rng: Rng): Uint8Array {
  const safe = (): number => rng.weighted<number>([[3, rng.u32()], [1, 0], [1, Number.MAX_SAFE_INTEGER - rng.int(4096)],
    [2, rng.u32() * 4096]]);
  const region = () => ({ guestPhysAddr: safe(), size: rng.chance(0.9) ? rng.range(1, 2 ** 31) : 0, userAddr: safe(), mmapOffset: rng.chance(0.7) ? 0 : safe() });
  switch (rng.int(10)) {
    case 0: return encodeU64(rng.interesting64());
    case 1: return encodeVringState({ index: rng.interesting32(), num: rng.interesting32() });
    case 2: return encodeVringAddress({ index: rng.int(4), flags: rng.int(2), desc: safe(), used: safe(), avail: safe(), log: safe() });
    case 3: return encodeMemoryTable(Array.from({ length: rng.range(0, 9) }, region));
    case 4: return encodeSingleRegion(region());
    case 5: {
      const size = rng.weighted<number>([[4, rng.range(0, 64)], [1, 256], [1, rng.range(0, 300)]]);
      return encodeConfig({ offset: rng.weighted<number>([[4, 0], [2, rng.range(0, 256)], [1, rng.u32()]]), flags: rng.int(3), data: rng.bytes(size) });
    }
    case 6: return encodeInflight({ mmapSize: safe(), mmapOffset: safe(), numQueues: rng.int(0x10000), queueSize: rng.int(0x10000) });
    case 7: return new Uint8Array(0);
    default: return rng.bytes(rng.weighted<number>([[4, rng.range(0, 64)], [1, rng.range(0, 4200)]]));
  }
}

function generateStream(rng: Rng, maxPayload: number, maxFds: number, nextFd: () => number): Stream {
  const bytes: number[] = [];
  const skbs: Skb[] = [];
  const count = rng.range(0, 12);
  for (let m = 0; m < count; m++) {
    let payload = plausiblePayload(rng);
    if (rng.chance(0.3)) payload = mutate(rng, payload);
    const request = rng.weighted<number>([[8, rng.range(1, 43)], [1, rng.interesting32()]]);
    let flags = 1 | (rng.chance(0.3) ? rng.int(4) << 2 : 0);
    if (rng.chance(0.02)) flags = rng.interesting32();
    let size = payload.length;
    if (rng.chance(0.02)) size = rng.pick([maxPayload + 1, 0xffffffff, rng.interesting32()]);
    else if (rng.chance(0.03)) size = Math.max(0, size + rng.range(-9, 9));
    const fdCount = rng.weighted<number>([[12, 0], [6, rng.range(1, Math.max(1, maxFds))], [1, rng.range(0, 20)]]);
    const header: number[] = [];
    le32(header, request);
    le32(header, flags);
    le32(header, size);
    const start = bytes.length;
    for (const b of header) bytes.push(b);
    for (const b of payload) bytes.push(b);
    // Cut the message into 1-3 sendmsgs; its fds ride on the first, or (a sender splitting oddly) on a later one.
    const length = bytes.length - start;
    const cuts = new Set<number>();
    const pieces = rng.weighted<number>([[6, 1], [2, 2], [1, 3]]);
    while (cuts.size < pieces - 1 && length > pieces) cuts.add(rng.range(1, length - 1));
    const bounds = [0, ...[...cuts].sort((a, b) => a - b), length];
    const fdSkb = rng.chance(0.9) ? 0 : rng.int(bounds.length - 1);
    for (let i = 0; i + 1 < bounds.length; i++) {
      const fds = i === fdSkb ? Array.from({ length: fdCount }, nextFd) : [];
      skbs.push({ start: start + bounds[i]!, length: bounds[i + 1]! - bounds[i]!, fds });
    }
  }
  // Sometimes glue neighbouring sendmsgs (one sendmsg carrying two messages: the fds stay with its first byte).
  for (let i = skbs.length - 1; i > 0; i--) {
    if (rng.chance(0.1)) {
      const a = skbs[i - 1]!;
      const b = skbs[i]!;
      skbs.splice(i - 1, 2, { start: a.start, length: a.length + b.length, fds: [...a.fds, ...b.fds] });
    }
  }
  let all = Uint8Array.from(bytes);
  // Sometimes the stream stops in the middle (a frontend dying mid-message).
  if (rng.chance(0.15) && all.length > 0) {
    const cut = rng.int(all.length);
    all = all.subarray(0, cut);
    const kept: Skb[] = [];
    for (const s of skbs) {
      if (s.start >= cut) continue;
      kept.push({ ...s, length: Math.min(s.length, cut - s.start) });
    }
    skbs.length = 0;
    skbs.push(...kept);
  }
  return { bytes: all, skbs, ended: rng.chance(0.75) };
}

// ---- reference parser ----

interface Expected {
  messages: { request: number; flags: number; payload: Uint8Array; fds: number[] }[];
  ending: 'eof' | 'blocked' | 'error';
}

function referenceParse(s: Stream, maxPayload: number, maxFds: number): Expected {
  const messages: Expected['messages'] = [];
  const total = s.bytes.length;
  const dv = new DataView(s.bytes.buffer, s.bytes.byteOffset, s.bytes.byteLength);
  const fdsIn = (from: number, to: number): number[] => s.skbs.filter((k) => k.start >= from && k.start < to).flatMap((k) => k.fds);
  let pos = 0;
  for (;;) {
    if (pos === total) return { messages, ending: s.ended ? 'eof' : 'blocked' };
    const headerEnd = Math.min(pos + 12, total);
    if (fdsIn(pos, headerEnd).length > maxFds) return { messages, ending: 'error' };
    if (total - pos < 12) return { messages, ending: s.ended ? 'error' : 'blocked' };
    const request = dv.getUint32(pos, true);
    const flags = dv.getUint32(pos + 4, true);
    const size = dv.getUint32(pos + 8, true);
    if ((flags & 3) !== 1 || size > maxPayload) return { messages, ending: 'error' };
    const end = pos + 12 + size;
    const fds = fdsIn(pos, Math.min(end, total));
    if (fds.length > maxFds) return { messages, ending: 'error' };
    if (end > total) return { messages, ending: s.ended ? 'error' : 'blocked' };
    messages.push({ request, flags, payload: s.bytes.slice(pos + 12, end), fds });
    pos = end;
  }
}

// ---- the fake socket ----

type FdFate = 'queued' | 'parser' | 'delivered' | 'closed-by-parser' | 'dropped-by-kernel';

class FakeSocket {
  readonly fates = new Map<number, FdFate>();
  readonly #s: Stream;
  readonly #rng: Rng;
  #pos = 0;
  #skb = 0;
  readonly errors: string[] = [];

  constructor(s: Stream, rng: Rng) {
    this.#s = s;
    this.#rng = rng;
    for (const k of s.skbs) for (const fd of k.fds) this.fates.set(fd, 'queued');
  }

  /** All bytes read (what remains is nothing: EOF or would-block). */
  get drained(): boolean {
    return this.#pos >= this.#s.bytes.length;
  }

  closeFd = (fd: number): void => {
    const fate = this.fates.get(fd);
    if (fate !== 'parser') this.errors.push(`parser closed fd ${fd}, which was ${fate ?? 'never sent'}`);
    this.fates.set(fd, 'closed-by-parser');
  };

  receive = (buf: Uint8Array, maxFds: number): Received | null => {
    const s = this.#s;
    if (maxFds < 0 || maxFds > 253 || !Number.isInteger(maxFds)) this.errors.push(`recvmsg asked for ${maxFds} fds`);
    if (buf.length === 0) this.errors.push('recvmsg with an empty buffer');
    if (this.#pos >= s.bytes.length) return s.ended ? { bytes: 0, fds: [], fdsTruncated: false } : null;
    if (this.#rng.chance(0.15)) return null; // spurious wake-up
    const limit = Math.min(buf.length, this.#rng.weighted<number>([[3, buf.length], [2, this.#rng.range(1, 16)]]));
    let copied = 0;
    const fds: number[] = [];
    let truncated = false;
    while (copied < limit && this.#skb < s.skbs.length) {
      const k = s.skbs[this.#skb]!;
      const offset = this.#pos - k.start;
      if (offset === 0 && k.fds.length > 0) {
        for (const fd of k.fds) {
          if (fds.length < maxFds) {
            fds.push(fd);
            this.fates.set(fd, 'parser');
          } else {
            truncated = true;
            this.fates.set(fd, 'dropped-by-kernel');
          }
        }
      }
      const n = Math.min(limit - copied, k.length - offset);
      buf.set(s.bytes.subarray(this.#pos, this.#pos + n), copied);
      copied += n;
      this.#pos += n;
      if (this.#pos === k.start + k.length) this.#skb++;
      // Linux ends a stream read once it has taken fds.
      if (fds.length > 0 || truncated) break;
    }
    return { bytes: copied, fds, fdsTruncated: truncated };
  };
}

// ---- decoders ----

const u64 = (dv: DataView, o: number): bigint => dv.getBigUint64(o, true);

interface RegionRef { guestPhysAddr: number; size: number; userAddr: number; mmapOffset: number }

function refRegion(dv: DataView, o: number): RegionRef | null {
  const [g, s, u, m] = [u64(dv, o), u64(dv, o + 8), u64(dv, o + 16), u64(dv, o + 24)];
  if (g > MAX_SAFE || s > MAX_SAFE || u > MAX_SAFE || m > MAX_SAFE || s === 0n) return null;
  if (g + s > MAX_SAFE || u + s > MAX_SAFE || m + s > MAX_SAFE) return null;
  return { guestPhysAddr: Number(g), size: Number(s), userAddr: Number(u), mmapOffset: Number(m) };
}

interface DecoderCase {
  name: string;
  decode: (p: Uint8Array) => unknown;
  /** What a correct decoder returns, or null when the payload is invalid. */
  reference: (p: Uint8Array, dv: DataView) => unknown;
  /** Encode a decoded value again (for the round trip), when there is an encoder. */
  encode?: (v: never) => Uint8Array;
}

const DECODERS: readonly DecoderCase[] = [
  {
    name: 'u64', decode: (p) => decodeU64(p), encode: (v: bigint) => encodeU64(v),
    reference: (p, dv) => (p.length === 8 ? u64(dv, 0) : null),
  },
  {
    name: 'vring state', decode: decodeVringState, encode: encodeVringState,
    reference: (p, dv) => (p.length === 8 ? { index: dv.getUint32(0, true), num: dv.getUint32(4, true) } : null),
  },
  {
    name: 'vring address', decode: decodeVringAddress, encode: encodeVringAddress,
    reference: (p, dv) => {
      if (p.length !== 40) return null;
      const v = [8, 16, 24, 32].map((o) => u64(dv, o));
      if (v.some((x) => x > MAX_SAFE)) return null;
      return { index: dv.getUint32(0, true), flags: dv.getUint32(4, true), desc: Number(v[0]), used: Number(v[1]), avail: Number(v[2]), log: Number(v[3]) };
    },
  },
  {
    name: 'memory table', decode: decodeMemoryTable, encode: encodeMemoryTable,
    reference: (p, dv) => {
      if (p.length < 8) return null;
      const n = dv.getUint32(0, true);
      if (n < 1 || n > 8 || (p.length !== 8 + 32 * n && p.length !== 8 + 32 * 8)) return null;
      const out: RegionRef[] = [];
      for (let i = 0; i < n; i++) {
        const r = refRegion(dv, 8 + 32 * i);
        if (r === null) return null;
        out.push(r);
      }
      return out;
    },
  },
  {
    name: 'single region', decode: decodeSingleRegion, encode: encodeSingleRegion,
    reference: (p, dv) => (p.length === 40 ? refRegion(dv, 8) : null),
  },
  {
    name: 'config', decode: decodeConfig,
    encode: (v: { offset: number; flags: number; data: Uint8Array }) => encodeConfig(v),
    reference: (p, dv) => {
      if (p.length < 12) return null;
      const offset = dv.getUint32(0, true);
      const size = dv.getUint32(4, true);
      if (size > 256 || p.length !== 12 + size || offset + size > 256) return null;
      return { offset, size, flags: dv.getUint32(8, true), data: p.subarray(12) };
    },
  },
  {
    name: 'inflight', decode: decodeInflight, encode: encodeInflight,
    reference: (p, dv) => {
      if (p.length !== 24 || u64(dv, 0) > MAX_SAFE || u64(dv, 8) > MAX_SAFE) return null;
      return { mmapSize: Number(u64(dv, 0)), mmapOffset: Number(u64(dv, 8)), numQueues: dv.getUint16(16, true), queueSize: dv.getUint16(18, true) };
    },
  },
  {
    name: 'log', decode: decodeLog,
    reference: (p, dv) => (p.length === 16 && u64(dv, 0) <= MAX_SAFE && u64(dv, 8) <= MAX_SAFE
      ? { mmapSize: Number(u64(dv, 0)), mmapOffset: Number(u64(dv, 8)) } : null),
  },
];

/** Plain data for comparisons (typed array views become arrays). */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return [...v];
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

function sameValue(a: unknown, b: unknown): boolean {
  try {
    deepStrictEqual(plain(a), plain(b));
    return true;
  } catch {
    return false;
  }
}

export function checkDecoders(payload: Uint8Array): void {
  // Decoders must not depend on the payload being at offset 0 of its buffer.
  const shifted = new Uint8Array(payload.length + 3).subarray(3);
  shifted.set(payload);
  const dv = new DataView(shifted.buffer, shifted.byteOffset, shifted.byteLength);
  for (const d of DECODERS) {
    const want = d.reference(shifted, dv);
    let got: unknown;
    try {
      got = d.decode(shifted);
    } catch (err) {
      check(err instanceof ProtocolError, () => `${d.name} decoder threw ${String(err)} (not a ProtocolError) for ` +
        `${Buffer.from(payload).toString('hex')}`);
      check(want === null, () => `${d.name} decoder rejected a valid payload ${Buffer.from(payload).toString('hex')}: ` +
        `${(err as Error).message}`);
      continue;
    }
    stats.count(`decoded-${d.name.replace(/ /g, '-')}`);
    check(want !== null, () => `${d.name} decoder accepted an invalid payload ${Buffer.from(payload).toString('hex')} ` +
      `as ${JSON.stringify(plain(got), (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    check(sameValue(got, want), () => `${d.name} decoder: ${Buffer.from(payload).toString('hex')} decoded wrongly`);
    if (d.encode) {
      const again = d.decode((d.encode as (v: unknown) => Uint8Array)(got));
      check(sameValue(again, got), `${d.name}: decode(encode(decode(p))) differs from decode(p)`);
    }
  }
}

// ---- the target ----

function runParserCase(rng: Rng): void {
  const maxPayload = rng.chance(0.8) ? Limits.MAX_PAYLOAD : rng.range(0, 5000);
  const maxFds = rng.chance(0.8) ? Limits.MAX_FDS : rng.range(0, 20);
  let fdCounter = FAKE_FD_BASE;
  const stream = generateStream(rng, maxPayload, maxFds, () => fdCounter++);
  const expected = referenceParse(stream, maxPayload, maxFds);
  const socket = new FakeSocket(stream, rng.fork());
  const parser = new MessageParser({ maxPayload, maxFds, closeFd: socket.closeFd });
  const got: Message[] = [];
  let ending: Expected['ending'] | undefined;
  let thrown: unknown;
  for (let guard = 0; guard < 100_000 && ending === undefined; guard++) {
    let m: Message | null | typeof EOF;
    try {
      m = parser.next(socket.receive);
    } catch (err) {
      thrown = err;
      ending = 'error';
      break;
    }
    if (m === EOF) ending = 'eof';
    else if (m === null) {
      if (socket.drained && !stream.ended) ending = 'blocked';
    } else {
      check(m.payload.length <= maxPayload, `payload of ${m.payload.length} bytes over the ${maxPayload}-byte limit`);
      for (const fd of m.fds) {
        check(socket.fates.get(fd) === 'parser', () => `fd ${fd} delivered while ${socket.fates.get(fd)}`);
        socket.fates.set(fd, 'delivered');
      }
      got.push(m);
    }
  }
  // The connection goes away: the parser gives up whatever it holds.
  parser.dispose();
  check(ending !== undefined, 'the parser neither finished nor blocked');
  check(thrown === undefined || thrown instanceof ProtocolError, () => `parser threw a non-ProtocolError: ${String(thrown)}`);
  check(socket.errors.length === 0, () => socket.errors.join('; '));
  check(ending === expected.ending, () => `stream ended with '${ending}', expected '${expected.ending}' ` +
    `(${got.length} messages parsed, ${expected.messages.length} expected${thrown ? `; ${String(thrown)}` : ''})`);
  check(got.length === expected.messages.length, () => `${got.length} messages parsed, ${expected.messages.length} expected`);
  got.forEach((m, i) => {
    const e = expected.messages[i]!;
    check(m.request === e.request && m.flags === e.flags, () => `message ${i}: header ${m.request}/${m.flags}, expected ${e.request}/${e.flags}`);
    check(Buffer.from(m.payload).equals(Buffer.from(e.payload)), `message ${i}: payload differs`);
    check(m.fds.length === e.fds.length && m.fds.every((fd, k) => fd === e.fds[k]),
      () => `message ${i}: fds [${m.fds.join(',')}], expected [${e.fds.join(',')}]`);
  });
  for (const [fd, fate] of socket.fates) {
    check(fate !== 'parser', `fd ${fd} was received and then neither delivered nor closed`);
  }
  stats.count(`ending-${ending}`);
  stats.count('messages', got.length);
  stats.count('fds-delivered', got.reduce((n, m) => n + m.fds.length, 0));
  for (const fate of socket.fates.values()) if (fate !== 'delivered') stats.count(`fds-${fate}`);
  for (const m of got) checkDecoders(m.payload);
}

export const codecTarget: FuzzTarget = {
  name: 'codec',
  description: 'MessageParser over a fake recvmsg (random framing, sizes, versions, fd counts, cuts) against a ' +
    'reference parser, and every payload decoder against reference decoders',
  batch: 200,
  stats,
  runCase(rng) {
    runParserCase(rng);
    for (let i = 0; i < 8; i++) {
      let p = plausiblePayload(rng);
      if (rng.chance(0.5)) p = mutate(rng, p);
      checkDecoders(p);
    }
  },
};
