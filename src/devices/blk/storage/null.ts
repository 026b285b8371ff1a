/**
 * A disk with no data, for benchmarks: every operation succeeds at once. Like QEMU's `null-co` driver with its
 * default `read-zeroes=off`, reads leave the caller's buffers untouched (whatever the guest had there stays);
 * pass `readZeroes` to fill them with zeros instead. Writes are dropped.
 */
import { closedError, inRange, rangeError, readOnlyError, totalLength, type BlockStorage, type IoCallback, type StorageKind } from './storage.js';

/** Options for {@link NullStorage}. */
export interface NullStorageOptions {
  /** Size in bytes (a positive safe integer). */
  size: number;
  readOnly?: boolean;
  /** Zero the read buffers (costs a memset per read; off by default, as in null-co). */
  readZeroes?: boolean;
}

/** The null backend. */
export class NullStorage implements BlockStorage {
  readonly kind: StorageKind = 'null';
  readonly size: number;
  readonly readOnly: boolean;
  readonly canUnmap = false;
  readonly readZeroes: boolean;
  readonly description: string;
  #closed = false;

  constructor(options: NullStorageOptions) {
    const { size } = options;
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`null disk size ${size} is not a positive integer`);
    this.size = size;
    this.readOnly = options.readOnly ?? false;
    this.readZeroes = options.readZeroes ?? false;
    this.description = `null disk of ${size} bytes${this.readZeroes ? ' reading zeros' : ''}${this.readOnly ? ' (read-only)' : ''}`;
  }

  read<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    if (this.#closed) return done(closedError(), context as C);
    const length = totalLength(buffers);
    if (!inRange(this.size, position, length)) return done(rangeError(this.size, position, length), context as C);
    if (this.readZeroes) for (let i = 0; i < buffers.length; i++) buffers[i]!.fill(0);
    done(null, context as C);
  }

  write<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    this.#writeLike(position, totalLength(buffers), done, context);
  }

  flush<C>(done: IoCallback<C>, context?: C): void {
    done(this.#closed ? closedError() : null, context as C);
  }

  discard<C>(position: number, length: number, done: IoCallback<C>, context?: C): void {
    this.#writeLike(position, length, done, context);
  }

  writeZeroes<C>(position: number, length: number, _unmap: boolean, done: IoCallback<C>, context?: C): void {
    this.#writeLike(position, length, done, context);
  }

  #writeLike<C>(position: number, length: number, done: IoCallback<C>, context?: C): void {
    if (this.#closed) return done(closedError(), context as C);
    if (this.readOnly) return done(readOnlyError(), context as C);
    done(inRange(this.size, position, length) ? null : rangeError(this.size, position, length), context as C);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
