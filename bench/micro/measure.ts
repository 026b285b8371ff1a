/**
 * What the in-process micro benchmarks share (bench/micro/blk-hot-path.ts, bench/scsi/micro.ts): run a workload's
 * rounds after a warm-up and count wall time, process CPU time and allocation per request, then print a table.
 * Allocation is exact, not sampled: `v8.GCProfiler` gives the used heap before and after every collection, so
 * allocated = growth of the used heap over the window + what each collection freed.
 */
import v8 from 'node:v8';
import { parseArgs } from 'node:util';

/** How many requests to measure, after how many warm-up requests, at what queue depth. */
export interface MeasureOptions {
  requests: number;
  /** Requests before measuring (default: 64000 or an eighth of `requests`, whichever is more). */
  warmup?: number;
  qd: number;
}

/** One measured run. */
export interface MicroResult {
  case: string;
  requests: number;
  /** Wall-clock time per request. */
  nsPerRequest: number;
  /** Process CPU time (user + system, GC threads included) per request: less sensitive to a busy machine. */
  cpuNsPerRequest: number;
  bytesPerRequest: number;
  collections: number;
}

/** What runs one round: make `qd` requests available, process them, check they all came back. */
export interface Workload {
  round(): void;
  close(): void;
}

/** Warm up, then measure `opts.requests` requests (rounded up to whole rounds); closes the workload. */
export function measure(name: string, w: Workload, opts: MeasureOptions): MicroResult {
  try {
    const rounds = Math.max(1, Math.ceil(opts.requests / opts.qd));
    const warm = opts.warmup !== undefined ? Math.ceil(opts.warmup / opts.qd) : Math.max(2000, rounds >> 3);
    for (let i = 0; i < warm; i++) w.round();
    const profiler = new v8.GCProfiler();
    const before = v8.getHeapStatistics().used_heap_size;
    profiler.start();
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) w.round();
    const t1 = process.hrtime.bigint();
    const c1 = process.cpuUsage(c0);
    const after = v8.getHeapStatistics().used_heap_size;
    const stats = profiler.stop().statistics;
    let freed = 0;
    for (const s of stats) freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize;
    const requests = rounds * opts.qd;
    return {
      case: name,
      requests,
      nsPerRequest: Number(t1 - t0) / requests,
      cpuNsPerRequest: (c1.user + c1.system) * 1000 / requests,
      bytesPerRequest: Math.max(0, after - before + freed) / requests,
      collections: stats.length,
    };
  } finally {
    w.close();
  }
}

/** Print `results` under a first line describing the run. */
export function printResults(header: string, results: readonly MicroResult[]): void {
  console.log(header);
  console.log('case                 requests   ns/req  cpu ns/req  bytes/req  GCs');
  for (const r of results) {
    console.log(`${r.case.padEnd(20)} ${String(r.requests).padStart(8)} ${r.nsPerRequest.toFixed(0).padStart(8)} ` +
      `${r.cpuNsPerRequest.toFixed(0).padStart(11)} ${r.bytesPerRequest.toFixed(1).padStart(10)} ` +
      `${String(r.collections).padStart(4)}`);
  }
}

/** The options every micro benchmark takes, parsed; `flags` are its extra boolean options. */
export interface MicroArgs extends MeasureOptions {
  bs: number;
  cases: string[];
  json: boolean;
  flags: Record<string, boolean>;
}

/**
 * A micro benchmark's command line: `--requests N --warmup N --qd N --bs N --cases a,b --json` plus `flags`; runs
 * `run` for each case with the options `make` builds and prints the table (or JSON).
 */
export function microMain<O extends MeasureOptions>(all: readonly string[], flags: readonly string[],
  make: (args: MicroArgs) => O, run: (name: string, opts: O) => MicroResult, header: (opts: O) => string): void {
  const options: Record<string, { type: 'string' | 'boolean'; default?: string | boolean }> = {
    requests: { type: 'string', default: '500000' },
    warmup: { type: 'string' },
    qd: { type: 'string', default: '32' },
    bs: { type: 'string', default: '4096' },
    cases: { type: 'string', default: all.join(',') },
    json: { type: 'boolean', default: false },
  };
  for (const f of flags) options[f] = { type: 'boolean', default: false };
  const { values } = parseArgs({ options });
  const args: MicroArgs = {
    requests: Number(values.requests),
    warmup: values.warmup === undefined ? undefined : Number(values.warmup),
    qd: Number(values.qd),
    bs: Number(values.bs),
    cases: String(values.cases).split(','),
    json: values.json === true,
    flags: Object.fromEntries(flags.map((f) => [f, values[f] === true])),
  };
  const opts = make(args);
  const results = args.cases.map((name) => run(name, opts));
  if (args.json) console.log(JSON.stringify({ node: process.version, ...opts, results }, null, 2));
  else printResults(header(opts), results);
}
