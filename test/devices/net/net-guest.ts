/**
 * A virtio-net guest driver for tests, on top of {@link VirtioDriver}: posts receive buffers (re-posting them as
 * they are used), reassembles mergeable frames, sends frames with an optional partial checksum, and issues control
 * commands. Plus frame builders and an independent checksum check.
 */
import { VirtioDriver } from '../../../src/driver/driver.js';
import { CommonFeature, featureMask, hasFeature, NetFeature } from '../../../src/virtio/constants.js';
import { waitUntil } from '../../helpers/tmp.js';

/** The virtio-net header as received. */
export interface RxHeader {
  flags: number;
  gsoType: number;
  csumStart: number;
  csumOffset: number;
  numBuffers: number;
}

/** One received frame. */
export interface RxFrame {
  /** Receive queue index (0, 2, ...). */
  queue: number;
  hdr: RxHeader;
  /** The header's bytes as written (hdrLen of them). */
  header: Buffer;
  frame: Buffer;
}

/** Options for {@link NetGuest.connect}. */
export interface NetGuestOptions {
  /** Feature bits to refuse (from those offered). */
  refuse?: number[];
  /** Ring size (default 64). */
  queueSize?: number;
  /** Receive buffers posted per receive queue at start (default: the ring size). */
  rxBuffers?: number;
  /** Bytes per receive buffer (default 2048). */
  rxBufferSize?: number;
  /** Re-post a receive buffer once its contents were taken (default true). */
  refill?: boolean;
}

interface RxState {
  pending: { hdr: RxHeader; header: Buffer; parts: Buffer[]; left: number } | undefined;
}

/** A guest's virtio-net driver. */
export class NetGuest {
  readonly driver: VirtioDriver;
  readonly queues: number;
  readonly hdrLen: number;
  readonly mrg: boolean;
  readonly received: RxFrame[] = [];
  /** Used receive buffers too short to hold a header (the device's way of handing a buffer back unused). */
  emptyBuffers = 0;
  refill: boolean;
  readonly #bufferSize: number;
  readonly #rx = new Map<number, RxState>();

  private constructor(driver: VirtioDriver, queues: number, bufferSize: number, refill: boolean) {
    this.driver = driver;
    this.queues = queues;
    this.mrg = hasFeature(driver.features, NetFeature.MRG_RXBUF);
    this.hdrLen = this.mrg || hasFeature(driver.features, CommonFeature.VERSION_1) ? 12 : 10;
    this.#bufferSize = bufferSize;
    this.refill = refill;
  }

  /** Connect to a port, negotiate, start every queue, post receive buffers. */
  static async connect(socketPath: string, options: NetGuestOptions = {}): Promise<NetGuest> {
    const refuse = featureMask(...(options.refuse ?? []));
    const probe = await VirtioDriver.connect({ socketPath, features: ~refuse & ((1n << 64n) - 1n) });
    // Without MQ the driver has one pair, and its control queue (if any) is queue 2 (virtio 1.2, 5.1.2).
    const queues = hasFeature(probe.features, NetFeature.MQ) ? probe.maxQueues
      : hasFeature(probe.features, NetFeature.CTRL_VQ) ? 3 : 2;
    const guest = new NetGuest(probe, queues, options.rxBufferSize ?? 2048, options.refill ?? true);
    const size = options.queueSize ?? 64;
    await probe.startQueues(queues, size);
    for (let q = 0; q < queues - 1; q += 2) {
      guest.#rx.set(q, { pending: undefined });
      guest.postRx(q, options.rxBuffers ?? size);
    }
    return guest;
  }

  /** Features negotiated. */
  get features(): bigint {
    return this.driver.features;
  }

  /** Index of the control queue. */
  get ctrlQueue(): number {
    return this.queues - 1;
  }

  /** Post `count` receive buffers on receive queue `queue`. */
  postRx(queue: number, count: number, size = this.#bufferSize): void {
    for (let i = 0; i < count; i++) this.#post(queue, this.driver.ram.alloc(size, 64), size);
  }

  #post(queue: number, addr: number, size: number): void {
    this.driver.submit(queue, [], [{ addr, len: size }]).then(
      (len) => this.#used(queue, addr, size, len),
      () => undefined, // connection closed
    );
  }

  #used(queue: number, addr: number, size: number, len: number): void {
    const bytes = Buffer.from(this.driver.ram.bytes(addr, Math.min(len, size)));
    if (this.refill) this.#post(queue, addr, size);
    const state = this.#rx.get(queue)!;
    if (state.pending) {
      state.pending.parts.push(bytes);
      if (--state.pending.left === 0) {
        this.received.push({ queue, hdr: state.pending.hdr, header: state.pending.header, frame: Buffer.concat(state.pending.parts) });
        state.pending = undefined;
      }
      return;
    }
    if (len < this.hdrLen) {
      this.emptyBuffers++;
      return;
    }
    const hdr: RxHeader = {
      flags: bytes[0]!,
      gsoType: bytes[1]!,
      csumStart: bytes.readUInt16LE(6),
      csumOffset: bytes.readUInt16LE(8),
      numBuffers: this.hdrLen === 12 ? bytes.readUInt16LE(10) : 1,
    };
    const data = bytes.subarray(this.hdrLen);
    const header = Buffer.from(bytes.subarray(0, this.hdrLen));
    const count = this.mrg ? hdr.numBuffers : 1;
    if (count > 1) state.pending = { hdr, header, parts: [data], left: count - 1 };
    else this.received.push({ queue, hdr, header, frame: Buffer.from(data) });
  }

  /**
   * Transmit a frame on queue pair `pair` (default 0), optionally with a partial checksum (NEEDS_CSUM) or a
   * raw header. Resolves when the device returned the buffer.
   */
  send(frame: Uint8Array, options: { pair?: number; csum?: { start: number; offset: number }; header?: Uint8Array } = {}):
    Promise<number> {
    const hdr = options.header ?? new Uint8Array(this.hdrLen);
    if (options.csum) {
      const dv = new DataView(hdr.buffer, hdr.byteOffset, hdr.byteLength);
      hdr[0] = 1;
      dv.setUint16(6, options.csum.start, true);
      dv.setUint16(8, options.csum.offset, true);
    }
    const len = hdr.length + frame.length;
    const addr = this.driver.ram.alloc(len, 16);
    const view = this.driver.ram.bytes(addr, len);
    view.set(hdr, 0);
    view.set(frame, hdr.length);
    return this.driver.submit(2 * (options.pair ?? 0) + 1, [{ addr, len }], []);
  }

  /** Send raw readable bytes on a transmit queue (for malformed requests). */
  sendRaw(bytes: Uint8Array, queue = 1): Promise<number> {
    const addr = this.driver.ram.alloc(Math.max(1, bytes.length), 16);
    this.driver.ram.bytes(addr, bytes.length).set(bytes);
    return this.driver.submit(queue, [{ addr, len: bytes.length }], []);
  }

  /** A control command; resolves with the ack byte (0 OK, 1 ERR). */
  async control(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): Promise<number> {
    const req = this.driver.ram.alloc(2 + data.length, 8);
    const view = this.driver.ram.bytes(req, 2 + data.length);
    view[0] = cls;
    view[1] = cmd;
    view.set(data, 2);
    const ack = this.driver.ram.alloc(1, 1);
    this.driver.ram.bytes(ack, 1)[0] = 0xee;
    const len = await this.driver.submit(this.ctrlQueue, [{ addr: req, len: 2 + data.length }], [{ addr: ack, len: 1 }]);
    if (len !== 1) throw new Error(`control command completed with length ${len}`);
    return this.driver.ram.bytes(ack, 1)[0]!;
  }

  /** Wait until at least `n` frames were received in total. */
  async waitFrames(n: number, timeoutMs = 5000): Promise<RxFrame[]> {
    await waitUntil(() => this.received.length >= n, timeoutMs, `${n} frame(s) (have ${this.received.length})`);
    return this.received;
  }

  /** Take what was received so far. */
  take(): RxFrame[] {
    return this.received.splice(0);
  }

  close(): void {
    this.driver.close();
  }
}

// ---- frames ----

/** Bytes of a MAC address string. */
export function mac(text: string): Buffer {
  return Buffer.from(text.split(':').map((h) => parseInt(h, 16)));
}

/** An Ethernet frame. */
export function ethernet(dst: string, src: string, type: number, payload: Uint8Array): Buffer {
  const f = Buffer.alloc(14 + payload.length);
  mac(dst).copy(f, 0);
  mac(src).copy(f, 6);
  f.writeUInt16BE(type, 12);
  f.set(payload, 14);
  return f;
}

/** A frame with `n` bytes of patterned payload and an experimental ethertype (tag identifies it). */
export function testFrame(dst: string, src: string, tag: number, n = 46): Buffer {
  const payload = Buffer.alloc(Math.max(4, n));
  payload.writeUInt32BE(tag, 0);
  for (let i = 4; i < payload.length; i++) payload[i] = (i * 7 + tag) & 0xff;
  return ethernet(dst, src, 0x88b5, payload);
}

/** The tag of a {@link testFrame}. */
export function tagOf(frame: Uint8Array): number {
  return Buffer.from(frame).readUInt32BE(14);
}

function sum16(bytes: Uint8Array, initial = 0): number {
  let s = initial;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) + (i + 1 < bytes.length ? bytes[i + 1]! : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** An IPv4 frame with a TCP (6) or UDP (17) segment; the checksum field holds the pseudo-header sum only. */
export function ipv4L4(dst: string, src: string, proto: 6 | 17, payload: Uint8Array): { frame: Buffer; csumStart: number; csumOffset: number } {
  const l4HdrLen = proto === 6 ? 20 : 8;
  const l4Len = l4HdrLen + payload.length;
  const ip = Buffer.alloc(20 + l4Len);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + l4Len, 2);
  ip[8] = 64;
  ip[9] = proto;
  Buffer.from([10, 0, 0, 1]).copy(ip, 12);
  Buffer.from([10, 0, 0, 2]).copy(ip, 16);
  ip.writeUInt16BE(~sum16(ip.subarray(0, 20)) & 0xffff, 10);
  const l4 = ip.subarray(20);
  l4.writeUInt16BE(40000, 0);
  l4.writeUInt16BE(5001, 2);
  if (proto === 6) {
    l4.writeUInt32BE(1, 4);
    l4[12] = 5 << 4;
    l4[13] = 0x18;
    l4.writeUInt16BE(65535, 14);
  } else {
    l4.writeUInt16BE(l4Len, 4);
  }
  l4.set(payload, l4HdrLen);
  const pseudo = Buffer.alloc(12);
  ip.copy(pseudo, 0, 12, 20);
  pseudo[9] = proto;
  pseudo.writeUInt16BE(l4Len, 10);
  const offset = proto === 6 ? 16 : 6;
  l4.writeUInt16BE(sum16(pseudo), offset);
  return { frame: ethernet(dst, src, 0x0800, ip), csumStart: 34, csumOffset: offset };
}

/** An IPv6 frame with a UDP datagram; the checksum field holds the pseudo-header sum only. */
export function ipv6Udp(dst: string, src: string, payload: Uint8Array): { frame: Buffer; csumStart: number; csumOffset: number } {
  const l4Len = 8 + payload.length;
  const ip = Buffer.alloc(40 + l4Len);
  ip[0] = 0x60;
  ip.writeUInt16BE(l4Len, 4);
  ip[6] = 17;
  ip[7] = 64;
  ip[8] = 0xfd;
  ip[23] = 1;
  ip[24] = 0xfd;
  ip[39] = 2;
  const l4 = ip.subarray(40);
  l4.writeUInt16BE(40000, 0);
  l4.writeUInt16BE(5001, 2);
  l4.writeUInt16BE(l4Len, 4);
  l4.set(payload, 8);
  const pseudo = Buffer.alloc(40);
  ip.copy(pseudo, 0, 8, 40);
  pseudo.writeUInt32BE(l4Len, 32);
  pseudo[39] = 17;
  l4.writeUInt16BE(sum16(pseudo), 6);
  return { frame: ethernet(dst, src, 0x86dd, ip), csumStart: 54, csumOffset: 6 };
}

/**
 * Verify the TCP/UDP checksum of an IPv4 or IPv6 frame from scratch (pseudo-header included): true when the
 * ones'-complement sum over pseudo-header and segment is 0xffff.
 */
export function l4ChecksumOk(frame: Uint8Array): boolean {
  const f = Buffer.from(frame);
  const type = f.readUInt16BE(12);
  let pseudo: Buffer;
  let l4: Buffer;
  if (type === 0x0800) {
    const ihl = (f[14]! & 0xf) * 4;
    const total = f.readUInt16BE(16);
    l4 = f.subarray(14 + ihl, 14 + total);
    pseudo = Buffer.alloc(12);
    f.copy(pseudo, 0, 26, 34);
    pseudo[9] = f[23]!;
    pseudo.writeUInt16BE(l4.length, 10);
  } else {
    l4 = f.subarray(54, 54 + f.readUInt16BE(18));
    pseudo = Buffer.alloc(40);
    f.copy(pseudo, 0, 22, 54);
    pseudo.writeUInt32BE(l4.length, 32);
    pseudo[39] = f[20]!;
  }
  return sum16(l4, sum16(pseudo)) === 0xffff;
}
