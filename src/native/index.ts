/**
 * The one module that loads the native addon and gives it a typed interface.
 *
 * The addon is thin: it wraps the syscalls Node lacks and hands plain fds back.
 * Every failure throws a {@link SystemError} carrying `errno`, `code` and `syscall`.
 * Would-block results are not errors: they come back as sentinel values documented per call.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import util from 'node:util';

/** Readiness bits for {@link FdWatcher.start}. */
export const Readiness = {
  READABLE: 1,
  WRITABLE: 2,
} as const;

/** Result of {@link NativeBinding.recvMsg}. */
export interface RecvResult {
  /** Bytes read into the buffer; 0 means the peer closed the connection. */
  bytes: number;
  /** File descriptors received as SCM_RIGHTS; the caller owns them and must close them. */
  fds: number[];
  /** True when the kernel truncated ancillary data (MSG_CTRUNC): more fds were sent than we accept. */
  fdsTruncated: boolean;
}

/** A libuv poll handle on an fd. The callback runs on the thread that created the watcher. */
export interface FdWatcher {
  /** Start (or change) watching for the given {@link Readiness} bits. */
  start(events: number): void;
  /** Stop watching; may be started again. */
  stop(): void;
  /** Stop and free the handle. The fd itself is not closed. Idempotent. */
  close(): void;
}

/**
 * `IORING_SETUP_*` bits, for reading {@link IoUring.setupFlags}. The addon tries
 * SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL first and drops what the kernel refuses.
 */
export const IoUringSetup = {
  CLAMP: 1 << 4,
  SUBMIT_ALL: 1 << 7,
  TASKRUN_FLAG: 1 << 9,
  SINGLE_ISSUER: 1 << 12,
  DEFER_TASKRUN: 1 << 13,
} as const;

/**
 * An io_uring instance ({@link NativeBinding.ioUring}) on this thread. Operations go into numbered slots
 * (`0 <= slot < slots`, one operation per slot until its completion is delivered) and wait in the submission
 * queue until {@link IoUring.submit}. Each completion is a pair `(slot, res)` in {@link IoUring.completions}:
 * `res` is the syscall's result (bytes transferred, 0) or a negative errno. The pairs come from `submit(true)`
 * (its return value counts them) or through the callback given to `ioUring` (`callback(count)`, from the
 * event loop); either way they must be read before the next `submit` or callback overwrites them.
 *
 * No copy: iovecs point straight into the views, and the kernel writes into (or reads from) them until the
 * completion. The caller must keep every view (and so its buffer) referenced until then; the ring keeps
 * itself and its callback alive while anything is in flight, and keeps the event loop alive meanwhile.
 */
export interface IoUring {
  /** Number of slots (the ring's SQ entries: the requested count rounded up to a power of two). */
  readonly slots: number;
  /** `(slot, res)` pairs of delivered completions: 2 × `slots` int32s over a SharedArrayBuffer. */
  readonly completions: Int32Array;
  /** The `IORING_SETUP_*` flags the kernel accepted ({@link IoUringSetup}). */
  readonly setupFlags: number;
  /**
   * Queue `preadv(fd, buffers, position)`. At most 1024 non-empty views (IOV_MAX) are used: a longer list
   * completes short and the caller continues with the rest. Throws (nothing queued) on a bad slot or view.
   * With `async` the SQE is marked IOSQE_ASYNC: it skips the non-blocking attempt and goes to the kernel's
   * io-wq, which then runs it on a worker of its own (without the flag io-wq adds workers only when one blocks,
   * so work that never blocks, like copies from tmpfs, is serialized on one).
   */
  readv(slot: number, fd: number, buffers: Uint8Array | readonly Uint8Array[], position: number, async?: boolean): void;
  /** Queue `pwritev(fd, buffers, position)`; as {@link IoUring.readv}. */
  writev(slot: number, fd: number, buffers: Uint8Array | readonly Uint8Array[], position: number, async?: boolean): void;
  /** Queue `fdatasync(fd)` (`dataOnly`) or `fsync(fd)`. */
  fsync(slot: number, fd: number, dataOnly: boolean): void;
  /** Queue `fallocate(fd, mode, offset, length)`. */
  fallocate(slot: number, fd: number, mode: number, offset: number, length: number): void;
  /**
   * Submit everything queued in one `io_uring_enter`. With `reap`, also collect completions that are ready
   * already (page-cache hits finish inline); returns how many pairs are now in `completions` (SQEs the kernel
   * refused come back as completions with their errno either way).
   */
  submit(reap: boolean): number;
  /** Release the ring. Throws EBUSY while operations are in flight; idempotent. */
  close(): void;
}

/** Raw addon surface. Use the wrappers in this module rather than calling it directly. */
export interface NativeBinding {
  /** socket(AF_UNIX, SOCK_STREAM|NONBLOCK|CLOEXEC) + bind + listen. Returns the listening fd. */
  unixListen(path: string, backlog: number): number;
  /** accept4(NONBLOCK|CLOEXEC). Returns the new fd, or -1 when no connection is pending (EAGAIN). */
  unixAccept(fd: number): number;
  /** Blocking connect to a Unix socket path; the returned fd is then set NONBLOCK|CLOEXEC. */
  unixConnect(path: string): number;
  /** socketpair(AF_UNIX, SOCK_STREAM|NONBLOCK|CLOEXEC). */
  socketPair(): [number, number];
  /**
   * sendmsg with optional SCM_RIGHTS. Returns bytes sent, or -1 on EAGAIN. Sends with MSG_NOSIGNAL.
   * At most 253 fds (SCM_MAX_FD), and fds need at least one data byte to ride on: both else EINVAL.
   */
  sendMsg(fd: number, data: Uint8Array, fds: number[]): number;
  /**
   * recvmsg with room for up to maxFds fds (MSG_CMSG_CLOEXEC), maxFds in [0, 253]. Returns null on EAGAIN.
   * Fds beyond maxFds are closed natively and flagged with `fdsTruncated`.
   */
  recvMsg(fd: number, buf: Uint8Array, maxFds: number): RecvResult | null;
  /** Is the fd a listening AF_UNIX stream socket? (for socket activation) */
  isListeningUnixSocket(fd: number): boolean;
  /** Set or clear O_NONBLOCK. */
  setNonBlocking(fd: number, on: boolean): void;
  /** close(2). Throws on EBADF. */
  close(fd: number): void;
  /** mmap(MAP_SHARED) of [0, length) of fd, exposed as a SharedArrayBuffer; munmapped when collected. */
  mmap(fd: number, length: number, writable: boolean): SharedArrayBuffer;
  /**
   * Drop the file behind a mapping now: the pages are replaced by private zero pages (MAP_FIXED),
   * so the guest's memory is released at once and any later access touches nothing of the guest's.
   * A second call is a no-op; a buffer that did not come from {@link NativeBinding.mmap} is EINVAL.
   */
  unmapNow(buffer: SharedArrayBuffer): void;
  /** eventfd(initval, EFD_NONBLOCK|EFD_CLOEXEC). */
  eventfd(initval: number): number;
  /** Read an eventfd counter. Returns 0 when it is zero (EAGAIN). Exact up to 2^53. */
  eventfdRead(fd: number): number;
  /** Add to an eventfd counter. Returns false on EAGAIN (counter full). */
  eventfdWrite(fd: number, value: number): boolean;
  /** memfd_create(name, MFD_CLOEXEC|MFD_ALLOW_SEALING) + ftruncate(size). */
  memfdCreate(name: string, size: number): number;
  /**
   * Watch fd readiness on this thread's libuv loop; callback(events) or callback(events, errno) on error
   * (the watcher is then stopped). A started watcher keeps the loop and itself alive; a stopped one
   * that is no longer referenced is collected and its handle closed. libuv allows one active watcher per fd
   * per thread (starting a second is EEXIST), refuses regular files (EPERM) and sets O_NONBLOCK.
   * Close the watcher before closing the fd.
   */
  watch(fd: number, callback: (events: number, errno?: number) => void): FdWatcher;
  /** poll(2) on a single fd with a timeout in ms; returns revents (0 on timeout). Used by worker loops. */
  pollFd(fd: number, events: number, timeoutMs: number): number;
  /** fstat: size and mode of an fd, for region and image checks. */
  fstat(fd: number): { size: number; mode: number };
  /** fallocate(2) (synchronous; mode bits: KEEP_SIZE 1, PUNCH_HOLE 2, ZERO_RANGE 0x10). */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /**
   * Open a TAP interface (created if missing) via /dev/net/tun with IFF_TAP|IFF_NO_PI (and IFF_VNET_HDR when asked),
   * non-blocking. Returns the fd and the kernel's name for the interface.
   */
  tapOpen(name: string, vnetHdr: boolean): { fd: number; name: string };
  /**
   * The process-wide count of SIGBUS faults contained in our mappings (a frontend shrank a region's file): a
   * 4-byte SharedArrayBuffer to read with `Atomics.load(new Int32Array(sab), 0)`. Each fault's page was replaced
   * by a zero page.
   */
  faultCounter(): SharedArrayBuffer;
  /** openpty(3): the controller (non-blocking) and terminal fds and the terminal's path. */
  openpty(): { controller: number; terminal: number; path: string };
  /**
   * A new io_uring with `entries` slots (1..32768, rounded up to a power of two), completions registered on an
   * eventfd watched on this thread's loop, delivered to `callback(count)` ({@link IoUring}). Throws a
   * {@link SystemError} when io_uring is unavailable: `io_uring_setup` ENOSYS (no kernel support), EPERM
   * (disabled by sysctl or seccomp), ENOSYS also for kernels older than 5.6.
   */
  ioUring(entries: number, callback: (count: number) => void): IoUring;
}

/** An error from a failed syscall, shaped like Node's own system errors. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  // dist/src/native/index.js -> package root is three levels up; src/native/index.ts two.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [
    path.resolve(here, '../../../build/Release/vhost_native.node'),
    path.resolve(here, '../../build/Release/vhost_native.node'),
    path.resolve(here, '../../../build/Debug/vhost_native.node'),
  ];
  let lastError: unknown;
  for (const file of candidates) {
    try {
      return require(file) as NativeBinding;
    } catch (err) {
      lastError = err;
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(`vhost-user: native addon not built (run npm install): ${String(lastError)}`);
}

/** The loaded addon. */
export const native: NativeBinding = load();

/** Is this error a SystemError with the given code? */
export function isSystemError(err: unknown, code?: string): err is SystemError {
  return err instanceof Error && typeof (err as SystemError).errno === 'number' &&
    (code === undefined || (err as SystemError).code === code);
}

let errorMap: Map<number, [string, string]> | undefined;

/**
 * The {@link SystemError} for an errno reported without a throw (an io_uring completion's negative result),
 * shaped like the addon's own: `"<syscall> failed: <CODE> (<description>)"`.
 */
export function systemError(errno: number, syscall: string): SystemError {
  const entry = (errorMap ??= util.getSystemErrorMap()).get(-errno);
  const code = entry?.[0] ?? `E${errno}`;
  const err = new Error(`${syscall} failed: ${code}${entry ? ` (${entry[1]})` : ''}`) as SystemError;
  err.code = code;
  err.errno = errno;
  err.syscall = syscall;
  return err;
}

/** Close an fd, ignoring EBADF (already closed). Used on cleanup paths that must not throw. */
export function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    // cleanup path: nothing more to do
  }
}
