/**
 * The fuzz runner: runs a target's cases (each from its own seed, see {@link caseSeed}) for a number of cases or a
 * time budget, and checks the properties every target shares: no exception escapes (uncaught exceptions and
 * unhandled rejections during a case are failures), and after every batch of cases the process has the open fds
 * and memfd mappings it had before (every fd received was closed or kept, and what was kept was released when the
 * connection or ring went away). `FUZZ_BATCH=1` audits after every case (to find the case that leaks).
 */
import fs from 'node:fs';
import { caseSeed, Rng } from './rng.js';
import type { Logger, LogLevelName } from '../../src/util/log.js';

/** A property of the code under test does not hold. */
export class PropertyViolation extends Error {
  override name = 'PropertyViolation';
}

/** Throw {@link PropertyViolation} unless `cond`. */
export function check(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new PropertyViolation(typeof message === 'string' ? message : message());
}

/** A fuzz target. */
export interface FuzzTarget {
  readonly name: string;
  /** One line: what is fuzzed and which properties are checked. */
  readonly description: string;
  /** Shared set-up (servers, temp dirs), before the first case. */
  setup?(): Promise<void> | void;
  /** Undo {@link setup}. */
  teardown?(): Promise<void> | void;
  /** Run one case; throw on a property violation. */
  runCase(rng: Rng, index: number): Promise<void> | void;
  /** Wait until everything a case started has finished (connections closed, cleanup done). */
  settle?(): Promise<void>;
  /** Cases between resource audits (default 25). */
  readonly batch?: number;
  /** Outcome counters the target keeps (what its cases exercised), printed by the long run. */
  readonly stats?: Stats;
}

/** Named counters: how often each outcome or path was seen. */
export class Stats {
  readonly counts = new Map<string, number>();

  count(key: string, n = 1): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + n);
  }

  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  /** `key=n` pairs, sorted by key. */
  toString(): string {
    return [...this.counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k}=${n}`).join(' ');
  }
}

/** Case number of the warm-up case each run starts with (reproducible like any other). */
export const WARM_UP_CASE = 0xffffffff;

/** A failed case. */
export interface Failure {
  target: string;
  seed: number;
  /** Case number in the run ({@link WARM_UP_CASE} for the warm-up; for an audit failure, the last case of the batch). */
  caseIndex: number;
  /** For an audit failure: the first case of the batch whose resources did not come back. */
  batchStart?: number;
  error: string;
}

/** What {@link runTarget} returns. */
export interface RunResult {
  target: string;
  seed: number;
  cases: number;
  elapsedMs: number;
  audits: number;
  failures: Failure[];
}

/** How long and from where to run. */
export interface RunOptions {
  seed: number;
  /** First case number (to reproduce a case: `first: N, cases: 1`). */
  first?: number;
  /** Stop after this many cases. */
  cases?: number;
  /** Stop once this much time has passed (checked between cases). */
  seconds?: number;
  /** Stop at the first failure (default true). */
  stopOnFailure?: boolean;
  /** Called about once a second with progress. */
  onProgress?: (cases: number, elapsedMs: number) => void;
}

/** Open fds of this process. */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** memfd mappings of this process (guest RAM and inflight areas, ours and the daemon's). */
export function memfdMappings(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:')).length;
}

interface Resources {
  fds: number;
  memfds: number;
  /** What each fd is (for the failure message). */
  targets: Map<string, string>;
}

function resources(): Resources {
  const targets = new Map<string, string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      targets.set(fd, fs.readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // closed meanwhile (the readdir's own fd)
    }
  }
  return { fds: openFds(), memfds: memfdMappings(), targets };
}

function fdDiff(before: Resources, after: Resources): string {
  const added = [...after.targets].filter(([fd, t]) => before.targets.get(fd) !== t).map(([fd, t]) => `${fd}->${t}`);
  const removed = [...before.targets].filter(([fd, t]) => after.targets.get(fd) !== t).map(([fd, t]) => `${fd}->${t}`);
  return `new: [${added.join(', ')}], gone: [${removed.join(', ')}]`;
}

/** The reproducer command line for a case. */
export function reproducer(target: string, seed: number, caseIndex: number): string {
  return `npm run fuzz -- --target ${target} --seed ${seed} --case ${caseIndex}`;
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.stack ?? `${err.name}: ${err.message}`;
  return String(err);
}

/** Run a target. Every failure is returned with what reproduces it; nothing is thrown for a failing case. */
export async function runTarget(target: FuzzTarget, options: RunOptions): Promise<RunResult> {
  const seed = options.seed >>> 0;
  const first = options.first ?? 0;
  const batch = Number(process.env['FUZZ_BATCH'] ?? 0) || (target.batch ?? 25);
  const stopOnFailure = options.stopOnFailure ?? true;
  const failures: Failure[] = [];
  let current = -1;
  const escaped: unknown[] = [];
  const onUncaught = (err: unknown): void => {
    escaped.push(err);
  };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  const start = Date.now();
  let cases = 0;
  let audits = 0;
  let lastProgress = start;

  const runOne = async (index: number, rngSeed: number): Promise<boolean> => {
    current = index;
    try {
      await target.runCase(new Rng(rngSeed), index);
      // Exceptions thrown from callbacks the case set off surface a tick later.
      await new Promise((resolve) => setImmediate(resolve));
      if (escaped.length > 0) throw new PropertyViolation(`exception escaped: ${describe(escaped[0])}`);
      return true;
    } catch (err) {
      failures.push({ target: target.name, seed, caseIndex: index, error: describe(err) });
      escaped.length = 0;
      return false;
    }
  };

  const audit = async (baseline: Resources, batchStart: number): Promise<boolean> => {
    try {
      await target.settle?.();
    } catch (err) {
      failures.push({ target: target.name, seed, caseIndex: current, batchStart, error: `settle failed: ${describe(err)}` });
      return false;
    }
    audits++;
    let now = resources();
    // Unreferenced mappings and sockets may take a moment to be released; give them a few turns.
    for (let i = 0; i < 20 && (now.fds !== baseline.fds || now.memfds !== baseline.memfds); i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      now = resources();
    }
    if (now.fds !== baseline.fds || now.memfds !== baseline.memfds) {
      failures.push({
        target: target.name, seed, caseIndex: current, batchStart,
        error: `resource leak after cases ${batchStart}..${current}: open fds ${baseline.fds} -> ${now.fds}, ` +
          `memfd mappings ${baseline.memfds} -> ${now.memfds} (${fdDiff(baseline, now)})`,
      });
      return false;
    }
    return true;
  };

  try {
    await target.setup?.();
    // A warm-up case first: lazily created handles (libuv's, the log's) must not count as leaks.
    await runOne(WARM_UP_CASE, caseSeed(seed, WARM_UP_CASE));
    await target.settle?.();
    const baseline = resources();
    let batchStart = first;
    for (let index = first; ; index++) {
      if (options.cases !== undefined && cases >= options.cases) break;
      if (options.seconds !== undefined && Date.now() - start >= options.seconds * 1000) break;
      if (stopOnFailure && failures.length > 0) break;
      await runOne(index, caseSeed(seed, index));
      cases++;
      if (cases % batch === 0) {
        await audit(baseline, batchStart);
        batchStart = index + 1;
      }
      const now = Date.now();
      if (options.onProgress && now - lastProgress >= 1000) {
        lastProgress = now;
        options.onProgress(cases, now - start);
      }
    }
    if (cases % batch !== 0 && !(stopOnFailure && failures.length > 0)) await audit(baseline, batchStart);
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await target.teardown?.();
  }
  return { target: target.name, seed, cases, elapsedMs: Date.now() - start, audits, failures };
}

/** A logger that keeps lines (for checking what code under test logged), optionally echoing them. */
export class CapturingLogger implements Logger {
  readonly lines: string[];
  readonly #component: string;
  readonly #level: number;

  constructor(component = 'fuzz', level: LogLevelName = 'info', lines: string[] = []) {
    this.#component = component;
    this.#level = { error: 0, warn: 1, info: 2, debug: 3 }[level];
    this.lines = lines;
  }

  #emit(level: LogLevelName, n: number, message: string): void {
    if (n <= this.#level) this.lines.push(`${level} [${this.#component}] ${message}`);
  }

  error(message: string): void {
    this.#emit('error', 0, message);
  }

  warn(message: string): void {
    this.#emit('warn', 1, message);
  }

  info(message: string): void {
    this.#emit('info', 2, message);
  }

  debug(message: string): void {
    this.#emit('debug', 3, message);
  }

  enabled(level: LogLevelName): boolean {
    return { error: 0, warn: 1, info: 2, debug: 3 }[level] <= this.#level;
  }

  child(name: string): Logger {
    return new CapturingLogger(`${this.#component}:${name}`, (['error', 'warn', 'info', 'debug'] as const)[this.#level],
      this.lines);
  }
}

/**
 * Close reasons and log lines that mean an exception we did not expect got out of a handler: a JS engine error
 * (TypeError, RangeError...) or an internal-error report. Typed errors (ProtocolError reasons, system errors
 * with an errno code, ChainError/QueueError ring failures) are allowed outcomes.
 */
export const UNEXPECTED_LOG = /handler failed: (?!Error: \w+ failed: E[A-Z0-9]+ )|internal error|cleanup after disconnect failed|TypeError|ReferenceError|RangeError|SyntaxError|is not a function|Cannot read prop/;
