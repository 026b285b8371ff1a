/**
 * The storage behind a block device: a flat array of bytes with asynchronous scatter/gather I/O. Shared by
 * every block-like device (virtio-blk now, virtio-scsi later), so nothing here knows about virtio: positions and
 * lengths are in bytes, buffers are plain `Uint8Array` views (in practice views straight into guest memory).
 */
import { viewsLength } from '../../../util/views.js';

/**
 * Completion of one storage operation: `null` on success, and the `context` the operation was given (undefined
 * without one). Called exactly once per operation; backends that finish at once (memory, null) call it before the
 * operation returns.
 *
 * The context lets a caller pass one function for all its operations instead of a closure per request: a call
 * site that always sees the same function stays specialized on it (a new closure, such as a new request's after a
 * reconnection, makes V8 drop the code that inlined the previous one).
 */
export type IoCallback<C = void> = (error: Error | null, context: C) => void;

/** What kind of backend a storage is (for logs and capabilities). */
export type StorageKind = 'file' | 'memory' | 'null';

/** A block storage backend. */
export interface BlockStorage {
  readonly kind: StorageKind;
  /** Size in bytes. */
  readonly size: number;
  /** Writes, discards and write-zeroes fail with {@link StorageError} `EROFS`. */
  readonly readOnly: boolean;
  /** Do discard and unmapping write-zeroes really release space (rather than write zeros)? */
  readonly canUnmap: boolean;
  /** One line for logs: what and where. */
  readonly description: string;

  /**
   * Fill `buffers`, in order, from the bytes at `position`. The range must lie inside the storage; a range
   * error is reported through `done`, never thrown. Every operation passes its `context` to `done`.
   */
  read<C = void>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void;
  /** Store `buffers`, in order, at `position`. */
  write<C = void>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void;
  /** Make every write completed so far durable (fdatasync for files; nothing for volatile backends). */
  flush<C = void>(done: IoCallback<C>, context?: C): void;
  /** The range may be deallocated; afterwards it reads as zeros. */
  discard<C = void>(position: number, length: number, done: IoCallback<C>, context?: C): void;
  /** The range reads as zeros afterwards; with `unmap` its space may be released. */
  writeZeroes<C = void>(position: number, length: number, unmap: boolean, done: IoCallback<C>, context?: C): void;
  /** Flush (when writable) and release the backend. No operation may be in flight. */
  close(): Promise<void>;
}

/** Error codes of {@link StorageError}. */
export const StorageErrorCode = {
  /** A write-type operation on read-only storage. */
  READ_ONLY: 'EROFS',
  /** A range outside the storage, or not a valid byte range. */
  RANGE: 'ERANGE',
  /** The storage was closed. */
  CLOSED: 'EBADF',
} as const;
export type StorageErrorCode = (typeof StorageErrorCode)[keyof typeof StorageErrorCode];

/** A storage operation refused before any I/O. (I/O failures come back as Node's own system errors.) */
export class StorageError extends Error {
  override name = 'StorageError';
  readonly code: StorageErrorCode;

  constructor(code: StorageErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Total bytes of a list of views. */
export const totalLength = viewsLength;

/**
 * Is [position, position + length) a byte range inside `size`? Small enough to be inlined into every
 * operation (its negation is what {@link rangeError} reports).
 */
export function inRange(size: number, position: number, length: number): boolean {
  return position >= 0 && length >= 0 && length <= size - position && Number.isSafeInteger(position) &&
    Number.isSafeInteger(length);
}

/**
 * Check that [position, position + length) is a byte range inside `size`; returns the error to report, or
 * null when it is fine.
 */
export function rangeError(size: number, position: number, length: number): StorageError | null {
  if (inRange(size, position, length)) return null;
  return new StorageError(StorageErrorCode.RANGE, `range ${position}+${length} is outside the ${size}-byte storage`);
}

/** The error for a write-type operation on read-only storage. */
export function readOnlyError(): StorageError {
  return new StorageError(StorageErrorCode.READ_ONLY, 'storage is read-only');
}

/** The error for an operation after close. */
export function closedError(): StorageError {
  return new StorageError(StorageErrorCode.CLOSED, 'storage is closed');
}

/**
 * The views that remain after skipping `n` bytes of `buffers` (for continuing a short transfer). The first
 * returned view may be a sub-view; the rest are the originals.
 */
export function skipBytes(buffers: readonly Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (i < buffers.length && n >= buffers[i]!.length) n -= buffers[i++]!.length;
  const out = buffers.slice(i);
  if (out.length > 0 && n > 0) out[0] = out[0]!.subarray(n);
  return out;
}
