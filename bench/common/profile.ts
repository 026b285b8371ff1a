/**
 * Profiling one of our daemons on a case: run it under `node --cpu-prof`, drive it once, stop it (the profiles
 * are written when it exits), keep the profiles and summarise them.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { DriverReport } from './c-driver.js';
import { summarizeCpuProfiles, type ProfileSummary } from './cpuprofile.js';
import type { BenchDaemon } from './daemon.js';
import { repoRoot } from './paths.js';
import { withDaemon } from './runner.js';

/** What {@link profileDaemon} returns. */
export interface ProfileRun {
  summary: ProfileSummary;
  /** The kept profiles: `<keep>.cpuprofile` for the main thread, `<keep>-thread<N>.cpuprofile` for workers. */
  files: string[];
  /** The driver's report of the profiled run (profiling slows the daemon: not a benchmark number). */
  report: DriverReport;
}

/** Node names profiles CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile; the main thread is 0. */
function threadId(file: string): number {
  const parts = file.split('.');
  return Number(parts[parts.length - 3] ?? 0);
}

const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);

/**
 * Start the daemon with `start(profileDir)` (which must pass `--cpu-prof --cpu-prof-dir profileDir` to node),
 * drive it with `drive` (a driver run whose measured window is `seconds` after `warmup`), stop it, and keep its
 * profiles as `keep` + `.cpuprofile` (and `-thread<N>` for workers). The summary counts the measured window only,
 * not start-up, warm-up or the idle time around the run.
 */
export async function profileDaemon(o: {
  start: (profileDir: string) => Promise<BenchDaemon>;
  drive: (d: BenchDaemon) => Promise<DriverReport>;
  warmup: number;
  seconds: number;
  profileDir: string;
  keep: string;
}): Promise<ProfileRun> {
  fs.rmSync(o.profileDir, { recursive: true, force: true });
  fs.mkdirSync(o.profileDir, { recursive: true });
  let fromUs = 0;
  const report = await withDaemon(() => o.start(o.profileDir), (d) => {
    // The driver connects within milliseconds; its window opens after the warm-up.
    fromUs = nowUs() + o.warmup * 1e6;
    return o.drive(d);
  });
  const written = fs.readdirSync(o.profileDir).filter((f) => f.endsWith('.cpuprofile')).sort((a, b) => threadId(a) - threadId(b));
  if (!written.length) throw new Error('the daemon wrote no .cpuprofile (did it exit cleanly on SIGTERM?)');
  const dir = path.dirname(o.keep);
  fs.mkdirSync(dir, { recursive: true });
  // Profiles of an earlier run with more threads would be mistaken for this one's.
  const stale = new RegExp(`^${path.basename(o.keep).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-thread\\d+\\.cpuprofile$`);
  for (const f of fs.readdirSync(dir)) if (stale.test(f)) fs.rmSync(path.join(dir, f));
  const files = written.map((f, i) => {
    const to = `${o.keep}${i === 0 ? '' : `-thread${i}`}.cpuprofile`;
    fs.copyFileSync(path.join(o.profileDir, f), to);
    return to;
  });
  const window = { fromUs, toUs: fromUs + o.seconds * 1e6 };
  return { summary: summarizeCpuProfiles(files, repoRoot, 25, window), files, report };
}
