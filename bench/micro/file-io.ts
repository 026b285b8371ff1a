/**
 * Micro benchmark of FileStorage's I/O engines: libuv's thread pool (`threads`) against one io_uring per storage
 * (`io_uring`), on an image in the page cache, through the BlockStorage interface the devices use.
 *
 * Workloads: 4 KiB random reads at QD 32 and 1 MiB sequential reads at QD 8, into views of an mmap'ed memfd (as
 * guest memory is); on request also the same as writes (`randwrite4k-qd32`, `seqwrite1m-qd8`: buffered, no
 * flush). Each completion issues the next read at once. Reported per engine: IOPS, MB/s, CPU time per
 * I/O from `process.cpuUsage()` (the whole process: the thread pool and io_uring's kernel workers included), the
 * CPU used in cores, context switches per I/O (`process.resourceUsage()`, less noisy than time), and for io_uring the batch size (SQEs per io_uring_enter) and the share of completions
 * delivered inline. Engines alternate within one run and each keeps its best repetition; the ratios
 * (io_uring / threads) come from that same run, which matters on a shared machine.
 *
 *   node dist/bench/micro/file-io.js [--time SEC] [--warmup SEC] [--reps N] [--dir DIR] [--size MIB]
 *                                    [--engines threads,io_uring,io_uring-deferred,io_uring-async] [--workloads rand4k-qd32,seq1m-qd8,...]
 *                                    [--json]
 *
 * `io_uring-deferred` is io_uring with every completion left to the event loop (no inline delivery);
 * `io_uring-async` sends transfers of 64 KiB and more to io_uring's kernel workers (IOSQE_ASYNC) instead of
 * trying them inline (the default on tmpfs).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { native } from '../../src/native/index.js';
import { FileStorage, type FileStorageOptions, type IoCallback, type UringStats } from '../../src/devices/blk/storage/index.js';
import { si, textTable } from '../common/table.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Workload {
  name: string;
  bs: number;
  qd: number;
  random: boolean;
  write?: boolean;
  /** Run only when named in --workloads. */
  extra?: boolean;
}

const WORKLOADS: readonly Workload[] = [
  { name: 'rand4k-qd32', bs: 4 * KiB, qd: 32, random: true },
  { name: 'seq1m-qd8', bs: 1 * MiB, qd: 8, random: false },
  { name: 'randwrite4k-qd32', bs: 4 * KiB, qd: 32, random: true, write: true, extra: true },
  { name: 'seqwrite1m-qd8', bs: 1 * MiB, qd: 8, random: false, write: true, extra: true },
];

const ENGINES: Record<string, FileStorageOptions> = {
  threads: { aio: 'threads' },
  io_uring: { aio: 'io_uring' },
  'io_uring-deferred': { aio: 'io_uring', inlineCompletions: false },
  'io_uring-async': { aio: 'io_uring', uringAsyncFrom: 64 * 1024 },
};

interface Result {
  workload: string;
  engine: string;
  ios: number;
  seconds: number;
  iops: number;
  mbPerSec: number;
  cpuUsPerIo: number;
  cpuCores: number;
  /** Voluntary + involuntary context switches of the process per I/O (thread hand-offs show up here). */
  ctxSwitchesPerIo: number;
  sqesPerEnter?: number;
  inlineShare?: number;
}

/** Keep `qd` reads in flight for `warmup + time` seconds; measure the last `time`. */
function runOnce(storage: FileStorage, w: Workload, guest: SharedArrayBuffer, warmup: number, time: number): Promise<Omit<Result, 'workload' | 'engine'>> {
  const blocks = Math.floor(storage.size / w.bs);
  const lists = Array.from({ length: w.qd }, (_, i) => [new Uint8Array(guest, i * w.bs, w.bs)]);
  let next = 0;
  const position = (): number => (w.random ? Math.floor(Math.random() * blocks) : (next = (next + 1) % blocks)) * w.bs;

  const io = w.write ? storage.write.bind(storage) : storage.read.bind(storage);
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const measureFrom = start + warmup * 1000;
    const end = measureFrom + time * 1000;
    let measuring = false;
    let t0 = 0;
    let cpu0 = process.cpuUsage();
    let ru0 = process.resourceUsage();
    let stats0: UringStats | undefined;
    let ios = 0;
    let inflight = 0;
    let failed = false;

    const finish = (): void => {
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const cpuUs = cpu.user + cpu.system;
      const ru = process.resourceUsage();
      const ctx = ru.voluntaryContextSwitches + ru.involuntaryContextSwitches - ru0.voluntaryContextSwitches - ru0.involuntaryContextSwitches;
      const s1 = storage.uringStats;
      const out: Omit<Result, 'workload' | 'engine'> = {
        ios, seconds, iops: ios / seconds, mbPerSec: (ios * w.bs) / seconds / 1e6, cpuUsPerIo: cpuUs / ios, cpuCores: cpuUs / 1e6 / seconds,
        ctxSwitchesPerIo: ctx / ios,
      };
      if (s1 && stats0) {
        out.sqesPerEnter = (s1.operations - stats0.operations) / Math.max(1, s1.submits - stats0.submits);
        const inline = s1.inlineCompletions - stats0.inlineCompletions;
        out.inlineShare = inline / Math.max(1, inline + s1.loopCompletions - stats0.loopCompletions);
      }
      resolve(out);
    };

    const callbacks: IoCallback[] = lists.map((list) => {
      const cb: IoCallback = (err) => {
        if (err) {
          if (!failed) reject(err);
          failed = true;
        }
        const now = performance.now();
        if (measuring) ios++;
        else if (now >= measureFrom) {
          measuring = true;
          t0 = now;
          cpu0 = process.cpuUsage();
          ru0 = process.resourceUsage();
          const s = storage.uringStats;
          stats0 = s ? { ...s } : undefined;
        }
        if (failed || now >= end) {
          if (--inflight === 0 && !failed) finish();
          return;
        }
        io(list, position(), cb);
      };
      return cb;
    });
    for (let i = 0; i < w.qd; i++) {
      inflight++;
      io(lists[i]!, position(), callbacks[i]!);
    }
  });
}

/** An image of `size` bytes of random data, left in the page cache. */
function makeImage(dir: string, size: number): string {
  const file = path.join(dir, `file-io-bench-${process.pid}.img`);
  const fd = fs.openSync(file, 'w+');
  try {
    const chunk = crypto.randomBytes(MiB);
    for (let at = 0; at < size; at += MiB) fs.writeSync(fd, chunk, 0, Math.min(MiB, size - at), at);
    // Read it once: whatever the filesystem did with the writes, the pages are cached now.
    const buf = Buffer.allocUnsafe(MiB);
    for (let at = 0; at < size; at += MiB) fs.readSync(fd, buf, 0, MiB, at);
  } catch (err) {
    fs.rmSync(file, { force: true });
    throw err;
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      time: { type: 'string' }, warmup: { type: 'string' }, reps: { type: 'string' }, dir: { type: 'string' },
      size: { type: 'string' }, engines: { type: 'string' }, workloads: { type: 'string' }, json: { type: 'boolean' },
    },
  });
  const time = Number(v.time ?? 1.5);
  const warmup = Number(v.warmup ?? 0.3);
  const reps = Number(v.reps ?? 2);
  const size = Number(v.size ?? 256) * MiB;
  const engines = (v.engines ?? 'threads,io_uring').split(',');
  const workloads = v.workloads === undefined ? WORKLOADS.filter((w) => !w.extra) : v.workloads.split(',').map((name) => {
    const w = WORKLOADS.find((x) => x.name === name);
    if (!w) throw new Error(`unknown workload '${name}' (${WORKLOADS.map((x) => x.name).join(', ')})`);
    return w;
  });
  for (const e of engines) if (!(e in ENGINES)) throw new Error(`unknown engine '${e}' (${Object.keys(ENGINES).join(', ')})`);
  if (!(time > 0 && warmup >= 0 && Number.isInteger(reps) && reps > 0 && Number.isSafeInteger(size) && size >= 16 * MiB)) {
    throw new Error('bad --time/--warmup/--reps/--size');
  }

  const dir = v.dir ?? os.tmpdir();
  const file = makeImage(dir, size);
  const maxGuest = Math.max(...workloads.map((w) => w.bs * w.qd));
  const memfd = native.memfdCreate('file-io-bench-guest', maxGuest);
  const guest = native.mmap(memfd, maxGuest, true);
  native.close(memfd);

  const results: Result[] = [];
  try {
    for (const w of workloads) {
      const best = new Map<string, Result>();
      for (let r = 0; r < reps; r++) {
        for (const engine of engines) {
          const storage = FileStorage.open(file, { readOnly: !w.write, ...ENGINES[engine] });
          if (engine !== 'threads' && storage.aio !== 'io_uring') throw new Error('io_uring is unavailable here');
          try {
            const res = { workload: w.name, engine, ...await runOnce(storage, w, guest, warmup, time) };
            const prev = best.get(engine);
            if (!prev || res.iops > prev.iops) best.set(engine, res);
          } finally {
            await storage.close();
          }
        }
      }
      results.push(...engines.map((e) => best.get(e)!));
    }
  } finally {
    fs.rmSync(file, { force: true });
  }

  const fmt = (n: number | undefined, digits = 2): string => (n === undefined ? '–' : n.toFixed(digits));
  const rows = [['workload', 'engine', 'IOPS', 'MB/s', 'CPU µs/IO', 'CPU cores', 'ctxsw/IO', 'SQEs/enter', 'inline', 'IOPS ×', 'CPU/IO ×']];
  for (const r of results) {
    const base = results.find((x) => x.workload === r.workload && x.engine === 'threads');
    rows.push([
      r.workload, r.engine, si(r.iops), r.mbPerSec.toFixed(0), fmt(r.cpuUsPerIo), fmt(r.cpuCores), fmt(r.ctxSwitchesPerIo, 3), fmt(r.sqesPerEnter, 1),
      r.inlineShare === undefined ? '–' : `${(r.inlineShare * 100).toFixed(0)}%`,
      base ? fmt(r.iops / base.iops) : '–', base ? fmt(r.cpuUsPerIo / base.cpuUsPerIo) : '–',
    ]);
  }
  const load = os.loadavg()[0]!.toFixed(2);
  process.stdout.write(`file-io: ${size / MiB} MiB image in ${dir} (page cache), ${os.cpus().length} CPUs, load ${load}, ` +
    `best of ${reps} × ${time} s; ratios against threads\n${textTable(rows)}\n`);
  if (v.json) process.stdout.write(JSON.stringify({ params: { time, warmup, reps, size, dir }, results }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`file-io: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
