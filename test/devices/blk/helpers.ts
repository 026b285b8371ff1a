/**
 * Test helpers for virtio-blk: a device served on a temporary socket, and a small block driver on top of our
 * frontend (VirtioDriver) that builds requests in its guest RAM.
 */
import path from 'node:path';
import { DeviceServer } from '../../../src/device/server.js';
import { VirtioDriver, type BufferRef } from '../../../src/driver/driver.js';
import { BlkDevice, type BlkDeviceOptions } from '../../../src/devices/blk/device.js';
import { Blk, BlkRequestType, BlkStatus, encodeHeader, encodeSegments, type BlkSegment } from '../../../src/devices/blk/request.js';
import type { BlockStorage } from '../../../src/devices/blk/storage/storage.js';
import { decodeBlkConfig } from '../../../src/virtio/config.js';
import type { Vring } from '../../../src/device/vring.js';
import { GuestMemory } from '../../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../../src/memory/region.js';
import type { DescriptorChain } from '../../../src/virtqueue/chain.js';
import { DriverQueue } from '../../../src/virtqueue/driver-queue.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../src/virtqueue/layout.js';
import { SplitQueue } from '../../../src/virtqueue/split-queue.js';
import { tempDir } from '../../helpers/tmp.js';

/** What a request came back with. `status` is -1 when the device did not write the status byte. */
export interface Reply {
  status: number;
  len: number;
}

/** Value the status byte is primed with, to see whether the device wrote it. */
const UNTOUCHED = 0xee;

/** Options for {@link BlkClient.connect}. */
export interface ClientOptions {
  queues?: number;
  queueSize?: number;
  ramSize?: number;
  /** Virtio features to accept (default: all offered). */
  features?: bigint;
}

/** A virtio-blk driver for tests. */
export class BlkClient {
  readonly driver: VirtioDriver;

  constructor(driver: VirtioDriver) {
    this.driver = driver;
  }

  static async connect(socketPath: string, options: ClientOptions = {}): Promise<BlkClient> {
    const driver = await VirtioDriver.connect({ socketPath, ramSize: options.ramSize ?? 96 * 1024 * 1024, features: options.features });
    try {
      await driver.startQueues(options.queues ?? 1, options.queueSize ?? 128);
    } catch (err) {
      driver.close();
      throw err;
    }
    return new BlkClient(driver);
  }

  /** Copy bytes into fresh guest RAM. */
  put(bytes: Uint8Array, align = 8): BufferRef {
    const ref = this.alloc(bytes.byteLength, align);
    this.view(ref).set(bytes);
    return ref;
  }

  /** Fresh guest RAM, filled with `fill`. */
  alloc(len: number, align = 512, fill = 0): BufferRef {
    const ref = { addr: this.driver.ram.alloc(len, align), len };
    this.view(ref).fill(fill);
    return ref;
  }

  view(ref: BufferRef): Uint8Array {
    return this.driver.ram.bytes(ref.addr, ref.len);
  }

  header(type: number, sector: number | bigint = 0): BufferRef {
    return this.put(encodeHeader(type, sector));
  }

  statusBuffer(): BufferRef {
    return this.alloc(1, 1, UNTOUCHED);
  }

  /**
   * Submit a chain; the status is read from the last byte of the last writable buffer.
   */
  async submit(readable: BufferRef[], writable: BufferRef[], q = 0): Promise<Reply> {
    const len = await this.driver.submit(q, readable, writable);
    const last = writable[writable.length - 1];
    let status = -1;
    if (last) {
      const b = this.driver.ram.bytes(last.addr + last.len - 1, 1)[0]!;
      status = b === UNTOUCHED ? -1 : b;
    }
    return { status, len };
  }

  /** Read `len` bytes at `sector`, into `pieces` data buffers of equal size. */
  async read(sector: number | bigint, len: number, options: { q?: number; pieces?: number; fill?: number } = {}):
    Promise<Reply & { data: Uint8Array }> {
    const pieces = options.pieces ?? 1;
    const bufs: BufferRef[] = [];
    for (let i = 0; i < pieces; i++) bufs.push(this.alloc(len / pieces, 512, options.fill ?? 0));
    const reply = await this.submit([this.header(BlkRequestType.IN, sector)], [...bufs, this.statusBuffer()], options.q);
    return { ...reply, data: Buffer.concat(bufs.map((b) => this.view(b))) };
  }

  /** Write `data` at `sector`, from `pieces` data buffers. */
  async write(sector: number | bigint, data: Uint8Array, options: { q?: number; pieces?: number } = {}): Promise<Reply> {
    const pieces = options.pieces ?? 1;
    const size = data.byteLength / pieces;
    const bufs: BufferRef[] = [];
    for (let i = 0; i < pieces; i++) bufs.push(this.put(data.subarray(i * size, (i + 1) * size), 512));
    return this.submit([this.header(BlkRequestType.OUT, sector), ...bufs], [this.statusBuffer()], options.q);
  }

  flush(q = 0): Promise<Reply> {
    return this.submit([this.header(BlkRequestType.FLUSH)], [this.statusBuffer()], q);
  }

  async getId(idLen = 20, q = 0): Promise<Reply & { id: Uint8Array }> {
    const id = this.alloc(idLen, 1, 0xaa);
    const reply = await this.submit([this.header(BlkRequestType.GET_ID)], [id, this.statusBuffer()], q);
    return { ...reply, id: Uint8Array.from(this.view(id)) };
  }

  discard(segments: BlkSegment[], q = 0): Promise<Reply> {
    return this.submit([this.header(BlkRequestType.DISCARD), this.put(encodeSegments(segments))], [this.statusBuffer()], q);
  }

  writeZeroes(segments: BlkSegment[], q = 0): Promise<Reply> {
    return this.submit([this.header(BlkRequestType.WRITE_ZEROES), this.put(encodeSegments(segments))],
      [this.statusBuffer()], q);
  }

  async config(): Promise<Record<string, number | string | boolean>> {
    return decodeBlkConfig(await this.driver.getConfig(0, 60));
  }

  close(): void {
    this.driver.close();
  }
}

/** A device on a temporary socket. */
export interface BlkFixture {
  socketPath: string;
  dir: string;
  device: BlkDevice;
  server: DeviceServer;
  connect(options?: ClientOptions): Promise<BlkClient>;
}

/** Serve a BlkDevice on a temporary socket for the duration of `fn`; clients it connected are closed after. */
export async function withBlk(options: BlkDeviceOptions, fn: (f: BlkFixture) => Promise<void>,
  dirFixture?: { dir: string }): Promise<void> {
  const tmp = dirFixture ? { dir: dirFixture.dir, cleanup: () => undefined } : tempDir('vhost-user-blk-');
  const socketPath = path.join(tmp.dir, 'blk.sock');
  const device = new BlkDevice(options);
  const server = new DeviceServer(device, { socketPath }).listen();
  const clients: BlkClient[] = [];
  try {
    await fn({
      socketPath, dir: tmp.dir, device, server,
      async connect(o) {
        const c = await BlkClient.connect(socketPath, o);
        clients.push(c);
        return c;
      },
    });
  } finally {
    for (const c of clients) c.close();
    await server.close();
    tmp.cleanup();
  }
}

/** Bytes of a repeating pattern that differs per `seed`. */
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 31 + seed * 17 + (i >> 9)) & 0xff;
  return out;
}

/**
 * A BlkDevice driven in-process, without sockets: a split queue over plain shared memory, a driver whose request
 * slots (header, data, status; descriptors written once) are offered again and again, and a stand-in for the
 * framework's ring that pushes completed chains. Each round offers every slot and processes them in one pass.
 */
export class InProcessBlk {
  readonly mem: GuestMemory;
  readonly driver: DriverQueue<number>;
  readonly queue: SplitQueue;
  readonly device: BlkDevice;
  readonly vring: Vring;
  readonly slots: { head: number; header: DataView; data: Uint8Array; status: Uint8Array }[] = [];
  readonly #bs: number;
  #avail = 0;
  #seed = 7;

  constructor(storage: BlockStorage, options: { qd?: number; bs?: number; type?: number } = {}) {
    const qd = options.qd ?? 32;
    const bs = options.bs ?? 4096;
    this.#bs = bs;
    const type = options.type ?? BlkRequestType.IN;
    const size = 128;
    this.mem = new GuestMemory();
    const ramSize = 0x10000 + qd * bs;
    this.mem.add(MemoryRegion.fromBuffer({ guestPhysAddr: 0, size: ramSize, userAddr: 0x7f0000000000, mmapOffset: 0 },
      new SharedArrayBuffer(ramSize)));
    const rings = { desc: 0, avail: 0x1000, used: 0x2000 };
    this.driver = new DriverQueue<number>(this.mem, size, rings);
    this.queue = new SplitQueue(0, size);
    this.queue.configure(this.mem, { desc: 0x7f0000000000, avail: 0x7f0000001000, used: 0x7f0000002000 });
    this.device = new BlkDevice({ storage });
    this.device.featuresNegotiated(this.device.features);
    const queue = this.queue;
    // What the device uses of a Vring: its index and complete().
    this.vring = { index: 0, complete(chain: DescriptorChain, len: number) { queue.push(chain.head, len); } } as unknown as Vring;
    const write = type === BlkRequestType.IN ? VIRTQ_DESC_F_WRITE : 0;
    for (let k = 0; k < qd; k++) {
      const head = 3 * k;
      const hdr = 0x4000 + 32 * k;
      const data = 0x10000 + bs * k;
      this.driver.writeDescriptor(head, hdr, Blk.HEADER_SIZE, VIRTQ_DESC_F_NEXT, head + 1);
      this.driver.writeDescriptor(head + 1, data, bs, write | VIRTQ_DESC_F_NEXT, head + 2);
      this.driver.writeDescriptor(head + 2, hdr + 16, 1, VIRTQ_DESC_F_WRITE, 0);
      const h = this.mem.gpaSlice(hdr, Blk.HEADER_SIZE);
      h.set(encodeHeader(type, 0));
      this.slots.push({ head, header: new DataView(h.buffer, h.byteOffset, 16), data: this.mem.gpaSlice(data, bs),
        status: this.mem.gpaSlice(hdr + 16, 1) });
    }
  }

  /** Offer every slot (at random block-aligned sectors within `blocks` blocks), process, check every status. */
  round(blocks: number): void {
    const perBlock = this.#bs / Blk.SECTOR_SIZE;
    const slots = this.slots;
    for (let k = 0; k < slots.length; k++) {
      const s = slots[k]!;
      this.#seed = (Math.imul(this.#seed, 1103515245) + 12345) >>> 0;
      s.header.setUint32(8, ((this.#seed >>> 8) % blocks) * perBlock, true);
      s.status[0] = 0xff;
      this.driver.writeAvailEntry(this.#avail + k, s.head);
    }
    this.#avail = (this.#avail + slots.length) & 0xffff;
    this.driver.writeAvailIdx(this.#avail);
    const q = this.queue;
    for (let c = q.pop(); c !== null; c = q.pop()) this.device.handleChain(this.vring, c);
    q.flush();
    if (this.driver.readUsedIdx() !== this.#avail) throw new Error(`used.idx ${this.driver.readUsedIdx()} != ${this.#avail}`);
    for (let k = 0; k < slots.length; k++) {
      if (slots[k]!.status[0] !== BlkStatus.OK) throw new Error(`slot ${k}: status ${slots[k]!.status[0]}`);
    }
  }
}
