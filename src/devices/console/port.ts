/**
 * One console port as a Node Duplex stream: what the guest writes to the port is readable here, what is written
 * here goes to the guest. Back-pressure is real both ways: a write completes only once its bytes are in buffers
 * the guest posted (so a guest that does not read makes writers wait), and while the reader here is slow the
 * device leaves the guest's transmit buffers in the ring instead of buffering or dropping them.
 */
import { Duplex } from 'node:stream';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import { encodePortName } from './protocol.js';

/** A write to a port that was removed. */
export class PortRemovedError extends Error {
  override name = 'PortRemovedError';
  readonly code = 'ERR_PORT_REMOVED';
  constructor(id: number) {
    super(`console port ${id} was removed`);
  }
}

/** Options for a port (see `ConsoleDevice.addPort`). */
export interface ConsolePortOptions {
  /** Port number, 0..max_nr_ports-1 (default: the lowest free one). */
  id?: number;
  /** Name the guest sees (`/dev/virtio-ports/NAME` in Linux). */
  name?: string;
  /** Announce the port as a console (hvc). Default: true for port 0, false otherwise. */
  console?: boolean;
  /** Is our end open (PORT_OPEN to the guest)? Default true. */
  hostConnected?: boolean;
  /** Stream buffer sizes in bytes (default 64 KiB each way). */
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
}

/** What a port needs from the device that owns it. */
export interface PortHost {
  /** Output is waiting: fill the guest's receive buffers. */
  outputPending(port: ConsolePort): void;
  /** The reader wants more: resume taking the guest's transmit buffers. */
  inputWanted(port: ConsolePort): void;
  /** Our end opened or closed. */
  hostConnectedChanged(port: ConsolePort): void;
  /** The console size of this port changed. */
  portResized(port: ConsolePort): void;
}

/** Counters of one port. */
export interface PortStats {
  /** Bytes the guest sent us. */
  bytesFromGuest: number;
  /** Bytes delivered into the guest's buffers. */
  bytesToGuest: number;
  /** Emergency-write characters dropped because the reader was not keeping up. */
  emergencyDropped: number;
  /** Bytes the guest sent after this stream was destroyed (thrown away). */
  discarded: number;
}

const DEFAULT_HWM = 64 * 1024;
/** Emergency characters are not flow-controlled; past this much unread input they are dropped. */
const EMERGENCY_LIMIT = 64 * 1024;

/**
 * A console port. Events besides the stream ones: `guest-open` / `guest-close` (the guest opened or closed its
 * end: PORT_OPEN), `ready` (the guest set the port up: PORT_READY), `guest-failed` (PORT_READY with a failure),
 * `resize` ({cols, rows}), `removed`.
 */
export class ConsolePort extends Duplex {
  /** Port number. */
  readonly id: number;
  /** Name announced to the guest. */
  readonly name: string | undefined;
  /** Announced as a console port. */
  readonly console: boolean;
  /** Counters. */
  readonly stats: PortStats = { bytesFromGuest: 0, bytesToGuest: 0, emergencyDropped: 0, discarded: 0 };
  /** @internal The encoded name. */
  readonly nameBytes: Uint8Array | undefined;
  readonly #host: PortHost;
  #hostConnected: boolean;
  #guestOpen = false;
  #guestReady = false;
  #removed = false;
  #size: { cols: number; rows: number } | undefined;
  // Output not yet in guest buffers: the chunks of the current _write/_writev and how far into the first.
  #out: Buffer[] = [];
  #outOffset = 0;
  #outCallback: ((error?: Error | null) => void) | undefined;
  #filling = false;
  #inputPaused = false;

  /** @internal Ports are made by `ConsoleDevice.addPort`. */
  constructor(id: number, host: PortHost, options: ConsolePortOptions = {}) {
    super({
      readableHighWaterMark: options.readableHighWaterMark ?? DEFAULT_HWM,
      writableHighWaterMark: options.writableHighWaterMark ?? DEFAULT_HWM,
    });
    this.id = id;
    this.#host = host;
    this.name = options.name;
    this.nameBytes = options.name === undefined ? undefined : encodePortName(options.name);
    this.console = options.console ?? id === 0;
    this.#hostConnected = options.hostConnected ?? true;
  }

  /** Has the guest opened its end (PORT_OPEN 1, or a console port without MULTIPORT)? */
  get guestOpen(): boolean {
    return this.#guestOpen;
  }

  /** Did the guest report the port ready (PORT_READY 1)? */
  get guestReady(): boolean {
    return this.#guestReady;
  }

  /** Is our end open, as told to the guest with PORT_OPEN? */
  get hostConnected(): boolean {
    return this.#hostConnected;
  }

  /** Was the port removed from the device? */
  get removed(): boolean {
    return this.#removed;
  }

  /** This port's console size, if one was set (for console ports). */
  get size(): { cols: number; rows: number } | undefined {
    return this.#size;
  }

  /**
   * Open or close our end: the guest is told with PORT_OPEN (Linux makes reads on a port whose host end is
   * closed return end-of-file, and writes wait until it opens).
   */
  setHostConnected(open: boolean): void {
    if (open === this.#hostConnected) return;
    this.#hostConnected = open;
    if (!this.#removed) this.#host.hostConnectedChanged(this);
  }

  /** Set this console port's size and tell the guest (RESIZE). */
  resize(cols: number, rows: number): void {
    checkSize(cols, rows);
    this.#size = { cols, rows };
    this.emit('resize', { cols, rows });
    if (!this.#removed) this.#host.portResized(this);
  }

  // ---- stream implementation ----

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#queueOutput([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.#queueOutput(chunks.map((c) => c.chunk), callback);
  }

  #queueOutput(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.#removed) {
      callback(new PortRemovedError(this.id));
      return;
    }
    this.#out = chunks.filter((c) => c.byteLength > 0);
    this.#outOffset = 0;
    if (this.#out.length === 0) {
      callback();
      return;
    }
    this.#outCallback = callback;
    // Inside a fill the device's loop sees the new output itself.
    if (!this.#filling) this.#host.outputPending(this);
  }

  override _final(callback: (error?: Error | null) => void): void {
    // Nothing more to send: the guest sees our end close (end-of-file for its readers).
    this.setHostConnected(false);
    callback();
  }

  override _read(): void {
    this.#inputPaused = false;
    this.#host.inputWanted(this);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#out = [];
    this.#outCallback = undefined;
    this.setHostConnected(false);
    callback(error);
  }

  // ---- the device's side (internal) ----

  /** @internal Is output waiting for guest buffers? */
  get hasOutput(): boolean {
    return this.#out.length > 0;
  }

  /** @internal Is the reader full (stop taking transmit buffers)? */
  get inputPaused(): boolean {
    return this.#inputPaused;
  }

  /**
   * @internal Copy waiting output into a chain's writable part; returns the bytes written. Finishing the
   * current write calls its callback (which may queue the next write: the caller loops on {@link hasOutput}).
   */
  fill(chain: DescriptorChain): number {
    let written = 0;
    const room = chain.writableLength;
    this.#filling = true;
    try {
      while (written < room && this.#out.length > 0) {
        const chunk = this.#out[0]!;
        const n = chain.writeFrom(chunk.subarray(this.#outOffset), written);
        written += n;
        this.#outOffset += n;
        if (this.#outOffset >= chunk.byteLength) {
          this.#out.shift();
          this.#outOffset = 0;
        }
        if (n === 0) break;
      }
      this.stats.bytesToGuest += written;
      if (this.#out.length === 0 && this.#outCallback) {
        const cb = this.#outCallback;
        this.#outCallback = undefined;
        cb();
      }
    } finally {
      this.#filling = false;
    }
    return written;
  }

  /** @internal Bytes from the guest. */
  deliver(data: Buffer): void {
    this.stats.bytesFromGuest += data.byteLength;
    if (this.destroyed) {
      this.stats.discarded += data.byteLength;
      return;
    }
    if (!this.push(data)) this.#inputPaused = true;
  }

  /** @internal An emergency-write character (not flow-controlled: dropped when the reader is far behind). */
  deliverEmergency(byte: number): boolean {
    if (this.destroyed || this.readableEnded || this.readableLength >= EMERGENCY_LIMIT) {
      this.stats.emergencyDropped++;
      return false;
    }
    this.stats.bytesFromGuest++;
    if (!this.push(Buffer.of(byte))) this.#inputPaused = true;
    return true;
  }

  /** @internal The guest opened or closed its end. */
  setGuestOpen(open: boolean): void {
    if (open === this.#guestOpen) return;
    this.#guestOpen = open;
    this.emit(open ? 'guest-open' : 'guest-close');
  }

  /** @internal The guest reported the port ready (or failed, or forgot it on reset). */
  setGuestReady(ready: boolean, failed = false): void {
    const was = this.#guestReady;
    this.#guestReady = ready;
    if (ready && !was) this.emit('ready');
    if (failed) this.emit('guest-failed');
  }

  /** @internal Size set by the device for all console ports. */
  setSizeQuietly(cols: number, rows: number): void {
    this.#size = { cols, rows };
    this.emit('resize', { cols, rows });
  }

  /** @internal The port left the device: writes fail, the readable side ends. */
  markRemoved(): void {
    if (this.#removed) return;
    this.#removed = true;
    this.setGuestOpen(false);
    this.#guestReady = false;
    const cb = this.#outCallback;
    this.#out = [];
    this.#outCallback = undefined;
    this.emit('removed');
    if (!this.destroyed) this.push(null);
    cb?.(new PortRemovedError(this.id));
  }
}

/** Check console dimensions. */
export function checkSize(cols: number, rows: number): void {
  for (const [what, v] of [['cols', cols], ['rows', rows]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`console ${what} must be an integer in 0..65535, got ${v}`);
  }
}
