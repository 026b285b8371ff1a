/**
 * One virtio-net device: a switch port a guest plugs into over vhost-user. Queues are rx0, tx0, rx1, tx1, ...,
 * ctrl. Frames the guest transmits go into the switch; frames the switch sends here are written straight into
 * the buffers the guest posted on a receive queue, or dropped (and counted) when there are none: nothing is
 * queued, so a stopped guest costs the others nothing.
 */
import type { VirtioDevice } from '../../device/device.js';
import type { Vring } from '../../device/vring.js';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import type { MemoryRegion } from '../../memory/region.js';
import { ViewCache } from '../../memory/view-cache.js';
import { CommonFeature, DeviceId, featureMask, hasFeature, NetFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import { CtrlAck, executeControl, MAX_CTRL_REQUEST, type ControlTarget } from './ctrl.js';
import { flowHash } from './flow.js';
import { copyFromViewList, copyToViewList, forgetViews, LITTLE_ENDIAN } from './copy.js';
import { ETH_HLEN, LEGACY_NET_HDR_SIZE, MAX_FRAME, NET_HDR_SIZE, NetHdrFlag, NetHdrGso, NetHdrOffset } from './header.js';
import { formatMac, generateMac, macKeyAt, parseMac } from './mac.js';
import { HEAD_BYTES, Packet } from './packet.js';
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
  /**
   * Most transmit chains taken from one ring in one pass (default: the ring size, i.e. everything the guest has
   * made available when the pass starts). What is left, or arrives meanwhile, gets another pass on the next
   * event-loop turn, so one busy guest cannot hold the thread.
   */
  txBurst?: number;
  /** How often a started but disabled transmit ring is emptied (ms, default 10); see {@link NetPort}. */
  disabledPollMs?: number;
  logger?: Logger;
}

/** NetHdrFlag.NEEDS_CSUM as a literal: an imported constant is a cell load and a check at every use. */
const NEEDS_CSUM = 1;
// The per-frame code writes header offsets and limits as literals (see #transmit): they must be these.
if (NetHdrFlag.NEEDS_CSUM !== NEEDS_CSUM || NetHdrGso.NONE !== 0 || ETH_HLEN !== 14 || MAX_FRAME !== 65553 ||
  NetHdrOffset.FLAGS !== 0 || NetHdrOffset.GSO_TYPE !== 1 || NetHdrOffset.HDR_LEN !== 2 || NetHdrOffset.GSO_SIZE !== 4 ||
  NetHdrOffset.CSUM_START !== 6 || NetHdrOffset.CSUM_OFFSET !== 8 || NetHdrOffset.NUM_BUFFERS !== 10 ||
  NET_HDR_SIZE !== 12 || LEGACY_NET_HDR_SIZE !== 10) {
  throw new Error('virtio-net header constants changed: update the literals in port.ts');
}
const ACK = [Uint8Array.of(CtrlAck.OK), Uint8Array.of(CtrlAck.ERR)] as const;
/** Transmit chains between used-ring updates within one pass (a power of two). */
const PUBLISH_EVERY = 64;
/** Transmit completions between used-index publications (Vring.publishEvery) within a pass. */
const TX_PUBLISH_EVERY = 32;
let portCount = 0;

/**
 * Copy frame bytes `[from, from + n)` of `packet` into the chain's writable part at `at` (the caller checked it
 * has room), straight from the sender's buffer where the frame still is there.
 */
function putFrame(chain: DescriptorChain, at: number, packet: Packet, from: number, n: number): void {
  const w = chain.writable;
  let skip = at;
  let done = 0;
  for (let i = 0; i < w.length && done < n; i++) {
    const v = w[i]!;
    const len = v.length;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const m = len - skip < n - done ? len - skip : n - done;
    packet.copyTo(v, skip, from + done, m);
    done += m;
    skip = 0;
  }
}

/** (Explicit comparisons: a bare truthiness test of a field is a generic ToBoolean, ~10 instructions.) */
function ready(v: Vring | undefined): v is Vring {
  return v !== undefined && v.started === true && v.enabled === true && v.error === undefined;
}

/**
 * A virtio-net device attached to a {@link NetSwitch}. Serve it with a `DeviceServer`; the port stays in the
 * switch across frontends (its learned addresses are forgotten when a frontend goes away).
 *
 * Transmit rings are the ones the framework polls (`pollQueue`); receive rings are not: their buffers are taken
 * when frames arrive, and their completions are published once per sender's pass ({@link NetSwitch.publishReceived}),
 * with at most one notification per ring and pass.
 *
 * A transmit ring that is started but disabled must be processed without side effects (vhost-user spec): its
 * frames are discarded and their buffers returned, counted as `txDropped`. Besides on kicks, such rings are
 * emptied when they are disabled, when they are enabled (what is there was made available while disabled), when
 * they stop, and every `disabledPollMs` in between (a driver that suppressed kicks still gets its buffers back).
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
  /** The control queue: 2 × max pairs with MQ negotiated, else 2 (virtio 1.2, 5.1.2). */
  #ctrlIndex: number;
  readonly #txBurst: number;
  readonly #pollMs: number;
  #mac: Uint8Array;
  readonly #config = new Uint8Array(NET_CONFIG_SIZE);
  #negotiated = 0n;
  #hdrLen = NET_HDR_SIZE;
  /** #hdrLen is NET_HDR_SIZE (12 bytes, with num_buffers), not the legacy 10. */
  #numBuffersField = true;
  /**
   * Headers and frames may be read and written as little-endian words in place: the 12-byte header (a frame
   * after it is word-aligned when the header is) on a little-endian host.
   */
  #words = LITTLE_ENDIAN;
  #mrg = false;
  #csum = false;
  #guestCsum = false;
  #mq = false;
  #ctrlVq = false;
  #ctrlPairs: number | undefined;
  /** Started rings of the current frontend, by queue index. */
  readonly #rings: (Vring | undefined)[];
  /**
   * Views of this guest's transmit buffers, made only where a frame is not read as words or a receiver needs
   * one (shared with #packet; cleared when the frontend goes, to let its mappings go).
   */
  readonly #views = new ViewCache(4096);
  readonly #packet = new Packet(MAX_FRAME, this.#views);
  /** A header built here when the chain's first buffer cannot take it in place. */
  readonly #rxHdr = new Uint8Array(NET_HDR_SIZE);
  /** A transmit header split over buffers, gathered. */
  readonly #txHdr = new Uint8Array(NET_HDR_SIZE);
  /** The view list of a single transmit buffer that is not read as words (see #transmitSingle). */
  readonly #oneView: Uint8Array[] = [new Uint8Array(0)];
  /** Mergeable receive: the chains one frame takes (filled by index, never emptied: no storage churn). */
  readonly #chains: DescriptorChain[] = [];
  /** Receive completions wait for {@link publish} (the switch knows we are due). */
  #rxDirty = false;
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
    this.#txBurst = options.txBurst ?? 0;
    if (!Number.isInteger(this.#txBurst) || this.#txBurst < 0) throw new RangeError(`txBurst must be >= 0, got ${this.#txBurst}`);
    this.#pollMs = options.disabledPollMs ?? 10;
    this.features = featureMask(
      NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.MTU, NetFeature.MAC, NetFeature.MRG_RXBUF, NetFeature.STATUS,
      NetFeature.CTRL_VQ, NetFeature.CTRL_RX, NetFeature.CTRL_MAC_ADDR,
    ) | (pairs > 1 ? featureMask(NetFeature.MQ) : 0n);
    this.#configuredMac = mac;
    this.#mac = mac;
    this.#rings = new Array<Vring | undefined>(this.numQueues).fill(undefined);
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
    // Without MQ the driver has one pair, and its control queue is queue 2. Moved only while no ring runs: a
    // frontend that changes MQ under running rings keeps the layout they started with.
    const ctrl = this.#mq ? 2 * this.maxQueuePairs : 2;
    if (ctrl !== this.#ctrlIndex) {
      if (this.#rings.every((r) => r === undefined)) this.#ctrlIndex = ctrl;
      else this.#log.warn(`features changed MQ while rings run: the control queue stays queue ${this.#ctrlIndex}`);
    }
    // Legacy drivers without MRG_RXBUF use the 10-byte header (no num_buffers).
    this.#hdrLen = this.#mrg || hasFeature(features, CommonFeature.VERSION_1) ? NET_HDR_SIZE : LEGACY_NET_HDR_SIZE;
    this.#numBuffersField = this.#hdrLen === NET_HDR_SIZE;
    this.#words = this.#numBuffersField && LITTLE_ENDIAN;
  }

  ringStarted(vring: Vring): void {
    this.#rings[vring.index] = vring;
    // Receive buffers are taken when frames arrive: the driver need not kick when it posts them. Transmit rings
    // start with kicks on (the framework's poll loop turns them off while it polls).
    vring.setNotification(!this.#isRx(vring.index));
    // A transmit frame costs a few hundred nanoseconds and senders reclaim buffers in bursts (DPDK's every 32):
    // publishing every 8 made the used-index store (a fence on a line the sender polls) a tenth of the time.
    if (this.#isTx(vring.index)) vring.publishEvery = TX_PUBLISH_EVERY;
    this.#updatePolling();
  }

  ringStopping(vring: Vring): void {
    if (this.#isTx(vring.index) && !vring.enabled) this.#discardTx(vring);
    // Leave the ring asking for kicks, for whoever drives it next.
    vring.setNotification(true);
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
    this.#numBuffersField = true;
    this.#words = LITTLE_ENDIAN;
    this.#ctrlPairs = undefined;
    this.#ctrlIndex = 2 * this.maxQueuePairs;
    this.#rings.fill(undefined);
    this.#mac = this.#configuredMac;
    this.filter.reset(macKeyAt(this.#mac, 0));
    this.#writeConfig();
    this.#stopPolling();
    // Let the old frontend's mappings go (the copy helpers remember guest views by object).
    forgetViews();
    this.#views.clear();
    const n = this.#switch.forget(this);
    if (n > 0) this.#log.debug(`frontend gone: forgot ${n} address(es)`);
  }

  onAvailable(vring: Vring): boolean {
    const i = vring.index;
    if (i === this.#ctrlIndex) this.#serveControl(vring);
    else if ((i & 1) === 1) return this.#drainTx(vring);
    // Receive rings: buffers are taken when frames arrive.
    return false;
  }

  /** The framework's poll loop watches the transmit rings only (receive buffers wait for frames). */
  pollQueue(index: number): boolean {
    return this.#isTx(index);
  }

  #isRx(index: number): boolean {
    return index < this.#ctrlIndex && (index & 1) === 0;
  }

  #isTx(index: number): boolean {
    return index < this.#ctrlIndex && (index & 1) === 1;
  }

  // ---- transmit: guest -> switch ----

  /**
   * New transmit buffers (a kick, a poll, a start or an enable): one pass over what is available. Returns true
   * when the pass stopped at its limit: the framework then runs another pass without waiting for a kick (even if
   * the ring looks empty now, since only a pop that finds it empty asks the driver for the next kick).
   */
  #drainTx(vring: Vring): boolean {
    if (vring.enabled === false) {
      this.#discardTx(vring);
      return false;
    }
    const max = this.#txBurst > 0 ? this.#txBurst : vring.size;
    // Counted once per pass: a counter bumped per frame is a load, an add and a store into another object.
    let packets = 0;
    let bytes = 0;
    let n = 0;
    // The usual layout (header and frame in one buffer) is taken without a chain object or views, when headers
    // are read as words (below: #transmitSingle); anything else as a chain.
    const single = this.#words === true ? vring.single : null;
    for (; n < max; n++) {
      let len = -1;
      const head = single === null ? -2 : vring.popSingle();
      if (head >= 0) {
        try {
          len = this.#transmitSingle(single!.region!, single!.offset, single!.length);
        } catch (err) {
          this.#transmitFailed(err);
        }
        vring.completeHead(head, 0);
      } else {
        if (head === -1) break;
        const chain = vring.pop();
        if (chain === null) break;
        try {
          len = this.#transmit(chain);
        } catch (err) {
          this.#transmitFailed(err);
        }
        // Nothing reads the packet's view of the chain after this (receivers ran inside #transmit; the next
        // frame replaces it), so the chain can go back now; the reference itself is dropped once per pass, below.
        vring.complete(chain, 0);
      }
      if (len >= 0) {
        packets++;
        bytes += len;
      }
      if ((n & (PUBLISH_EVERY - 1)) === PUBLISH_EVERY - 1) {
        // A long pass publishes as it goes, so that the sender reuses its buffers (and receivers see frames)
        // while we work instead of after: otherwise the two take turns.
        vring.flush();
        this.#switch.publishReceived();
      }
    }
    const st = this.stats;
    st.txPackets += packets;
    st.txBytes += bytes;
    this.#packet.release();
    // Receivers publish what this pass gave them: one used-ring update and at most one notification each.
    if (n > 0) this.#switch.publishReceived();
    return n === max;
  }

  /**
   * One frame into the switch: returns its length, or -1 when it was counted as an error. The chain stays ours
   * until the caller completes it. (Header offsets and limits are literals here, named in comments: an imported
   * constant costs a cell load and a check at every use, in a function that runs per frame.)
   */
  #transmit(chain: DescriptorChain): number {
    const hdrLen = this.#hdrLen;
    const len = chain.readableLength - hdrLen;
    // ETH_HLEN .. MAX_FRAME
    if (len < 14 || len > 65553) {
      this.stats.txErrors++;
      return -1;
    }
    if (this.#words === true) {
      // The usual layout: header and frame in one buffer of a known region, word-aligned. Read in place through
      // the region's word view (no view getters, three word loads for the twelve address bytes).
      const r = chain.readableRegions[0]!;
      if (r !== null && chain.readableLengths[0]! === len + 12) {
        const w = r.wordIndex(chain.readableOffsets[0]!);
        if (w >= 0) return this.#transmitWords(r, w, len);
      }
    }
    return this.#transmitViews(chain.readable, hdrLen, len);
  }

  /**
   * {@link #transmit} for a `hdrLen`-byte header and a `len`-byte frame (checked against ETH_HLEN..MAX_FRAME)
   * in `views`, in any layout.
   */
  #transmitViews(views: readonly Uint8Array[], hdrLen: number, len: number): number {
    // The header fields are read once, from the guest's buffer when the header is in one piece (the usual layout).
    let h = views[0]!;
    if (h.length < hdrLen) {
      h = this.#txHdr;
      copyFromViewList(h, 0, views, 0, hdrLen);
    }
    // gso_type (offset 1) must be NONE: we offer no segmentation offload, a GSO frame is a driver error.
    if (h[1]! !== 0) {
      this.stats.txErrors++;
      return -1;
    }
    const packet = this.#packet;
    // flags (offset 0) & NEEDS_CSUM
    if ((h[0]! & NEEDS_CSUM) !== 0) {
      // csum_start (offset 6), csum_offset (offset 8), little-endian u16s
      const csumStart = h[6]! | (h[7]! << 8);
      const csumOffset = h[8]! | (h[9]! << 8);
      if (!this.#csum || csumStart + csumOffset + 2 > len) {
        this.stats.txErrors++;
        return -1;
      }
      packet.attach(views, hdrLen, len);
      packet.needsCsum = true;
      packet.csumStart = csumStart;
      packet.csumOffset = csumOffset;
    } else {
      packet.attach(views, hdrLen, len);
    }
    this.#switch.forward(this, packet);
    return len;
  }

  /** A bug of ours, not the guest's: counted and logged, and the ring keeps going. */
  #transmitFailed(err: unknown): void {
    this.stats.txErrors++;
    this.#log.error(`transmit failed: ${(err as Error).stack ?? String(err)}`);
  }

  /**
   * {@link #transmit} for a chain that is one buffer, `total` bytes at byte `off` of `r.buffer` (from
   * `Vring.popSingle`; only with the 12-byte header read as words, see {@link #words}).
   */
  #transmitSingle(r: MemoryRegion, off: number, total: number): number {
    const len = total - 12;
    // ETH_HLEN .. MAX_FRAME
    if (len < 14 || len > 65553) {
      this.stats.txErrors++;
      return -1;
    }
    const w = r.wordIndex(off);
    if (w >= 0) return this.#transmitWords(r, w, len);
    // Not word-aligned (or no word view): the general path, over a view of the buffer.
    const views = this.#oneView;
    views[0] = this.#views.get(r, off, total);
    return this.#transmitViews(views, 12, len);
  }

  /**
   * {@link #transmit} for a 12-byte header at word `w` of `r.u32` (see `MemoryRegion.wordIndex`), followed by
   * the `len`-byte frame. Header fields as little-endian words: flags, gso_type, hdr_len (word 0, bytes 0-2),
   * csum_start (word 1, high half), csum_offset (word 2, low half).
   */
  #transmitWords(r: MemoryRegion, w: number, len: number): number {
    const words = r.u32!;
    const x = words[w]!;
    // gso_type NONE
    if ((x & 0xff00) !== 0) {
      this.stats.txErrors++;
      return -1;
    }
    const packet = this.#packet;
    if ((x & NEEDS_CSUM) !== 0) {
      const csumStart = words[w + 1]! >>> 16;
      const csumOffset = words[w + 2]! & 0xffff;
      if (this.#csum === false || csumStart + csumOffset + 2 > len) {
        this.stats.txErrors++;
        return -1;
      }
      packet.attachWords(r, w + 3, len);
      packet.needsCsum = true;
      packet.csumStart = csumStart;
      packet.csumOffset = csumOffset;
    } else {
      packet.attachWords(r, w + 3, len);
    }
    this.#switch.forward(this, packet);
    return len;
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

  /**
   * A frame from the switch: into the guest's receive buffers now, or dropped. The used ring is published by
   * {@link publish} at the end of the sender's pass.
   */
  receive(packet: Packet): void {
    const st = this.stats;
    // Explicit comparisons throughout: a bare truthiness test of a field is a generic ToBoolean.
    if (this.#detached === true) return;
    const filter = this.filter;
    if (filter.promiscuous === false && !filter.acceptsKey(packet.dstKey, packet.multicast)) {
      st.rxFiltered++;
      return;
    }
    const vring = this.#pickRx(packet);
    const first = vring === undefined ? null : vring.pop();
    if (first === null) {
      st.rxDropped++;
      return;
    }
    const rx = vring!;
    if (packet.needsCsum === true && this.#guestCsum === false && packet.completeChecksum()) st.csumComputed++;
    const hdrLen = this.#hdrLen;
    const len = packet.length;
    const need = hdrLen + len;
    if (this.#rxDirty === false) {
      this.#rxDirty = true;
      this.#switch.deferPublish(this);
    }

    if (first.writableLength >= need) {
      // The whole frame fits the first chain (always, for small frames): num_buffers 1. Usually it fits its
      // first buffer too, and comes from one buffer of the sender: then it goes in by words or one native copy.
      if (this.#words === true && this.#putWords(first, packet) === true) {
        rx.complete(first, need);
        st.rxPackets++;
        st.rxBytes += len;
        return;
      }
      const w = first.writable[0]!;
      if (w.length < need || !this.#putWhole(w, packet)) {
        putFrame(first, hdrLen, packet, 0, len);
        this.#putHeader(first, packet, 1);
      }
      rx.complete(first, need);
    } else if (this.#mrg === false) {
      // The driver must post buffers for the largest frame; hand this one back empty.
      rx.complete(first, 0);
      st.rxErrors++;
      return;
    } else if (!this.#receiveMerged(rx, first, packet, need)) {
      return;
    }
    st.rxPackets++;
    st.rxBytes += len;
  }

  /**
   * Mergeable buffers: as many chains as the frame needs, the header (with their count) in the first. False
   * (counted) when the frame could not be delivered.
   */
  #receiveMerged(vring: Vring, first: DescriptorChain, packet: Packet, need: number): boolean {
    const chains = this.#chains;
    const hdrLen = this.#hdrLen;
    const len = packet.length;
    chains[0] = first;
    let count = 1;
    let room = first.writableLength;
    while (room < need) {
      const c = vring.pop();
      if (c === null) break;
      chains[count++] = c;
      room += c.writableLength;
    }
    if (room < need || first.writableLength < hdrLen) {
      // Out of buffers part way, or a first buffer too small for the header: return them unused.
      for (let k = 0; k < count; k++) vring.complete(chains[k]!, 0);
      if (room < need) this.stats.rxDropped++;
      else this.stats.rxErrors++;
      return false;
    }
    let off = 0;
    for (let k = 0; k < count; k++) {
      const c = chains[k]!;
      const at = k === 0 ? hdrLen : 0;
      const n = Math.min(c.writableLength - at, len - off);
      if (n > 0) putFrame(c, at, packet, off, n);
      off += n;
      // The header (with the count) once the first chain has its part of the frame, before it is completed.
      if (k === 0) this.#putHeader(first, packet, count);
      vring.complete(c, at + (n > 0 ? n : 0));
    }
    return true;
  }

  /**
   * Header (12 bytes, num_buffers 1) and frame into the chain's first buffer when it has room for both in a known
   * region, word-aligned, and the frame is still in its sender's buffer ({@link Packet.copyToWords}): written in
   * place through the region's word view. False (nothing written) otherwise.
   */
  #putWords(chain: DescriptorChain, packet: Packet): boolean {
    const r = chain.writableRegions[0]!;
    if (r === null || chain.writableLengths[0]! < packet.length + 12) return false;
    const w = r.wordIndex(chain.writableOffsets[0]!);
    if (w < 0) return false;
    const dw = r.u32!;
    if (packet.copyToWords(dw, w + 3, chain.writable, 12) === false) return false;
    // After the frame (a long one's native copy writes the sender's header in front of it). Words: flags,
    // gso_type NONE, hdr_len 0 | gso_size 0, csum_start | csum_offset, num_buffers 1.
    if (packet.needsCsum === true) {
      dw[w] = NEEDS_CSUM;
      dw[w + 1] = packet.csumStart << 16;
      dw[w + 2] = packet.csumOffset | 0x10000;
    } else {
      dw[w] = 0;
      dw[w + 1] = 0;
      dw[w + 2] = 0x10000;
    }
    return true;
  }

  /**
   * Header and frame into one buffer `w` that has room for both, num_buffers 1, when the frame is still in one
   * buffer of its sender: one native copy, then the header. False (nothing written) otherwise.
   */
  #putWhole(w: Uint8Array, packet: Packet): boolean {
    if (!packet.copyWhole(w, this.#hdrLen)) return false;
    // After the frame: copyWhole overwrites the bytes in front of it.
    this.#putHeaderBytes(w, packet, 1);
    return true;
  }

  /** The virtio-net header for `packet` at the start of the chain's writable part (room checked). */
  #putHeader(chain: DescriptorChain, packet: Packet, numBuffers: number): void {
    const hdrLen = this.#hdrLen;
    const v = chain.writable[0]!;
    if (v.length >= hdrLen) {
      this.#putHeaderBytes(v, packet, numBuffers);
    } else {
      this.#putHeaderBytes(this.#rxHdr, packet, numBuffers);
      copyToViewList(chain.writable, 0, this.#rxHdr, 0, hdrLen);
    }
  }

  /** The header at `h[0..hdrLen)` (room checked), byte by byte: straight stores, offsets as in {@link NetHdrOffset}. */
  #putHeaderBytes(h: Uint8Array, packet: Packet, numBuffers: number): void {
    let flags = 0;
    let start = 0;
    let offset = 0;
    if (packet.needsCsum) {
      flags = NEEDS_CSUM;
      start = packet.csumStart;
      offset = packet.csumOffset;
    }
    h[0] = flags;
    h[1] = 0; // gso_type NONE
    h[2] = 0; // hdr_len
    h[3] = 0;
    h[4] = 0; // gso_size
    h[5] = 0;
    h[6] = start & 0xff;
    h[7] = start >>> 8;
    h[8] = offset & 0xff;
    h[9] = offset >>> 8;
    if (this.#numBuffersField) {
      h[10] = numBuffers & 0xff;
      h[11] = numBuffers >>> 8;
    }
  }

  /** Publish the receive completions of the sender's pass (see {@link NetSwitch.publishReceived}). */
  publish(): void {
    this.#rxDirty = false;
    const rings = this.#rings;
    for (let i = 0; i < this.#ctrlIndex; i += 2) rings[i]?.flush();
  }

  /** The receive ring for this frame: the flow's pair among those in use, else the next ready one. */
  #pickRx(packet: Packet): Vring | undefined {
    const rings = this.#rings;
    const pairs = this.activeQueuePairs;
    if (pairs === 1) {
      const v = rings[0];
      return ready(v) ? v : undefined;
    }
    // The hash reads up to the L4 ports: have those in the packet's own buffer.
    packet.pull(HEAD_BYTES);
    let q = flowHash(packet.buffer, packet.headLength) % pairs;
    for (let tries = 0; tries < pairs; tries++) {
      const v = rings[2 * q];
      if (ready(v)) return v;
      q = q + 1 === pairs ? 0 : q + 1;
    }
    return undefined;
  }

  // ---- control queue ----

  #serveControl(vring: Vring): void {
    if (vring.enabled === false) {
      // A started but disabled ring is processed without side effects (vhost-user spec): commands are returned
      // unexecuted, with no ack written (used length 0).
      let n = 0;
      for (let chain = vring.pop(); chain !== null; chain = vring.pop()) {
        vring.complete(chain, 0);
        n++;
      }
      if (n > 0) this.#log.debug(`control ring disabled: ${n} command(s) returned unexecuted`);
      return;
    }
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
