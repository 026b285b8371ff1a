#!/usr/bin/env node
/**
 * `npm run bench:scsi`: the cost of the SCSI layer. The same workload as bench:blk (4 KiB random reads at queue
 * depth 1, 32 and 128 on 1 and 2 queues, 1 MiB sequential reads, null disks) through our virtio-blk daemon and
 * our virtio-scsi daemon in one run, each driven by a C driver of the same design (bench/blk/driver/blk_bench.c
 * and its virtio-scsi twin bench/scsi/driver/scsi_bench.c, which shares its vhost-user and ring code). Reports
 * IOPS, backend CPU per I/O and the scsi/blk ratios; the target is scsi within 15% of blk's IOPS.
 * Writes bench/results/scsi-<time>.json and scsi-latest.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildBlkDriver, runBlkDriver, DriverError, type DriverReport, type DriverRun } from '../blk/c-driver.js';
import { oursUnavailable, startOurs } from '../blk/backends.js';
import { buildScsiDriver } from './c-driver.js';
import { BenchDaemon } from '../common/daemon.js';
import { cliPath, repoRoot } from '../common/paths.js';
import { hostInfo, writeResults } from '../common/results.js';
import { waitForQuiet } from '../common/system.js';
import { markdownTable, ratio, si, textTable } from '../common/table.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** One case; queue depth is per queue. The same cases as bench/blk/run.ts. */
interface BenchCase {
  name: string;
  bs: number;
  pattern: 'rand' | 'seq';
  qd: number;
  queues: number;
}

const CASES: readonly BenchCase[] = [
  { name: 'rand4k-qd1-q1', bs: 4 * KiB, pattern: 'rand', qd: 1, queues: 1 },
  { name: 'rand4k-qd32-q1', bs: 4 * KiB, pattern: 'rand', qd: 32, queues: 1 },
  { name: 'rand4k-qd128-q1', bs: 4 * KiB, pattern: 'rand', qd: 128, queues: 1 },
  { name: 'rand4k-qd1-q2', bs: 4 * KiB, pattern: 'rand', qd: 1, queues: 2 },
  { name: 'rand4k-qd32-q2', bs: 4 * KiB, pattern: 'rand', qd: 32, queues: 2 },
  { name: 'rand4k-qd128-q2', bs: 4 * KiB, pattern: 'rand', qd: 128, queues: 2 },
  { name: 'seq1m-qd8-q1', bs: 1 * MiB, pattern: 'seq', qd: 8, queues: 1 },
];

/** The target: virtio-scsi within 15% of virtio-blk's IOPS (checked on this case). */
const TARGET = { case: 'rand4k-qd32-q1', minRatio: 0.85 };
/** A window in which other processes used more than this many cores is flagged as disturbed. */
const NOISY_CORES = 0.3;

type Transport = 'blk' | 'scsi';

const help = `usage: npm run bench:scsi -- [options]

  --time SEC          measured seconds per run (default 3)
  --warmup SEC        seconds before measuring (default 0.5)
  --size BYTES        null disk size (default 1073741824)
  --cases LIST        comma-separated case names (default all: ${CASES.map((c) => c.name).join(', ')})
  --threads N         driver threads per run (default: min(queues, CPUs - 1), at least 1)
  --pin               pin the driver's threads to the last CPUs
  --repeat N          runs per case and transport, taking turns; the best undisturbed run is kept (default 1)
  --quiet-wait SEC    before each run, wait up to SEC for other processes to go idle (default 5)
  --markdown          also print the table as Markdown
  --out DIR           results directory (default bench/results)
  --no-write          do not write JSON results
  -h, --help          this help
`;

/** Start `vhost-user scsi` with one null LUN. */
function startScsi(o: { socketPath: string; size: number; queues: number }): Promise<BenchDaemon> {
  return BenchDaemon.start({
    name: 'vhost-user scsi',
    command: process.execPath,
    args: [cliPath, 'scsi', '--socket-path', o.socketPath, '--lun', `null:${o.size}`, '--num-queues', String(o.queues),
      '--log-level', 'warn'],
    socketPath: o.socketPath,
  });
}

interface CaseResult {
  case: BenchCase;
  blk?: DriverReport;
  scsi?: DriverReport;
  samples: Partial<Record<Transport, number[]>>;
  errors: Partial<Record<Transport, string>>;
  /** scsi / blk */
  iopsRatio?: number;
  cpuPerIoRatio?: number;
}

function parseNumber(v: string | undefined, name: string, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name}: '${v}' is not a number >= ${min}`);
  return n;
}

function noisy(r: DriverReport): boolean {
  return r.foreignCpuSec / r.seconds > NOISY_CORES;
}

function better(r: DriverReport, than: DriverReport | undefined): boolean {
  return !than || (noisy(than) && !noisy(r)) || (noisy(than) === noisy(r) && r.iops > than.iops);
}

function rate(c: BenchCase, r: DriverReport | undefined): string {
  if (!r) return '–';
  return (c.pattern === 'seq' ? `${(r.mbps / 1000).toFixed(1)} GB/s` : si(r.iops)) + (noisy(r) ? '*' : '');
}

function cpu(r: DriverReport | undefined): string {
  return r && r.backendCpuUsPerIo >= 0 ? r.backendCpuUsPerIo.toFixed(2) : '–';
}

function tableRows(results: CaseResult[]): string[][] {
  const rows = [['case', 'virtio-blk', 'virtio-scsi', 'scsi/blk', 'blk CPU µs/IO', 'scsi CPU µs/IO', 'CPU/IO scsi/blk']];
  for (const r of results) {
    rows.push([
      r.case.name, r.errors.blk ? 'failed' : rate(r.case, r.blk), r.errors.scsi ? 'failed' : rate(r.case, r.scsi),
      ratio(r.scsi?.iops, r.blk?.iops), cpu(r.blk), cpu(r.scsi), ratio(r.scsi?.backendCpuUsPerIo, r.blk?.backendCpuUsPerIo),
    ]);
  }
  return rows;
}

const live = new Set<BenchDaemon>();

async function main(): Promise<number> {
  const { values: v } = parseArgs({
    options: {
      time: { type: 'string' }, warmup: { type: 'string' }, size: { type: 'string' }, cases: { type: 'string' },
      threads: { type: 'string' }, pin: { type: 'boolean' }, repeat: { type: 'string' }, 'quiet-wait': { type: 'string' },
      markdown: { type: 'boolean' }, out: { type: 'string' }, 'no-write': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
  });
  if (v.help) {
    process.stdout.write(help);
    return 0;
  }
  const seconds = parseNumber(v.time, 'time', 3, 0.05);
  const warmup = parseNumber(v.warmup, 'warmup', 0.5, 0);
  const size = parseNumber(v.size, 'size', 1024 * MiB, MiB);
  const repeat = Math.floor(parseNumber(v.repeat, 'repeat', 1, 1));
  const quietWaitMs = parseNumber(v['quiet-wait'], 'quiet-wait', 5, 0) * 1000;
  const cpus = os.availableParallelism?.() ?? os.cpus().length;
  const threadsOpt = v.threads === undefined ? undefined : parseNumber(v.threads, 'threads', 1, 1);
  const caseNames = v.cases?.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of caseNames ?? []) if (!CASES.some((c) => c.name === n)) throw new Error(`unknown case '${n}'`);
  const cases = caseNames ? CASES.filter((c) => caseNames.includes(c.name)) : [...CASES];
  const unavailable = oursUnavailable();
  if (unavailable) throw new Error(unavailable);

  process.stderr.write('building the C drivers... ');
  const binaries: Record<Transport, string> = { blk: buildBlkDriver(), scsi: buildScsiDriver() };
  process.stderr.write(`${path.relative(repoRoot, binaries.blk)}, ${path.relative(repoRoot, binaries.scsi)}\n`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-scsi-'));
  const results: CaseResult[] = [];
  const runParams = (c: BenchCase): Omit<DriverRun, 'socketPath'> => {
    const threads = threadsOpt ?? Math.min(c.queues, Math.max(1, cpus - 1));
    return {
      queues: c.queues, threads, qd: c.qd, bs: c.bs, pattern: c.pattern, seconds, warmup, size,
      ...(v.pin ? { pinDriver: Math.max(0, cpus - threads) } : {}),
    };
  };

  for (const c of cases) {
    const result: CaseResult = { case: c, errors: {}, samples: {} };
    results.push(result);
    process.stderr.write(`${c.name}:`);
    // Both daemons run side by side (idle when not driven) and take turns, so disturbances hit both alike.
    const daemons = new Map<Transport, BenchDaemon>();
    for (const t of ['blk', 'scsi'] as const) {
      try {
        const o = { socketPath: path.join(dir, `${t}.sock`), size, queues: c.queues };
        const d = t === 'blk' ? await startOurs(o) : await startScsi(o);
        live.add(d);
        daemons.set(t, d);
      } catch (err) {
        result.errors[t] = (err as Error).message;
      }
    }
    try {
      for (let i = 0; i < repeat; i++) {
        const order = i % 2 === 0 ? [...daemons.keys()] : [...daemons.keys()].reverse();
        for (const t of order) {
          if (result.errors[t]) continue;
          const d = daemons.get(t)!;
          try {
            if (quietWaitMs > 0) await waitForQuiet(NOISY_CORES, quietWaitMs);
            const r = await runBlkDriver(binaries[t], { ...runParams(c), socketPath: d.socketPath, backendPid: d.pid });
            (result.samples[t] ??= []).push(r.iops);
            if (better(r, result[t])) result[t] = r;
          } catch (err) {
            const e = err as Error;
            result.errors[t] = d.exited ? `${e.message}; ${d.name} exited: ${d.output.trim().slice(-2000)}` : e.message;
            if (e instanceof DriverError && e.report) result[t] = e.report;
          }
        }
      }
    } finally {
      for (const d of daemons.values()) {
        await d.stop();
        live.delete(d);
      }
    }
    for (const t of ['blk', 'scsi'] as const) {
      const r = result[t];
      if (r && !result.errors[t] && (r.errors || !r.ios)) result.errors[t] = r.errors ? `${r.errors} reads failed` : 'no reads completed';
      process.stderr.write(` ${t} ${result.errors[t] ? 'FAILED' : rate(c, r)}`);
    }
    if (result.blk && result.scsi && !result.errors.blk && !result.errors.scsi) {
      result.iopsRatio = result.scsi.iops / result.blk.iops;
      if (result.scsi.backendCpuUsPerIo > 0 && result.blk.backendCpuUsPerIo > 0) {
        result.cpuPerIoRatio = result.scsi.backendCpuUsPerIo / result.blk.backendCpuUsPerIo;
      }
    }
    process.stderr.write('\n');
  }
  fs.rmSync(dir, { recursive: true, force: true });

  const rows = tableRows(results);
  const out: string[] = [];
  const example = results[0]?.blk ?? results[0]?.scsi;
  out.push(`null-disk reads through our virtio-blk and virtio-scsi daemons, ${seconds} s per run after ${warmup} s warm-up; ` +
    `queue depth is per queue; C drivers with ${example?.threads ?? '?'} thread(s) for 1 queue, busy-polling, ` +
    `EVENT_IDX ${example?.eventIdx ? 'on' : 'off'}; ${cpus} CPUs.`);
  out.push(textTable(rows));
  if (results.some((r) => [r.blk, r.scsi].some((x) => x && noisy(x)))) {
    out.push(`* other processes used more than ${NOISY_CORES} cores during that window: the number is disturbed`);
  }
  const target = results.find((r) => r.case.name === TARGET.case);
  if (target?.iopsRatio !== undefined) {
    out.push(`target (issue #7): ${TARGET.case} scsi/blk = ${target.iopsRatio.toFixed(2)} (needs >= ${TARGET.minRatio}): ` +
      (target.iopsRatio >= TARGET.minRatio ? 'met' : 'NOT met'));
  }
  for (const r of results) for (const [who, e] of Object.entries(r.errors)) out.push(`error: ${r.case.name} ${who}: ${e}`);
  process.stdout.write(out.join('\n') + '\n');
  if (v.markdown) process.stdout.write('\n' + markdownTable(rows) + '\n');

  if (!v['no-write']) {
    const data = {
      benchmark: 'scsi',
      date: new Date().toISOString(),
      host: hostInfo(),
      params: { seconds, warmup, size, cpus, repeat, quietWaitMs, noisyCores: NOISY_CORES, threads: threadsOpt ?? 'min(queues, cpus-1)', pin: !!v.pin, qdIsPerQueue: true },
      target: target?.iopsRatio === undefined ? undefined : { ...TARGET, ratio: target.iopsRatio, met: target.iopsRatio >= TARGET.minRatio },
      cases: results.map((r) => ({
        ...r.case, blk: r.blk, scsi: r.scsi, samples: r.samples, iopsRatio: r.iopsRatio, cpuPerIoRatio: r.cpuPerIoRatio,
        errors: Object.keys(r.errors).length ? r.errors : undefined,
      })),
      table: markdownTable(rows),
    };
    const paths = writeResults('scsi', data, v.out);
    process.stderr.write(`wrote ${path.relative(process.cwd(), paths.dated)} and ${path.relative(process.cwd(), paths.latest)}\n`);
  }
  return results.some((r) => Object.keys(r.errors).length > 0) ? 1 : 0;
}

const stopAll = (): void => {
  for (const d of live) d.child.kill('SIGKILL');
  process.exit(130);
};
process.once('SIGINT', stopAll);
process.once('SIGTERM', stopAll);

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`bench:scsi: ${(err as Error).message}\n`);
  for (const d of live) d.child.kill('SIGKILL');
  process.exitCode = 2;
}
