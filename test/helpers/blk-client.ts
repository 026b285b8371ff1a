/**
 * A minimal virtio-blk driver on top of VirtioDriver, for tests and benchmarks against any vhost-user-blk
 * backend (ours or qemu-storage-daemon's).
 */
import { VirtioDriver } from '../../src/driver/driver.js';

export const BlkRequest = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Submits virtio-blk requests; each request gets its own header and status buffers in guest RAM. */
export class BlkClient {
  readonly driver: VirtioDriver;

  constructor(driver: VirtioDriver) {
    this.driver = driver;
  }

  #header(type: number, sector: number): { addr: number; len: number } {
    const addr = this.driver.ram.alloc(16, 16);
    const dv = new DataView(this.driver.ram.bytes(addr, 16).buffer, this.driver.ram.bytes(addr, 16).byteOffset, 16);
    dv.setUint32(0, type, true);
    dv.setUint32(4, 0, true);
    dv.setBigUint64(8, BigInt(sector), true);
    return { addr, len: 16 };
  }

  /** Issue a request with optional data buffers; returns the status byte and the used length. */
  async request(queue: number, type: number, sector: number, data: { addr: number; len: number }[] = [],
    dataWritable = false): Promise<{ status: number; len: number }> {
    const header = this.#header(type, sector);
    const status = { addr: this.driver.ram.alloc(1, 1), len: 1 };
    this.driver.ram.bytes(status.addr, 1)[0] = 0xff;
    const readable = dataWritable ? [header] : [header, ...data];
    const writable = dataWritable ? [...data, status] : [status];
    const len = await this.driver.submit(queue, readable, writable);
    return { status: this.driver.ram.bytes(status.addr, 1)[0]!, len };
  }

  /** Read `length` bytes at `sector` (512-byte units). */
  async read(queue: number, sector: number, length: number): Promise<Uint8Array> {
    const buf = { addr: this.driver.ram.alloc(length, 512), len: length };
    const { status } = await this.request(queue, BlkRequest.IN, sector, [buf], true);
    if (status !== BlkStatus.OK) throw new Error(`read at sector ${sector} failed with status ${status}`);
    return this.driver.ram.bytes(buf.addr, length).slice();
  }

  /** Write `data` at `sector`. */
  async write(queue: number, sector: number, data: Uint8Array): Promise<void> {
    const buf = { addr: this.driver.ram.alloc(data.length, 512), len: data.length };
    this.driver.ram.bytes(buf.addr, data.length).set(data);
    const { status } = await this.request(queue, BlkRequest.OUT, sector, [buf]);
    if (status !== BlkStatus.OK) throw new Error(`write at sector ${sector} failed with status ${status}`);
  }

  async flush(queue = 0): Promise<number> {
    return (await this.request(queue, BlkRequest.FLUSH, 0)).status;
  }

  async getId(queue = 0): Promise<string> {
    const buf = { addr: this.driver.ram.alloc(20, 4), len: 20 };
    const { status } = await this.request(queue, BlkRequest.GET_ID, 0, [buf], true);
    if (status !== BlkStatus.OK) throw new Error(`GET_ID failed with status ${status}`);
    return Buffer.from(this.driver.ram.bytes(buf.addr, 20)).toString('latin1').replace(/\0+$/, '');
  }
}
