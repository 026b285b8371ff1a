/**
 * Adaptive poll mode for the rings one thread serves. After a kick the rings are processed and then watched
 * directly (Atomics loads of avail.idx) with kicks suppressed (VRING_USED_F_NO_NOTIFY, or no avail_event update
 * with EVENT_IDX), so a busy driver's next requests are picked up without a notification round trip. After the
 * window passes with no new buffers, kicks are re-enabled and the rings re-checked (a buffer added meanwhile is
 * found, not missed) before going back to sleep on the kick fds.
 *
 * The window adapts like QEMU's AioContext polling: when the next kick comes later than the maximum window,
 * polling would not have caught it and the window halves (down to 0: pure notification mode until kicks come
 * faster again); when it comes sooner, the window grows back towards the maximum.
 *
 * The spin runs in slices so the thread's event loop still runs (control messages, timers, asynchronous I/O
 * completions): it yields after {@link SLICE_MS}, and at once while requests are in flight asynchronously.
 */
import { PassResult, processable, processRing, type RingHandler } from './processing.js';
import type { Vring } from './vring.js';

/** Longest synchronous spin before the event loop gets a turn. */
const SLICE_MS = 0.5;
/** Busy passes between clock readings (a power of two). */
const CLOCK_EVERY = 16;
/**
 * Idle passes between clock readings (a power of two): a pass that finds nothing costs a few tens of
 * nanoseconds, a clock reading (performance.now) several times that, and new buffers found during a reading
 * wait for it.
 */
const IDLE_CLOCK_EVERY = 32;
/** Where a window that shrank to nothing restarts when kicks come fast again. */
const MIN_WINDOW_US = 4;

/** Counters for tests and statistics. */
export interface PollerStats {
  /** Wake-ups outside polling (kicks, starts, enables). */
  kicks: number;
  /** Passes that found buffers while polling (work that did not need a kick). */
  polledPasses: number;
  /** Times polling ended and kicks were re-enabled. */
  sleeps: number;
  /** Times re-enabling kicks found buffers already there (the race the re-check closes). */
  rechecks: number;
}

/** Polls the rings of one thread for one ring handler. */
export class RingPoller {
  readonly #handler: RingHandler;
  readonly #maxUs: number;
  #windowUs: number;
  /** The polled rings: an array, not a Set (the spin iterates it every pass; replaced, not changed, on add/remove). */
  #rings: Vring[] = [];
  #polling = false;
  #lastWork = 0;
  #sleepSince = -1;
  readonly stats: PollerStats = { kicks: 0, polledPasses: 0, sleeps: 0, rechecks: 0 };
  readonly #loop = (): void => this.#spin();

  /** `maxUs` 0 means notification mode only. */
  constructor(handler: RingHandler, maxUs: number) {
    if (!Number.isFinite(maxUs) || maxUs < 0) throw new RangeError(`poll window must be >= 0 microseconds, got ${maxUs}`);
    this.#handler = handler;
    this.#maxUs = maxUs;
    this.#windowUs = maxUs;
  }

  /** The current adaptive window in microseconds. */
  get windowUs(): number {
    return this.#windowUs;
  }

  /** Is the thread polling now (kicks suppressed)? */
  get polling(): boolean {
    return this.#polling;
  }

  /** A started ring this thread serves (ignored when the handler does not let it be polled). */
  add(vring: Vring): void {
    if (!(this.#handler.pollQueue?.(vring.index) ?? this.#handler.onAvailable === undefined)) return;
    if (this.#rings.includes(vring)) return;
    this.#rings = [...this.#rings, vring];
    if (this.#polling) vring.setNotification(false);
  }

  /** The ring stops (or goes away): never process it again, and leave its kicks on for whoever runs it next. */
  remove(vring: Vring): void {
    if (!this.#rings.includes(vring)) return;
    this.#rings = this.#rings.filter((v) => v !== vring);
    vring.setNotification(true);
  }

  /** New buffers may be on `vring` (a kick, a start or an enable): process them, then poll for more. */
  kicked(vring: Vring): void {
    if (!this.#polling) {
      this.stats.kicks++;
      if (this.#sleepSince >= 0) this.#adapt((performance.now() - this.#sleepSince) * 1000);
      this.#sleepSince = -1;
    }
    vring.polledAvailIdx = vring.availIdx();
    const result = processRing(this.#handler, vring);
    if (result === PassResult.SKIPPED) return;
    if (this.#maxUs === 0 || this.#windowUs === 0 || this.#polling || !this.#rings.includes(vring)) {
      if (this.#polling) {
        if (result === PassResult.MORE) vring.polledAvailIdx = -1;
      } else {
        this.#sleepSince = performance.now();
        // Cut short with chains waiting: no kick will come for them.
        if (result === PassResult.MORE) setImmediate(() => this.kicked(vring));
      }
      return;
    }
    if (result === PassResult.MORE) vring.polledAvailIdx = -1;
    this.#polling = true;
    for (const v of this.#rings) v.setNotification(false);
    this.#lastWork = performance.now();
    setImmediate(this.#loop);
  }

  /** Stop polling now (kicks back on for every ring). */
  stop(): void {
    for (const v of this.#rings) v.setNotification(true);
    this.#polling = false;
  }

  #adapt(blockUs: number): void {
    if (this.#maxUs === 0) return;
    if (blockUs > this.#maxUs) {
      // Polling for the whole window would not have caught this kick: spend less.
      this.#windowUs = this.#windowUs < 2 * MIN_WINDOW_US ? 0 : this.#windowUs / 2;
    } else {
      this.#windowUs = Math.min(this.#maxUs, Math.max(this.#windowUs * 2, MIN_WINDOW_US, blockUs));
    }
  }

  #spin(): void {
    if (!this.#polling) return;
    const handler = this.#handler;
    // performance.now() costs more than a look at a ring: read the clock on idle passes and every
    // CLOCK_EVERY busy ones (a busy pass only needs "work happened since the last reading").
    let now = performance.now();
    const sliceEnd = now + SLICE_MS;
    let worked = false;
    let passes = 0;
    let idlePasses = 0;
    for (;;) {
      let busy = false;
      let inflight = false;
      // Read again each pass: processing may add or remove rings.
      const rings = this.#rings;
      for (let i = 0; i < rings.length; i++) {
        const v = rings[i]!;
        // New buffers since the last pass (not merely buffers waiting: a receive ring holds buffers until
        // frames come, and must not keep the loop busy).
        const idx = v.availIdx();
        if (idx >= 0 && idx !== v.polledAvailIdx && processable(handler, v)) {
          v.polledAvailIdx = idx;
          // Cut short with chains waiting: look again next pass even if avail.idx stays put.
          if (processRing(handler, v) === PassResult.MORE) v.polledAvailIdx = -1;
          busy = true;
        }
        if (v.inflightCount > 0) inflight = true;
      }
      if (busy) {
        this.stats.polledPasses++;
        worked = true;
        if ((++passes & (CLOCK_EVERY - 1)) !== 0 && !inflight) continue;
      } else if (!worked && !inflight && (++idlePasses & (IDLE_CLOCK_EVERY - 1)) !== 0) {
        continue;
      }
      now = performance.now();
      if (worked) {
        this.#lastWork = now;
        worked = false;
      } else if ((now - this.#lastWork) * 1000 >= this.#windowUs) {
        // Idle for the window: kicks back on, then look once more (a buffer added before the flag reached the
        // driver would otherwise wait for a kick that never comes).
        let pending = false;
        for (const v of this.#rings) {
          v.setNotification(true);
          const idx = v.availIdx();
          if (idx >= 0 && idx !== v.polledAvailIdx && processable(handler, v)) pending = true;
        }
        if (!pending) {
          this.#polling = false;
          this.stats.sleeps++;
          this.#sleepSince = now;
          return;
        }
        this.stats.rechecks++;
        for (const v of this.#rings) v.setNotification(false);
        this.#lastWork = now;
        continue;
      }
      // Asynchronous completions (file I/O) arrive through the event loop: let it run.
      if (inflight || now >= sliceEnd) {
        setImmediate(this.#loop);
        return;
      }
    }
  }
}
