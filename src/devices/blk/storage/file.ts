/**
 * A raw image: a regular file (created sparse on request) or a block device. Reads and writes go straight
 * between the caller's views and the file with `preadv`/`pwritev`, no copy in between; flush is `fdatasync`.
 *
 * Two engines (`aio`): `io_uring` (the default) batches every operation of a pass into one `io_uring_enter`
 * from this thread ({@link UringQueue}); `threads` runs each operation on libuv's thread pool (Node's
 * `fs.readv`/`fs.writev`). Measured with `bench/micro/file-io.ts` (image in the page cache): 4 KiB random reads
 * at QD 32 cost io_uring about a fifth of the CPU per I/O (no thread hand-offs: ~0 context switches per I/O
 * against ~2) for 3-6× the IOPS; 1 MiB sequential reads at QD 8 are a memory copy either way and come out even
 * or better on a disk filesystem. On tmpfs, where the kernel cannot read without blocking, every transfer would go
 * to io_uring's kernel workers: small ones do; those of 64 KiB and more run on the thread pool instead, which
 * measured 20-40% faster for 1 MiB sequential reads (`threadsFrom`; with `threadsFrom: Infinity` they are marked
 * to get a kernel worker each, see {@link UringQueueOptions.asyncFrom}). Where io_uring is unavailable (old kernel, disabled by sysctl or seccomp) the
 * storage says so in one log line and uses the thread pool; it also takes over an operation when all io_uring
 * slots are busy.
 *
 * Discard and write-zeroes use `fallocate(2)` (Node has none): PUNCH_HOLE for discard and unmapping
 * write-zeroes, ZERO_RANGE otherwise, queued on the ring, or synchronous from the native addon with `threads`.
 * Where the filesystem lacks a mode (EOPNOTSUPP; tmpfs has no ZERO_RANGE) they write zeros instead, which keeps
 * "reads back as zeros" true but allocates the range.
 */
import fs from 'node:fs';
import { native } from '../../../native/index.js';
import { logger, type Logger } from '../../../util/log.js';
import {
  closedError, inRange, rangeError, readOnlyError, skipBytes, totalLength, type BlockStorage, type IoCallback, type StorageKind,
} from './storage.js';
import { UringQueue, type UringQueueOptions, type UringStats } from './uring.js';

/** `fallocate(2)` mode bits. */
export const FallocateMode = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  ZERO_RANGE: 0x10,
} as const;

/** A synchronous `fallocate(fd, mode, offset, length)` that throws a system error (with `code`) on failure. */
export type FallocateFn = (fd: number, mode: number, offset: number, length: number) => void;

/** How a {@link FileStorage} does its I/O: one io_uring per storage, or libuv's thread pool. */
export type FileAio = 'threads' | 'io_uring';

/** The engine {@link FileStorage.open} uses unless told otherwise (the one that won the measurements). */
export const DEFAULT_FILE_AIO: FileAio = 'io_uring';

/** io_uring slots per storage: operations in flight at once before the thread pool takes the surplus. */
const RING_ENTRIES = 1024;

/** Options for {@link FileStorage.open}. */
export interface FileStorageOptions {
  /** Open O_RDONLY; writes fail. */
  readOnly?: boolean;
  /**
   * Size in bytes. A missing image is created sparse with this size; an existing one must have exactly this size.
   * Without it the image must exist.
   */
  size?: number;
  /** How to punch holes and zero ranges: the native addon's `fallocate` (default), another, or `null` to write zeros. */
  fallocate?: FallocateFn | null;
  /** Permission bits of a created image (default 0o644, less the umask). */
  mode?: number;
  /** I/O engine (default {@link DEFAULT_FILE_AIO}). `io_uring` falls back to `threads`, logged, where unavailable. */
  aio?: FileAio;
  /** io_uring slots (default 1024; the kernel rounds up to a power of two). Beyond them the thread pool is used. */
  ringEntries?: number;
  /** Where the fallback from io_uring is reported (default: the `file-storage` logger). */
  logger?: Logger;
  /** With io_uring: deliver completions ready at submission at once (default true); see {@link UringQueueOptions}. */
  inlineCompletions?: boolean;
  /**
   * With io_uring: reads and writes of at least this many bytes go to kernel workers, in parallel, instead of
   * being tried inline (see {@link UringQueueOptions.asyncFrom}). Default: 64 KiB on tmpfs/ramfs, else never.
   */
  uringAsyncFrom?: number;
  /**
   * With io_uring: reads and writes of at least this many bytes run on libuv's thread pool instead. Default:
   * 64 KiB on tmpfs/ramfs (where every transfer blocks: 1 MiB sequential reads measured 20-40% faster on the
   * pool than on io_uring's kernel workers), else never.
   */
  threadsFrom?: number;
}

/** Zeros written per iovec entry by the write-zeros fallback, and entries per pwritev. */
const ZERO_CHUNK = 1 << 20;
const ZERO_IOVS = 32;
let zeroChunk: Uint8Array | undefined;

/** Size of a block device from sysfs (Node has no BLKGETSIZE64). */
function blockDeviceSize(fd: number, path: string): number {
  const rdev = fs.fstatSync(fd, { bigint: true }).rdev;
  // glibc's major()/minor() encoding.
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  let sectors: number;
  try {
    sectors = Number(fs.readFileSync(sysfs, 'utf8').trim());
  } catch (err) {
    throw new Error(`${path}: cannot read the block device size from ${sysfs}: ${(err as Error).message}`);
  }
  if (!Number.isSafeInteger(sectors * 512)) throw new Error(`${path}: block device size ${sectors} sectors is out of range`);
  return sectors * 512;
}

/** Read until `buffers` are full; bytes past the end of the file read as zeros. */
function readFully<C>(fd: number, buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context: C): void {
  fs.readv(fd, buffers, position, (err, n) => {
    if (err) return done(err, context);
    const total = totalLength(buffers);
    if (n >= total) return done(null, context);
    if (n === 0) {
      // End of file: the image was truncated under us. Read as a hole would.
      for (const b of buffers) b.fill(0);
      return done(null, context);
    }
    // Short: the kernel stopped early (IOV_MAX, signal) or the file ends inside the range.
    readFully(fd, skipBytes(buffers, n), position + n, done, context);
  });
}

/** Write all of `buffers`, continuing after short writes. */
function writeFully<C>(fd: number, buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context: C): void {
  fs.writev(fd, buffers, position, (err, n) => {
    if (err) return done(err, context);
    const total = totalLength(buffers);
    if (n >= total) return done(null, context);
    if (n === 0) return done(new Error(`pwritev at ${position} wrote nothing`), context);
    writeFully(fd, skipBytes(buffers, n), position + n, done, context);
  });
}

type Writer = (buffers: readonly Uint8Array[], position: number, done: IoCallback) => void;

/** Write `length` zeros at `position` from one shared zero buffer. */
function writeZeros(write: Writer, position: number, length: number, done: IoCallback): void {
  const zero = (zeroChunk ??= new Uint8Array(ZERO_CHUNK));
  const iov: Uint8Array[] = [];
  let n = 0;
  while (n < length && iov.length < ZERO_IOVS) {
    const k = Math.min(ZERO_CHUNK, length - n);
    iov.push(k === ZERO_CHUNK ? zero : zero.subarray(0, k));
    n += k;
  }
  if (n === 0) return done(null);
  write(iov, position, (err) => {
    if (err || n === length) return done(err);
    writeZeros(write, position + n, length - n, done);
  });
}

/** A raw image file or block device. */
export class FileStorage implements BlockStorage {
  readonly kind: StorageKind = 'file';
  readonly path: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** The image did not exist and was created by {@link open}. */
  readonly created: boolean;
  readonly isBlockDevice: boolean;
  readonly description: string;
  /** The engine in use (`threads` when io_uring was asked for but is unavailable). */
  readonly aio: FileAio;
  #fd: number;
  #fallocate: FallocateFn | null;
  /** The ring (aio `io_uring`), or null. */
  #ring: UringQueue | null;
  /** Discard and write-zeroes may go through the ring (the fallocate is the native one). */
  #ringFallocate: boolean;
  /** Reads and writes of at least this many bytes go to the thread pool even with a ring. */
  readonly #threadsFrom: number;

  /** Modes the filesystem turned out to support (assumed until it says EOPNOTSUPP). */
  #punchHoleOk = true;
  #zeroRangeOk = true;

  private constructor(path: string, fd: number, size: number, readOnly: boolean, created: boolean, isBlockDevice: boolean,
    fallocate: FallocateFn | null, ring: UringQueue | null, ringFallocate: boolean, threadsFrom: number) {
    this.path = path;
    this.#fd = fd;
    this.size = size;
    this.readOnly = readOnly;
    this.created = created;
    this.isBlockDevice = isBlockDevice;
    this.#fallocate = fallocate;
    this.#ring = ring;
    this.#ringFallocate = ringFallocate;
    this.#threadsFrom = threadsFrom;
    this.aio = ring ? 'io_uring' : 'threads';
    this.description = `${isBlockDevice ? 'block device' : 'image'} ${path} (${size} bytes${readOnly ? ', read-only' : ''}` +
      `${created ? ', created' : ''}, ${this.aio})`;
  }

  /**
   * Open (or create) an image. Synchronous: meant for start-up.
   * @throws Error when the image is missing without a size, has another size, or is not a file or block device.
   */
  static open(path: string, options: FileStorageOptions = {}): FileStorage {
    const readOnly = options.readOnly ?? false;
    const want = options.size;
    if (want !== undefined && (!Number.isSafeInteger(want) || want <= 0)) throw new RangeError(`image size ${want} is not a positive integer`);
    let fd: number;
    let created = false;
    try {
      fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (want === undefined) throw new Error(`${path} does not exist (give a size to create it)`);
      if (readOnly) throw new Error(`${path} does not exist (a read-only image is not created)`);
      fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, options.mode ?? 0o644);
      try {
        fs.ftruncateSync(fd, want);
      } catch (e) {
        fs.closeSync(fd);
        fs.rmSync(path, { force: true });
        throw e;
      }
      created = true;
    }
    try {
      const st = fs.fstatSync(fd);
      let size: number;
      if (st.isFile()) size = st.size;
      else if (st.isBlockDevice()) size = blockDeviceSize(fd, path);
      else throw new Error(`${path} is neither a regular file nor a block device`);
      if (size === 0) throw new Error(`${path} is empty`);
      if (want !== undefined && size !== want) throw new Error(`${path} has ${size} bytes, not the ${want} asked for`);
      const fallocate = options.fallocate === undefined ? native.fallocate.bind(native) : options.fallocate;
      const aio = options.aio ?? DEFAULT_FILE_AIO;
      if (aio !== 'threads' && aio !== 'io_uring') throw new RangeError(`aio must be 'threads' or 'io_uring', not '${String(aio)}'`);
      const blockingFs = st.isFile() && !nonBlockingReads(path);
      const ring = aio === 'io_uring' ? openRing(path, options, blockingFs) : null;
      const threadsFrom = ring === null ? Infinity : options.threadsFrom ?? (blockingFs ? THREADS_FROM : Infinity);
      return new FileStorage(path, fd, size, readOnly, created, st.isBlockDevice(), fallocate, ring, options.fallocate === undefined,
        threadsFrom);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** The io_uring queue's counters (aio `io_uring`), or null. */
  get uringStats(): Readonly<UringStats> | null {
    return this.#ring?.stats ?? null;
  }

  /** The open file descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  get canUnmap(): boolean {
    return this.#fallocate !== null && this.#punchHoleOk && !this.readOnly;
  }

  read<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    const fd = this.#fd;
    const ctx = context as C;
    if (fd < 0) return done(closedError(), ctx);
    const length = totalLength(buffers);
    if (!inRange(this.size, position, length)) return done(rangeError(this.size, position, length), ctx);
    if (length === 0) return done(null, ctx);
    if (length < this.#threadsFrom && this.#ring?.read(fd, buffers, position, length, done, ctx)) return;
    readFully(fd, buffers, position, done, ctx);
  }

  write<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    const fd = this.#fd;
    const ctx = context as C;
    if (fd < 0) return done(closedError(), ctx);
    if (this.readOnly) return done(readOnlyError(), ctx);
    const length = totalLength(buffers);
    if (!inRange(this.size, position, length)) return done(rangeError(this.size, position, length), ctx);
    if (length === 0) return done(null, ctx);
    this.#write(fd, buffers, position, done, ctx, length);
  }

  #write<C>(fd: number, buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context: C,
    length = totalLength(buffers)): void {
    if (length < this.#threadsFrom && this.#ring?.write(fd, buffers, position, length, done, context)) return;
    writeFully(fd, buffers, position, done, context);
  }

  flush<C>(done: IoCallback<C>, context?: C): void {
    const fd = this.#fd;
    const ctx = context as C;
    if (fd < 0) return done(closedError(), ctx);
    // Nothing of ours can be dirty in a read-only file.
    if (this.readOnly) return done(null, ctx);
    this.#fdatasync(fd, done, ctx);
  }

  #fdatasync<C>(fd: number, done: IoCallback<C>, context: C): void {
    if (this.#ring?.fsync(fd, true, done, context)) return;
    fs.fdatasync(fd, (err) => done(err, context));
  }

  discard<C>(position: number, length: number, done: IoCallback<C>, context?: C): void {
    this.#zeroOut(position, length, true, (err) => done(err, context as C));
  }

  writeZeroes<C>(position: number, length: number, unmap: boolean, done: IoCallback<C>, context?: C): void {
    this.#zeroOut(position, length, unmap, (err) => done(err, context as C));
  }

  /** Discard and write-zeroes (rare, and in several steps: one closure per operation carries the context). */
  #zeroOut(position: number, length: number, unmap: boolean, done: IoCallback): void {
    const fd = this.#fd;
    if (fd < 0) return done(closedError());
    if (this.readOnly) return done(readOnlyError());
    const err = rangeError(this.size, position, length);
    if (err) return done(err);
    if (length === 0) return done(null);
    const fallocate = this.#fallocate;
    const punch = unmap && this.#punchHoleOk;
    if (fallocate !== null && (punch || this.#zeroRangeOk)) {
      const mode = (punch ? FallocateMode.PUNCH_HOLE : FallocateMode.ZERO_RANGE) | FallocateMode.KEEP_SIZE;
      const ring = this.#ringFallocate ? this.#ring : null;
      if (ring?.fallocate(fd, mode, position, length, (e) => {
        if (e === null || !this.#unsupported(e, punch)) return done(e);
        this.#zeroOut(position, length, unmap, done);
      })) return;
      try {
        fallocate(fd, mode, position, length);
        return done(null);
      } catch (e) {
        if (!this.#unsupported(e as Error, punch)) return done(e as Error);
      }
    }
    writeZeros((buffers, at, cb) => this.#write(fd, buffers, at, cb, undefined), position, length, done);
  }

  /**
   * Is `err` the filesystem saying it cannot do that fallocate mode (tmpfs has no ZERO_RANGE, for one)? Then
   * zeros are written from now on.
   */
  #unsupported(err: Error, punch: boolean): boolean {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'ENOSYS') return false;
    if (punch) this.#punchHoleOk = false;
    else this.#zeroRangeOk = false;
    return true;
  }

  async close(): Promise<void> {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    const ring = this.#ring;
    try {
      // Nothing should be in flight (the BlockStorage contract); if something is, the fd must outlive it.
      if (ring) await ring.idle();
      if (!this.readOnly) await new Promise<void>((resolve, reject) => this.#fdatasync(fd, (e) => (e ? reject(e) : resolve()), undefined));
    } finally {
      if (ring) {
        await ring.idle();
        ring.close();
        this.#ring = null;
      }
      fs.closeSync(fd);
    }
  }
}

/** io_uring failures already reported through the default logger, by code: one line each, not one per image. */
const reportedRingFailures = new Set<string>();

/** `statfs` f_type of filesystems that cannot read or write without blocking (no FMODE_NOWAIT). */
const BLOCKING_FS = new Set([
  0x01021994, // tmpfs (and /dev/shm)
  0x858458f6, // ramfs
]);

/**
 * Can io_uring read this regular file without handing the read to a kernel worker? Not on tmpfs/ramfs (as of
 * Linux 6.18): there every transfer goes to io-wq, which runs work that never blocks on one worker, so large
 * transfers are then marked to get workers of their own.
 */
function nonBlockingReads(path: string): boolean {
  try {
    return !BLOCKING_FS.has(fs.statfsSync(path).type);
  } catch {
    return true;
  }
}

/** From this size on, transfers on a file without non-blocking I/O get io-wq workers of their own. */
const ASYNC_FROM = 64 * 1024;
/** From this size on, transfers on a file without non-blocking I/O go to the thread pool (see threadsFrom). */
const THREADS_FROM = 64 * 1024;

/** A ring for a new storage, or null (logged) when io_uring is unavailable. */
function openRing(path: string, options: FileStorageOptions, blockingFs: boolean): UringQueue | null {
  const log = options.logger;
  try {
    return new UringQueue({
      entries: options.ringEntries ?? RING_ENTRIES,
      inlineCompletions: options.inlineCompletions,
      asyncFrom: options.uringAsyncFrom ?? (blockingFs ? ASYNC_FROM : undefined),
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const line = `${path}: io_uring unavailable (${e.message}); using the thread pool`;
    if (log) {
      log.warn(line);
    } else if (!reportedRingFailures.has(e.code ?? e.message)) {
      reportedRingFailures.add(e.code ?? e.message);
      logger('file-storage').warn(line);
    }
    return null;
  }
}
