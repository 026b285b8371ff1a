/**
 * A RAM disk: the bytes live in this process and are gone when it exits. Every operation completes
 * synchronously, with one copy between the caller's views and the disk.
 *
 * Copies allocate nothing in the common case: a write copies each whole caller view into the disk at an offset
 * (`set` takes a target offset), and a read of whole 4 KiB pages copies from page views kept in a bounded
 * direct-mapped cache (`set` needs the source as one whole array, so reading a range needs a view of it).
 */
import {
  closedError, inRange, rangeError, readOnlyError, totalLength, type BlockStorage, type IoCallback, type StorageKind,
} from './storage.js';

/** Bytes per backing chunk: large disks are several buffers (one Buffer is limited to 4 GiB on Node 20). */
const CHUNK_SHIFT = 30;
const CHUNK_SIZE = 2 ** CHUNK_SHIFT;
/** Granule of the read-side view cache. */
const PAGE_SHIFT = 12;
const PAGE_SIZE = 1 << PAGE_SHIFT;
/** Most cached page views (each ~100 bytes of heap): covers 256 MiB of disk. */
const PAGE_CACHE_MAX = 1 << 16;

/** Options for {@link MemoryStorage}. */
export interface MemoryStorageOptions {
  /** Size in bytes (a positive safe integer). */
  size: number;
  readOnly?: boolean;
  /**
   * Use these bytes instead of fresh zeroed memory: another instance's {@link MemoryStorage.sharedChunks} (on a
   * queue worker). Their lengths must add up to `size` in chunks of 1 GiB.
   */
  chunks?: readonly Uint8Array[];
}

/** A disk held in memory, zero-filled at start. Pages are only committed by the OS as they are written. */
export class MemoryStorage implements BlockStorage {
  readonly kind: StorageKind = 'memory';
  readonly size: number;
  readonly readOnly: boolean;
  readonly canUnmap = false;
  readonly description: string;
  #chunks: Buffer[] | null;
  /** Views of whole pages, slot `page & mask`, valid when `#pageKeys[slot] === page`. */
  readonly #pages: Uint8Array[];
  readonly #pageKeys: Float64Array;
  readonly #pageMask: number;

  constructor(options: MemoryStorageOptions) {
    const { size } = options;
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`memory disk size ${size} is not a positive integer`);
    this.size = size;
    this.readOnly = options.readOnly ?? false;
    this.#chunks = [];
    if (options.chunks) {
      const given = options.chunks;
      for (let at = 0, i = 0; at < size; at += CHUNK_SIZE, i++) {
        const c = given[i];
        if (!c || c.byteLength !== Math.min(CHUNK_SIZE, size - at)) {
          throw new RangeError(`memory disk: chunk ${i} does not fit a disk of ${size} bytes`);
        }
        this.#chunks.push(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
      }
      if (given.length !== this.#chunks.length) throw new RangeError(`memory disk: ${given.length} chunks for ${size} bytes`);
    } else {
      // Shared so queue workers can use the same bytes; large allocations are calloc'ed, so untouched pages cost
      // nothing.
      for (let at = 0; at < size; at += CHUNK_SIZE) {
        this.#chunks.push(Buffer.from(new SharedArrayBuffer(Math.min(CHUNK_SIZE, size - at))));
      }
    }
    let slots = 1;
    while (slots < PAGE_CACHE_MAX && slots * PAGE_SIZE < size) slots *= 2;
    this.#pageMask = slots - 1;
    this.#pageKeys = new Float64Array(slots).fill(-1);
    const empty = new Uint8Array(0);
    this.#pages = [];
    for (let i = 0; i < slots; i++) this.#pages.push(empty);
    this.description = `memory disk of ${size} bytes${this.readOnly ? ' (read-only)' : ''}`;
  }

  /** The disk's bytes for another thread's {@link MemoryStorage} (views of SharedArrayBuffers); undefined once closed. */
  sharedChunks(): Uint8Array[] | undefined {
    return this.#chunks?.map((c) => new Uint8Array(c.buffer, c.byteOffset, c.byteLength));
  }

  read<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    const chunks = this.#chunks;
    if (chunks === null) return done(closedError(), context as C);
    const length = totalLength(buffers);
    if (!inRange(this.size, position, length)) return done(rangeError(this.size, position, length), context as C);
    let pos = position;
    for (let i = 0; i < buffers.length; i++) {
      const dst = buffers[i]!;
      let copied = 0;
      while (copied < dst.byteLength) {
        const chunk = chunks[Math.floor(pos / CHUNK_SIZE)]!;
        const off = pos % CHUNK_SIZE;
        const want = dst.byteLength - copied;
        if ((off & (PAGE_SIZE - 1)) === 0 && want >= PAGE_SIZE && chunk.byteLength - off >= PAGE_SIZE) {
          // Whole pages (chunks are whole pages, so a page never straddles two).
          dst.set(this.#page(chunk, pos, off), copied);
          copied += PAGE_SIZE;
          pos += PAGE_SIZE;
          continue;
        }
        const n = Math.min(want, chunk.byteLength - off, PAGE_SIZE - (off & (PAGE_SIZE - 1)));
        chunk.copy(dst, copied, off, off + n);
        copied += n;
        pos += n;
      }
    }
    done(null, context as C);
  }

  /** The cached view of the page at disk position `pos` (offset `off` in `chunk`). */
  #page(chunk: Buffer, pos: number, off: number): Uint8Array {
    const page = pos / PAGE_SIZE;
    const slot = page & this.#pageMask;
    if (this.#pageKeys[slot] === page) return this.#pages[slot]!;
    const v = new Uint8Array(chunk.buffer, chunk.byteOffset + off, PAGE_SIZE);
    this.#pages[slot] = v;
    this.#pageKeys[slot] = page;
    return v;
  }

  write<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    const chunks = this.#chunks;
    if (chunks === null) return done(closedError(), context as C);
    if (this.readOnly) return done(readOnlyError(), context as C);
    const length = totalLength(buffers);
    if (!inRange(this.size, position, length)) return done(rangeError(this.size, position, length), context as C);
    let pos = position;
    for (let i = 0; i < buffers.length; i++) {
      const src = buffers[i]!;
      let copied = 0;
      while (copied < src.byteLength) {
        const chunk = chunks[Math.floor(pos / CHUNK_SIZE)]!;
        const off = pos % CHUNK_SIZE;
        const n = Math.min(src.byteLength - copied, chunk.byteLength - off);
        chunk.set(n === src.byteLength ? src : src.subarray(copied, copied + n), off);
        copied += n;
        pos += n;
      }
    }
    done(null, context as C);
  }

  flush<C>(done: IoCallback<C>, context?: C): void {
    done(this.#chunks === null ? closedError() : null, context as C);
  }

  discard<C>(position: number, length: number, done: IoCallback<C>, context?: C): void {
    // RAM cannot be handed back page by page from a Buffer; zeroing keeps "reads as zeros" true.
    this.writeZeroes(position, length, true, done, context);
  }

  writeZeroes<C>(position: number, length: number, _unmap: boolean, done: IoCallback<C>, context?: C): void {
    const chunks = this.#chunks;
    if (chunks === null) return done(closedError(), context as C);
    if (this.readOnly) return done(readOnlyError(), context as C);
    const err = rangeError(this.size, position, length);
    if (err) return done(err, context as C);
    let pos = position;
    const end = position + length;
    while (pos < end) {
      const chunk = chunks[Math.floor(pos / CHUNK_SIZE)]!;
      const off = pos % CHUNK_SIZE;
      const n = Math.min(end - pos, chunk.byteLength - off);
      chunk.fill(0, off, off + n);
      pos += n;
    }
    done(null, context as C);
  }

  async close(): Promise<void> {
    this.#chunks = null;
    // The cached views would keep the chunks' memory alive.
    this.#pages.fill(new Uint8Array(0));
    this.#pageKeys.fill(-1);
  }
}
