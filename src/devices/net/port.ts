/**
 * One virtio-net device: a switch port a guest plugs into over vhost-user. Queues are rx0, tx0, rx1, tx1, ...,
 * ctrl. Frames the guest transmits go into the switch; frames the switch sends here are written straight into
 * the buffers the guest posted on a receive queue, or dropped (and counted) when there are none: nothing is
 * queued, so a stopped guest costs the others nothing.
 */
import type { VirtioDevice } from '../../device/device.js';
import type { Vring } from '../../device/vring.js';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import { CommonFeature, DeviceId, featureMask, hasFeature, NetFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { CtrlAck, executeControl, MAX_CTRL_REQUEST, type ControlTarget } from './ctrl.js';
import { flowHash } from './flow.js';
import { copyBytes } from './copy.js';
import { ETH_HLEN, LEGACY_NET_HDR_SIZE, MAX_FRAME, NET_HDR_SIZE, NetHdrFlag, NetHdrGso, NetHdrOffset } from './header.js';
import { formatMac, generateMac, macKeyAt, parseMac } from './mac.js';
import { Packet } from './packet.js';
import { RxFilter } from './rx-filter.js';
import { PortStats } from './stats.js';
import type { NetSwitch, SwitchPort } from './switch.js';

/** Config space `status` bit: the link is up. */
export const NET_S_LINK_UP = 1;
/** Bytes of config space we expose: mac, status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_SIZE = 12;

/** Options for {@link NetPort}. */
export interface NetPortOptions {
  /** For stats and logs (default `port<N>`). */
  name?: string;
  /** The device's MAC address (`aa:bb:cc:dd:ee:ff` or 6 bytes); default a random locally administered one. */
  mac?: string | Uint8Array;
  /** MTU offered in config space (VIRTIO_NET_F_MTU), 68..65535; default 1500. */
  mtu?: number;
  /** Queue pairs (VIRTIO_NET_F_MQ when more than 1), 1..127; default 1. */
  queuePairs?: number;
  /** Largest ring size accepted (power of two); default 1024. */
  maxQueueSize?: number;
  /** Transmit chains taken from one ring before yielding to the event loop (default 256). */
  txBurst?: number;
  /** How often a started but disabled transmit ring is emptied (ms, default 10); see {@link NetPort}. */
  disabledPollMs?: number;
  /**
   * Keep polling a transmit ring (kicks off) for this long after it was last busy (µs, default 200; 0: always
   * wait for kicks). Trades a little CPU after a burst for far fewer wake-ups under load.
   */
  busyPollUs?: number;
  logger?: Logger;
}

const ACK = [Uint8Array.of(CtrlAck.OK), Uint8Array.of(CtrlAck.ERR)] as const;
let portCount = 0;

/** Copy `src[from, from + n)` into the chain's writable part at `at`; returns the bytes written. */
function put(chain: DescriptorChain, at: number, src: Uint8Array, from: number, n: number): number {
  const w = chain.writable;
  if (w.length === 1) {
    // One buffer (the usual layout): no views to make for small copies.
    const v = w[0]!;
    const m = Math.min(n, v.length - at);
    if (m <= 0) return 0;
    copyBytes(v, at, src, from, m);
    return m;
  }
  return chain.writeFrom(from === 0 && n === src.length ? src : src.subarray(from, from + n), at);
}

function ready(v: Vring | undefined): v is Vring {
  return v !== undefined && v.started && v.enabled && v.error === undefined;
}

/**
 * A virtio-net device attached to a {@link NetSwitch}. Serve it with a `DeviceServer`; the port stays in the
 * switch across frontends (its learned addresses are forgotten when a frontend goes away).
 *
 * A transmit ring that is started but disabled must be processed without side effects (vhost-user spec): its
 * frames are discarded and their buffers returned, counted as `txDropped`. The framework does not report kicks on
 * a disabled ring, so such rings are emptied when they are disabled, when they are enabled (what is there was
 * made available while disabled), when they stop, and every `disabledPollMs` in between.
 */
export class NetPort implements VirtioDevice, SwitchPort, ControlTarget {
  readonly deviceId = DeviceId.NET;
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly name: string;
  readonly maxQueuePairs: number;
  readonly mtu: number;
  readonly stats = new PortStats();
  readonly filter = new RxFilter();
  readonly #switch: NetSwitch;
  readonly #log: Logger;
  readonly #configuredMac: Uint8Array;
  readonly #ctrlIndex: number;
  readonly #txBurst: number;
  readonly #pollMs: number;
  readonly #busyPollMs: number;
  #mac: Uint8Array;
  readonly #config = new Uint8Array(NET_CONFIG_SIZE);
  #negotiated = 0n;
  #hdrLen = NET_HDR_SIZE;
  #mrg = false;
  #csum = false;
  #guestCsum = false;
  #mq = false;
  #ctrlVq = false;
  #ctrlPairs: number | undefined;
  /** Started rings of the current frontend, by queue index. */
  readonly #rings: (Vring | undefined)[];
  readonly #txPoll: { scheduled: boolean; notify: boolean; lastBusy: number }[];
  readonly #packet = new Packet();
  readonly #rxHdr = new Uint8Array(NET_HDR_SIZE);
  readonly #rxHdrViews = [this.#rxHdr.subarray(0, LEGACY_NET_HDR_SIZE), this.#rxHdr] as const;
  readonly #txHdr = new Uint8Array(NET_HDR_SIZE);
  readonly #txHdrViews = [this.#txHdr.subarray(0, LEGACY_NET_HDR_SIZE), this.#txHdr] as const;
  readonly #chains: DescriptorChain[] = [];
  #pollTimer: NodeJS.Timeout | undefined;
  #detached = false;

  constructor(sw: NetSwitch, options: NetPortOptions = {}) {
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > 127) throw new RangeError(`queuePairs must be 1..127, got ${pairs}`);
    const mtu = options.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new RangeError(`mtu must be 68..65535, got ${mtu}`);
    const qsize = options.maxQueueSize ?? 1024;
    if (!Number.isInteger(qsize) || qsize < 2 || qsize > 32768 || (qsize & (qsize - 1)) !== 0) {
      throw new RangeError(`maxQueueSize must be a power of two in 2..32768, got ${qsize}`);
    }
    const mac = options.mac === undefined ? generateMac()
      : typeof options.mac === 'string' ? parseMac(options.mac) : Uint8Array.from(options.mac);
    if (mac.length !== 6 || (mac[0]! & 1) !== 0) throw new RangeError(`port MAC ${formatMac(mac)} is not a unicast address`);
    this.name = options.name ?? `port${portCount++}`;
    this.#log = options.logger ?? makeLogger(`net:${this.name}`);
    this.maxQueuePairs = pairs;
    this.mtu = mtu;
    this.maxQueueSize = qsize;
    this.numQueues = 2 * pairs + 1;
    this.#ctrlIndex = 2 * pairs;
    this.#txBurst = options.txBurst ?? 256;
    this.#pollMs = options.disabledPollMs ?? 10;
    this.#busyPollMs = (options.busyPollUs ?? 200) / 1000;
    this.features = featureMask(
      NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.MTU, NetFeature.MAC, NetFeature.MRG_RXBUF, NetFeature.STATUS,
      NetFeature.CTRL_VQ, NetFeature.CTRL_RX, NetFeature.CTRL_MAC_ADDR,
    ) | (pairs > 1 ? featureMask(NetFeature.MQ) : 0n);
    this.#configuredMac = mac;
    this.#mac = mac;
    this.#rings = new Array<Vring | undefined>(this.numQueues).fill(undefined);
    this.#txPoll = Array.from({ length: this.numQueues }, () => ({ scheduled: false, notify: true, lastBusy: 0 }));
    this.filter.reset(macKeyAt(mac, 0));
    this.#writeConfig();
    this.#switch = sw;
    sw.addPort(this);
  }

  /** The device's current MAC address (the driver may change it with MAC_ADDR_SET). */
  get mac(): string {
    return formatMac(this.#mac);
  }

  /** Features the current driver accepted (0 when none is connected). */
  get negotiatedFeatures(): bigint {
    return this.#negotiated;
  }

  /** Queue pairs receive traffic is spread over: the driver's VQ_PAIRS_SET, else every pair it enabled. */
  get activeQueuePairs(): number {
    return this.#mq ? (this.#ctrlPairs ?? this.maxQueuePairs) : 1;
  }

  /** Take the port out of its switch (for good); the device stays servable but receives nothing. */
  detach(): void {
    this.#detached = true;
    this.#switch.removePort(this);
    this.#stopPolling();
  }

  // ---- config ----

  #writeConfig(): void {
    const c = this.#config;
    c.set(this.#mac, 0);
    const dv = new DataView(c.buffer);
    dv.setUint16(6, NET_S_LINK_UP, true);
    dv.setUint16(8, this.maxQueuePairs, true);
    dv.setUint16(10, this.mtu, true);
  }

  readConfig(): Uint8Array {
    return this.#config;
  }

  // ---- ControlTarget ----

  setMac(mac: Uint8Array): void {
    this.#mac = mac;
    this.filter.ownKey = macKeyAt(mac, 0);
    this.#writeConfig();
    this.#log.debug(`driver set the MAC address to ${formatMac(mac)}`);
  }

  setQueuePairs(pairs: number): void {
    this.#ctrlPairs = pairs;
  }

  // ---- VirtioDevice life cycle ----

  featuresNegotiated(features: bigint): void {
    this.#negotiated = features;
    this.#mrg = hasFeature(features, NetFeature.MRG_RXBUF);
    this.#csum = hasFeature(features, NetFeature.CSUM);
    this.#guestCsum = hasFeature(features, NetFeature.GUEST_CSUM);
    this.#mq = hasFeature(features, NetFeature.MQ);
    this.#ctrlVq = hasFeature(features, NetFeature.CTRL_VQ);
    // Legacy drivers without MRG_RXBUF use the 10-byte header (no num_buffers).
    this.#hdrLen = this.#mrg || hasFeature(features, CommonFeature.VERSION_1) ? NET_HDR_SIZE : LEGACY_NET_HDR_SIZE;
  }

  ringStarted(vring: Vring): void {
    this.#rings[vring.index] = vring;
    // Receive buffers are taken when frames arrive: the driver need not kick when it posts them. Transmit rings
    // start with kicks on, whatever a previous backend left in the ring's flags.
    vring.queue?.setNotification(!this.#isRx(vring.index));
    this.#txPoll[vring.index]!.notify = true;
    this.#updatePolling();
  }

  ringStopping(vring: Vring): void {
    if (this.#isTx(vring.index) && !vring.enabled) this.#discardTx(vring);
    // Leave the ring asking for kicks, for whoever drives it next.
    vring.queue?.setNotification(true);
    this.#txPoll[vring.index]!.notify = true;
    if (this.#rings[vring.index] === vring) this.#rings[vring.index] = undefined;
    this.#updatePolling();
  }

  ringEnableChanged(vring: Vring): void {
    if (this.#isTx(vring.index) && vring.started) this.#discardTx(vring);
    this.#updatePolling();
  }

  reset(): void {
    this.#negotiated = 0n;
    this.#mrg = this.#csum = this.#guestCsum = this.#mq = this.#ctrlVq = false;
    this.#hdrLen = NET_HDR_SIZE;
    this.#ctrlPairs = undefined;
    this.#rings.fill(undefined);
    this.#mac = this.#configuredMac;
    this.filter.reset(macKeyAt(this.#mac, 0));
    this.#writeConfig();
    this.#stopPolling();
    const n = this.#switch.forget(this);
    if (n > 0) this.#log.debug(`frontend gone: forgot ${n} address(es)`);
  }

  onAvailable(vring: Vring): void {
    const i = vring.index;
    if (i === this.#ctrlIndex) this.#serveControl(vring);
    else if ((i & 1) === 1) this.#drainTx(vring);
    // Receive rings: buffers are taken when frames arrive.
  }

  #isRx(index: number): boolean {
    return index < this.#ctrlIndex && (index & 1) === 0;
  }

  #isTx(index: number): boolean {
    return index < this.#ctrlIndex && (index & 1) === 1;
  }

  // ---- transmit: guest -> switch ----

  /**
   * A kick (or start, or enable) on a transmit ring. A busy ring is then polled instead: kicks stay off and the
   * ring is looked at on every event-loop turn until it has been idle for `busyPollUs` (waking a sleeping thread
   * per kick costs tens of microseconds, far more than a look at the ring).
   */
  #drainTx(vring: Vring): void {
    if (!vring.enabled) {
      this.#discardTx(vring);
      return;
    }
    const moved = this.#txBurstOnce(vring);
    const state = this.#txPoll[vring.index]!;
    if (moved > 0 || vring.hasAvailable()) {
      state.lastBusy = performance.now();
      if (this.#busyPollMs > 0 && state.notify) {
        state.notify = false;
        vring.queue?.setNotification(false);
      }
      this.#scheduleTx(vring.index);
    }
  }

  /** Up to `txBurst` chains into the switch; returns how many. */
  #txBurstOnce(vring: Vring): number {
    let n = 0;
    for (; n < this.#txBurst; n++) {
      const chain = vring.pop();
      if (chain === null) break;
      try {
        this.#transmit(chain);
      } catch (err) {
        // A bug of ours, not the guest's: keep the ring going.
        this.stats.txErrors++;
        this.#log.error(`transmit failed: ${(err as Error).stack ?? String(err)}`);
      }
      vring.complete(chain, 0);
    }
    return n;
  }

  #scheduleTx(index: number): void {
    const state = this.#txPoll[index]!;
    if (state.scheduled) return;
    state.scheduled = true;
    setImmediate(() => {
      state.scheduled = false;
      const vring = this.#rings[index];
      if (!ready(vring)) return;
      let moved = 0;
      vring.batch(() => (moved = this.#txBurstOnce(vring)));
      const now = performance.now();
      if (moved > 0) {
        state.lastBusy = now;
        this.#scheduleTx(index);
      } else if (!state.notify && now - state.lastBusy < this.#busyPollMs) {
        this.#scheduleTx(index);
      } else if (!state.notify) {
        // Idle: back to kicks. Buffers added before the driver saw that would get no kick: look once more.
        state.notify = true;
        if (vring.queue?.setNotification(true)) {
          state.lastBusy = now;
          this.#scheduleTx(index);
        }
      } else if (vring.hasAvailable()) {
        this.#scheduleTx(index);
      }
    });
  }

  #transmit(chain: DescriptorChain): void {
    const st = this.stats;
    const hdrLen = this.#hdrLen;
    const len = chain.readableLength - hdrLen;
    if (len < ETH_HLEN || len > MAX_FRAME) {
      st.txErrors++;
      return;
    }
    const packet = this.#packet;
    packet.reset(len);
    const frame = packet.buffer;
    let flags: number;
    let gso: number;
    let csumStart: number;
    let csumOffset: number;
    const views = chain.readable;
    if (views.length === 1) {
      // Header and frame in one buffer (the usual layout): read the fields in place, copy the frame once.
      const v = views[0]!;
      flags = v[NetHdrOffset.FLAGS]!;
      gso = v[NetHdrOffset.GSO_TYPE]!;
      csumStart = v[NetHdrOffset.CSUM_START]! | (v[NetHdrOffset.CSUM_START + 1]! << 8);
      csumOffset = v[NetHdrOffset.CSUM_OFFSET]! | (v[NetHdrOffset.CSUM_OFFSET + 1]! << 8);
      copyBytes(frame, 0, v, hdrLen, len);
    } else {
      const hdr = this.#txHdr;
      chain.readInto(this.#txHdrViews[hdrLen === NET_HDR_SIZE ? 1 : 0]);
      flags = hdr[NetHdrOffset.FLAGS]!;
      gso = hdr[NetHdrOffset.GSO_TYPE]!;
      csumStart = hdr[NetHdrOffset.CSUM_START]! | (hdr[NetHdrOffset.CSUM_START + 1]! << 8);
      csumOffset = hdr[NetHdrOffset.CSUM_OFFSET]! | (hdr[NetHdrOffset.CSUM_OFFSET + 1]! << 8);
      chain.readInto(packet.frame, hdrLen);
    }
    if (gso !== NetHdrGso.NONE) {
      // We offer no segmentation offload: a GSO frame is a driver error.
      st.txErrors++;
      return;
    }
    if ((flags & NetHdrFlag.NEEDS_CSUM) !== 0) {
      if (!this.#csum || csumStart + csumOffset + 2 > len) {
        st.txErrors++;
        return;
      }
      packet.needsCsum = true;
      packet.csumStart = csumStart;
      packet.csumOffset = csumOffset;
    }
    st.txPackets++;
    st.txBytes += len;
    this.#switch.forward(this, packet);
  }

  #discardTx(vring: Vring): void {
    for (let chain = vring.pop(); chain !== null; chain = vring.pop()) {
      vring.complete(chain, 0);
      this.stats.txDropped++;
    }
  }

  #updatePolling(): void {
    let disabled = false;
    for (let i = 1; i < this.#ctrlIndex; i += 2) {
      const v = this.#rings[i];
      if (v !== undefined && v.started && !v.enabled) disabled = true;
    }
    if (disabled && this.#pollTimer === undefined) {
      this.#pollTimer = setInterval(() => {
        for (let i = 1; i < this.#ctrlIndex; i += 2) {
          const v = this.#rings[i];
          if (v !== undefined && v.started && !v.enabled) this.#discardTx(v);
        }
      }, this.#pollMs);
      this.#pollTimer.unref();
    } else if (!disabled) {
      this.#stopPolling();
    }
  }

  #stopPolling(): void {
    if (this.#pollTimer !== undefined) clearInterval(this.#pollTimer);
    this.#pollTimer = undefined;
  }

  // ---- receive: switch -> guest ----

  /** A frame from the switch: into the guest's receive buffers now, or dropped. */
  receive(packet: Packet): void {
    const st = this.stats;
    if (this.#detached) return;
    if (!this.filter.accepts(packet.buffer)) {
      st.rxFiltered++;
      return;
    }
    const vring = this.#pickRx(packet);
    if (vring === undefined || !vring.hasAvailable()) {
      st.rxDropped++;
      return;
    }
    if (packet.needsCsum && !this.#guestCsum && packet.completeChecksum()) st.csumComputed++;
    const hdrLen = this.#hdrLen;
    const len = packet.length;
    const need = hdrLen + len;
    const hdr = this.#rxHdr;
    hdr.fill(0);
    if (packet.needsCsum) {
      hdr[NetHdrOffset.FLAGS] = NetHdrFlag.NEEDS_CSUM;
      hdr[NetHdrOffset.CSUM_START] = packet.csumStart & 0xff;
      hdr[NetHdrOffset.CSUM_START + 1] = packet.csumStart >>> 8;
      hdr[NetHdrOffset.CSUM_OFFSET] = packet.csumOffset & 0xff;
      hdr[NetHdrOffset.CSUM_OFFSET + 1] = packet.csumOffset >>> 8;
    }
    const hdrView = this.#rxHdrViews[hdrLen === NET_HDR_SIZE ? 1 : 0];
    const frame = packet.buffer;

    if (!this.#mrg) {
      const chain = vring.pop();
      if (chain === null) {
        st.rxDropped++;
        return;
      }
      if (chain.writableLength < need) {
        // The driver must post buffers for the largest frame; hand this one back empty.
        vring.complete(chain, 0);
        st.rxErrors++;
        return;
      }
      if (hdrLen === NET_HDR_SIZE) hdr[NetHdrOffset.NUM_BUFFERS] = 1;
      put(chain, 0, hdrView, 0, hdrLen);
      put(chain, hdrLen, frame, 0, len);
      vring.complete(chain, need);
    } else {
      // Mergeable buffers: as many chains as the frame needs, the header (with their count) in the first.
      const chains = this.#chains;
      let room = 0;
      while (room < need) {
        const c = vring.pop();
        if (c === null) break;
        chains.push(c);
        room += c.writableLength;
      }
      if (room < need || chains[0]!.writableLength < hdrLen) {
        // Out of buffers part way, or a first buffer too small for the header: return them unused.
        for (const c of chains) vring.complete(c, 0);
        if (room < need) st.rxDropped++;
        else st.rxErrors++;
        chains.length = 0;
        return;
      }
      const count = chains.length;
      hdr[NetHdrOffset.NUM_BUFFERS] = count & 0xff;
      hdr[NetHdrOffset.NUM_BUFFERS + 1] = count >>> 8;
      let off = 0;
      for (let k = 0; k < count; k++) {
        const c = chains[k]!;
        let written = 0;
        if (k === 0) written = put(c, 0, hdrView, 0, hdrLen);
        const n = Math.min(c.writableLength - written, len - off);
        if (n > 0) written += put(c, written, frame, off, n);
        off += n;
        vring.complete(c, written);
      }
      chains.length = 0;
    }
    st.rxPackets++;
    st.rxBytes += len;
  }

  /** The receive ring for this frame: the flow's pair among those in use, else the next ready one. */
  #pickRx(packet: Packet): Vring | undefined {
    const rings = this.#rings;
    const pairs = this.activeQueuePairs;
    if (pairs === 1) {
      const v = rings[0];
      return ready(v) ? v : undefined;
    }
    let q = flowHash(packet.buffer, packet.length) % pairs;
    for (let tries = 0; tries < pairs; tries++) {
      const v = rings[2 * q];
      if (ready(v)) return v;
      q = q + 1 === pairs ? 0 : q + 1;
    }
    return undefined;
  }

  // ---- control queue ----

  #serveControl(vring: Vring): void {
    for (let chain = vring.pop(); chain !== null; chain = vring.pop()) {
      let ack: number = CtrlAck.ERR;
      const size = chain.readableLength;
      if (this.#ctrlVq && chain.writableLength >= 1 && size >= 2 && size <= MAX_CTRL_REQUEST) {
        try {
          const req = chain.readAll();
          ack = executeControl(this, req[0]!, req[1]!, req.subarray(2));
        } catch (err) {
          this.#log.error(`control command failed: ${(err as Error).stack ?? String(err)}`);
        }
      }
      vring.complete(chain, chain.writableLength >= 1 ? chain.writeFrom(ACK[ack === CtrlAck.OK ? 0 : 1]) : 0);
    }
  }
}
