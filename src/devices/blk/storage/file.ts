/**
 * A raw image: a regular file (created sparse on request) or a block device. Reads and writes go straight
 * between the caller's views and the file with `preadv`/`pwritev` on libuv's thread pool, no copy in between;
 * flush is `fdatasync`.
 *
 * Discard and write-zeroes use `fallocate(2)` from the native addon (Node has none): PUNCH_HOLE for discard and
 * unmapping write-zeroes, ZERO_RANGE otherwise. Where the filesystem lacks a mode (EOPNOTSUPP; tmpfs has no
 * ZERO_RANGE) they write zeros instead, which keeps "reads back as zeros" true but allocates the range.
 */
import fs from 'node:fs';
import { native } from '../../../native/index.js';
import {
  closedError, rangeError, readOnlyError, skipBytes, totalLength, type BlockStorage, type IoCallback, type StorageKind,
} from './storage.js';

/** `fallocate(2)` mode bits. */
export const FallocateMode = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  ZERO_RANGE: 0x10,
} as const;

/** A synchronous `fallocate(fd, mode, offset, length)` that throws a system error (with `code`) on failure. */
export type FallocateFn = (fd: number, mode: number, offset: number, length: number) => void;

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
function readFully(fd: number, buffers: readonly Uint8Array[], position: number, done: IoCallback): void {
  fs.readv(fd, buffers, position, (err, n) => {
    if (err) return done(err);
    const total = totalLength(buffers);
    if (n >= total) return done(null);
    if (n === 0) {
      // End of file: the image was truncated under us. Read as a hole would.
      for (const b of buffers) b.fill(0);
      return done(null);
    }
    // Short: the kernel stopped early (IOV_MAX, signal) or the file ends inside the range.
    readFully(fd, skipBytes(buffers, n), position + n, done);
  });
}

/** Write all of `buffers`, continuing after short writes. */
function writeFully(fd: number, buffers: readonly Uint8Array[], position: number, done: IoCallback): void {
  fs.writev(fd, buffers, position, (err, n) => {
    if (err) return done(err);
    const total = totalLength(buffers);
    if (n >= total) return done(null);
    if (n === 0) return done(new Error(`pwritev at ${position} wrote nothing`));
    writeFully(fd, skipBytes(buffers, n), position + n, done);
  });
}

/** Write `length` zeros at `position` from one shared zero buffer. */
function writeZeros(fd: number, position: number, length: number, done: IoCallback): void {
  const zero = (zeroChunk ??= new Uint8Array(ZERO_CHUNK));
  const iov: Uint8Array[] = [];
  let n = 0;
  while (n < length && iov.length < ZERO_IOVS) {
    const k = Math.min(ZERO_CHUNK, length - n);
    iov.push(k === ZERO_CHUNK ? zero : zero.subarray(0, k));
    n += k;
  }
  if (n === 0) return done(null);
  writeFully(fd, iov, position, (err) => {
    if (err || n === length) return done(err);
    writeZeros(fd, position + n, length - n, done);
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
  #fd: number;
  #fallocate: FallocateFn | null;
  /** Modes the filesystem turned out to support (assumed until it says EOPNOTSUPP). */
  #punchHoleOk = true;
  #zeroRangeOk = true;

  private constructor(path: string, fd: number, size: number, readOnly: boolean, created: boolean, isBlockDevice: boolean,
    fallocate: FallocateFn | null) {
    this.path = path;
    this.#fd = fd;
    this.size = size;
    this.readOnly = readOnly;
    this.created = created;
    this.isBlockDevice = isBlockDevice;
    this.#fallocate = fallocate;
    this.description = `${isBlockDevice ? 'block device' : 'image'} ${path} (${size} bytes${readOnly ? ', read-only' : ''}` +
      `${created ? ', created' : ''})`;
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
      return new FileStorage(path, fd, size, readOnly, created, st.isBlockDevice(), fallocate);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** The open file descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  get canUnmap(): boolean {
    return this.#fallocate !== null && this.#punchHoleOk && !this.readOnly;
  }

  read(buffers: readonly Uint8Array[], position: number, done: IoCallback): void {
    if (this.#fd < 0) return done(closedError());
    const err = rangeError(this.size, position, totalLength(buffers));
    if (err) return done(err);
    if (buffers.length === 0) return done(null);
    readFully(this.#fd, buffers, position, done);
  }

  write(buffers: readonly Uint8Array[], position: number, done: IoCallback): void {
    if (this.#fd < 0) return done(closedError());
    if (this.readOnly) return done(readOnlyError());
    const err = rangeError(this.size, position, totalLength(buffers));
    if (err) return done(err);
    if (buffers.length === 0) return done(null);
    writeFully(this.#fd, buffers, position, done);
  }

  flush(done: IoCallback): void {
    if (this.#fd < 0) return done(closedError());
    // Nothing of ours can be dirty in a read-only file.
    if (this.readOnly) return done(null);
    fs.fdatasync(this.#fd, done);
  }

  discard(position: number, length: number, done: IoCallback): void {
    this.#zeroOut(position, length, true, done);
  }

  writeZeroes(position: number, length: number, unmap: boolean, done: IoCallback): void {
    this.#zeroOut(position, length, unmap, done);
  }

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
      try {
        fallocate(fd, mode, position, length);
        return done(null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'ENOSYS') return done(e as Error);
        // This filesystem cannot do that mode (tmpfs has no ZERO_RANGE, for one): write zeros from now on.
        if (punch) this.#punchHoleOk = false;
        else this.#zeroRangeOk = false;
      }
    }
    writeZeros(fd, position, length, done);
  }

  async close(): Promise<void> {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    try {
      if (!this.readOnly) await new Promise<void>((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
    } finally {
      fs.closeSync(fd);
    }
  }
}
