/**
 * The runner bench:blk and bench:scsi share: the common options, a case run (the driver's ceiling, then every
 * contender's daemon started side by side and driven in turns, the best undisturbed run kept), the table of
 * results, and a main wrapper that kills the daemons and removes temporary files when interrupted.
 */
import os from 'node:os';
import { CASES, selectCases, MiB, type BenchCase } from './cases.js';
import { runDriver, DriverError, type DriverReport, type DriverRun } from './c-driver.js';
import type { BenchDaemon } from './daemon.js';
import { parseVariants, type OursVariant } from './ours.js';
import { waitForQuiet } from './system.js';
import { ratio, si } from './table.js';

/** A window in which other processes used more than this many cores is flagged as disturbed. */
export const NOISY_CORES = 0.3;

// ---- options ----------------------------------------------------------------------------------------------------

/** parseArgs options both benches take. */
export const commonOptions = {
  time: { type: 'string' }, warmup: { type: 'string' }, size: { type: 'string' }, cases: { type: 'string' },
  threads: { type: 'string' }, pin: { type: 'boolean' }, repeat: { type: 'string' }, 'restart-every': { type: 'string' },
  'quiet-wait': { type: 'string' },
  'poll-us': { type: 'string' }, workers: { type: 'string' }, variant: { type: 'string', multiple: true },
  'image-dir': { type: 'string' }, markdown: { type: 'boolean' }, out: { type: 'string' }, 'no-write': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** What parseArgs returns for {@link commonOptions}. */
export interface CommonValues {
  time?: string; warmup?: string; size?: string; cases?: string; threads?: string; pin?: boolean; repeat?: string;
  'restart-every'?: string;
  'quiet-wait'?: string; 'poll-us'?: string; workers?: string; variant?: string[]; 'image-dir'?: string;
  markdown?: boolean; out?: string; 'no-write'?: boolean; help?: boolean;
}

/** Help lines for {@link commonOptions}; `what` names our daemon(s) for the settings. */
export function commonHelp(what: string): string {
  return `  --time SEC          measured seconds per run (default 3)
  --warmup SEC        seconds before measuring (default 0.5)
  --size BYTES        disk size (suffix K, M, G): null disks and the image of the file cases (default 1G)
  --cases LIST        comma-separated case names (default all: ${CASES.map((c) => c.name).join(', ')})
  --threads N         driver threads per run (default: min(queues, CPUs - 1), at least 1)
  --pin               pin the driver's threads to the last CPUs
  --repeat N          runs per case and contender, taking turns; the best undisturbed run is kept (default 1)
  --restart-every N   start every daemon afresh after each N of its runs (default 0: one daemon per case), so
                      that more than one compilation of its hot path is sampled
  --quiet-wait SEC    before each run, wait up to SEC for other processes to go idle (default 5)
  --poll-us N         pass --poll-us N to ${what} (default: not passed, the daemon's default)
  --workers N|queues  pass --workers N to ${what}; 'queues': one per queue of the case (default: not passed)
  --variant SPEC      run ${what} once per SPEC (repeatable), e.g. --variant poll-us=0 --variant poll-us=50;
                      SPEC is KEY=VALUE[,KEY=VALUE] with keys poll-us and workers, overriding the two above
  --image-dir DIR     where the file cases' image goes (default /dev/shm when it is a tmpfs with room)
  --markdown          also print the table as Markdown
  --out DIR           results directory (default bench/results)
  --no-write          do not write JSON results
  -h, --help          this help
`;
}

/** How every run of a bench is driven. */
export interface RunSettings {
  seconds: number;
  warmup: number;
  /** Null disk and image size in bytes. */
  size: number;
  repeat: number;
  /** Start the daemons afresh after this many runs each (0: once per case). */
  restartEvery: number;
  quietWaitMs: number;
  cpus: number;
  /** Driver threads; undefined: min(queues, CPUs - 1). */
  threads?: number;
  pin: boolean;
}

/** The parsed common options. */
export interface CommonSettings extends RunSettings {
  cases: BenchCase[];
  variants: OursVariant[];
  imageDir?: string;
  markdown: boolean;
  out?: string;
  write: boolean;
}

export function parseNumber(v: string | undefined, name: string, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name}: '${v}' is not a number >= ${min}`);
  return n;
}

/** A byte count, with an optional K, M or G (binary) suffix. */
export function parseSize(v: string | undefined, name: string, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  const m = /^(\d+(?:\.\d+)?)([KMG]?)i?B?$/i.exec(v.trim());
  const n = m ? Math.round(Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] || ' ').toUpperCase())) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name}: '${v}' is not a size >= ${min} bytes`);
  return n;
}

/** A size for messages: 1 GiB, 256 MiB. */
export function sizeText(bytes: number): string {
  for (const [unit, f] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) if (bytes >= f) return `${+(bytes / f).toFixed(2)} ${unit}`;
  return `${bytes} B`;
}

export function parseCommon(v: CommonValues, variantPrefix: string): CommonSettings {
  const threads = v.threads === undefined ? undefined : Math.floor(parseNumber(v.threads, 'threads', 1, 1));
  return {
    seconds: parseNumber(v.time, 'time', 3, 0.05),
    warmup: parseNumber(v.warmup, 'warmup', 0.5, 0),
    size: parseSize(v.size, 'size', 1024 * MiB, MiB),
    repeat: Math.floor(parseNumber(v.repeat, 'repeat', 1, 1)),
    restartEvery: Math.floor(parseNumber(v['restart-every'], 'restart-every', 0, 0)),
    quietWaitMs: parseNumber(v['quiet-wait'], 'quiet-wait', 5, 0) * 1000,
    cpus: os.availableParallelism?.() ?? os.cpus().length,
    ...(threads === undefined ? {} : { threads }),
    pin: !!v.pin,
    cases: selectCases(v.cases),
    variants: parseVariants({ pollUs: v['poll-us'], workers: v.workers }, v.variant, variantPrefix),
    ...(v['image-dir'] === undefined ? {} : { imageDir: v['image-dir'] }),
    markdown: !!v.markdown,
    ...(v.out === undefined ? {} : { out: v.out }),
    write: !v['no-write'],
  };
}

/** The run parameters for the results file. */
export function paramsJson(s: CommonSettings): Record<string, unknown> {
  return {
    seconds: s.seconds, warmup: s.warmup, size: s.size, cpus: s.cpus, repeat: s.repeat, restartEvery: s.restartEvery,
    quietWaitMs: s.quietWaitMs,
    noisyCores: NOISY_CORES, threads: s.threads ?? 'min(queues, cpus-1)', pin: s.pin, qdIsPerQueue: true,
    ours: s.variants.map((v) => ({ label: v.label, pollUs: v.pollUs ?? 'default', workers: v.workers ?? 'default' })),
  };
}

// ---- one case ---------------------------------------------------------------------------------------------------

export function noisy(r: DriverReport): boolean {
  return r.foreignCpuSec / r.seconds > NOISY_CORES;
}

/** Prefer undisturbed runs, then the faster one. */
export function better(r: DriverReport, than: DriverReport | undefined): boolean {
  return !than || (noisy(than) && !noisy(r)) || (noisy(than) === noisy(r) && r.iops > than.iops);
}

export function median(xs: readonly number[] | undefined): number | undefined {
  if (!xs?.length) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

/** Problems a report shows even when the driver exited 0. */
export function reportProblems(r: DriverReport): string | undefined {
  if (r.errors) return `${r.errors} reads failed`;
  if (!r.ios) return 'no reads completed';
  return undefined;
}

/** A contender in a case: the daemon to start and the driver binary that drives it. */
export interface Side {
  label: string;
  binary: string;
  start(): Promise<BenchDaemon>;
}

/** What a contender (or the ceiling) did in a case. */
export interface SideResult {
  /** The {@link better} run. */
  best?: DriverReport;
  /** IOPS of every run. */
  samples: number[];
  error?: string;
}

/** One case, run. */
export interface CaseRun {
  case: BenchCase;
  ceiling?: SideResult;
  sides: Record<string, SideResult>;
}

/** Daemons running now: killed if the bench is interrupted. */
export const live = new Set<BenchDaemon>();
/** Clean-ups (temporary files) to run however the bench ends. */
export const cleanups = new Set<() => void>();

/** Start a daemon, run `fn` with it, and stop it. */
export async function withDaemon<T>(start: () => Promise<BenchDaemon>, fn: (d: BenchDaemon) => Promise<T>): Promise<T> {
  const d = await start();
  live.add(d);
  try {
    return await fn(d);
  } finally {
    await d.stop();
    live.delete(d);
  }
}

/** The driver parameters of a case (the socket aside). */
export function driverParams(c: BenchCase, s: RunSettings): Omit<DriverRun, 'socketPath'> {
  const threads = s.threads ?? Math.min(c.queues, Math.max(1, s.cpus - 1));
  return {
    queues: c.queues, threads, qd: c.qd, bs: c.bs, pattern: c.pattern, seconds: s.seconds, warmup: s.warmup, size: s.size,
    ...(s.pin ? { pinDriver: Math.max(0, s.cpus - threads) } : {}),
  };
}

export function rate(c: BenchCase, r: DriverReport | undefined): string {
  if (!r) return '–';
  return (c.pattern === 'seq' ? `${(r.mbps / 1000).toFixed(1)} GB/s` : si(r.iops)) + (noisy(r) ? '*' : '');
}

/** Run `fn` `repeat` times, each after waiting for a quiet machine; keep the {@link better} run. */
async function repeatRuns(s: RunSettings, fn: () => Promise<DriverReport>): Promise<SideResult> {
  const out: SideResult = { samples: [] };
  for (let i = 0; i < s.repeat; i++) {
    if (s.quietWaitMs > 0) await waitForQuiet(NOISY_CORES, s.quietWaitMs);
    const r = await fn();
    out.samples.push(r.iops);
    if (better(r, out.best)) out.best = r;
  }
  return out;
}

/**
 * Run a case: the driver's ceiling (when `ceilingBinary` is given), then every side. The sides' daemons run side
 * by side (idle when not driven) and take turns, so disturbances hit all alike. Progress goes to stderr.
 */
export async function runCase(c: BenchCase, sides: readonly Side[], s: RunSettings, ceilingBinary?: string): Promise<CaseRun> {
  const run: CaseRun = { case: c, sides: {} };
  const p = driverParams(c, s);
  process.stderr.write(`${c.name}:`);
  if (ceilingBinary) {
    try {
      run.ceiling = await repeatRuns(s, () =>
        runDriver(ceilingBinary, { ...p, ceiling: true, ...(s.pin ? { pinDevice: Math.max(0, (p.pinDriver ?? 1) - 1) } : {}) }));
      process.stderr.write(` ceiling ${rate(c, run.ceiling.best)}`);
    } catch (err) {
      run.ceiling = { samples: [], error: (err as Error).message };
      process.stderr.write(' ceiling failed');
    }
  }
  for (const side of sides) run.sides[side.label] = { samples: [] };
  // Started in turns too (the first may land in a better spot of memory or of the other core's work).
  const daemons = new Map<Side, BenchDaemon>();
  const startAll = async (reversed: boolean): Promise<void> => {
    for (const side of reversed ? [...sides].reverse() : sides) {
      const result = run.sides[side.label]!;
      if (result.error) continue;
      try {
        const d = await side.start();
        live.add(d);
        daemons.set(side, d);
      } catch (err) {
        result.error = (err as Error).message;
      }
    }
  };
  const stopAll = async (): Promise<void> => {
    for (const d of daemons.values()) {
      await d.stop();
      live.delete(d);
    }
    daemons.clear();
  };
  await startAll(false);
  try {
    for (let i = 0; i < s.repeat; i++) {
      if (s.restartEvery > 0 && i > 0 && i % s.restartEvery === 0) {
        await stopAll();
        await startAll((i / s.restartEvery) % 2 === 1);
      }
      const order = i % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) {
        const result = run.sides[side.label]!;
        const d = daemons.get(side);
        if (result.error || d === undefined) continue;
        try {
          if (s.quietWaitMs > 0) await waitForQuiet(NOISY_CORES, s.quietWaitMs);
          const r = await runDriver(side.binary, { ...p, socketPath: d.socketPath, backendPid: d.pid });
          result.samples.push(r.iops);
          if (better(r, result.best)) result.best = r;
        } catch (err) {
          const e = err as Error;
          result.error = d.exited ? `${e.message}; ${d.name} exited: ${d.output.trim().slice(-2000)}` : e.message;
          if (e instanceof DriverError && e.report) result.best = e.report;
        }
      }
    }
  } finally {
    await stopAll();
  }
  for (const side of sides) {
    const result = run.sides[side.label]!;
    if (result.best && !result.error) result.error = reportProblems(result.best);
    process.stderr.write(` ${side.label} ${result.error ? 'FAILED' : rate(c, result.best)}`);
  }
  process.stderr.write('\n');
  return run;
}

// ---- results ----------------------------------------------------------------------------------------------------

/** A usable (not failed) report of a side. */
export function ok(run: CaseRun, label: string): DriverReport | undefined {
  const r = run.sides[label];
  return r && !r.error ? r.best : undefined;
}

/** num / den of two sides in a case: best runs' IOPS, median IOPS, the median of adjacent pairs, and CPU per I/O. */
export interface Ratio {
  /** Best run against best run. */
  iops: number;
  /** Median run against median run. */
  medianIops?: number;
  /**
   * The median of the ratios of adjacent runs (run i of one side against run i of the other: the runner takes
   * turns, so those ran seconds apart), with their range. On a shared machine whose speed drifts by a factor of
   * two over minutes, this is the steadiest of the three: best against best compares runs from different moments.
   */
  pairedIops?: number;
  pairedRange?: [number, number];
  pairs?: number;
  cpuPerIo?: number;
}

export function sideRatio(run: CaseRun, num: string, den: string): Ratio | undefined {
  const a = ok(run, num);
  const b = ok(run, den);
  if (!a || !b || !b.iops) return undefined;
  const out: Ratio = { iops: a.iops / b.iops };
  const ma = median(run.sides[num]!.samples);
  const mb = median(run.sides[den]!.samples);
  if (ma !== undefined && mb) out.medianIops = ma / mb;
  const sa = run.sides[num]!.samples;
  const sb = run.sides[den]!.samples;
  // Only when every run of both sides succeeded: otherwise run i of one is not run i of the other.
  if (sa.length > 0 && sa.length === sb.length) {
    const r = sa.map((x, i) => x / sb[i]!);
    out.pairedIops = median(r);
    out.pairedRange = [Math.min(...r), Math.max(...r)];
    out.pairs = r.length;
  }
  if (a.backendCpuUsPerIo > 0 && b.backendCpuUsPerIo > 0) out.cpuPerIo = a.backendCpuUsPerIo / b.backendCpuUsPerIo;
  return out;
}

/** Columns of a results table. */
export interface TableLayout {
  /** Show the driver-ceiling column. */
  ceiling: boolean;
  /** Sides in column order, with their titles (a side no case ran is left out). */
  sides: readonly { label: string; title: string }[];
  /** num/den pairs shown as IOPS ratios, and as CPU-per-I/O ratios. */
  ratios: readonly (readonly [string, string])[];
  cpuRatios: readonly (readonly [string, string])[];
}

function cpu(r: DriverReport | undefined): string {
  return r && r.backendCpuUsPerIo >= 0 ? r.backendCpuUsPerIo.toFixed(2) : '–';
}

/** The table (header row first): case, ceiling, each side's rate, the ratios, each side's CPU per I/O, the CPU ratios. */
export function resultsTable(runs: readonly CaseRun[], layout: TableLayout): string[][] {
  const ran = (label: string): boolean => runs.some((r) => r.sides[label] !== undefined);
  const sides = layout.sides.filter((s) => ran(s.label));
  const pairs = (ps: TableLayout['ratios']): TableLayout['ratios'] => ps.filter(([a, b]) => runs.some((r) => r.sides[a] && r.sides[b]));
  const ratios = pairs(layout.ratios);
  const cpuRatios = pairs(layout.cpuRatios);
  const rows = [[
    'case', ...(layout.ceiling ? ['driver ceiling'] : []), ...sides.map((s) => s.title), ...ratios.map(([a, b]) => `${a}/${b}`),
    ...sides.map((s) => `${s.label} CPU µs/IO`), ...cpuRatios.map(([a, b]) => `CPU/IO ${a}/${b}`),
  ]];
  for (const r of runs) {
    const cell = (label: string): string => {
      const x = r.sides[label];
      return !x ? '–' : x.error ? 'failed' : rate(r.case, x.best);
    };
    rows.push([
      r.case.name, ...(layout.ceiling ? [r.ceiling?.error ? 'failed' : rate(r.case, r.ceiling?.best)] : []), ...sides.map((s) => cell(s.label)),
      ...ratios.map(([a, b]) => ratio(ok(r, a)?.iops, ok(r, b)?.iops)),
      ...sides.map((s) => cpu(ok(r, s.label))),
      ...cpuRatios.map(([a, b]) => ratio(ok(r, a)?.backendCpuUsPerIo, ok(r, b)?.backendCpuUsPerIo)),
    ]);
  }
  return rows;
}

/** The case runs for the results file: the case, then each side's best report, samples and error. */
export function casesJson(runs: readonly CaseRun[], ratios: readonly (readonly [string, string])[]): unknown[] {
  return runs.map((r) => {
    const errors = Object.fromEntries([
      ...(r.ceiling?.error ? [['ceiling', r.ceiling.error]] : []),
      ...Object.entries(r.sides).filter(([, x]) => x.error).map(([k, x]) => [k, x.error]),
    ]);
    const pairRatios = Object.fromEntries(ratios.flatMap(([a, b]) => {
      const x = sideRatio(r, a, b);
      return x ? [[`${a}/${b}`, x]] : [];
    }));
    return {
      ...r.case,
      ceiling: r.ceiling?.best,
      ...Object.fromEntries(Object.entries(r.sides).map(([k, x]) => [k, x.best])),
      samples: { ...(r.ceiling ? { ceiling: r.ceiling.samples } : {}), ...Object.fromEntries(Object.entries(r.sides).map(([k, x]) => [k, x.samples])) },
      ratios: Object.keys(pairRatios).length ? pairRatios : undefined,
      errors: Object.keys(errors).length ? errors : undefined,
    };
  });
}

/** Was any run disturbed by other processes? */
export function anyNoisy(runs: readonly CaseRun[]): boolean {
  return runs.some((r) => [r.ceiling, ...Object.values(r.sides)].some((x) => x?.best && noisy(x.best)));
}

/** Error lines for the report. */
export function errorLines(runs: readonly CaseRun[]): string[] {
  const out: string[] = [];
  for (const r of runs) {
    if (r.ceiling?.error) out.push(`error: ${r.case.name} ceiling: ${r.ceiling.error}`);
    for (const [who, x] of Object.entries(r.sides)) if (x.error) out.push(`error: ${r.case.name} ${who}: ${x.error}`);
  }
  return out;
}

export function anyFailed(runs: readonly CaseRun[]): boolean {
  return runs.some((r) => r.ceiling?.error || Object.values(r.sides).some((x) => x.error));
}

// ---- main -------------------------------------------------------------------------------------------------------

function cleanUp(): void {
  for (const d of live) d.child.kill('SIGKILL');
  for (const fn of cleanups) fn();
  cleanups.clear();
}

/** Run a bench's main: exit status 130 on SIGINT/SIGTERM, 2 on an exception; daemons killed and files removed. */
export async function runMain(name: string, main: () => Promise<number>): Promise<void> {
  const stop = (): void => {
    cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    process.exitCode = await main();
  } catch (err) {
    process.stderr.write(`${name}: ${(err as Error).message}\n`);
    process.exitCode = 2;
  } finally {
    cleanUp();
  }
}
