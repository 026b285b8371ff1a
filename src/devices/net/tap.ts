/**
 * The uplink: a TAP device (or anything that moves one Ethernet frame per read/write on a non-blocking fd) as a
 * switch port, so guests reach the host's network stack.
 *
 * With a virtio-net header on the TAP (IFF_VNET_HDR, what {@link openTap} asks for) a frame whose checksum the
 * guest left partial goes to the kernel as it is, and the kernel completes it if it ever must; without one
 * (a plain packet fd) partial checksums are completed in software first.
 */
import fs from 'node:fs';
import { native, closeQuietly, isSystemError, Readiness, type FdWatcher } from '../../native/index.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { ETH_HLEN, LEGACY_NET_HDR_SIZE, MAX_FRAME, NetHdrFlag, NetHdrGso, NetHdrOffset } from './header.js';
import { Packet } from './packet.js';
import { PortStats } from './stats.js';
import type { NetSwitch, SwitchPort } from './switch.js';

/** An open TAP device. */
export interface TapHandle {
  /** Non-blocking, close-on-exec fd of /dev/net/tun attached to the interface. */
  fd: number;
  /** The interface name the kernel gave (the one asked for, or a generated one for ''). */
  name: string;
  /** Frames carry the 10-byte virtio-net header (IFF_VNET_HDR). */
  vnetHdr: boolean;
}

/** Is TAP support (`native.tapOpen`) in this build of the addon? */
export function tapSupported(): boolean {
  return typeof (native as Partial<typeof native>).tapOpen === 'function';
}

/**
 * Open (and create if missing; that needs CAP_NET_ADMIN) the TAP interface `name` (IFF_TAP | IFF_NO_PI, with
 * IFF_VNET_HDR unless `vnetHdr` is false), non-blocking. The interface is not brought up here.
 * @throws RangeError for a bad name; the SystemError of open/ioctl.
 */
export function openTap(name: string, options: { vnetHdr?: boolean } = {}): TapHandle {
  if (!tapSupported()) {
    throw new Error('this build of the native addon cannot open TAP devices (no tapOpen); pass an open TAP fd instead');
  }
  if (name.length > 15 || name.includes('\0') || name.includes('/')) {
    throw new RangeError(`TAP name '${name}' must be at most 15 characters, without '/'`);
  }
  const vnetHdr = options.vnetHdr ?? true;
  const { fd, name: actual } = native.tapOpen(name, vnetHdr);
  return { fd, name: actual, vnetHdr };
}

/** Options for {@link TapUplink}. */
export interface TapUplinkOptions {
  /** For stats and logs (default `uplink`). */
  name?: string;
  /** Each frame is preceded by the 10-byte virtio-net header (a TAP opened with IFF_VNET_HDR); default false. */
  vnetHdr?: boolean;
  /** Frames read per readiness callback before yielding (default 256). */
  readBurst?: number;
  /** Close the fd on {@link TapUplink.close} (default true). */
  ownsFd?: boolean;
  logger?: Logger;
}

/**
 * A switch port backed by a packet fd. Reads are driven by fd readiness; writes are non-blocking and a frame
 * the kernel will not take right now is dropped (counted as `rxDropped`), never queued.
 */
export class TapUplink implements SwitchPort {
  readonly name: string;
  readonly fd: number;
  readonly vnetHdr: boolean;
  readonly stats = new PortStats();
  readonly #switch: NetSwitch;
  readonly #log: Logger;
  readonly #readBurst: number;
  readonly #ownsFd: boolean;
  readonly #packet = new Packet();
  readonly #rxHdr = new Uint8Array(LEGACY_NET_HDR_SIZE);
  readonly #txHdr = new Uint8Array(LEGACY_NET_HDR_SIZE);
  readonly #readInto: [Uint8Array, Uint8Array];
  /** Header and frame for writev, reused. */
  readonly #writeFrom: [Uint8Array, Uint8Array];
  #watcher: FdWatcher | undefined;
  #closed = false;

  constructor(sw: NetSwitch, fd: number, options: TapUplinkOptions = {}) {
    this.name = options.name ?? 'uplink';
    this.fd = fd;
    this.vnetHdr = options.vnetHdr ?? false;
    this.#switch = sw;
    this.#log = options.logger ?? makeLogger(`net:${this.name}`);
    this.#readBurst = options.readBurst ?? 256;
    this.#ownsFd = options.ownsFd ?? true;
    this.#readInto = [this.#txHdr, this.#packet.buffer];
    this.#writeFrom = [this.#rxHdr, this.#rxHdr];
    native.setNonBlocking(fd, true);
    sw.addPort(this);
    this.#watcher = native.watch(fd, (events, errno) => this.#onReadable(events, errno));
    this.#watcher.start(Readiness.READABLE);
  }

  #onReadable(_events: number, errno?: number): void {
    if (errno !== undefined) {
      this.#log.error(`uplink fd failed (errno ${errno}); no more frames from it`);
      this.#watcher?.stop();
      return;
    }
    try {
      this.#readBurstOnce();
    } finally {
      // Guests publish what this burst gave them: one used-ring update and notification per ring.
      this.#switch.publishReceived();
    }
  }

  #readBurstOnce(): void {
    const packet = this.#packet;
    const hdrLen = this.vnetHdr ? LEGACY_NET_HDR_SIZE : 0;
    for (let n = this.#readBurst; n > 0 && !this.#closed; n--) {
      let got: number;
      try {
        got = hdrLen === 0 ? fs.readSync(this.fd, packet.buffer, 0, MAX_FRAME, null) : fs.readvSync(this.fd, this.#readInto);
      } catch (err) {
        if (isSystemError(err, 'EAGAIN') || isSystemError(err, 'EWOULDBLOCK')) return;
        this.#log.error(`reading the uplink failed: ${(err as Error).message}`);
        this.#watcher?.stop();
        return;
      }
      if (got === 0) {
        this.#log.warn('uplink closed by the other end');
        this.#watcher?.stop();
        return;
      }
      const len = got - hdrLen;
      if (len < ETH_HLEN) {
        this.stats.txErrors++;
        continue;
      }
      packet.reset(len);
      if (hdrLen !== 0 && !this.#applyHeader(packet, len)) {
        this.stats.txErrors++;
        continue;
      }
      this.stats.txPackets++;
      this.stats.txBytes += len;
      this.#switch.forward(this, packet);
    }
  }

  /** Take the offload state from a header read with the frame; false for what we cannot forward (GSO). */
  #applyHeader(packet: Packet, len: number): boolean {
    const h = this.#txHdr;
    if (h[NetHdrOffset.GSO_TYPE] !== NetHdrGso.NONE) return false;
    if ((h[NetHdrOffset.FLAGS]! & NetHdrFlag.NEEDS_CSUM) !== 0) {
      const start = h[NetHdrOffset.CSUM_START]! | (h[NetHdrOffset.CSUM_START + 1]! << 8);
      const offset = h[NetHdrOffset.CSUM_OFFSET]! | (h[NetHdrOffset.CSUM_OFFSET + 1]! << 8);
      if (start + offset + 2 > len) return false;
      packet.needsCsum = true;
      packet.csumStart = start;
      packet.csumOffset = offset;
    }
    return true;
  }

  /** A frame from the switch: written to the fd now, or dropped. */
  receive(packet: Packet): void {
    if (this.#closed) return;
    try {
      if (this.vnetHdr) {
        const h = this.#rxHdr;
        h.fill(0);
        if (packet.needsCsum) {
          h[NetHdrOffset.FLAGS] = NetHdrFlag.NEEDS_CSUM;
          h[NetHdrOffset.CSUM_START] = packet.csumStart & 0xff;
          h[NetHdrOffset.CSUM_START + 1] = packet.csumStart >>> 8;
          h[NetHdrOffset.CSUM_OFFSET] = packet.csumOffset & 0xff;
          h[NetHdrOffset.CSUM_OFFSET + 1] = packet.csumOffset >>> 8;
        }
        const iov = this.#writeFrom;
        iov[1] = packet.frame;
        fs.writevSync(this.fd, iov);
      } else {
        if (packet.needsCsum && packet.completeChecksum()) this.stats.csumComputed++;
        fs.writeSync(this.fd, packet.frame);
      }
    } catch (err) {
      // EAGAIN (queue full), EIO (interface down): the frame is lost, as on a wire.
      this.stats.rxDropped++;
      if (!isSystemError(err, 'EAGAIN') && !isSystemError(err, 'EIO')) {
        this.#log.debug(`writing to the uplink failed: ${(err as Error).message}`);
      }
      return;
    }
    this.stats.rxPackets++;
    this.stats.rxBytes += packet.length;
  }

  /** Leave the switch, stop reading, and close the fd if it is ours. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#switch.removePort(this);
    this.#watcher?.close();
    this.#watcher = undefined;
    if (this.#ownsFd) closeQuietly(this.fd);
  }
}
