/**
 * Raw vhost-user wire access for tests: builders for messages with arbitrary header fields, payloads and fds
 * (written here independently of src/protocol, so the codec is not checked against itself), and a raw peer on a
 * Unix socket that sends them with `native.sendMsg` and reads whatever comes back.
 */
import { native, closeQuietly, isSystemError } from '../../src/native/index.js';
import { sleep } from './tmp.js';

/** The header flags a frontend normally sends: version 1. */
export const V1 = 0x1;
export const REPLY = 0x4;
export const NEED_REPLY = 0x8;

/** A message as it is to be put on the wire; `size` overrides the header's size field. */
export interface WireMessage {
  request: number;
  flags?: number;
  size?: number;
  payload?: Uint8Array;
  fds?: number[];
}

/** Little-endian byte builder. */
export class Bytes {
  readonly #parts: number[] = [];

  u8(v: number): this {
    this.#parts.push(v & 0xff);
    return this;
  }

  u16(v: number): this {
    return this.u8(v).u8(v >>> 8);
  }

  u32(v: number): this {
    return this.u16(v & 0xffff).u16(v >>> 16);
  }

  u64(v: bigint | number): this {
    const b = BigInt.asUintN(64, BigInt(v));
    return this.u32(Number(b & 0xffffffffn)).u32(Number(b >> 32n));
  }

  raw(data: ArrayLike<number>): this {
    for (let i = 0; i < data.length; i++) this.#parts.push(data[i]! & 0xff);
    return this;
  }

  zeros(n: number): this {
    for (let i = 0; i < n; i++) this.#parts.push(0);
    return this;
  }

  build(): Uint8Array {
    return Uint8Array.from(this.#parts);
  }
}

/** A u64 payload. */
export function u64(v: bigint | number): Uint8Array {
  return new Bytes().u64(v).build();
}

/** `{index u32, num u32}`. */
export function vringState(index: number, num: number): Uint8Array {
  return new Bytes().u32(index).u32(num).build();
}

/** `{index, flags, desc, used, avail, log}`. */
export function vringAddr(index: number, desc: bigint | number, used: bigint | number, avail: bigint | number,
  log: bigint | number = 0, flags = 0): Uint8Array {
  return new Bytes().u32(index).u32(flags).u64(desc).u64(used).u64(avail).u64(log).build();
}

/** A memory region as the wire carries it. */
export interface WireRegion {
  gpa: bigint | number;
  size: bigint | number;
  uaddr: bigint | number;
  offset?: bigint | number;
}

function putRegion(b: Bytes, r: WireRegion): void {
  b.u64(r.gpa).u64(r.size).u64(r.uaddr).u64(r.offset ?? 0);
}

/** SET_MEM_TABLE payload; `count` overrides nregions. */
export function memTable(regions: WireRegion[], count = regions.length): Uint8Array {
  const b = new Bytes().u32(count).u32(0);
  for (const r of regions) putRegion(b, r);
  return b.build();
}

/** ADD_MEM_REG / REM_MEM_REG payload. */
export function singleRegion(r: WireRegion): Uint8Array {
  const b = new Bytes().u64(0);
  putRegion(b, r);
  return b.build();
}

/** GET/SET_CONFIG payload; `size` overrides the size field. */
export function configPayload(offset: number, data: ArrayLike<number>, flags = 0, size = data.length): Uint8Array {
  return new Bytes().u32(offset).u32(size).u32(flags).raw(data).build();
}

/** GET/SET_INFLIGHT_FD payload, 24 bytes (or `bytes` to truncate/extend). */
export function inflightPayload(mmapSize: number, mmapOffset: number, numQueues: number, queueSize: number,
  bytes = 24): Uint8Array {
  const full = new Bytes().u64(mmapSize).u64(mmapOffset).u16(numQueues).u16(queueSize).zeros(4).build();
  const out = new Uint8Array(bytes);
  out.set(full.subarray(0, Math.min(bytes, full.length)));
  return out;
}

/** Header and payload in one buffer. The header's size is `m.size` if given, else the payload's length. */
export function frame(m: WireMessage): Uint8Array {
  const payload = m.payload ?? new Uint8Array(0);
  return new Bytes().u32(m.request).u32(m.flags ?? V1).u32(m.size ?? payload.length).raw(payload).build();
}

/** A message read back from the peer. */
export interface ReceivedMessage {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/** How a connection ended, seen from our side. */
export type Ending = 'eof' | 'reset';

/**
 * One end of a Unix stream socket, driven by hand. Reads are polled (no watcher), so this can sit next to a
 * server in the same process without sharing its libuv handles. Owns its fd and every fd it receives.
 */
export class RawPeer {
  readonly fd: number;
  #buffer = new Uint8Array(0);
  #fds: number[] = [];
  #ending: Ending | undefined;
  #closed = false;

  constructor(fd: number) {
    this.fd = fd;
  }

  /** Connect to a listening socket path. */
  static connect(path: string): RawPeer {
    return new RawPeer(native.unixConnect(path));
  }

  /** Has the other side closed (as seen by the last read)? */
  get ending(): Ending | undefined {
    return this.#ending;
  }

  /** Send bytes (with fds on the first sendmsg). The caller keeps its fds. */
  async send(data: Uint8Array, fds: number[] = []): Promise<void> {
    let rest = data;
    let pending = fds;
    while (rest.length > 0 || pending.length > 0) {
      const sent = native.sendMsg(this.fd, rest, pending);
      if (sent < 0) {
        await sleep(1);
        continue;
      }
      pending = [];
      rest = rest.subarray(sent);
      if (rest.length === 0) break;
    }
  }

  /** Send one framed message with its fds. */
  sendMessage(m: WireMessage): Promise<void> {
    return this.send(frame(m), m.fds ?? []);
  }

  /** Read what is available now; returns false once the peer has closed. */
  #pump(): boolean {
    if (this.#ending) return false;
    for (;;) {
      const buf = new Uint8Array(65536);
      let got;
      try {
        got = native.recvMsg(this.fd, buf, 253);
      } catch (err) {
        if (isSystemError(err, 'ECONNRESET')) {
          this.#ending = 'reset';
          return false;
        }
        throw err;
      }
      if (got === null) return true;
      for (const fd of got.fds) this.#fds.push(fd);
      if (got.bytes === 0) {
        this.#ending = 'eof';
        return false;
      }
      const next = new Uint8Array(this.#buffer.length + got.bytes);
      next.set(this.#buffer);
      next.set(buf.subarray(0, got.bytes), this.#buffer.length);
      this.#buffer = next;
    }
  }

  #take(): ReceivedMessage | null {
    if (this.#buffer.length < 12) return null;
    const dv = new DataView(this.#buffer.buffer, this.#buffer.byteOffset, this.#buffer.byteLength);
    const size = dv.getUint32(8, true);
    if (this.#buffer.length < 12 + size) return null;
    const message = {
      request: dv.getUint32(0, true),
      flags: dv.getUint32(4, true),
      payload: this.#buffer.slice(12, 12 + size),
      fds: this.#fds,
    };
    this.#fds = [];
    this.#buffer = this.#buffer.slice(12 + size);
    return message;
  }

  /** The next whole message; rejects if the peer closes first or nothing arrives within `timeoutMs`. */
  async readMessage(timeoutMs = 5000): Promise<ReceivedMessage> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const open = this.#pump();
      const m = this.#take();
      if (m) return m;
      if (!open) throw new Error(`peer closed the connection (${this.#ending}) instead of replying`);
      if (Date.now() > end) throw new Error('no message from the peer in time');
      await sleep(2);
    }
  }

  /**
   * Wait until the peer closes; returns how, and every message that arrived before (their fds are ours).
   * Rejects if the connection is still open after `timeoutMs`.
   */
  async closedByPeer(timeoutMs = 5000): Promise<{ ending: Ending; messages: ReceivedMessage[] }> {
    const end = Date.now() + timeoutMs;
    const messages: ReceivedMessage[] = [];
    for (;;) {
      const open = this.#pump();
      for (let m = this.#take(); m; m = this.#take()) messages.push(m);
      if (!open) return { ending: this.#ending!, messages };
      if (Date.now() > end) throw new Error('the peer did not close the connection');
      await sleep(2);
    }
  }

  /** Close our socket and every fd received. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const fd of this.#fds) closeQuietly(fd);
    this.#fds = [];
    closeQuietly(this.fd);
  }
}

/** Parse a u64 reply payload. */
export function readU64(payload: Uint8Array): bigint {
  if (payload.length !== 8) throw new Error(`reply payload is ${payload.length} bytes, expected 8`);
  return new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
}
