#!/usr/bin/env node
/**
 * `npm run bench:blk`: our virtio-blk daemon against qemu-storage-daemon, driven by the C driver
 * (bench/blk/driver/) with the same parameters: 4 KiB random reads at queue depth 1, 32 and 128 on 1 and 2 queues
 * and 1 MiB sequential reads on null disks, then 4 KiB random and 1 MiB sequential reads of an image file in the
 * page cache (qemu-storage-daemon's file driver with aio=threads and aio=io_uring). Reports IOPS (or throughput),
 * the backend's CPU time per I/O from /proc/<pid>/stat, our/their ratios, the driver's own ceiling (an in-process
 * device that completes at once), and as a note what our TypeScript frontend reaches. Our daemon can run with
 * several settings in one run (--variant). Writes bench/results/blk-<time>.json and blk-latest.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CASES, type BenchCase } from '../common/cases.js';
import { buildDriver, runDriver, writePatternImage } from '../common/c-driver.js';
import { formatProfile, profileMarkdown } from '../common/cpuprofile.js';
import { prepareImage, type CachedImage } from '../common/image.js';
import { oursUnavailable, startOurs, type OursVariant } from '../common/ours.js';
import { repoRoot, resultsDir } from '../common/paths.js';
import { profileDaemon, type ProfileRun } from '../common/profile.js';
import { hostInfo, toolVersion, writeResults } from '../common/results.js';
import {
  anyFailed, anyNoisy, casesJson, cleanups, commonHelp, commonOptions, driverParams, errorLines, NOISY_CORES, paramsJson,
  parseCommon, resultsTable, runCase, runMain, sizeText, sideRatio, withDaemon, type CaseRun, type Side, type TableLayout,
} from '../common/runner.js';
import { markdownTable, si, textTable } from '../common/table.js';
import { qsdUnavailable, startQsd } from './backends.js';
import { runTsDriver, type TsDriverReport } from './ts-driver.js';

/** The peers, by label. */
const PEERS = ['qsd', 'qsd-uring'] as const;
type Peer = (typeof PEERS)[number];
const PEER_TITLES: Record<Peer, string> = { qsd: 'qemu-storage-daemon', 'qsd-uring': 'qsd io_uring' };

/**
 * Issue #8's targets: on null disks at QD 32 on one queue, at least 1.2x qemu-storage-daemon's IOPS with no more
 * CPU per I/O; on the page-cached image, at least qemu-storage-daemon's file driver (each aio mode measured).
 */
const TARGETS: readonly { case: string; minRatio: number; maxCpuRatio?: number }[] = [
  { case: 'rand4k-qd32-q1', minRatio: 1.2, maxCpuRatio: 1 },
  { case: 'file-rand4k-qd32-q1', minRatio: 1 },
  { case: 'file-seq1m-qd8-q1', minRatio: 1 },
];
const PROFILE_CASE = 'rand4k-qd32-q1';

const help = `usage: npm run bench:blk -- [options]

${commonHelp('our daemon')}
bench:blk only:
  --backends LIST     ours,qsd,qsd-uring (default all; qsd-uring runs on the file cases only)
  --no-ceiling        skip the driver-ceiling runs
  --no-ts             skip the TypeScript-frontend note
  --profile [CASE]    afterwards, profile our daemon (node --cpu-prof, each variant) on CASE (default ${PROFILE_CASE})
  --profile-only      only profile (no table); results go to blk-profile-*.json
`;

/** What the profile part of the results says per variant. */
interface ProfileResult {
  case: string;
  variant: OursVariant;
  run?: ProfileRun;
  error?: string;
}

function targetLines(runs: readonly CaseRun[], variants: readonly OursVariant[]): { lines: string[]; json: unknown[] } {
  const lines: string[] = [];
  const json: unknown[] = [];
  for (const t of TARGETS) {
    const run = runs.find((r) => r.case.name === t.case);
    if (!run) continue;
    for (const v of variants) {
      for (const peer of PEERS) {
        const r = sideRatio(run, v.label, peer);
        if (!r) continue;
        const cpuOk = t.maxCpuRatio === undefined || (r.cpuPerIo !== undefined && r.cpuPerIo <= t.maxCpuRatio);
        const met = r.iops >= t.minRatio && cpuOk;
        json.push({ ...t, num: v.label, den: peer, ratio: r.iops, medianRatio: r.medianIops, pairedRatio: r.pairedIops, cpuPerIoRatio: r.cpuPerIo, met });
        lines.push(`target (issue #8): ${t.case} ${v.label}/${peer} = ${r.iops.toFixed(2)} (needs >= ${t.minRatio})` +
          (t.maxCpuRatio === undefined ? '' : `, CPU/IO ${r.cpuPerIo?.toFixed(2) ?? '?'} (needs <= ${t.maxCpuRatio})`) +
          `: ${met ? 'met' : 'NOT met'}` +
          (run.sides[v.label]!.samples.length > 1 && r.medianIops !== undefined ? `; median ratio ${r.medianIops.toFixed(2)}` : '') +
          (r.pairs !== undefined && r.pairs > 1 ? `; median of ${r.pairs} adjacent pairs ${r.pairedIops!.toFixed(2)}` : ''));
      }
    }
  }
  return { lines, json };
}

async function main(): Promise<number> {
  const { values: v, positionals } = parseArgs({
    options: {
      ...commonOptions, backends: { type: 'string' }, 'no-ceiling': { type: 'boolean' }, 'no-ts': { type: 'boolean' },
      profile: { type: 'boolean' }, 'profile-only': { type: 'boolean' },
    },
    allowPositionals: true,
  });
  if (v.help) {
    process.stdout.write(help);
    return 0;
  }
  const s = parseCommon(v, 'ours');
  const wanted = v.backends?.split(',').map((x) => x.trim()) ?? ['ours', ...PEERS];
  for (const b of wanted) if (b !== 'ours' && !(PEERS as readonly string[]).includes(b)) throw new Error(`unknown backend '${b}' (ours, ${PEERS.join(', ')})`);
  // `--profile CASE` arrives as a positional after the flag.
  const profiling = v.profile || v['profile-only'];
  const profileArg = process.argv.slice(2).find((a, i, all) => all[i - 1] === '--profile' && !a.startsWith('-'));
  if (positionals.some((p) => p !== profileArg)) throw new Error(`unexpected argument '${positionals.find((p) => p !== profileArg)}'`);
  const profileCase = profiling ? CASES.find((c) => c.name === (profileArg ?? PROFILE_CASE)) : undefined;
  if (profiling && !profileCase) throw new Error(`unknown case '${profileArg}' for --profile`);
  const cases = v['profile-only'] ? [] : s.cases;

  const unavailable: Partial<Record<string, string>> = {};
  if (wanted.includes('ours')) unavailable['ours'] = oursUnavailable('blk');
  const noQsd = qsdUnavailable();
  for (const p of PEERS) if (wanted.includes(p)) unavailable[p] = noQsd;
  for (const [b, why] of Object.entries(unavailable)) if (why) process.stderr.write(`*** ${b} skipped: ${why} ***\n`);
  const usable = (b: string): boolean => wanted.includes(b) && !unavailable[b];

  process.stderr.write('building the C driver... ');
  const binary = buildDriver('blk');
  process.stderr.write(`${path.relative(repoRoot, binary)}\n`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-blk-'));
  cleanups.add(() => fs.rmSync(dir, { recursive: true, force: true }));
  let image: CachedImage | undefined;
  if ([...cases, ...(profileCase ? [profileCase] : [])].some((c) => c.storage === 'file')) {
    process.stderr.write(`writing a ${sizeText(s.size)} image... `);
    image = await prepareImage({ size: s.size, ...(s.imageDir ? { dir: s.imageDir } : {}), write: (f) => writePatternImage(binary, f, s.size) });
    cleanups.add(image.remove);
    process.stderr.write(`${image.path}${image.onTmpfs ? ' (tmpfs)' : ' (read once into the page cache)'}\n`);
  }
  const imageOf = (c: BenchCase): { image?: string } => (c.storage === 'file' ? { image: image!.path } : {});
  const oursStart = (c: BenchCase, variant: OursVariant, extra: { cpuProfileDir?: string } = {}) =>
    startOurs('blk', {
      socketPath: path.join(dir, `${variant.label}.sock`), size: s.size, queues: c.queues, ...imageOf(c), ...extra,
      ...(variant.pollUs === undefined ? {} : { pollUs: variant.pollUs }), ...(variant.workers === undefined ? {} : { workers: variant.workers }),
    });

  const sidesOf = (c: BenchCase): Side[] => {
    const sides: Side[] = [];
    if (usable('ours')) for (const variant of s.variants) sides.push({ label: variant.label, binary, start: () => oursStart(c, variant) });
    if (usable('qsd')) {
      sides.push({ label: 'qsd', binary, start: () => startQsd({ socketPath: path.join(dir, 'qsd.sock'), size: s.size, queues: c.queues, ...imageOf(c) }) });
    }
    if (usable('qsd-uring') && c.storage === 'file') {
      sides.push({
        label: 'qsd-uring', binary,
        start: () => startQsd({ socketPath: path.join(dir, 'qsd-uring.sock'), size: s.size, queues: c.queues, ...imageOf(c), aio: 'io_uring' }),
      });
    }
    return sides;
  };

  const runs: CaseRun[] = [];
  for (const c of cases) runs.push(await runCase(c, sidesOf(c), s, v['no-ceiling'] ? undefined : binary));

  let tsNote: TsDriverReport | undefined;
  let tsError: string | undefined;
  if (!v['no-ts'] && !v['profile-only'] && usable('qsd')) {
    try {
      tsNote = await withDaemon(() => startQsd({ socketPath: path.join(dir, 'ts.sock'), size: s.size, queues: 1 }), (d) =>
        runTsDriver({ socketPath: d.socketPath, backendPid: d.pid, size: s.size, qd: 32, seconds: s.seconds, warmup: s.warmup }));
    } catch (err) {
      tsError = (err as Error).message;
    }
  }

  const profiles: ProfileResult[] = [];
  if (profileCase && usable('ours')) {
    for (const variant of s.variants) {
      const result: ProfileResult = { case: profileCase.name, variant };
      profiles.push(result);
      process.stderr.write(`profiling ${variant.label} on ${profileCase.name}...\n`);
      try {
        result.run = await profileDaemon({
          start: (profileDir) => oursStart(profileCase, variant, { cpuProfileDir: profileDir }),
          drive: (d) => runDriver(binary, { ...driverParams(profileCase, s), socketPath: d.socketPath, backendPid: d.pid }),
          warmup: s.warmup,
          seconds: s.seconds,
          profileDir: path.join(dir, `profile-${variant.label}`),
          keep: path.join(s.out ?? resultsDir, `blk-profile-${profileCase.name}${variant.label === 'ours' ? '' : `-${variant.label}`}`),
        });
      } catch (err) {
        result.error = (err as Error).message;
      }
    }
  }

  // ---- report ----
  const ratios = s.variants.flatMap((x) => PEERS.map((p) => [x.label, p] as const));
  const layout: TableLayout = {
    ceiling: !v['no-ceiling'],
    sides: [...s.variants.map((x) => ({ label: x.label, title: x.label })), ...PEERS.map((p) => ({ label: p, title: PEER_TITLES[p] }))],
    ratios,
    cpuRatios: s.variants.map((x) => [x.label, 'qsd'] as const),
  };
  const rows = resultsTable(runs, layout);
  const targets = targetLines(runs, s.variants);
  const out: string[] = [];
  if (runs.length) {
    const example = Object.values(runs[0]!.sides).find((x) => x.best)?.best ?? runs[0]!.ceiling?.best;
    const settings = s.variants.map((x) => `${x.label}: --poll-us ${x.pollUs ?? 'default'}, --workers ${x.workers ?? 'default'}`).join('; ');
    out.push(`virtio-blk reads, ${s.seconds} s per run after ${s.warmup} s warm-up; queue depth is per queue; ` +
      `C driver with ${example?.threads ?? '?'} thread(s) for 1 queue, busy-polling, EVENT_IDX ${example?.eventIdx ? 'on' : 'off'}; ${s.cpus} CPUs; ` +
      (image ? `file-* cases on a ${sizeText(s.size)} image in the page cache (${image.onTmpfs ? 'tmpfs' : 'read once'}), the others on null disks` : 'null disks') +
      `; ${settings}.`);
    out.push(textTable(rows));
    if (anyNoisy(runs)) out.push(`* other processes used more than ${NOISY_CORES} cores during that window: the number is disturbed`);
  }
  out.push(...targets.lines);
  if (tsNote) {
    out.push(`note: our TypeScript VirtioDriver + BlkClient against qemu-storage-daemon, 4 KiB random reads at QD 32, 1 queue: ` +
      `${si(tsNote.iops)} IOPS (its own CPU ${(tsNote.driverCpuSec / tsNote.seconds * 100).toFixed(0)}% of a core; qsd CPU ` +
      `${tsNote.backendCpuUsPerIo.toFixed(2)} µs/IO)${tsNote.ranOutOfRam ? ' [stopped early: guest RAM ran out]' : ''}` +
      (tsNote.foreignCpuSec / tsNote.seconds > NOISY_CORES ? ' *' : ''));
  } else if (tsError) {
    out.push(`note: TypeScript-frontend run failed: ${tsError}`);
  }
  out.push(...errorLines(runs));
  for (const [b, why] of Object.entries(unavailable)) if (why) out.push(`skipped: ${b}: ${why}`);
  process.stdout.write(out.join('\n') + '\n');
  if (s.markdown && runs.length) process.stdout.write('\n' + markdownTable(rows) + '\n');
  for (const p of profiles) {
    const title = `profile of ${p.variant.label} (--poll-us ${p.variant.pollUs ?? 'default'}, --workers ${p.variant.workers ?? 'default'}), ${p.case}`;
    if (p.run) {
      process.stdout.write(`\n${title}, ${si(p.run.report.iops)} IOPS under the profiler; ${p.run.files.map((f) => path.relative(process.cwd(), f)).join(', ')}:\n` +
        `${formatProfile(p.run.summary)}\n`);
      if (s.markdown) process.stdout.write(`\n${profileMarkdown(p.run.summary)}\n`);
    } else {
      process.stdout.write(`\n${title}: failed: ${p.error}\n`);
    }
  }

  if (s.write) {
    const data = {
      benchmark: v['profile-only'] ? 'blk-profile' : 'blk',
      date: new Date().toISOString(),
      host: hostInfo(),
      qemuStorageDaemon: toolVersion('qemu-storage-daemon'),
      params: { ...paramsJson(s), backends: wanted, image: image ? { size: image.size, onTmpfs: image.onTmpfs, dir: path.dirname(image.path) } : undefined },
      targets: targets.json.length ? targets.json : undefined,
      cases: casesJson(runs, ratios),
      typescriptDriver: tsNote ?? (tsError ? { error: tsError } : undefined),
      skipped: Object.values(unavailable).some(Boolean) ? unavailable : undefined,
      profiles: profiles.length ? profiles.map((p) => ({
        case: p.case, label: p.variant.label, pollUs: p.variant.pollUs ?? 'default', workers: p.variant.workers ?? 'default',
        ...(p.run ? { iops: p.run.report.iops, profileFiles: p.run.files.map((f) => path.relative(repoRoot, f)), ...p.run.summary, markdown: profileMarkdown(p.run.summary) } : { error: p.error }),
      })) : undefined,
      table: runs.length ? markdownTable(rows) : undefined,
    };
    const paths = writeResults(v['profile-only'] ? 'blk-profile' : 'blk', data, s.out);
    process.stderr.write(`wrote ${path.relative(process.cwd(), paths.dated)} and ${path.relative(process.cwd(), paths.latest)}\n`);
  }
  return anyFailed(runs) || profiles.some((p) => p.error) ? 1 : 0;
}

await runMain('bench:blk', main);
