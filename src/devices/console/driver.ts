/**
 * The guest side of virtio-console, modelled on Linux's drivers/char/virtio_console.c, over our own frontend
 * ({@link VirtioDriver}). It drives any vhost-user console backend the way a Linux guest would: DEVICE_READY
 * after filling the control receive queue; on DEVICE_ADD it fills the port's receive queue and answers
 * PORT_READY; CONSOLE_PORT makes the port a console and is answered with PORT_OPEN 1; RESIZE, PORT_NAME and
 * PORT_OPEN update the port; DEVICE_REMOVE closes (PORT_OPEN 0) and forgets it. Control messages are handled one
 * at a time, in order, as Linux's control work does.
 *
 * Ports are Duplex streams with the Linux semantics that matter to a device: data arriving on a port the guest
 * has not opened is dropped, writes on a non-console port wait while the host end is closed, receive buffers are
 * posted again only once their data was read (a stalled reader stops the device), and transmit buffers are a
 * fixed pool (a device that does not take them stalls the writer).
 */
import { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import { VirtioDriver, type BufferRef, type DriverOptions } from '../../driver/driver.js';
import { BackendRequest } from '../../protocol/constants.js';
import { ConsoleFeature, featureMask, hasFeature } from '../../virtio/constants.js';
import {
  BAD_ID, CONFIG_SIZE, ConfigOffset, ControlEvent, ControlQueue, decodeConfig, decodeControl, decodeResize,
  encodeControl, queueCount, rxQueueOf, txQueueOf, type ConsoleConfig, type ControlMessage,
} from './protocol.js';

/** Options for {@link ConsoleDriver.connect}. */
export interface ConsoleDriverOptions extends Omit<DriverOptions, 'onBackendRequest'> {
  /** Ring size of every queue (default 256). */
  queueSize?: number;
  /** Control receive buffers posted (default 32) and their size (default 4096, a page as in Linux). */
  controlBuffers?: number;
  controlBufferSize?: number;
  /** Receive buffers per port (default 16) and their size (default 4096). */
  rxBuffers?: number;
  rxBufferSize?: number;
  /** Transmit buffers per port (default 16) and their size (default 32 KiB, Linux's largest write). */
  txBuffers?: number;
  txBufferSize?: number;
  /** Accept MULTIPORT when offered (default true). */
  multiport?: boolean;
  /** Send DEVICE_READY once set up (default true; tests of odd drivers turn it off). */
  deviceReady?: boolean;
  /** Stream buffer size of the guest ports (default 64 KiB). */
  portHighWaterMark?: number;
}

/** A control message seen by the driver, with its direction. */
export interface ControlRecord extends ControlMessage {
  direction: 'in' | 'out';
}

interface RxPool {
  queue: number;
  buffers: BufferRef[];
  posted: boolean[];
  /** Buffers read but not posted again because the port's reader is full. */
  held: number[];
}

interface TxPool {
  queue: number;
  buffers: BufferRef[];
  free: number[];
}

/** Counters of a guest port. */
export interface GuestPortStats {
  received: number;
  sent: number;
  /** Bytes that arrived while the port was not open (Linux drops them). */
  discarded: number;
}

/**
 * A port as the guest sees it. Events: `host-open` / `host-close` (PORT_OPEN from the device), `console`
 * (CONSOLE_PORT), `name` (PORT_NAME), `resize` ({cols, rows}), `removed`.
 */
export class GuestPort extends Duplex {
  readonly id: number;
  readonly stats: GuestPortStats = { received: 0, sent: 0, discarded: 0 };
  name: string | undefined;
  console = false;
  hostConnected = false;
  size: { cols: number; rows: number } | undefined;
  readonly #driver: ConsoleDriver;
  readonly #rx: RxPool;
  readonly #tx: TxPool;
  #guestOpen = false;
  #removed = false;
  #pending: { chunk: Buffer; offset: number; callback: (error?: Error | null) => void } | undefined;

  /** @internal Made by the driver on DEVICE_ADD. */
  constructor(driver: ConsoleDriver, id: number, rx: RxPool, tx: TxPool, highWaterMark: number) {
    super({ highWaterMark });
    this.#driver = driver;
    this.id = id;
    this.#rx = rx;
    this.#tx = tx;
  }

  /** Is the port open in the guest (by a program, or as a console)? */
  get guestOpen(): boolean {
    return this.#guestOpen;
  }

  get removed(): boolean {
    return this.#removed;
  }

  /** Open the port as a guest program would (PORT_OPEN 1). */
  async open(): Promise<void> {
    if (this.#removed) throw new Error(`port ${this.id} was removed`);
    this.#guestOpen = true;
    await this.#driver.sendControl(this.id, ControlEvent.PORT_OPEN, 1);
  }

  /** Close the port as a guest program would (PORT_OPEN 0). */
  async close(): Promise<void> {
    if (!this.#guestOpen) return;
    this.#guestOpen = false;
    await this.#driver.sendControl(this.id, ControlEvent.PORT_OPEN, 0);
  }

  /** Receive buffers currently posted to the device. */
  get postedBuffers(): number {
    return this.#rx.posted.filter(Boolean).length;
  }

  /** Transmit buffers the device has not returned. */
  get txInFlight(): number {
    return this.#tx.buffers.length - this.#tx.free.length;
  }

  override _read(): void {
    const held = this.#rx.held.splice(0);
    for (const b of held) this.#driver.postRx(this.#rx, b);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#removed) {
      callback(new Error(`port ${this.id} was removed`));
      return;
    }
    this.#pending = { chunk, offset: 0, callback };
    this.pump();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#pending = undefined;
    callback(error);
  }

  /** @internal Move pending output into free transmit buffers. */
  pump(): void {
    const p = this.#pending;
    if (!p || this.#removed) return;
    // Linux: writes to a generic port wait while the host end is closed; the console writes regardless.
    if (!this.console && !this.hostConnected) return;
    const ram = this.#driver.virtio.ram;
    while (p.offset < p.chunk.byteLength) {
      const b = this.#tx.free.pop();
      if (b === undefined) return;
      const buf = this.#tx.buffers[b]!;
      const n = Math.min(buf.len, p.chunk.byteLength - p.offset);
      ram.bytes(buf.addr, n).set(p.chunk.subarray(p.offset, p.offset + n));
      p.offset += n;
      this.stats.sent += n;
      this.#driver.virtio.submit(this.#tx.queue, [{ addr: buf.addr, len: n }], []).then(() => {
        this.#tx.free.push(b);
        this.#driver.port(this.id)?.pump();
      }, () => { /* connection closed */ });
    }
    this.#pending = undefined;
    p.callback();
  }

  /** @internal Data from the device; returns false when the buffer must wait for the reader. */
  receive(data: Buffer): boolean {
    if (!this.#guestOpen) {
      this.stats.discarded += data.byteLength;
      return true;
    }
    this.stats.received += data.byteLength;
    return this.push(data);
  }

  /** @internal The device said the port is a console. */
  makeConsole(): void {
    this.console = true;
    this.#guestOpen = true;
    this.emit('console');
    this.pump();
  }

  /** @internal PORT_OPEN from the device. */
  setHostConnected(open: boolean): void {
    if (open === this.hostConnected) return;
    this.hostConnected = open;
    this.emit(open ? 'host-open' : 'host-close');
    if (open) this.pump();
  }

  /** @internal DEVICE_REMOVE. */
  markRemoved(): void {
    this.#removed = true;
    this.#guestOpen = false;
    const p = this.#pending;
    this.#pending = undefined;
    this.emit('removed');
    this.push(null);
    p?.callback(new Error(`port ${this.id} was removed`));
  }
}

/**
 * A virtio-console driver. Events: `control` (ControlRecord, each message in or out), `port-added` and
 * `port-removed` (GuestPort), `config-change` (ConsoleConfig).
 */
export class ConsoleDriver extends EventEmitter {
  readonly virtio: VirtioDriver;
  readonly multiport: boolean;
  /** Config space as last read. */
  config: ConsoleConfig;
  /** Every control message in or out, in order. */
  readonly controlLog: ControlRecord[] = [];
  /** Control messages the driver dropped (unknown port, out-of-range id, ...), as Linux does. */
  dropped = 0;
  readonly #ports = new Map<number, GuestPort>();
  readonly #rxPools = new Map<number, RxPool>();
  readonly #txPools = new Map<number, TxPool>();
  readonly #options: ConsoleDriverOptions;
  #controlChain: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(virtio: VirtioDriver, config: ConsoleConfig, multiport: boolean, options: ConsoleDriverOptions) {
    super();
    this.virtio = virtio;
    this.config = config;
    this.multiport = multiport;
    this.#options = options;
  }

  /** Connect, negotiate, set up every queue and (with MULTIPORT) send DEVICE_READY. */
  static async connect(options: ConsoleDriverOptions): Promise<ConsoleDriver> {
    let self: ConsoleDriver | undefined;
    const wanted = options.features ?? ~0n;
    const features = options.multiport === false ? wanted & ~featureMask(ConsoleFeature.MULTIPORT) : wanted;
    const virtio = await VirtioDriver.connect({
      ...options,
      features,
      onBackendRequest: (request) => {
        if (request === BackendRequest.CONFIG_CHANGE_MSG) void self?.configChanged();
      },
    });
    try {
      const config = decodeConfig(await virtio.getConfig(0, CONFIG_SIZE));
      const multiport = hasFeature(virtio.features, ConsoleFeature.MULTIPORT);
      if (multiport && (config.maxNrPorts < 1 || config.maxNrPorts > 0x7fff)) {
        throw new RangeError(`device reports max_nr_ports ${config.maxNrPorts}`);
      }
      self = new ConsoleDriver(virtio, config, multiport, options);
      await self.#start();
      return self;
    } catch (err) {
      virtio.close();
      throw err;
    }
  }

  async #start(): Promise<void> {
    const o = this.#options;
    const count = queueCount(this.config.maxNrPorts, this.multiport);
    await this.virtio.startQueues(count, o.queueSize ?? 256);
    if (!this.multiport) {
      // Without MULTIPORT port 0 is a console the driver sets up by itself.
      this.#addPort(0).makeConsole();
      return;
    }
    this.addControlBuffers(o.controlBuffers ?? 32);
    if (o.deviceReady ?? true) await this.sendControl(BAD_ID, ControlEvent.DEVICE_READY, 1);
  }

  /** Post more control receive buffers (each goes back to the queue once its message was handled). */
  addControlBuffers(count: number, size = this.#options.controlBufferSize ?? 4096): void {
    for (let i = 0; i < count; i++) this.#postControl({ addr: this.virtio.ram.alloc(size, 8), len: size });
  }

  /** Ports the guest knows. */
  get ports(): ReadonlyMap<number, GuestPort> {
    return this.#ports;
  }

  port(id: number): GuestPort | undefined {
    return this.#ports.get(id);
  }

  /** Resolves with the port once the device added it. */
  waitForPort(id: number): Promise<GuestPort> {
    const p = this.#ports.get(id);
    if (p) return Promise.resolve(p);
    return new Promise((resolve) => {
      const on = (port: GuestPort) => {
        if (port.id !== id) return;
        this.off('port-added', on);
        resolve(port);
      };
      this.on('port-added', on);
    });
  }

  /** Send a control message (resolves once the device took the buffer). */
  async sendControl(id: number, event: number, value: number): Promise<void> {
    const bytes = encodeControl(id, event, value);
    this.#record('out', bytes);
    await this.sendRaw([bytes]);
  }

  /**
   * Send arbitrary bytes on the control transmit queue, one descriptor per part (for malformed-message tests).
   * Resolves once the device took the buffer.
   */
  async sendRaw(parts: Uint8Array[]): Promise<void> {
    const refs = parts.map((p) => {
      const addr = this.virtio.ram.alloc(Math.max(p.byteLength, 1), 8);
      this.virtio.ram.bytes(addr, p.byteLength).set(p);
      return { addr, len: p.byteLength };
    });
    await this.virtio.submit(ControlQueue.TX, refs, []);
  }

  /** Read config space again. */
  async readConfig(): Promise<ConsoleConfig> {
    this.config = decodeConfig(await this.virtio.getConfig(0, CONFIG_SIZE));
    return this.config;
  }

  /** Write a character to emerg_wr (a 32-bit config write, as Linux's early console does). */
  async emergencyWrite(byte: number): Promise<void> {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, byte & 0xff, true);
    await this.virtio.frontend.setConfig(ConfigOffset.EMERG_WR, data);
  }

  /** Close the connection. */
  close(): void {
    this.#closed = true;
    this.virtio.close();
  }

  /** @internal A CONFIG_CHANGE_MSG: re-read the size (it applies to port 0 without MULTIPORT). */
  async configChanged(): Promise<void> {
    if (this.#closed) return;
    let config: ConsoleConfig;
    try {
      config = await this.readConfig();
    } catch {
      return;
    }
    if (!this.multiport) {
      const port = this.#ports.get(0);
      if (port) {
        port.size = { cols: config.cols, rows: config.rows };
        port.emit('resize', port.size);
      }
    }
    this.emit('config-change', config);
  }

  /** @internal Post a receive buffer of a pool. */
  postRx(pool: RxPool, b: number): void {
    if (this.#closed || pool.posted[b]) return;
    pool.posted[b] = true;
    const buf = pool.buffers[b]!;
    this.virtio.submit(pool.queue, [], [buf]).then((len) => {
      pool.posted[b] = false;
      const data = Buffer.from(this.virtio.ram.bytes(buf.addr, Math.min(len, buf.len)));
      const port = this.#ports.get(pool.queue === 0 ? 0 : (pool.queue >> 1) - 1);
      // Like Linux, the buffers of a removed port are left alone until a new port takes the queue.
      if (!port || port.removed) {
        pool.held.push(b);
        return;
      }
      if (port.receive(data)) this.postRx(pool, b);
      else pool.held.push(b);
    }, () => { /* connection closed */ });
  }

  #record(direction: 'in' | 'out', bytes: Uint8Array): ControlRecord | undefined {
    const m = decodeControl(bytes);
    if (!m) return undefined;
    const record = { ...m, payload: m.payload.slice(), direction };
    this.controlLog.push(record);
    this.emit('control', record);
    return record;
  }

  #postControl(buf: BufferRef): void {
    if (this.#closed) return;
    this.virtio.submit(ControlQueue.RX, [], [buf]).then((len) => {
      const bytes = this.virtio.ram.bytes(buf.addr, Math.min(len, buf.len)).slice();
      // One message at a time, in order; the buffer goes back once it was handled.
      this.#controlChain = this.#controlChain.then(async () => {
        try {
          await this.#handleControl(bytes);
        } catch {
          // connection closed mid-way
        }
        this.#postControl(buf);
      });
    }, () => { /* connection closed */ });
  }

  async #handleControl(bytes: Uint8Array): Promise<void> {
    const m = this.#record('in', bytes);
    if (!m) {
      this.dropped++;
      return;
    }
    const port = this.#ports.get(m.id);
    if (!port && m.event !== ControlEvent.DEVICE_ADD) {
      this.dropped++;
      return;
    }
    switch (m.event) {
      case ControlEvent.DEVICE_ADD:
        if (port) {
          await this.sendControl(m.id, ControlEvent.PORT_READY, 1);
          return;
        }
        if (m.id >= this.config.maxNrPorts) {
          this.dropped++;
          return;
        }
        this.#addPort(m.id);
        await this.sendControl(m.id, ControlEvent.PORT_READY, 1);
        return;
      case ControlEvent.DEVICE_REMOVE:
        this.#ports.delete(m.id);
        if (port!.guestOpen) await port!.close();
        port!.markRemoved();
        this.emit('port-removed', port);
        return;
      case ControlEvent.CONSOLE_PORT:
        if (!m.value || port!.console) return;
        port!.makeConsole();
        await this.sendControl(m.id, ControlEvent.PORT_OPEN, 1);
        return;
      case ControlEvent.RESIZE: {
        const size = decodeResize(m.payload);
        if (!port!.console || !size) {
          this.dropped++;
          return;
        }
        port!.size = size;
        port!.emit('resize', size);
        return;
      }
      case ControlEvent.PORT_OPEN:
        port!.setHostConnected(m.value === 1);
        return;
      case ControlEvent.PORT_NAME:
        if (port!.name !== undefined) return;
        port!.name = new TextDecoder().decode(m.payload);
        port!.emit('name', port!.name);
        return;
      default:
        this.dropped++;
    }
  }

  #addPort(id: number): GuestPort {
    const o = this.#options;
    let rx = this.#rxPools.get(id);
    if (!rx) {
      const size = o.rxBufferSize ?? 4096;
      const n = o.rxBuffers ?? 16;
      rx = { queue: rxQueueOf(id), buffers: [], posted: new Array<boolean>(n).fill(false), held: [] };
      for (let i = 0; i < n; i++) rx.buffers.push({ addr: this.virtio.ram.alloc(size, 8), len: size });
      this.#rxPools.set(id, rx);
    }
    let tx = this.#txPools.get(id);
    if (!tx) {
      const size = o.txBufferSize ?? 32 * 1024;
      const n = o.txBuffers ?? 16;
      tx = { queue: txQueueOf(id), buffers: [], free: [] };
      for (let i = 0; i < n; i++) {
        tx.buffers.push({ addr: this.virtio.ram.alloc(size, 8), len: size });
        tx.free.push(i);
      }
      this.#txPools.set(id, tx);
    }
    const port = new GuestPort(this, id, rx, tx, o.portHighWaterMark ?? 64 * 1024);
    this.#ports.set(id, port);
    // Fill the receive queue (buffers a previous port on this queue left posted stay posted).
    rx.held = [];
    for (let b = 0; b < rx.buffers.length; b++) this.postRx(rx, b);
    this.emit('port-added', port);
    return port;
  }
}
