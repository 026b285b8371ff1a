/**
 * A whole switch as one object: the {@link NetSwitch}, a {@link NetPort} served on its own vhost-user socket per
 * guest, and an optional TAP uplink. What `vhost-user net` runs, and what embedders use.
 */
import { DeviceServer } from '../../device/server.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { NetPort } from './port.js';
import { formatStats, type PortCounters } from './stats.js';
import { NetSwitch } from './switch.js';
import { openTap, TapUplink } from './tap.js';

/**
 * Default adaptive poll window of a network's ports (µs), the daemons' default: a sending guest is then served
 * without a kick per burst, and an idle one costs nothing once the window has shrunk.
 */
export const DEFAULT_NET_POLL_US = 50;

/** One guest port. */
export interface NetworkPortSpec {
  /** Socket to listen on (or to connect to with `client`). */
  socketPath?: string;
  /** An inherited listening socket instead of `socketPath`. */
  socketFd?: number;
  /** Connect out to `socketPath` and reconnect when it drops. */
  client?: boolean;
  /** The port's MAC address; default a random locally administered one. */
  mac?: string;
  /** Name in stats and logs (default `port<i>`). */
  name?: string;
}

/** Options for {@link Network}. */
export interface NetworkOptions {
  ports: NetworkPortSpec[];
  /** MTU every port offers (default 1500). */
  mtu?: number;
  /** Queue pairs per port (default 1). */
  queuePairs?: number;
  /** Largest ring size (default 1024). */
  maxQueueSize?: number;
  /** MAC table aging (ms, default 300 000). */
  agingMs?: number;
  /** Permission bits of the socket files (default 0o600). */
  socketMode?: number;
  /** Client-mode reconnect delay (ms). */
  reconnectDelayMs?: number;
  /** Open (creating if needed) this TAP interface as the uplink. */
  tap?: string;
  /** Use this already open TAP (or other packet) fd as the uplink; it becomes ours. */
  tapFd?: number;
  /** Frames on `tapFd` carry a virtio-net header (opened with IFF_VNET_HDR); default false. */
  tapVnetHdr?: boolean;
  /**
   * Most microseconds of the framework's adaptive polling of the transmit rings (see `DeviceServerOptions.pollUs`;
   * default {@link DEFAULT_NET_POLL_US}; 0: notifications only).
   */
  pollUs?: number;
  /**
   * Queue worker threads: must be 0 (the default). Every port runs on the switch's thread, since a frame from one
   * port is written straight into another port's receive ring.
   */
  workers?: number;
  logger?: Logger;
}

/** A switch with its ports, their servers and the uplink. */
export class Network {
  readonly switch: NetSwitch;
  readonly ports: NetPort[];
  readonly servers: DeviceServer[];
  readonly uplink: TapUplink | undefined;
  /** The TAP interface's name, when one was opened by name. */
  readonly tapName: string | undefined;
  readonly #log: Logger;

  constructor(options: NetworkOptions) {
    if (options.ports.length === 0) throw new RangeError('a network needs at least one port');
    if (options.tap !== undefined && options.tapFd !== undefined) throw new TypeError('give tap or tapFd, not both');
    if ((options.workers ?? 0) !== 0) {
      throw new RangeError('net ports cannot run on worker threads: the switch writes frames from one port straight ' +
        'into another\'s rings, so they all share its thread');
    }
    this.#log = options.logger ?? makeLogger('net');
    this.switch = new NetSwitch({ agingMs: options.agingMs });
    this.ports = options.ports.map((spec, i) => new NetPort(this.switch, {
      name: spec.name ?? `port${i}`,
      mac: spec.mac,
      mtu: options.mtu,
      queuePairs: options.queuePairs,
      maxQueueSize: options.maxQueueSize,
      logger: this.#log.child(spec.name ?? `port${i}`),
    }));
    this.servers = options.ports.map((spec, i) => {
      const port = this.ports[i]!;
      const log = this.#log.child(port.name);
      const server = new DeviceServer(port, {
        socketPath: spec.socketPath,
        socketFd: spec.socketFd,
        client: spec.client,
        socketMode: options.socketMode,
        reconnectDelayMs: options.reconnectDelayMs,
        pollUs: options.pollUs ?? DEFAULT_NET_POLL_US,
        logger: log,
      });
      server.on('connect', () => log.info('frontend connected'));
      server.on('disconnect', (reason: string | undefined) => log.info(`frontend gone${reason ? `: ${reason}` : ''}`));
      return server;
    });
    let fd = options.tapFd;
    let vnetHdr = options.tapVnetHdr ?? false;
    if (options.tap !== undefined) {
      const tap = openTap(options.tap);
      fd = tap.fd;
      vnetHdr = tap.vnetHdr;
      this.tapName = tap.name;
    }
    this.uplink = fd === undefined ? undefined
      : new TapUplink(this.switch, fd, { name: this.tapName ?? 'uplink', vnetHdr, logger: this.#log.child('uplink') });
  }

  /** Start every port's socket. */
  listen(): this {
    for (const s of this.servers) s.listen();
    return this;
  }

  /** Counters of every port (guest ports first, then the uplink). */
  stats(): { name: string; counters: PortCounters }[] {
    const rows = this.ports.map((p) => ({ name: p.name, counters: p.stats.snapshot() }));
    if (this.uplink) rows.push({ name: this.uplink.name, counters: this.uplink.stats.snapshot() });
    return rows;
  }

  /** {@link stats} as a table. */
  formatStats(): string {
    return formatStats(this.stats());
  }

  /** Close every socket and frontend, the uplink and the switch's timer. */
  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.close()));
    this.uplink?.close();
    this.switch.close();
  }
}
