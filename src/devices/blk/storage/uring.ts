/**
 * Batched file I/O on an io_uring ({@link IoUring} from the native addon) for {@link FileStorage}.
 *
 * Operations queued during one pass (one kick, one poll round) go to the kernel in a single `io_uring_enter`
 * at the end of the current microtask checkpoint. Page-cache hits complete inside that call and are delivered
 * at once; the rest come back through the ring's eventfd on the event loop, all ready completions in one
 * callback. Per operation nothing is allocated: slots, their state and the view lists are preallocated and
 * reused. Views go to the kernel as they are (guest memory, no copy) and stay referenced by their slot until
 * the completion.
 */
import { native, systemError, type IoUring } from '../../../native/index.js';
import type { IoCallback } from './storage.js';

const Op = {
  READ: 0,
  WRITE: 1,
  FSYNC: 2,
  FDATASYNC: 3,
  FALLOCATE: 4,
} as const;
const SYSCALL = ['preadv', 'pwritev', 'fsync', 'fdatasync', 'fallocate'] as const;

/**
 * Consecutive submissions whose completions are delivered inline (inside the microtask that submitted them)
 * before one is left to the event loop. Callbacks that queue more I/O would otherwise keep the loop in
 * microtasks for as long as the page cache answers, starving kicks, timers and sockets.
 */
const MAX_INLINE_ROUNDS = 16;

/** Options for {@link UringQueue}. */
export interface UringQueueOptions {
  /** Slots (operations in flight at once); rounded up to a power of two by the kernel. Default 256. */
  entries?: number;
  /**
   * Deliver completions that are ready right after submitting, in the same microtask (default true). Off,
   * every completion comes through the eventfd on the next loop iteration.
   */
  inlineCompletions?: boolean;
  /**
   * Reads and writes of at least this many bytes go to the kernel's workers at once, each on a worker of its own
   * (IOSQE_ASYNC; default: never). For files without non-blocking I/O (tmpfs), whose every transfer ends up on
   * a worker anyway: large copies then run in parallel instead of one after the other.
   */
  asyncFrom?: number;
}

/** Counters of a {@link UringQueue} since it was opened. */
export interface UringStats {
  /** Operations queued (a continued short transfer counts again). */
  operations: number;
  /** `io_uring_enter` calls that submitted something: `operations / submits` is the batch size. */
  submits: number;
  /** Completions delivered right after submitting (the page cache answered inside the syscall). */
  inlineCompletions: number;
  /** Completions delivered from the event loop (eventfd), and the callbacks that brought them. */
  loopCompletions: number;
  loopWakeups: number;
}

function rethrow(err: unknown): never {
  throw err;
}

/** An io_uring with a slot table: queue operations with callbacks, submitted once per tick. */
export class UringQueue {
  readonly #ring: IoUring;
  readonly #completions: Int32Array;
  /**
   * Per slot: the callback, and the context it is called with. Typed as taking `never`: any callback fits, and
   * only the slot's own context is ever passed to it.
   */
  readonly #done: (IoCallback<never> | null)[];
  readonly #context: unknown[];
  /**
   * Per slot: the views of a read or write, kept until its completion (the kernel uses them until then): the
   * one view of a single-view transfer (the common case: no list to fill or pass), else the list.
   */
  readonly #view: (Uint8Array | null)[];
  readonly #views: Uint8Array[][];
  readonly #op: Uint8Array;
  readonly #fd: Int32Array;
  readonly #position: Float64Array;
  /** Bytes a read or write still has to move. */
  readonly #left: Float64Array;
  readonly #free: Int32Array;
  #freeCount: number;
  #inflight = 0;
  #scheduled = false;
  #inlineRounds = 0;
  readonly #maxInlineRounds: number;
  readonly #asyncFrom: number;
  #idle: (() => void)[] = [];
  readonly #flush = (): void => this.#submit();
  readonly #stats: UringStats = { operations: 0, submits: 0, inlineCompletions: 0, loopCompletions: 0, loopWakeups: 0 };

  /** @throws SystemError when io_uring is unavailable (see {@link NativeBinding.ioUring}). */
  constructor(options: UringQueueOptions = {}) {
    this.#ring = native.ioUring(options.entries ?? 256, (count) => {
      this.#inlineRounds = 0; // the loop turned
      this.#stats.loopWakeups++;
      this.#stats.loopCompletions += count;
      this.#dispatch(count);
    });
    const n = this.#ring.slots;
    this.#completions = this.#ring.completions;
    this.#done = new Array<IoCallback<never> | null>(n).fill(null);
    this.#context = new Array<unknown>(n).fill(undefined);
    this.#view = new Array<Uint8Array | null>(n).fill(null);
    this.#views = Array.from({ length: n }, () => []);
    this.#op = new Uint8Array(n);
    this.#fd = new Int32Array(n);
    this.#position = new Float64Array(n);
    this.#left = new Float64Array(n);
    this.#free = new Int32Array(n);
    for (let i = 0; i < n; i++) this.#free[i] = n - 1 - i;
    this.#freeCount = n;
    this.#maxInlineRounds = options.inlineCompletions === false ? 0 : MAX_INLINE_ROUNDS;
    this.#asyncFrom = options.asyncFrom ?? Infinity;
  }

  /** Slots, i.e. operations in flight at once. */
  get slots(): number {
    return this.#ring.slots;
  }

  /** Operations queued or in flight. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Counters since the queue was opened (a live object: copy it to keep a snapshot). */
  get stats(): Readonly<UringStats> {
    return this.#stats;
  }

  /** The `IORING_SETUP_*` flags in use. */
  get setupFlags(): number {
    return this.#ring.setupFlags;
  }

  /**
   * Read `length` bytes (the views' total) at `position` into `buffers`; bytes past the end of the file read as
   * zeros. Returns false, doing nothing, when every slot is busy.
   */
  read<C>(fd: number, buffers: readonly Uint8Array[], position: number, length: number, done: IoCallback<C>,
    context?: C): boolean {
    return this.#rw(Op.READ, fd, buffers, position, length, done, context);
  }

  /** Write `buffers` (`length` bytes in all) at `position`. Returns false when every slot is busy. */
  write<C>(fd: number, buffers: readonly Uint8Array[], position: number, length: number, done: IoCallback<C>,
    context?: C): boolean {
    return this.#rw(Op.WRITE, fd, buffers, position, length, done, context);
  }

  /** `fdatasync` (`dataOnly`) or `fsync`. Returns false when every slot is busy. */
  fsync<C>(fd: number, dataOnly: boolean, done: IoCallback<C>, context?: C): boolean {
    const slot = this.#take(dataOnly ? Op.FDATASYNC : Op.FSYNC, fd, done, context);
    if (slot < 0) return false;
    try {
      this.#ring.fsync(slot, fd, dataOnly);
    } catch (err) {
      this.#finish(slot, err as Error);
      return true;
    }
    this.#queued();
    return true;
  }

  /** `fallocate(fd, mode, offset, length)`. Returns false when every slot is busy. */
  fallocate<C>(fd: number, mode: number, offset: number, length: number, done: IoCallback<C>, context?: C): boolean {
    const slot = this.#take(Op.FALLOCATE, fd, done, context);
    if (slot < 0) return false;
    try {
      this.#ring.fallocate(slot, fd, mode, offset, length);
    } catch (err) {
      this.#finish(slot, err as Error);
      return true;
    }
    this.#queued();
    return true;
  }

  /** Resolves once nothing is queued or in flight. */
  idle(): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Release the ring. Nothing may be in flight (await {@link idle} first): throws EBUSY otherwise. */
  close(): void {
    this.#ring.close();
  }

  #take<C>(op: number, fd: number, done: IoCallback<C>, context: C | undefined): number {
    if (this.#freeCount === 0) return -1;
    const slot = this.#free[--this.#freeCount]!;
    this.#op[slot] = op;
    this.#fd[slot] = fd;
    this.#done[slot] = done;
    this.#context[slot] = context;
    this.#inflight++;
    return slot;
  }

  #rw<C>(op: number, fd: number, buffers: readonly Uint8Array[], position: number, length: number, done: IoCallback<C>,
    context: C | undefined): boolean {
    const slot = this.#take(op, fd, done, context);
    if (slot < 0) return false;
    // Our own list: the caller may reuse its array once we return, and a short transfer needs the views again.
    if (buffers.length === 1) {
      this.#view[slot] = buffers[0]!;
    } else {
      const views = this.#views[slot]!;
      for (let i = 0; i < buffers.length; i++) views[i] = buffers[i]!;
      views.length = buffers.length;
    }
    this.#position[slot] = position;
    this.#left[slot] = length;
    this.#issue(slot);
    return true;
  }

  /** Queue the slot's read or write (again, after a short transfer). */
  #issue(slot: number): void {
    const views = this.#view[slot] ?? this.#views[slot]!;
    const async = this.#left[slot]! >= this.#asyncFrom;
    try {
      if (this.#op[slot] === Op.READ) this.#ring.readv(slot, this.#fd[slot]!, views, this.#position[slot]!, async);
      else this.#ring.writev(slot, this.#fd[slot]!, views, this.#position[slot]!, async);
    } catch (err) {
      this.#finish(slot, err as Error);
      return;
    }
    this.#queued();
  }

  #queued(): void {
    this.#stats.operations++;
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(this.#flush);
  }

  #submit(): void {
    this.#scheduled = false;
    this.#stats.submits++;
    const inline = this.#inlineRounds < this.#maxInlineRounds;
    const n = this.#ring.submit(inline);
    if (n === 0) return;
    if (inline) this.#inlineRounds++;
    this.#stats.inlineCompletions += n;
    this.#dispatch(n);
  }

  #dispatch(count: number): void {
    const c = this.#completions;
    for (let i = 0; i < count; i++) this.#complete(c[2 * i]!, c[2 * i + 1]!);
  }

  #complete(slot: number, res: number): void {
    const op = this.#op[slot]!;
    if (res < 0) return this.#finish(slot, systemError(-res, SYSCALL[op]!));
    if (op !== Op.READ && op !== Op.WRITE) return this.#finish(slot, null);
    const left = this.#left[slot]! - res;
    if (left <= 0) return this.#finish(slot, null);
    const view = this.#view[slot];
    const views = this.#views[slot]!;
    if (res === 0) {
      if (op === Op.WRITE) return this.#finish(slot, new Error(`pwritev at ${this.#position[slot]} wrote nothing`));
      // End of file: the image was truncated under us. Read as a hole would.
      if (view) view.fill(0);
      for (let i = 0; i < views.length; i++) views[i]!.fill(0);
      return this.#finish(slot, null);
    }
    // Short: the file ends inside the range, more than IOV_MAX views, or the kernel stopped early.
    if (view) {
      this.#view[slot] = view.subarray(res);
    } else {
      let skip = res;
      let i = 0;
      while (i < views.length && skip >= views[i]!.byteLength) skip -= views[i++]!.byteLength;
      views.splice(0, i);
      if (skip > 0) views[0] = views[0]!.subarray(skip);
    }
    this.#left[slot] = left;
    this.#position[slot] += res;
    this.#issue(slot);
  }

  #finish(slot: number, err: Error | null): void {
    const done = this.#done[slot]!;
    const context = this.#context[slot];
    this.#done[slot] = null;
    this.#context[slot] = undefined;
    if (this.#view[slot] !== null) this.#view[slot] = null;
    else this.#views[slot]!.length = 0;
    this.#free[this.#freeCount++] = slot;
    if (--this.#inflight === 0 && this.#idle.length > 0) {
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
    try {
      done(err, context as never);
    } catch (e) {
      // As from any Node I/O callback: an uncaught exception, but only after the other completions ran.
      process.nextTick(rethrow, e);
    }
  }
}
