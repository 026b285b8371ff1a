/**
 * The C benchmark drivers (bench/blk/driver/blk_bench.c and bench/scsi/driver/scsi_bench.c, both built on the
 * shared frontend in bench/common/driver/): building them, running them, and the JSON report they both print.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { buildC } from './c-build.js';
import { repoRoot } from './paths.js';

/** The drivers, by the device they drive. */
export type DriverKind = 'blk' | 'scsi';

/** The shared frontend's sources, relative to bench/. */
const FRONTEND = ['common/driver/frontend.c', 'common/driver/frontend.h', 'common/driver/poll_loop.h', 'common/driver/ring.h',
  'common/driver/vhost_user.c', 'common/driver/vhost_user.h'];

/** Compile a driver if needed (bench/<kind>/driver/<kind>_bench.c with the shared frontend); returns the binary's path. */
export function buildDriver(kind: DriverKind): string {
  return buildC({ name: `${kind}-bench`, dir: path.join(repoRoot, 'bench'), files: [`${kind}/driver/${kind}_bench.c`, ...FRONTEND] });
}

/** One run of a driver. */
export interface DriverRun {
  /** The backend's socket; omit for `ceiling`. */
  socketPath?: string;
  /** blk-bench only: drive its in-process instant device instead of a backend. */
  ceiling?: boolean;
  queues: number;
  /** Driver threads (queues are shared out round-robin); default one per queue. */
  threads?: number;
  qd: number;
  bs: number;
  pattern: 'rand' | 'seq';
  seconds: number;
  warmup?: number;
  /** Bytes of the device to read (default: its capacity). */
  size?: number;
  /** Pid whose /proc/<pid>/stat CPU time is measured over the run. */
  backendPid?: number;
  /** blk-bench only: check the stamps of an image written by {@link writePatternImage}. */
  verify?: boolean;
  eventIdx?: boolean;
  seed?: number;
  pinDriver?: number;
  pinDevice?: number;
}

/** What a driver prints (one JSON object). */
export interface DriverReport {
  mode: 'vhost-user' | 'ceiling';
  /** scsi-bench only. */
  transport?: 'scsi';
  queues: number;
  threads: number;
  qd: number;
  bs: number;
  pattern: 'rand' | 'seq';
  queueSize: number;
  descriptorsPerRequest: number;
  eventIdx: boolean;
  features: string;
  protocolFeatures: string;
  spanBytes: number;
  /** Length of the measured window (after warm-up). */
  seconds: number;
  /** Reads completed in the window. */
  ios: number;
  iops: number;
  /** Throughput in 10^6 bytes per second. */
  mbps: number;
  /** Backend CPU (utime+stime of the whole process, or the device thread for ceiling) over the window. */
  backendCpuSec: number;
  backendCpuUsPerIo: number;
  driverCpuSec: number;
  /** Busy CPU time of the whole machine over the window (/proc/stat). */
  systemBusyCpuSec: number;
  /** What neither the driver nor the backend used of it: other processes disturbing the run. */
  foreignCpuSec: number;
  /** Reads completed over the whole run (warm-up and drain included). */
  completedTotal: number;
  /** Reads that completed with a status other than OK. */
  errors: number;
  verify: boolean;
  verifyFailures: number;
  /** Used-ring lengths other than bs + 1 (not an error for the spec's drivers; reported). */
  lenMismatches: number;
  kicks: number;
  calls: number;
  drained: boolean;
  ringBasesChecked: number;
  ringBasesOk: boolean;
}

/** A failed run: exit status and stderr. */
export class DriverError extends Error {
  override name = 'DriverError';
  readonly code: number | null;
  readonly stderr: string;
  readonly report: DriverReport | undefined;
  constructor(message: string, code: number | null, stderr: string, report?: DriverReport) {
    super(message);
    this.code = code;
    this.stderr = stderr;
    this.report = report;
  }
}

/** The command line for a run. */
export function driverArgs(run: DriverRun): string[] {
  const a: string[] = run.ceiling ? ['--ceiling'] : ['--socket', run.socketPath ?? ''];
  a.push('--queues', String(run.queues), '--qd', String(run.qd), '--bs', String(run.bs), '--pattern', run.pattern);
  a.push('--time', String(run.seconds), '--warmup', String(run.warmup ?? 0.5));
  if (run.threads !== undefined) a.push('--threads', String(run.threads));
  if (run.size !== undefined) a.push('--size', String(run.size));
  if (run.backendPid !== undefined) a.push('--backend-pid', String(run.backendPid));
  if (run.verify) a.push('--verify');
  if (run.eventIdx === false) a.push('--no-event-idx');
  if (run.seed !== undefined) a.push('--seed', String(run.seed));
  if (run.pinDriver !== undefined) a.push('--pin-driver', String(run.pinDriver));
  if (run.pinDevice !== undefined) a.push('--pin-device', String(run.pinDevice));
  return a;
}

/** Run a driver once; rejects with {@link DriverError} on a non-zero exit (the report, if printed, attached). */
export function runDriver(binary: string, run: DriverRun): Promise<DriverReport> {
  const timeout = ((run.warmup ?? 0.5) + run.seconds + 30) * 1000;
  return new Promise((resolve, reject) => {
    execFile(binary, driverArgs(run), { timeout, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      let report: DriverReport | undefined;
      try {
        report = stdout.trim() ? (JSON.parse(stdout.trim().split('\n').pop()!) as DriverReport) : undefined;
      } catch {
        report = undefined;
      }
      if (err) {
        const code = typeof err.code === 'number' ? err.code : null;
        reject(new DriverError(`${path.basename(binary)} failed (${err.killed ? 'timed out' : `exit ${code ?? err.signal}`}): ${stderr.trim()}`, code, stderr, report));
      } else if (!report) {
        reject(new DriverError(`${path.basename(binary)} printed no report: ${stderr.trim()}`, 0, stderr));
      } else {
        resolve(report);
      }
    });
  });
}

/** Write an image file whose 4 KiB blocks carry the stamps `--verify` checks; `binary` is blk-bench's. */
export function writePatternImage(binary: string, file: string, size: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(binary, ['--make-pattern', file, '--size', String(size)], (err, _stdout, stderr) =>
      err ? reject(new Error(`blk-bench --make-pattern failed: ${stderr.trim() || err.message}`)) : resolve());
  });
}
