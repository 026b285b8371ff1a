/**
 * Micro-benchmark of the device-side hot path, in one process and without sockets or kicks: a driver (fixed
 * descriptors per request slot, rewritten avail entries only, so the driver itself allocates nothing) feeds a
 * real {@link Vring} over {@link GuestRam} (a memfd mapping, as in the daemon), and each round is one processing
 * pass as the framework runs it (`vring.batch` of pop + handleChain), at a fixed queue depth.
 *
 * Cases: `queue` (SplitQueue pop/push/flush only), `blk-<null|memory>-<read|write>` (BlkDevice).
 * Prints ns/request and bytes allocated per request. Allocation is counted exactly with `v8.GCProfiler`: the
 * growth of the used heap over the measured window plus what every collection in it freed.
 *
 *   node dist/bench/micro/blk-hot-path.js [--requests N] [--warmup N] [--qd 32] [--bs 4096] [--cases a,b]
 *     [--inflight] [--json]
 *
 * Timing on a shared machine is noisy; for a deterministic cost, count instructions with valgrind for two
 * request counts and divide the difference (see bench/micro/README.md).
 */
import { fileURLToPath } from 'node:url';
import { measure, microMain, type MeasureOptions, type MicroResult, type Workload } from './measure.js';
import { QUEUE_SIZE, SlotDriver } from './slot-driver.js';
import { BlkDevice } from '../../src/devices/blk/device.js';
import { Blk, BlkRequestType, encodeHeader } from '../../src/devices/blk/request.js';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { NullStorage } from '../../src/devices/blk/storage/null.js';
import { logger } from '../../src/util/log.js';
import { InflightQueue, inflightQueueSize } from '../../src/virtqueue/inflight.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtqueue/layout.js';
import { SplitQueue } from '../../src/virtqueue/split-queue.js';

/** Small enough that every 4 KiB block is read during the warm-up (the memory disk caches page views). */
const DISK = 16 << 20;

interface Options extends MeasureOptions {
  bs: number;
  inflight: boolean;
}

/** Per-slot header / data / status buffers with their descriptors written once. */
class Driver extends SlotDriver {
  readonly headers: DataView[] = [];
  readonly status: Uint8Array[] = [];

  constructor(qd: number, bs: number, type: number) {
    super(qd, 3);
    const ram = this.ram;
    const write = type === BlkRequestType.IN ? VIRTQ_DESC_F_WRITE : 0;
    for (let k = 0; k < qd; k++) {
      const head = 3 * k;
      const hdr = ram.alloc(Blk.HEADER_SIZE, 16);
      const data = ram.alloc(bs, 4096);
      const st = ram.alloc(1, 1);
      ram.bytes(hdr, Blk.HEADER_SIZE).set(encodeHeader(type, 0));
      this.queue.writeDescriptor(head, hdr, Blk.HEADER_SIZE, VIRTQ_DESC_F_NEXT, head + 1);
      this.queue.writeDescriptor(head + 1, data, bs, write | VIRTQ_DESC_F_NEXT, head + 2);
      this.queue.writeDescriptor(head + 2, st, 1, VIRTQ_DESC_F_WRITE, 0);
      const h = ram.bytes(hdr, Blk.HEADER_SIZE);
      this.headers.push(new DataView(h.buffer, h.byteOffset, Blk.HEADER_SIZE));
      this.status.push(ram.bytes(st, 1));
      this.heads.push(head);
    }
  }

  /** Offer every slot again, each at a new random block (`blocks` of `bs` bytes). */
  offer(blocks: number, bs: number): void {
    const perBlock = bs / Blk.SECTOR_SIZE;
    for (let k = 0; k < this.heads.length; k++) {
      this.headers[k]!.setUint32(8, this.nextBlock(blocks) * perBlock, true);
      this.status[k]![0] = 0xff;
    }
    this.publishAll();
  }

  /** Throw unless every offered request came back with status OK. */
  check(): void {
    this.checkUsed();
    for (let k = 0; k < this.status.length; k++) {
      if (this.status[k]![0] !== 0) throw new Error(`slot ${k}: status ${this.status[k]![0]}`);
    }
  }
}

function inflightFor(opts: Options): InflightQueue | undefined {
  if (!opts.inflight) return undefined;
  return new InflightQueue(new ArrayBuffer(inflightQueueSize(QUEUE_SIZE)), 0, QUEUE_SIZE);
}

/** SplitQueue only: pop every chain, push it with length 1, flush once per round. */
function queueWorkload(opts: Options): Workload {
  const driver = new Driver(opts.qd, opts.bs, BlkRequestType.IN);
  const q = new SplitQueue(0, QUEUE_SIZE);
  q.eventIdx = true;
  q.configure(driver.ram.memory, driver.addresses);
  const inflight = inflightFor(opts);
  if (inflight) q.attachInflight(inflight);
  return {
    round() {
      driver.offer(1, opts.bs);
      for (let c = q.pop(); c !== null; c = q.pop()) {
        c.writable[c.writable.length - 1]![0] = 0;
        q.push(c.head, 1);
      }
      q.flush();
      driver.check();
    },
    close() {
      driver.close();
    },
  };
}

/** A BlkDevice behind a real Vring, processed as the framework does (one batch per round). */
function blkWorkload(opts: Options, storageKind: 'null' | 'memory', type: number): Workload {
  const driver = new Driver(opts.qd, opts.bs, type);
  const storage = storageKind === 'null' ? new NullStorage({ size: DISK }) : new MemoryStorage({ size: DISK });
  const device = new BlkDevice({ storage, logger: logger('bench') });
  device.featuresNegotiated(device.features);
  let failure: Error | undefined;
  const vring = driver.startVring(0, device.maxChainLength, (err) => { failure = err; }, inflightFor(opts));
  const blocks = Math.floor(DISK / opts.bs);
  // One pass as the framework runs it; bound once, so the loop itself allocates nothing.
  const pass = (): void => {
    for (let c = vring.pop(); c !== null; c = vring.pop()) device.handleChain(vring, c);
  };
  return {
    round() {
      driver.offer(blocks, opts.bs);
      vring.batch(pass);
      if (failure) throw failure;
      driver.check();
    },
    close() {
      vring.dispose();
      void storage.close();
      driver.close();
    },
  };
}

function makeWorkload(name: string, opts: Options): Workload {
  if (name === 'queue') return queueWorkload(opts);
  const m = /^blk-(null|memory)-(read|write)$/.exec(name);
  if (!m) throw new Error(`unknown case ${name}`);
  return blkWorkload(opts, m[1] as 'null' | 'memory', m[2] === 'read' ? BlkRequestType.IN : BlkRequestType.OUT);
}

/** Run one case: warm up, then measure time and allocation over `requests` requests. */
export function runCase(name: string, opts: Options): MicroResult {
  return measure(name, makeWorkload(name, opts), opts);
}

const ALL = ['queue', 'blk-null-read', 'blk-null-write', 'blk-memory-read', 'blk-memory-write'];

function main(): void {
  microMain(ALL, ['inflight'], (a) => ({ requests: a.requests, warmup: a.warmup, qd: a.qd, bs: a.bs, inflight: a.flags.inflight! }),
    runCase, (o) => `node ${process.version}, qd ${o.qd}, bs ${o.bs}, inflight ${o.inflight ? 'on' : 'off'}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
