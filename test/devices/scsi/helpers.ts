/**
 * Test helpers for virtio-scsi: a device served on a temporary socket, and a small virtio-scsi driver on our
 * frontend (VirtioDriver) that builds requests, control requests and event buffers in its guest RAM.
 */
import path from 'node:path';
import { DeviceServer } from '../../../src/device/server.js';
import { VirtioDriver, type BufferRef } from '../../../src/driver/driver.js';
import { ScsiDevice, type ScsiDeviceOptions } from '../../../src/devices/scsi/device.js';
import {
  ControlType, VirtioScsi, decodeEvent, decodeResponseHeader, encodeAn, encodeLunField, encodeRequestHeader, encodeTmf,
  type ScsiEvent, type ScsiResponseHeader,
} from '../../../src/devices/scsi/protocol.js';
import { decodeScsiConfig } from '../../../src/virtio/config.js';
import { decodeFixedSense, type DecodedSense } from '../../../src/scsi/sense.js';
import { tempDir } from '../../helpers/tmp.js';

/** What a command came back with. */
export interface CommandReply extends ScsiResponseHeader {
  /** Used length the device reported. */
  len: number;
  /** The data-in buffers, concatenated (all of them, not only what was transferred). */
  data: Buffer;
  /** Decoded sense data, when any. */
  decoded: DecodedSense | undefined;
}

/** Options for one command. */
export interface CommandOptions {
  /** Data-out, in one buffer or several. */
  out?: Uint8Array | Uint8Array[];
  /** Data-in buffer sizes. */
  in?: number | number[];
  /** Request queue (0-based among the request queues). */
  q?: number;
  tag?: number | bigint;
  /** Use flat LUN addressing (as Linux does) instead of peripheral. */
  flat?: boolean;
  /** A LUN field to send instead of target:lun. */
  lunField?: Uint8Array;
  /** Response buffer size (default 12 + sense_size). */
  responseSize?: number;
  /** Header size (default 19 + cdb_size). */
  cdbSize?: number;
  /**
   * Put the request and response headers one byte past a word boundary (the device then reads and writes them
   * byte by byte rather than a word at a time).
   */
  misalign?: boolean;
}

/** Options for {@link ScsiClient.connect}. */
export interface ClientOptions {
  /** Request queues to set up (default: all the device offers). */
  requestQueues?: number;
  queueSize?: number;
  /** Virtio features to accept (default: all offered). */
  features?: bigint;
}

/** A virtio-scsi driver for tests. */
export class ScsiClient {
  readonly driver: VirtioDriver;
  senseSize: number = VirtioScsi.DEFAULT_SENSE_SIZE;
  cdbSize: number = VirtioScsi.DEFAULT_CDB_SIZE;
  #tag = 1n;

  constructor(driver: VirtioDriver) {
    this.driver = driver;
  }

  static async connect(socketPath: string, options: ClientOptions = {}): Promise<ScsiClient> {
    const driver = await VirtioDriver.connect({ socketPath, ramSize: 64 * 1024 * 1024, features: options.features });
    try {
      const requestQueues = options.requestQueues ?? driver.maxQueues - 2;
      await driver.startQueues(2 + requestQueues, options.queueSize ?? 128);
    } catch (err) {
      driver.close();
      throw err;
    }
    return new ScsiClient(driver);
  }

  put(bytes: Uint8Array, align = 8): BufferRef {
    const ref = this.alloc(bytes.byteLength, align);
    this.view(ref).set(bytes);
    return ref;
  }

  alloc(len: number, align = 8, fill = 0): BufferRef {
    const ref = { addr: this.driver.ram.alloc(len, align), len };
    this.view(ref).fill(fill);
    return ref;
  }

  /** `len` bytes (filled with `fill`) starting one byte past a word boundary. */
  #misaligned(len: number, fill: number): BufferRef {
    const ref = this.alloc(len + 1, 8, fill);
    return { addr: ref.addr + 1, len };
  }

  view(ref: BufferRef): Uint8Array {
    return this.driver.ram.bytes(ref.addr, ref.len);
  }

  /** Send a CDB to target:lun; returns the response header, sense and data. */
  async command(target: number, lun: number, cdb: ArrayLike<number>, o: CommandOptions = {}): Promise<CommandReply> {
    const field = o.lunField ?? encodeLunField(target, lun, o.flat ?? false);
    const header = encodeRequestHeader(field, o.tag ?? this.#tag++, cdb, o.cdbSize ?? this.cdbSize);
    const outs = o.out === undefined ? [] : o.out instanceof Uint8Array ? [o.out] : o.out;
    const ins = (typeof o.in === 'number' ? [o.in] : o.in ?? []).map((n) => this.alloc(n, 8, 0xee));
    const responseSize = o.responseSize ?? VirtioScsi.RESPONSE_HEADER_BASE + this.senseSize;
    const response = o.misalign === true ? this.#misaligned(responseSize, 0xee) : this.alloc(responseSize, 8, 0xee);
    let request = this.put(header);
    if (o.misalign === true) {
      request = this.#misaligned(header.byteLength, 0);
      this.view(request).set(header);
    }
    const len = await this.driver.submit(2 + (o.q ?? 0), [request, ...outs.map((b) => this.put(b))], [response, ...ins]);
    const hdr = decodeResponseHeader(Uint8Array.from(this.view(response)));
    let decoded: DecodedSense | undefined;
    if (hdr.senseLen > 0 && hdr.sense.byteLength >= 14) decoded = decodeFixedSense(hdr.sense);
    return { ...hdr, len, data: Buffer.concat(ins.map((r) => Buffer.from(this.view(r)))), decoded };
  }

  /** A task management function; resolves with the response byte. */
  async tmf(subtype: number, target: number, lun: number, tag: number | bigint = 0): Promise<number> {
    const resp = this.alloc(1, 1, 0xee);
    await this.driver.submit(0, [this.put(encodeTmf(subtype, encodeLunField(target, lun, true), tag))], [resp]);
    return this.view(resp)[0]!;
  }

  /** An asynchronous notification query (or subscribe); resolves with event_actual and the response byte. */
  async an(target: number, lun: number, events: number, type: number = ControlType.AN_QUERY): Promise<{ eventActual: number; response: number; len: number }> {
    const resp = this.alloc(5, 4, 0xee);
    const len = await this.driver.submit(0, [this.put(encodeAn(type, encodeLunField(target, lun, true), events))], [resp]);
    const v = this.view(resp);
    return { eventActual: v[0]! | (v[1]! << 8) | (v[2]! << 16) | (v[3]! << 24), response: v[4]!, len };
  }

  /** Put an event buffer on the event queue; resolves with the event when the device fills it. */
  async event(size: number = VirtioScsi.EVENT_SIZE): Promise<ScsiEvent & { len: number; raw: Uint8Array }> {
    const buf = this.alloc(size, 8, 0xee);
    const len = await this.driver.submit(1, [], [buf]);
    const raw = Uint8Array.from(this.view(buf));
    return { ...decodeEvent(raw.byteLength >= 16 ? raw : Uint8Array.from([...raw, ...new Array(16 - raw.byteLength).fill(0)])), len, raw };
  }

  async config(): Promise<Record<string, number | string | boolean>> {
    return decodeScsiConfig(await this.driver.getConfig(0, VirtioScsi.CONFIG_SIZE));
  }

  close(): void {
    this.driver.close();
  }
}

/** A device on a temporary socket. */
export interface ScsiFixture {
  socketPath: string;
  device: ScsiDevice;
  server: DeviceServer;
  connect(options?: ClientOptions): Promise<ScsiClient>;
}

/** Serve a ScsiDevice on a temporary socket for the duration of `fn`; clients it connected are closed after. */
export async function withScsi(options: ScsiDeviceOptions, fn: (f: ScsiFixture) => Promise<void>): Promise<void> {
  const tmp = tempDir('vhost-user-scsi-');
  const socketPath = path.join(tmp.dir, 'scsi.sock');
  const device = new ScsiDevice(options);
  const server = new DeviceServer(device, { socketPath }).listen();
  const clients: ScsiClient[] = [];
  try {
    await fn({
      socketPath, device, server,
      async connect(o) {
        const c = await ScsiClient.connect(socketPath, o);
        clients.push(c);
        return c;
      },
    });
  } finally {
    for (const c of clients) c.close();
    await server.close();
    device.dispose();
    tmp.cleanup();
  }
}
