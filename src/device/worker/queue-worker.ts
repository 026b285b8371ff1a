/**
 * A queue worker's thread: serves the rings the connection's thread hands it, with its own poll loop, over the
 * shared mapping of guest memory. Started by {@link WorkerPool}; not imported by anything else.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../memory/guest-memory.js';
import { MemoryRegion } from '../../memory/region.js';
import { InflightQueue } from '../../virtqueue/inflight.js';
import { Limits } from '../../protocol/constants.js';
import { logger, setLogLevel } from '../../util/log.js';
import type { CreateQueueHandler, QueueHandler } from '../device.js';
import { RingPoller } from '../poller.js';
import { Vring, type VringOwner } from '../vring.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

const init = workerData as WorkerInit;
const port = parentPort!;
setLogLevel(init.logLevel);
const log = logger(init.name);

function post(message: FromWorker): void {
  port.postMessage(message);
}

let handler: QueueHandler;
try {
  const mod = await import(init.module) as { createQueueHandler?: CreateQueueHandler };
  if (typeof mod.createQueueHandler !== 'function') throw new Error(`${init.module} does not export createQueueHandler`);
  handler = await mod.createQueueHandler(init.data);
} catch (err) {
  post({ t: 'failed', message: (err as Error).message });
  process.exit(1);
}

const memory = new GuestMemory({ maxRegions: Limits.MAX_MEM_SLOTS });
const poller = new RingPoller(handler, init.pollUs);
const rings = new Map<number, Vring>();
const owner: VringOwner = {
  available: (vring) => poller.kicked(vring),
  broken: (vring, error) => {
    poller.remove(vring);
    post({ t: 'broken', index: vring.index, message: error.message });
  },
  closeFd: release,
};

/** Hand an fd back to the pool, which closes it: if this thread dies, the pool closes what it still had. */
function release(fd: number): void {
  post({ t: 'release', fd });
}

function ring(index: number): Vring {
  let v = rings.get(index);
  if (!v) {
    v = new Vring(index, owner, log);
    rings.set(index, v);
  }
  return v;
}

async function stopRing(v: Vring): Promise<number> {
  poller.remove(v);
  if (v.started) handler.ringStopping?.(v);
  return v.stop();
}

async function handle(m: ToWorker): Promise<unknown> {
  switch (m.t) {
    case 'memory': {
      if (m.quiesce) await Promise.all([...rings.values()].map((v) => v.whenIdle()));
      memory.replace(m.regions.map((r) => MemoryRegion.fromBuffer(r.desc, r.buffer)));
      for (const v of rings.values()) v.remap(memory);
      return undefined;
    }
    case 'start': {
      let inflight: InflightQueue | undefined;
      try {
        inflight = m.inflight ? new InflightQueue(m.inflight.buffer, m.inflight.offset, m.inflight.queueSize) : undefined;
      } catch (err) {
        release(m.kickFd);
        throw err;
      }
      const v = ring(m.index);
      v.size = m.size;
      v.addresses = m.addresses;
      v.base = m.base;
      v.eventIdx = m.eventIdx;
      v.indirect = m.indirect;
      v.enabled = m.enabled;
      v.inflight = inflight;
      v.start(m.kickFd, memory, m.maxChainLength);
      if (!v.started) return undefined;
      poller.add(v);
      handler.ringStarted?.(v);
      poller.kicked(v);
      return undefined;
    }
    case 'call':
      ring(m.index).setCallFd(m.fd < 0 ? undefined : m.fd);
      return undefined;
    case 'err':
      ring(m.index).setErrFd(m.fd < 0 ? undefined : m.fd);
      return undefined;
    case 'enable': {
      const v = ring(m.index);
      if (v.enabled === m.enabled) return undefined;
      v.enabled = m.enabled;
      handler.ringEnableChanged?.(v);
      if (m.enabled) poller.kicked(v);
      return undefined;
    }
    case 'features':
      for (const v of rings.values()) {
        v.eventIdx = m.eventIdx;
        v.indirect = m.indirect;
        if (v.queue) {
          try {
            v.queue.eventIdx = m.eventIdx;
            v.queue.indirect = m.indirect;
          } catch (err) {
            v.fail(err as Error);
          }
        }
      }
      return undefined;
    case 'addr': {
      const v = ring(m.index);
      v.addresses = m.addresses;
      if (v.started) v.remap(memory);
      return undefined;
    }
    case 'stop':
      return stopRing(ring(m.index));
    case 'reset': {
      await Promise.all([...rings.values()].map((v) => (v.started ? stopRing(v) : undefined)));
      for (const v of rings.values()) v.dispose();
      rings.clear();
      memory.clear();
      await handler.reset?.();
      return undefined;
    }
    case 'update':
      handler.update?.(m.data);
      return undefined;
    case 'stats':
      return handler.stats?.();
  }
}

// Requests are handled one at a time, in order, like the connection's own messages.
let chain: Promise<void> = Promise.resolve();
port.on('message', (m: ToWorker) => {
  chain = chain.then(async () => {
    const seq = 'seq' in m ? m.seq : -1;
    try {
      const value = await handle(m);
      if (seq >= 0) post({ t: 'reply', seq, value });
    } catch (err) {
      log.error(`${m.t}: ${(err as Error).message}`);
      if (seq >= 0) post({ t: 'reply', seq, error: (err as Error).message });
    }
  });
});
post({ t: 'ready' });
