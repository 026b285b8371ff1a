/**
 * The queue workers of a device server: `worker_threads` that each serve some of the device's queues (queue i
 * goes to worker i mod N) with the device's queue handler, over the same guest memory mapping. The connection's
 * thread keeps the protocol; ring start, stop, enable, fds and memory-table changes reach the workers as ordered
 * messages, and stop waits for the worker's answer, so a ring is never processed after GET_VRING_BASE returned.
 *
 * A worker that dies (an uncaught exception or a crash in its thread) is started again, so that the next frontend
 * is served: the connection it served gets NEEDS_RESET (the rings it ran are gone), and the new worker gets the
 * device's last update and the current memory table. A worker that keeps dying soon after each start is restarted
 * with a growing delay. Workers hand the fds they are done with back to the pool, which closes them: the fds a
 * dead worker still had are closed here.
 */
import { Worker } from 'node:worker_threads';
import { closeQuietly } from '../../native/index.js';
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

/** Restart delays of a worker that dies soon after it started: doubling from the first, up to the last. */
const RESTART_DELAY_MS = 100;
const MAX_RESTART_DELAY_MS = 10_000;
/** A worker that ran this long before it died is restarted at once. */
const STABLE_MS = 10_000;

/** A requests-without-`seq` message (posted, not answered). */
type Posted = Exclude<ToWorker, { seq: number }>;
/** A request answered by the worker. */
type Asked = Extract<ToWorker, { seq: number }>;
type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  /** The fds the worker was given and has not handed back: the pool closes them when the worker is gone. */
  readonly fds = new Set<number>();
  readonly started = Date.now();
  dead: Error | undefined;

  constructor(worker: Worker) {
    this.worker = worker;
  }
}

function spawn(init: WorkerInit): PoolWorker {
  return new PoolWorker(new Worker(new URL('./queue-worker.js', import.meta.url), { workerData: init }));
}

/** Worker threads serving a device's queues. */
export class WorkerPool {
  readonly #workers: PoolWorker[];
  readonly #inits: WorkerInit[];
  readonly #log: Logger;
  #seq = 0;
  #closed = false;
  /** What a restarted worker is given before anything else: the device's last update, the current memory table. */
  #update: { data: unknown } | undefined;
  #memory: Extract<ToWorker, { t: 'memory' }>['regions'] | undefined;
  /** Per worker: the restart delay its next quick death gets, and its pending restart. */
  readonly #delays: number[];
  readonly #timers: (NodeJS.Timeout | undefined)[];
  #restarts = 0;
  /** A worker's ring broke; set by the connection's backend. */
  onBroken: ((index: number, message: string) => void) | undefined;
  /** A worker died, with the rings it ran (it is being restarted); set by the connection's backend. */
  onWorkerDied: ((worker: number, message: string) => void) | undefined;

  private constructor(workers: PoolWorker[], inits: WorkerInit[], log: Logger) {
    this.#workers = workers;
    this.#inits = inits;
    this.#log = log;
    this.#delays = workers.map(() => RESTART_DELAY_MS);
    this.#timers = workers.map(() => undefined);
  }

  /** Start `options.workers` workers with the device's queue handler; resolves once every one is ready. */
  static async start(spec: QueueWorkerSpec, options: WorkerPoolOptions): Promise<WorkerPool> {
    const n = options.workers;
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`workers must be an integer in 1..64, got ${n}`);
    const log = options.logger;
    const workers: PoolWorker[] = [];
    const inits: WorkerInit[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const init: WorkerInit = {
        worker: i, module: spec.module, data: spec.data, pollUs: options.pollUs, logLevel: getLogLevel(),
        name: `worker-${i}`,
      };
      const w = spawn(init);
      inits.push(init);
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
    const pool = new WorkerPool(workers, inits, log);
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

  /** Workers started again after they died. */
  get restarts(): number {
    return this.#restarts;
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

  /** Post to every worker (a worker being restarted gets the device's last update when it starts). */
  broadcast(message: Posted): void {
    this.#remember(message);
    for (const w of this.#workers) if (!this.#replayed(w, message)) this.#post(w, message);
  }

  /** Ask the worker of queue `index`; resolves with its answer. */
  ask(index: number, message: WithoutSeq<Asked>): Promise<unknown> {
    return this.#ask(this.#workers[this.workerOf(index)]!, message);
  }

  /** Ask every worker; resolves with their answers, in worker order. */
  askAll(message: WithoutSeq<Asked>): Promise<unknown[]> {
    this.#remember(message);
    return Promise.all(this.#workers.map((w) => (this.#replayed(w, message) ? undefined : this.#ask(w, message))));
  }

  /** Each worker's queue-handler statistics (`QueueHandler.stats`), in worker order. */
  stats(): Promise<unknown[]> {
    return this.askAll({ t: 'stats' });
  }

  /** Terminate the workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    // Each worker's fds are closed on its exit.
    await Promise.all(this.#workers.map((w) => w.worker.terminate()));
  }

  #post(w: PoolWorker, message: ToWorker): void {
    if (w.dead) throw new Error(`queue worker is gone (${w.dead.message}); it is being restarted`);
    w.worker.postMessage(message);
    if (message.t === 'start' && message.kickFd >= 0) w.fds.add(message.kickFd);
    else if ((message.t === 'call' || message.t === 'err') && message.fd >= 0) w.fds.add(message.fd);
  }

  /** Close the fds a worker still had (it is gone: nothing else closes them). */
  #closeFds(w: PoolWorker): void {
    for (const fd of w.fds) closeQuietly(fd);
    w.fds.clear();
  }

  /**
   * Keep what a restarted worker needs: the device's last update and the memory table the workers have now
   * (forgotten on reset: its regions are unmapped after the connection goes).
   */
  #remember(message: WithoutSeq<ToWorker>): void {
    if (message.t === 'update') this.#update = { data: message.data };
    else if (message.t === 'memory') this.#memory = message.regions;
    else if (message.t === 'reset') this.#memory = undefined;
  }

  /** A dead worker needs no update, memory table or reset: the worker that replaces it starts with the current ones. */
  #replayed(w: PoolWorker, message: WithoutSeq<ToWorker>): boolean {
    return w.dead !== undefined && (message.t === 'update' || message.t === 'memory' || message.t === 'reset');
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
      } else if (m.t === 'release') {
        if (w.fds.delete(m.fd)) closeQuietly(m.fd);
      }
    });
    const die = (err: Error): void => {
      if (w.dead) return;
      w.dead = err;
      for (const p of w.pending.values()) p.reject(err);
      w.pending.clear();
      if (this.#closed) return;
      // A worker that dies soon after its start is restarted later each time, so that a crash on start-up does
      // not become a busy loop; one that ran a while is restarted at once.
      const quick = Date.now() - w.started < STABLE_MS;
      const delay = quick ? this.#delays[i]! : 0;
      this.#delays[i] = quick ? Math.min(delay * 2, MAX_RESTART_DELAY_MS) : RESTART_DELAY_MS;
      this.#log.error(`queue worker ${i} died: ${err.message}; restarting it${delay > 0 ? ` in ${delay} ms` : ''}`);
      this.onWorkerDied?.(i, `queue worker ${i} died: ${err.message}`);
      this.#scheduleRestart(i, delay);
    };
    w.worker.on('error', die);
    w.worker.on('exit', (code) => {
      die(new Error(`exited with code ${code}`));
      // Only now: until its thread has ended, the worker's loop may still be watching them.
      this.#closeFds(w);
    });
  }

  /** Unref'd: a pending restart does not keep the process alive (the daemon's socket does). */
  #scheduleRestart(i: number, delay: number): void {
    const timer = setTimeout(() => this.#restart(i), delay);
    timer.unref();
    this.#timers[i] = timer;
  }

  /** Start worker `i` again; it gets the device's last update and the current memory table first. */
  #restart(i: number): void {
    this.#timers[i] = undefined;
    if (this.#closed) return;
    let w: PoolWorker;
    try {
      w = spawn(this.#inits[i]!);
    } catch (err) {
      const delay = this.#delays[i]!;
      this.#delays[i] = Math.min(delay * 2, MAX_RESTART_DELAY_MS);
      this.#log.error(`queue worker ${i} could not be started again: ${(err as Error).message}; next try in ${delay} ms`);
      this.#scheduleRestart(i, delay);
      return;
    }
    this.#workers[i] = w;
    this.#restarts++;
    // Posted before anything else reaches it: messages wait in the port until the worker listens.
    if (this.#update) w.worker.postMessage({ t: 'update', data: this.#update.data } satisfies ToWorker);
    if (this.#memory) w.worker.postMessage({ t: 'memory', seq: ++this.#seq, regions: this.#memory, quiesce: false } satisfies ToWorker);
    const onMessage = (m: FromWorker): void => {
      if (m.t === 'ready') {
        w.worker.off('message', onMessage);
        this.#log.info(`queue worker ${i} restarted`);
      } else if (m.t === 'failed') {
        w.worker.off('message', onMessage);
        this.#log.error(`queue worker ${i} did not start again: ${m.message}`);
      }
    };
    w.worker.on('message', onMessage);
    this.#watch(w, i);
  }
}
