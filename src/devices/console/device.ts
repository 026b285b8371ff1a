/**
 * The virtio-console device: up to 31 ports (MULTIPORT), the control queues with every control event both ways,
 * hot-plug of ports while the guest runs, the console size (SIZE, with RESIZE messages and config-change
 * notifications) and emergency writes (EMERG_WRITE). Each port is a {@link ConsolePort} Duplex stream.
 *
 * Rules kept throughout: a buffer is only taken from the guest when there is something to put in it (control
 * messages and port output wait, bounded, until the driver posts buffers), the guest's transmit buffers stay in
 * the ring while a port's reader is slow, and nonsense from the driver (unknown port ids, wrong sizes, events
 * in the wrong direction or at the wrong time) is logged and ignored without disturbing other ports.
 */
import { EventEmitter } from 'node:events';
import type { ConfigChangeNotifier, VirtioDevice } from '../../device/device.js';
import type { Vring } from '../../device/vring.js';
import { RequestRejected } from '../../protocol/backend.js';
import { ConsoleFeature, DeviceId, featureMask, hasFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { ControlOutbox } from './control-queue.js';
import { ConsolePort, checkSize, type ConsolePortOptions, type PortHost } from './port.js';
import {
  CONFIG_SIZE, CONTROL_SIZE, ConfigOffset, ControlEvent, ControlQueue, MAX_PORTS, controlEventName, decodeControl,
  encodeConfig, encodeResize, queueCount, queueRole, rxQueueOf, txQueueOf, type ControlMessage,
} from './protocol.js';

/** Options for {@link ConsoleDevice}. */
export interface ConsoleDeviceOptions {
  /** max_nr_ports: how many ports the guest makes room for, 1..31 (default 1). Ports can be hot-added up to it. */
  maxPorts?: number;
  /** Initial console size (default 0x0: unknown, no RESIZE is sent until one is set). */
  cols?: number;
  rows?: number;
  /** Offer VIRTIO_CONSOLE_F_MULTIPORT (default true). Without it the device is port 0 only. */
  multiport?: boolean;
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE (default true). */
  emergencyWrite?: boolean;
  /** Largest ring the frontend may set up (default 1024). */
  maxQueueSize?: number;
  logger?: Logger;
}

/** Counters of the device. */
export interface ConsoleDeviceStats {
  /** Control messages received from the driver and acted on. */
  controlReceived: number;
  /** Control messages delivered to the driver. */
  controlSent: number;
  /** Driver messages or buffers ignored as malformed or out of place. */
  ignored: number;
  /** Device-to-driver control messages dropped because the queue was full. */
  controlDropped: number;
  /** Guest bytes thrown away (sent on a port that does not exist). */
  discardedBytes: number;
  /** Emergency-write characters received. */
  emergencyChars: number;
}

/**
 * Largest transmit buffer taken (Linux sends at most 32 KiB at a time). Buffers are copied whole and returned at
 * once, never held while the reader is slow: a held buffer would stall GET_VRING_BASE and SET_MEM_TABLE, which
 * wait for every popped buffer. So a slow reader has at most one buffer's worth on top of its stream buffer.
 */
export const MAX_TX_BUFFER = 1024 * 1024;
/** Warnings about driver nonsense logged per connection before they go to debug level. */
const WARN_LIMIT = 50;

/**
 * A virtio-console device. Events: `driver-ready` (DEVICE_READY), `driver-failed` (DEVICE_READY 0), `port-added`
 * and `port-removed` (ConsolePort), `emergency-write` (byte, number), `ignored` (reason, string: a driver message
 * or buffer that was ignored), `reset` (the frontend went away or reset the device).
 */
export class ConsoleDevice extends EventEmitter implements VirtioDevice {
  readonly deviceId = DeviceId.CONSOLE;
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  /** max_nr_ports. */
  readonly maxPorts: number;
  readonly stats: ConsoleDeviceStats = {
    controlReceived: 0, controlSent: 0, ignored: 0, controlDropped: 0, discardedBytes: 0, emergencyChars: 0,
  };
  readonly #log: Logger;
  readonly #ports = new Map<number, ConsolePort>();
  readonly #outbox = new ControlOutbox();
  readonly #announced = new Set<number>();
  /** Ports removed after the driver heard of them: its late messages about them are expected, not errors. */
  readonly #gone = new Set<number>();
  readonly #draining = new Set<number>();
  readonly #host: PortHost;
  #rings: (Vring | undefined)[] = [];
  #negotiated: bigint | undefined;
  #driverReady = false;
  #cols: number;
  #rows: number;
  #warnings = 0;
  #notifierSource: { readonly backend?: ConfigChangeNotifier | undefined } | undefined;

  constructor(options: ConsoleDeviceOptions = {}) {
    super();
    const maxPorts = options.maxPorts ?? 1;
    if (!Number.isInteger(maxPorts) || maxPorts < 1 || maxPorts > MAX_PORTS) {
      throw new RangeError(`maxPorts must be an integer in 1..${MAX_PORTS}, got ${maxPorts}`);
    }
    const multiport = options.multiport ?? true;
    if (!multiport && maxPorts !== 1) throw new RangeError('without MULTIPORT the device has exactly one port');
    this.maxPorts = maxPorts;
    this.#cols = options.cols ?? 0;
    this.#rows = options.rows ?? 0;
    checkSize(this.#cols, this.#rows);
    const bits: number[] = [ConsoleFeature.SIZE];
    if (multiport) bits.push(ConsoleFeature.MULTIPORT);
    if (options.emergencyWrite ?? true) bits.push(ConsoleFeature.EMERG_WRITE);
    this.features = featureMask(...bits);
    this.numQueues = queueCount(maxPorts, multiport);
    this.maxQueueSize = options.maxQueueSize ?? 1024;
    this.#log = options.logger ?? makeLogger('console');
    this.#host = {
      outputPending: (port) => this.#flushRx(port.id),
      inputWanted: (port) => this.#drainTx(port.id),
      hostConnectedChanged: (port) => this.#hostConnectedChanged(port),
      portResized: (port) => this.#portResized(port),
    };
  }

  // ---- public API ----

  /**
   * Where config-change notifications go: anything with the live backend, typically the `DeviceServer` serving
   * this device (`device.attach(server)`).
   */
  attach(source: { readonly backend?: ConfigChangeNotifier | undefined }): this {
    this.#notifierSource = source;
    return this;
  }

  /** The ports, by id. */
  get ports(): ReadonlyMap<number, ConsolePort> {
    return this.#ports;
  }

  /** The port with this id. */
  port(id: number): ConsolePort | undefined {
    return this.#ports.get(id);
  }

  /** Did the driver negotiate MULTIPORT (undefined before feature negotiation)? */
  get multiport(): boolean | undefined {
    return this.#negotiated === undefined ? undefined : hasFeature(this.#negotiated, ConsoleFeature.MULTIPORT);
  }

  /** Has the driver sent DEVICE_READY (since the last reset)? */
  get driverReady(): boolean {
    return this.#driverReady;
  }

  /** The console size in config space. */
  get size(): { cols: number; rows: number } {
    return { cols: this.#cols, rows: this.#rows };
  }

  /** Device-to-driver control messages waiting for control receive buffers. */
  get pendingControl(): number {
    return this.#outbox.length;
  }

  /**
   * Add a port. With a driver already running it is hot-plugged (DEVICE_ADD). The id defaults to the lowest free
   * one.
   * @throws RangeError when the id is taken, out of range, or no id is free; TypeError for an unusable name.
   */
  addPort(options: ConsolePortOptions = {}): ConsolePort {
    let id = options.id;
    if (id === undefined) {
      for (let i = 0; i < this.maxPorts && id === undefined; i++) if (!this.#ports.has(i)) id = i;
      if (id === undefined) throw new RangeError(`all ${this.maxPorts} ports are in use`);
    }
    if (!Number.isInteger(id) || id < 0 || id >= this.maxPorts) {
      throw new RangeError(`port id must be an integer in 0..${this.maxPorts - 1}, got ${id}`);
    }
    if (this.#ports.has(id)) throw new RangeError(`port ${id} exists`);
    for (const p of this.#ports.values()) {
      if (options.name !== undefined && p.name === options.name) throw new RangeError(`port ${p.id} is already named '${options.name}'`);
    }
    const port = new ConsolePort(id, this.#host, options);
    if (port.console && (this.#cols !== 0 || this.#rows !== 0)) port.setSizeQuietly(this.#cols, this.#rows);
    this.#ports.set(id, port);
    this.#log.debug(`port ${id} added${port.name ? ` (${port.name})` : ''}`);
    if (this.multiport === false && id === 0) {
      port.setGuestReady(true);
      port.setGuestOpen(true);
    } else if (this.multiport && this.#driverReady) {
      this.#announce(id);
      this.#flushControl();
    }
    this.emit('port-added', port);
    return port;
  }

  /**
   * Remove a port (hot-unplug: DEVICE_REMOVE when the driver knew it). Output not yet delivered fails with
   * `PortRemovedError`; the readable side ends. Returns false when there is no such port.
   */
  removePort(id: number): boolean {
    const port = this.#ports.get(id);
    if (!port) return false;
    this.#ports.delete(id);
    if (this.#announced.delete(id)) {
      // An announcement still queued is taken back instead of being followed by a removal.
      if (!this.#outbox.retractAdd(id)) {
        this.#queueControl(id, ControlEvent.DEVICE_REMOVE, 1);
        this.#gone.add(id);
      }
    }
    this.#log.debug(`port ${id} removed`);
    port.markRemoved();
    this.emit('port-removed', port);
    this.#flushControl();
    return true;
  }

  /**
   * Set the console size: config space (with a config-change notification when the driver took SIZE) and, with
   * MULTIPORT, a RESIZE message to every console port.
   */
  resize(cols: number, rows: number): void {
    checkSize(cols, rows);
    this.#cols = cols;
    this.#rows = rows;
    for (const port of this.#ports.values()) {
      if (!port.console) continue;
      port.setSizeQuietly(cols, rows);
      this.#portResized(port);
    }
    if (this.#negotiated !== undefined && hasFeature(this.#negotiated, ConsoleFeature.SIZE)) {
      this.#notifierSource?.backend?.configChanged();
    }
  }

  // ---- VirtioDevice ----

  readConfig(): Uint8Array {
    return encodeConfig({ cols: this.#cols, rows: this.#rows, maxNrPorts: this.maxPorts, emergWr: 0 });
  }

  /** Only emerg_wr is writable: its low byte is a character from the guest, for the console port. */
  writeConfig(offset: number, data: Uint8Array): void {
    const end = offset + data.byteLength;
    if (!hasFeature(this.features, ConsoleFeature.EMERG_WRITE)) throw new RequestRejected('console config space is read-only');
    if (offset < ConfigOffset.EMERG_WR || end > CONFIG_SIZE) {
      throw new RequestRejected(`console config ${offset}..${end} is read-only (only emerg_wr at ${ConfigOffset.EMERG_WR} is writable)`);
    }
    // A write of the upper bytes alone carries no character.
    if (offset !== ConfigOffset.EMERG_WR || data.byteLength === 0) return;
    const byte = data[0]!;
    this.stats.emergencyChars++;
    this.emit('emergency-write', byte);
    const port = this.#consolePort();
    if (port && !port.deliverEmergency(byte)) this.#log.debug('emergency write dropped: the console reader is behind');
  }

  featuresNegotiated(features: bigint): void {
    this.#negotiated = features;
    if (!hasFeature(features, ConsoleFeature.MULTIPORT)) {
      // Without MULTIPORT, port 0 is a console the driver sets up on its own: no control messages.
      const port = this.#ports.get(0);
      port?.setGuestReady(true);
      port?.setGuestOpen(true);
    }
  }

  ringStarted(vring: Vring): void {
    this.#rings[vring.index] = vring;
  }

  ringStopping(vring: Vring): void {
    // Nothing is ever held popped, so the ring is idle at once.
    this.#rings[vring.index] = undefined;
  }

  onAvailable(vring: Vring): void {
    // A disabled ring keeps its buffers until it is enabled: nothing a console does with them is side-effect free.
    if (!vring.enabled) return;
    this.#rings[vring.index] = vring;
    const role = queueRole(vring.index);
    switch (role.kind) {
      case 'control-rx':
        this.#flushControl();
        return;
      case 'control-tx':
        this.#readControl(vring);
        return;
      case 'rx':
        this.#flushRx(role.port);
        return;
      case 'tx':
        this.#drainTx(role.port);
        return;
    }
  }

  reset(): void {
    this.#rings = [];
    this.#negotiated = undefined;
    this.#driverReady = false;
    this.#announced.clear();
    this.#gone.clear();
    this.#outbox.clear();
    this.#warnings = 0;
    for (const port of this.#ports.values()) {
      port.setGuestOpen(false);
      port.setGuestReady(false);
    }
    this.emit('reset');
  }

  // ---- internals ----

  #usable(index: number): Vring | undefined {
    const v = this.#rings[index];
    return v && v.started && v.enabled && !v.error ? v : undefined;
  }

  #consolePort(): ConsolePort | undefined {
    const zero = this.#ports.get(0);
    if (zero?.console) return zero;
    return [...this.#ports.values()].filter((p) => p.console).sort((a, b) => a.id - b.id)[0];
  }

  /** Log and count a driver message or buffer we do not act on. */
  #ignore(reason: string): void {
    this.stats.ignored++;
    this.#warnings++;
    if (this.#warnings <= WARN_LIMIT) {
      this.#log.warn(`ignored: ${reason}`);
      if (this.#warnings === WARN_LIMIT) this.#log.warn('further driver errors are logged at debug level');
    } else {
      this.#log.debug(`ignored: ${reason}`);
    }
    this.emit('ignored', reason);
  }

  #queueControl(id: number, event: number, value: number, payload?: Uint8Array): void {
    if (!this.#outbox.push(id, event, value, payload)) {
      this.stats.controlDropped++;
      this.#log.warn(`control queue full: ${controlEventName(event)} for port ${id} dropped`);
    }
  }

  #announce(id: number): void {
    this.#announced.add(id);
    this.#gone.delete(id);
    this.#queueControl(id, ControlEvent.DEVICE_ADD, 1);
  }

  /** Deliver queued control messages into the driver's control receive buffers. */
  #flushControl(): void {
    if (this.#outbox.length === 0) return;
    const ring = this.#usable(ControlQueue.RX);
    if (!ring) return;
    ring.batch(() => {
      for (let msg = this.#outbox.peek(); msg; msg = this.#outbox.peek()) {
        const chain = ring.pop();
        if (!chain) return;
        if (chain.writableLength < CONTROL_SIZE) {
          ring.complete(chain, 0);
          this.#ignore(`control receive buffer of ${chain.writableLength} bytes (at least ${CONTROL_SIZE} needed)`);
          continue;
        }
        if (chain.writableLength < msg.bytes.byteLength) {
          this.#ignore(`${controlEventName(msg.event)} for port ${msg.id} truncated to the ${chain.writableLength}-byte buffer`);
        }
        const n = chain.writeFrom(msg.bytes);
        ring.complete(chain, n);
        this.#outbox.shift();
        this.stats.controlSent++;
        this.#log.debug(`-> ${controlEventName(msg.event)} port ${msg.id} value ${msg.value}`);
      }
    });
  }

  /** Take the driver's control messages. */
  #readControl(ring: Vring): void {
    const header = new Uint8Array(CONTROL_SIZE);
    for (let chain = ring.pop(); chain; chain = ring.pop()) {
      const size = chain.readableLength;
      let message: ControlMessage | null = null;
      if (size === CONTROL_SIZE) {
        chain.readInto(header);
        message = decodeControl(header);
      }
      ring.complete(chain, 0);
      if (this.multiport !== true) {
        this.#ignore('control message from a driver that did not negotiate MULTIPORT');
        continue;
      }
      if (!message) {
        this.#ignore(`control message of ${size} bytes (${CONTROL_SIZE} expected)`);
        continue;
      }
      this.#handleControl(message);
    }
    this.#flushControl();
  }

  #handleControl(m: ControlMessage): void {
    const what = `${controlEventName(m.event)} (port ${m.id}, value ${m.value})`;
    this.#log.debug(`<- ${what}`);
    switch (m.event) {
      case ControlEvent.DEVICE_READY:
        if (m.value === 1) this.#driverReadyReceived();
        else if (m.value === 0) {
          this.stats.controlReceived++;
          this.#log.error('the guest driver failed to initialize the console device (DEVICE_READY 0)');
          this.emit('driver-failed');
        } else this.#ignore(`${what}: value is not 0 or 1`);
        return;
      case ControlEvent.PORT_READY: {
        const port = this.#knownPort(m.id, what);
        if (!port) return;
        if (m.value === 1) this.#portReady(port);
        else if (m.value === 0) {
          this.stats.controlReceived++;
          this.#log.warn(`the guest could not set up port ${m.id} (PORT_READY 0)`);
          port.setGuestReady(false, true);
        } else this.#ignore(`${what}: value is not 0 or 1`);
        return;
      }
      case ControlEvent.PORT_OPEN: {
        const port = this.#knownPort(m.id, what);
        if (!port) return;
        if (m.value > 1) {
          this.#ignore(`${what}: value is not 0 or 1`);
          return;
        }
        this.stats.controlReceived++;
        port.setGuestOpen(m.value === 1);
        if (m.value === 1) this.#flushRx(m.id);
        return;
      }
      case ControlEvent.DEVICE_ADD:
      case ControlEvent.DEVICE_REMOVE:
      case ControlEvent.CONSOLE_PORT:
      case ControlEvent.RESIZE:
      case ControlEvent.PORT_NAME:
        this.#ignore(`${what}: only the device sends this event`);
        return;
      default:
        this.#ignore(`${what}: unknown event`);
    }
  }

  /** The port a driver message names, if the driver knows it; logs and returns undefined otherwise. */
  #knownPort(id: number, what: string): ConsolePort | undefined {
    if (!this.#driverReady) {
      this.#ignore(`${what} before DEVICE_READY`);
      return undefined;
    }
    const port = this.#ports.get(id);
    if (!port || !this.#announced.has(id)) {
      if (this.#gone.has(id)) {
        // Linux answers a DEVICE_ADD or closes its end of a port we have since removed: late, not wrong.
        this.#log.debug(`${what}: port was removed`);
        return undefined;
      }
      this.#ignore(`${what}: no such port${id < this.maxPorts ? '' : ` (max_nr_ports is ${this.maxPorts})`}`);
      return undefined;
    }
    return port;
  }

  #driverReadyReceived(): void {
    this.stats.controlReceived++;
    if (this.#driverReady) {
      // A driver that starts over (module reloaded) gets every port announced again.
      this.#log.info('the guest driver sent DEVICE_READY again: announcing the ports again');
      this.#outbox.clear();
      this.#announced.clear();
      this.#gone.clear();
      for (const port of this.#ports.values()) {
        port.setGuestOpen(false);
        port.setGuestReady(false);
      }
    }
    this.#driverReady = true;
    this.emit('driver-ready');
    for (const id of [...this.#ports.keys()].sort((a, b) => a - b)) this.#announce(id);
  }

  /** PORT_READY: tell the driver what it needs to know about the port, in QEMU's order. */
  #portReady(port: ConsolePort): void {
    this.stats.controlReceived++;
    const id = port.id;
    if (port.console) {
      this.#queueControl(id, ControlEvent.CONSOLE_PORT, 1);
      const size = port.size;
      if (size && (size.cols !== 0 || size.rows !== 0)) this.#queueControl(id, ControlEvent.RESIZE, 0, encodeResize(size.cols, size.rows));
    }
    if (port.nameBytes) this.#queueControl(id, ControlEvent.PORT_NAME, 1, port.nameBytes);
    if (port.hostConnected) this.#queueControl(id, ControlEvent.PORT_OPEN, 1);
    port.setGuestReady(true);
  }

  #hostConnectedChanged(port: ConsolePort): void {
    if (!this.multiport || !this.#announced.has(port.id) || !port.guestReady) return;
    this.#queueControl(port.id, ControlEvent.PORT_OPEN, port.hostConnected ? 1 : 0);
    this.#flushControl();
  }

  #portResized(port: ConsolePort): void {
    const size = port.size;
    if (!size || !port.console || !this.multiport || !this.#announced.has(port.id) || !port.guestReady) return;
    this.#queueControl(port.id, ControlEvent.RESIZE, 0, encodeResize(size.cols, size.rows));
    this.#flushControl();
  }

  /** May data go to this port's guest end now? */
  #guestAccepts(port: ConsolePort): boolean {
    if (this.#negotiated === undefined) return false;
    // Like QEMU: with MULTIPORT, nothing is sent before the guest opened the port (Linux would drop it).
    return this.multiport ? this.#announced.has(port.id) && port.guestOpen : port.id === 0;
  }

  /** Put a port's waiting output into the guest's receive buffers. */
  #flushRx(id: number): void {
    const port = this.#ports.get(id);
    if (!port || !port.hasOutput || !this.#guestAccepts(port)) return;
    const ring = this.#usable(rxQueueOf(id));
    if (!ring) return;
    ring.batch(() => {
      while (port.hasOutput) {
        const chain = ring.pop();
        if (!chain) return;
        if (chain.writableLength === 0) {
          ring.complete(chain, 0);
          this.#ignore(`receive buffer of port ${id} has no device-writable part`);
          continue;
        }
        ring.complete(chain, port.fill(chain));
      }
    });
  }

  /** Take the guest's transmit buffers for a port while its reader wants data. */
  #drainTx(id: number): void {
    const ring = this.#usable(txQueueOf(id));
    if (!ring) return;
    const port = this.#ports.get(id);
    if (!port || (this.multiport === false && id !== 0)) {
      this.#discardTx(ring, id);
      return;
    }
    if (this.#draining.has(id)) return; // a reader callback re-entered; the outer loop carries on
    this.#draining.add(id);
    try {
      ring.batch(() => {
        // A destroyed port's reader is gone for good: its data is thrown away rather than left to block the guest.
        while (!port.inputPaused || port.destroyed) {
          const chain = ring.pop();
          if (!chain) return;
          const n = chain.readableLength;
          if (n === 0 || n > MAX_TX_BUFFER) {
            ring.complete(chain, 0);
            this.#ignore(n === 0 ? `transmit buffer of port ${id} has no device-readable part`
              : `transmit buffer of ${n} bytes on port ${id} (at most ${MAX_TX_BUFFER} taken) thrown away`);
            continue;
          }
          const data = Buffer.allocUnsafe(n);
          chain.readInto(data);
          ring.complete(chain, 0);
          port.deliver(data);
        }
      });
    } finally {
      this.#draining.delete(id);
    }
  }

  /** Data on the queues of a port that does not exist: returned unread so the guest is not stuck. */
  #discardTx(ring: Vring, id: number): void {
    let bytes = 0;
    let chains = 0;
    for (let chain = ring.pop(); chain; chain = ring.pop()) {
      bytes += chain.readableLength;
      chains++;
      ring.complete(chain, 0);
    }
    if (chains === 0) return;
    this.stats.discardedBytes += bytes;
    const what = `${bytes} bytes in ${chains} buffer(s) on the transmit queue of port ${id}`;
    // Output racing a removal is expected; output for a port the driver was never told of is not.
    if (this.#gone.has(id)) this.#log.debug(`${what}, which was removed: thrown away`);
    else this.#ignore(`${what}, which does not exist`);
  }
}
