/**
 * The echo device, served on queue workers: {@link WorkerEchoDevice} names this module as its worker module, and
 * a worker builds its queue handler with {@link createQueueHandler}. A chain whose text is "fail" throws (the
 * ring breaks); one whose text is "crash" kills the worker thread (an uncaught exception outside any ring);
 * `delayMs` keeps chains in flight.
 */
import { threadId } from 'node:worker_threads';
import type { QueueHandler, QueueWorkerSpec } from '../../src/device/device.js';
import type { Vring } from '../../src/device/vring.js';
import type { DescriptorChain } from '../../src/virtqueue/chain.js';
import { EchoDevice } from './echo-device.js';

interface EchoWorkerData {
  delayMs?: number;
}

/** The worker side: echo upper-cased, then append "@<threadId>" so tests see which thread served a chain. */
export function createQueueHandler(data: unknown): QueueHandler {
  const { delayMs } = data as EchoWorkerData;
  let suffix = '';
  return {
    handleChain(vring: Vring, chain: DescriptorChain): void {
      const input = Buffer.from(chain.readAll()).toString();
      if (input === 'fail') throw new Error('asked to fail');
      if (input === 'crash') {
        setImmediate(() => {
          throw new Error('asked to crash');
        });
        return;
      }
      const out = Buffer.from(`${input.toUpperCase()}@${threadId}${suffix}`);
      const finish = (): void => vring.complete(chain, chain.writeFrom(out));
      if (delayMs === undefined) finish();
      else setTimeout(finish, delayMs);
    },
    update(update: unknown): void {
      suffix = String(update);
    },
  };
}

/** An echo device whose queues may run on workers. */
export class WorkerEchoDevice extends EchoDevice {
  delayMsOnWorker: number | undefined;
  broadcast: ((data: unknown) => void) | undefined;
  /** Queues kept on the connection's thread. */
  local = new Set<number>();

  queueWorker(): QueueWorkerSpec {
    return { module: import.meta.url, data: { delayMs: this.delayMsOnWorker } };
  }

  workerQueue(index: number): boolean {
    return !this.local.has(index);
  }

  attachWorkers(broadcast: (data: unknown) => void): void {
    this.broadcast = broadcast;
  }
}
