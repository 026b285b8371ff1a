/**
 * Test streams for bulk transfers: a source of pseudo-random bytes in uneven chunks and a sink, both hashing
 * (sha256) what passes, the sink able to stall.
 */
import { createHash, type Hash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import v8 from 'node:v8';
import vm from 'node:vm';

const CHUNK_SIZES = [65536, 4000, 131072, 12, 40964, 1, 100000, 7, 65535, 32768];

/** `total` pseudo-random bytes (xorshift32 from `seed`) in chunks of uneven sizes. */
export class PatternSource extends Readable {
  readonly total: number;
  produced = 0;
  readonly hash: Hash = createHash('sha256');
  #state: number;
  #turn = 0;

  constructor(total: number, seed: number) {
    super({ highWaterMark: 64 * 1024 });
    this.total = total;
    this.#state = seed >>> 0 || 1;
  }

  override _read(): void {
    if (this.produced >= this.total) {
      this.push(null);
      return;
    }
    const n = Math.min(CHUNK_SIZES[this.#turn++ % CHUNK_SIZES.length]!, this.total - this.produced);
    const bytes = new Uint8Array(Math.ceil(n / 4) * 4);
    const words = new Uint32Array(bytes.buffer);
    let x = this.#state;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
    this.#state = x >>> 0;
    const chunk = Buffer.from(bytes.buffer, 0, n);
    this.hash.update(chunk);
    this.produced += n;
    this.push(chunk);
  }
}

/** A sink that hashes and counts; {@link stall} holds write callbacks until {@link resume}. */
export class HashSink extends Writable {
  readonly hash: Hash = createHash('sha256');
  received = 0;
  #stalled = false;
  #held: (() => void) | undefined;
  /** Stall once `received` reaches each of these (ascending). */
  readonly stallPoints: number[];

  constructor(stallPoints: number[] = []) {
    super({ highWaterMark: 64 * 1024 });
    this.stallPoints = [...stallPoints];
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  stall(): void {
    this.#stalled = true;
  }

  resume(): void {
    this.#stalled = false;
    const cb = this.#held;
    this.#held = undefined;
    cb?.();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.hash.update(chunk);
    this.received += chunk.byteLength;
    if (this.stallPoints.length > 0 && this.received >= this.stallPoints[0]!) {
      this.stallPoints.shift();
      this.#stalled = true;
    }
    if (this.#stalled) this.#held = () => callback();
    else callback();
  }
}

let gcFn: (() => void) | undefined;

/** Force a full garbage collection (so memory figures show what is live, not what is pending collection). */
export function collectGarbage(): void {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  gcFn();
}

/**
 * Live memory after full collections: rss and array buffers, in bytes. Array buffer memory is released by a
 * sweeper after the collection, hence the second round a turn later.
 */
export async function liveMemory(): Promise<{ rss: number; arrayBuffers: number }> {
  collectGarbage();
  await new Promise((resolve) => setImmediate(resolve));
  collectGarbage();
  const m = process.memoryUsage();
  return { rss: m.rss, arrayBuffers: m.arrayBuffers };
}
