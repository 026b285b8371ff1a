/**
 * The queue workers of a device server: `worker_threads` that each serve some of the device's queues (queue i
 * goes to worker i mod N) with the device's queue handler, over the same guest memory mapping. The connection's
 * thread keeps the protocol; ring start, stop, enable, fds and memory-table changes reach the workers as ordered
 * messages, and stop waits for the worker's answer, so a ring is never processed after GET_VRING_BASE returned.
 */
import { Worker } from 'node:worker_threads';
import { getLogLevel, type Logger } from '../../util/log.js';
import type { QueueWorkerSpec } from '../device.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

/** Options for {@link WorkerPool.start}. */
export interface WorkerPoolOptions {
  /** Number of workers (1..64). */
  workers: number;
  /** Poll window of each worker's rings (microseconds, 0 = notifications only). */
  pollUs: number;
  logger: Logger;
}

type Pending = { resolve: (value: unknown) => void; reject: (err: Error) => void };

/** A requests-without-`seq` message (posted, not answered). */
type Posted = Exclude<ToWorker, { seq: number }>;
/** A request answered by the worker. */
type Asked = Extract<ToWorker, { seq: number }>;
type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  dead: Error | undefined;

  constructor(worker: Worker) {
    this.worker = worker;
  }
}

/** Worker threads serving a device's queues. */
export class WorkerPool {
  readonly #workers: PoolWorker[];
  readonly #log: Logger;
  #seq = 0;
  #closed = false;
  /** A worker's ring broke (index), or a worker died (index -1); set by the connection's backend. */
  onBroken: ((index: number, message: string) => void) | undefined;

  private constructor(workers: PoolWorker[], log: Logger) {
    this.#workers = workers;
    this.#log = log;
  }

  /** Start `options.workers` workers with the device's queue handler; resolves once every one is ready. */
  static async start(spec: QueueWorkerSpec, options: WorkerPoolOptions): Promise<WorkerPool> {
    const n = options.workers;
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`workers must be an integer in 1..64, got ${n}`);
    const log = options.logger;
    const workers: PoolWorker[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const init: WorkerInit = {
        worker: i, module: spec.module, data: spec.data, pollUs: options.pollUs, logLevel: getLogLevel(),
        name: `worker-${i}`,
      };
      const w = new PoolWorker(new Worker(new URL('./queue-worker.js', import.meta.url), { workerData: init }));
      workers.push(w);
      ready.push(new Promise<void>((resolve, reject) => {
        const onMessage = (m: FromWorker): void => {
          if (m.t === 'ready') {
            w.worker.off('message', onMessage);
            resolve();
          } else if (m.t === 'failed') {
            reject(new Error(`worker ${i}: ${m.message}`));
          }
        };
        w.worker.on('message', onMessage);
        w.worker.once('error', (err) => reject(new Error(`worker ${i}: ${err.message}`)));
        w.worker.once('exit', (code) => reject(new Error(`worker ${i} exited (${code}) before it was ready`)));
      }));
    }
    const pool = new WorkerPool(workers, log);
    try {
      await Promise.all(ready);
    } catch (err) {
      await Promise.all(workers.map((w) => w.worker.terminate()));
      throw err;
    }
    workers.forEach((w, i) => pool.#watch(w, i));
    return pool;
  }

  /** Number of workers. */
  get size(): number {
    return this.#workers.length;
  }

  /** The worker serving queue `index`. */
  workerOf(index: number): number {
    return index % this.#workers.length;
  }

  /** "queue 0 -> worker 0, queue 1 -> worker 1, ..." for the queues that go to workers. */
  describe(queues: readonly number[]): string {
    return queues.map((q) => `queue ${q} -> worker ${this.workerOf(q)}`).join(', ');
  }

  /** Post to the worker of queue `index` (fds in the message now belong to it). */
  post(index: number, message: Posted): void {
    this.#post(this.#workers[this.workerOf(index)]!, message);
  }

  /** Post to every worker. */
  broadcast(message: Posted): void {
    for (const w of this.#workers) this.#post(w, message);
  }

  /** Ask the worker of queue `index`; resolves with its answer. */
  ask(index: number, message: WithoutSeq<Asked>): Promise<unknown> {
    return this.#ask(this.#workers[this.workerOf(index)]!, message);
  }

  /** Ask every worker; resolves with their answers, in worker order. */
  askAll(message: WithoutSeq<Asked>): Promise<unknown[]> {
    return Promise.all(this.#workers.map((w) => this.#ask(w, message)));
  }

  /** Each worker's queue-handler statistics (`QueueHandler.stats`), in worker order. */
  stats(): Promise<unknown[]> {
    return this.askAll({ t: 'stats' });
  }

  /** Terminate the workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#workers.map((w) => w.worker.terminate()));
  }

  #post(w: PoolWorker, message: ToWorker): void {
    if (w.dead) throw new Error(`queue worker is gone: ${w.dead.message}`);
    w.worker.postMessage(message);
  }

  #ask(w: PoolWorker, message: WithoutSeq<Asked>): Promise<unknown> {
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      if (w.dead) {
        reject(new Error(`queue worker is gone: ${w.dead.message}`));
        return;
      }
      w.pending.set(seq, { resolve, reject });
      w.worker.postMessage({ ...message, seq } as ToWorker);
    });
  }

  #watch(w: PoolWorker, i: number): void {
    w.worker.on('message', (m: FromWorker) => {
      if (m.t === 'reply') {
        const p = w.pending.get(m.seq);
        if (!p) return;
        w.pending.delete(m.seq);
        if (m.error !== undefined) p.reject(new Error(`worker ${i}: ${m.error}`));
        else p.resolve(m.value);
      } else if (m.t === 'broken') {
        this.onBroken?.(m.index, m.message);
      }
    });
    const die = (err: Error): void => {
      if (w.dead) return;
      w.dead = err;
      if (!this.#closed) this.#log.error(`queue worker ${i} died: ${err.message}`);
      for (const p of w.pending.values()) p.reject(err);
      w.pending.clear();
      if (!this.#closed) this.onBroken?.(-1, `queue worker ${i} died: ${err.message}`);
    };
    w.worker.on('error', die);
    w.worker.on('exit', (code) => die(new Error(`exited with code ${code}`)));
  }
}
