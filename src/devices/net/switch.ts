/**
 * A MAC-learning Ethernet switch joining ports (guest devices, a TAP uplink). It learns which port each source
 * address lives behind, sends known unicast there, floods unknown unicast, broadcast and multicast to every other
 * port, ages entries out, and forgets a port's addresses when the port goes away.
 *
 * Forwarding is synchronous: a port's `receive` either writes the frame into its endpoint now or drops it (and
 * counts the drop). Nothing is queued, so a slow or stopped receiver never holds up a sender. A receiver may defer
 * making what it wrote visible (a guest's used ring) to the end of the sender's burst: it asks with
 * {@link NetSwitch.deferPublish}, and the sender calls {@link NetSwitch.publishReceived} when its burst is done.
 */
import { formatMacKey, macKeyAt } from './mac.js';
import type { Packet } from './packet.js';
import { ETH_HLEN } from './header.js';

if (ETH_HLEN !== 14) throw new Error('ETH_HLEN changed: update the literal in NetSwitch.forward');

/** Something the switch forwards to. */
export interface SwitchPort {
  /** For stats and logs. */
  readonly name: string;
  /** Take a frame now or drop it; never keep a reference to the packet after returning. */
  receive(packet: Packet): void;
  /** Make visible what `receive` wrote since the last call (after {@link NetSwitch.deferPublish}). */
  publish?(): void;
}

/** Options for {@link NetSwitch}. */
export interface NetSwitchOptions {
  /** Forget an address not seen for this long (ms, default 300 000). */
  agingMs?: number;
  /** Most learned addresses; beyond it new ones are flooded, not learned (default 8192). */
  maxEntries?: number;
  /** Time source in ms (default `performance.now`). */
  clock?: () => number;
  /** Run {@link NetSwitch.sweep} on a timer (default true). Tests turn it off and sweep by hand. */
  autoSweep?: boolean;
}

interface MacEntry {
  port: SwitchPort;
  seen: number;
}

/**
 * Per-port memo of the last source and destination looked up, valid while the table's generation is unchanged:
 * a stream of frames between the same two stations then costs no table lookups (hashing a 48-bit key means a
 * heap number per lookup).
 */
interface Ingress {
  gen: number;
  srcHi: number;
  srcLo: number;
  src: MacEntry | undefined;
  dstHi: number;
  dstLo: number;
  dst: MacEntry | undefined;
}

function newIngress(): Ingress {
  return { gen: -1, srcHi: -1, srcLo: -1, src: undefined, dstHi: -1, dstLo: -1, dst: undefined };
}

/** A learned address, as {@link NetSwitch.entries} lists it. */
export interface MacTableEntry {
  mac: string;
  port: string;
  ageMs: number;
}

/** Switch-wide counters. */
export interface SwitchCounters {
  /** Frames forwarded to one known port. */
  unicast: number;
  /** Frames flooded (unknown unicast, broadcast, multicast). */
  flooded: number;
  /** Frames whose known destination is the port they came from (dropped, as a switch does). */
  hairpin: number;
  /** Entries removed by aging. */
  aged: number;
  /** Source addresses not learned because the table was full. */
  tableFull: number;
}

/** The switch. */
export class NetSwitch {
  readonly agingMs: number;
  readonly maxEntries: number;
  readonly counters: SwitchCounters = { unicast: 0, flooded: 0, hairpin: 0, aged: 0, tableFull: 0 };
  readonly #clock: () => number;
  readonly #table = new Map<number, MacEntry>();
  #ports: SwitchPort[] = [];
  readonly #ingress = new Map<SwitchPort, Ingress>();
  /** The last sender and its memo: a burst comes from one port, so most frames skip the map lookup. */
  #lastFrom: SwitchPort | undefined;
  #lastIngress: Ingress = newIngress();
  /** Bumped whenever an entry is added, moves or goes: invalidates every {@link Ingress} memo. */
  #gen = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Coarse time used for learning, refreshed by every sweep: reading a clock per frame costs more than it gains. */
  #now: number;
  /** Ports waiting for {@link publishReceived}, by index up to #deferred (the array keeps its storage). */
  readonly #deferred: SwitchPort[] = [];
  #deferredCount = 0;

  constructor(options: NetSwitchOptions = {}) {
    this.agingMs = options.agingMs ?? 300_000;
    if (!(this.agingMs > 0)) throw new RangeError(`agingMs must be positive, got ${this.agingMs}`);
    this.maxEntries = options.maxEntries ?? 8192;
    this.#clock = options.clock ?? (() => performance.now());
    this.#now = this.#clock();
    if (options.autoSweep ?? true) {
      this.#timer = setInterval(() => this.sweep(), Math.max(10, Math.min(1000, this.agingMs / 4)));
      this.#timer.unref();
    }
  }

  /** The attached ports. */
  get ports(): readonly SwitchPort[] {
    return this.#ports;
  }

  /** Attach a port. */
  addPort(port: SwitchPort): void {
    if (!this.#ports.includes(port)) this.#ports = [...this.#ports, port];
  }

  /** Detach a port and forget its addresses. */
  removePort(port: SwitchPort): void {
    this.#ports = this.#ports.filter((p) => p !== port);
    this.#ingress.delete(port);
    if (this.#lastFrom === port) this.#lastFrom = undefined;
    this.forget(port);
  }

  /** Forget every address learned on `port` (its endpoint went away). Returns how many. */
  forget(port: SwitchPort): number {
    let n = 0;
    for (const [key, entry] of this.#table) {
      if (entry.port === port) {
        this.#table.delete(key);
        n++;
      }
    }
    if (n > 0) this.#gen++;
    return n;
  }

  /** Forget every learned address. */
  flush(): void {
    this.#table.clear();
    this.#gen++;
  }

  /** The port an address (6 bytes) was learned on, if any. */
  lookup(mac: Uint8Array): SwitchPort | undefined {
    return this.#table.get(macKeyAt(mac, 0))?.port;
  }

  /** Learned addresses. */
  entries(): MacTableEntry[] {
    const now = this.#clock();
    return [...this.#table].map(([key, e]) => ({ mac: formatMacKey(key), port: e.port.name, ageMs: Math.max(0, now - e.seen) }));
  }

  /** Drop entries older than {@link agingMs}; returns how many. Runs on a timer unless `autoSweep` is off. */
  sweep(): number {
    const now = (this.#now = this.#clock());
    let n = 0;
    for (const [key, entry] of this.#table) {
      if (now - entry.seen > this.agingMs) {
        this.#table.delete(key);
        n++;
      }
    }
    this.counters.aged += n;
    if (n > 0) this.#gen++;
    return n;
  }

  /**
   * Forward a frame that arrived on `from`: learn its source, then deliver it to the port its destination was
   * learned on, or to every other port.
   */
  forward(from: SwitchPort, packet: Packet): void {
    // ETH_HLEN as a literal (an imported constant is a cell load and a check, per frame).
    if (packet.length < 14) return;
    let ing = this.#lastIngress;
    if (from !== this.#lastFrom) {
      let found = this.#ingress.get(from);
      if (found === undefined) {
        found = newIngress();
        this.#ingress.set(from, found);
      }
      ing = this.#lastIngress = found;
      this.#lastFrom = from;
    }
    if (ing.gen !== this.#gen) {
      // Memo halves that no address has (bytes 4-5 and 6-7 are 16-bit values): nothing matches.
      ing.gen = this.#gen;
      ing.srcHi = ing.dstLo = -1;
    }
    const srcHi = packet.srcHi;
    // The group bit: bit 0 of the first byte of the address (the low byte of srcHi and dstHi).
    if ((srcHi & 1) === 0) {
      const lo = packet.srcLo;
      if (srcHi === ing.srcHi && lo === ing.srcLo) {
        ing.src!.seen = this.#now;
      } else {
        const entry = this.#learn(packet.srcKey, from);
        // Learning a new station (or a move) changed the table: nothing memoised before holds.
        if (ing.gen !== this.#gen) {
          ing.gen = this.#gen;
          ing.dstLo = -1;
        }
        ing.src = entry;
        ing.srcHi = entry === undefined ? -1 : srcHi;
        ing.srcLo = lo;
      }
    }
    const hi = packet.dstHi;
    if ((hi & 1) === 0) {
      const lo = packet.dstLo;
      let entry: MacEntry | undefined;
      if (hi === ing.dstHi && lo === ing.dstLo) {
        entry = ing.dst;
      } else {
        entry = this.#table.get(packet.dstKey);
        ing.dst = entry;
        ing.dstHi = hi;
        ing.dstLo = lo;
      }
      if (entry !== undefined) {
        if (entry.port === from) {
          this.counters.hairpin++;
          return;
        }
        this.counters.unicast++;
        entry.port.receive(packet);
        return;
      }
    }
    this.counters.flooded++;
    const ports = this.#ports;
    for (let i = 0; i < ports.length; i++) {
      const p = ports[i]!;
      if (p !== from) p.receive(packet);
    }
  }

  /**
   * A receiver wrote frames whose publication waits for the end of the sender's burst: call its `publish` then.
   * Once per port and burst (the port keeps track).
   */
  deferPublish(port: SwitchPort): void {
    this.#deferred[this.#deferredCount++] = port;
  }

  /**
   * The end of a sender's burst: every receiver that deferred publishes now (for a guest, one used-ring update
   * and at most one notification per ring, however many frames it got).
   */
  publishReceived(): void {
    const list = this.#deferred;
    // A publish may not forward, but count down from a snapshot in case one defers again.
    const n = this.#deferredCount;
    this.#deferredCount = 0;
    for (let i = 0; i < n; i++) list[i]!.publish?.();
  }

  /** Learn or refresh `key` on `port`; returns its entry (undefined when the table is full). */
  #learn(key: number, port: SwitchPort): MacEntry | undefined {
    const entry = this.#table.get(key);
    if (entry !== undefined) {
      if (entry.port !== port) {
        // A station that moved is re-learned on its new port at once.
        entry.port = port;
        this.#gen++;
      }
      entry.seen = this.#now;
      return entry;
    }
    if (this.#table.size >= this.maxEntries) {
      this.counters.tableFull++;
      return undefined;
    }
    const fresh = { port, seen: this.#now };
    this.#table.set(key, fresh);
    this.#gen++;
    return fresh;
  }

  /** Stop the aging timer. */
  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
