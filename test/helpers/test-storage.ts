/**
 * Storage wrappers shared by the device and SCSI tests.
 */
import type { BlockStorage, IoCallback, StorageKind } from '../../src/devices/blk/storage/storage.js';

/**
 * A storage wrapper for device tests: records calls (and, for the operations named in {@link recordDone}, their
 * completions), can hold operations until released, can fail them, can throw from them, and can report
 * completions on a later turn of the event loop (the operation itself runs at once, as a file's would start).
 */
export class TestStorage implements BlockStorage {
  readonly inner: BlockStorage;
  readonly calls: string[] = [];
  /** Buffers the last read/write was given (to check that no copy was made). */
  lastBuffers: readonly Uint8Array[] = [];
  /** Operations to hold: 'read', 'write', 'flush', 'discard', 'writeZeroes'. */
  hold = new Set<string>();
  /** Operations to fail, with the error to fail them with. */
  fail = new Map<string, Error>();
  /** Throw synchronously from this operation (a bug in a backend). */
  throwFrom: string | undefined;
  /** Report every completion with setImmediate (in the order the operations ran). */
  deferCompletions = false;
  /** Operations whose completion is recorded too, as `<name> done`, when the inner storage reports it. */
  recordDone = new Set<string>();
  readonly #held: (() => void)[] = [];

  constructor(inner: BlockStorage) {
    this.inner = inner;
  }

  get kind(): StorageKind { return this.inner.kind; }
  get size(): number { return this.inner.size; }
  get readOnly(): boolean { return this.inner.readOnly; }
  get canUnmap(): boolean { return this.inner.canUnmap; }
  get description(): string { return `test storage on ${this.inner.description}`; }

  get heldCount(): number {
    return this.#held.length;
  }

  release(): void {
    for (const go of this.#held.splice(0)) go();
  }

  /** `run` is the inner operation; its completion, or the failure, goes to `done` with `context`. */
  #op<C>(name: string, call: string, run: (done: IoCallback) => void, done: IoCallback<C>, context: C): void {
    this.calls.push(call);
    if (this.throwFrom === name) throw new Error(`${name} threw`);
    const go = () => {
      const err = this.fail.get(name);
      const report: IoCallback = this.deferCompletions ? (e) => setImmediate(() => done(e, context)) : (e) => done(e, context);
      if (err) report(err);
      else if (this.recordDone.has(name)) run((e) => { this.calls.push(`${name} done`); report(e); });
      else run(report);
    };
    if (this.hold.has(name)) this.#held.push(go);
    else go();
  }

  read<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    this.lastBuffers = buffers;
    this.#op('read', `read ${position}+${buffers.reduce((n, b) => n + b.byteLength, 0)}`,
      (d) => this.inner.read(buffers, position, d), done, context as C);
  }

  write<C>(buffers: readonly Uint8Array[], position: number, done: IoCallback<C>, context?: C): void {
    this.lastBuffers = buffers;
    this.#op('write', `write ${position}+${buffers.reduce((n, b) => n + b.byteLength, 0)}`,
      (d) => this.inner.write(buffers, position, d), done, context as C);
  }

  flush<C>(done: IoCallback<C>, context?: C): void {
    this.#op('flush', 'flush', (d) => this.inner.flush(d), done, context as C);
  }

  discard<C>(position: number, length: number, done: IoCallback<C>, context?: C): void {
    this.#op('discard', `discard ${position}+${length}`, (d) => this.inner.discard(position, length, d), done, context as C);
  }

  writeZeroes<C>(position: number, length: number, unmap: boolean, done: IoCallback<C>, context?: C): void {
    this.#op('writeZeroes', `write-zeroes ${position}+${length}${unmap ? ' unmap' : ''}`,
      (d) => this.inner.writeZeroes(position, length, unmap, d), done, context as C);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** An error like the ones Node's fs reports. */
export function systemError(code: string): NodeJS.ErrnoException {
  const err = new Error(`${code}: simulated`) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}
