#!/usr/bin/env node
/**
 * `npm run bench:guest`: a real Linux guest (QEMU, TCG) reads and writes, with O_DIRECT busybox `dd`, a
 * vhost-user-blk disk served by our daemon and, in the same boot, one served by qemu-storage-daemon. Reports per
 * workload and backend the guest-measured IOPS and MB/s, our/their ratio, and each daemon's CPU time per I/O
 * (from /proc/<pid>/stat). Under TCG the guest's CPU is the bottleneck, so this is a regression check of the
 * whole path (issue #8: "a real guest's I/O does not regress"), not a peak-throughput benchmark.
 * Writes bench/results/guest-<time>.json and guest-latest.json.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { hostInfo, writeResults } from '../common/results.js';
import { markdownTable, ratio, si, textTable } from '../common/table.js';
import { findGuestKernel, missingGuestPrerequisites, repoRoot } from '../../test/guest/host.js';
import { buildInitramfs } from '../../test/guest/initramfs.js';
import { bootGuest, type Guest, type GuestExit } from '../../test/guest/qemu.js';
import { guestKernelImage } from '../../test/guest/kernel.js';
import {
  Backend, type DiskSpec, backendCommand, machineBusySeconds, oursUnavailable, processCpuSeconds, qsdUnavailable,
} from './backends.js';
import {
  type BackendName, type GuestEvent, type Workload, LineSplitter, defaultWorkloads, guestScript, parseGuestLine, workloadBytes,
} from './workloads.js';

const MiB = 1024 * 1024;
const OURS_SERIAL = 'bench-guest-ours';
/** A phase during which other processes used more than this many cores is starred. */
const NOISY_CORES = 0.3;

const help = `usage: npm run bench:guest -- [options]

Boots a Linux guest under QEMU (TCG) with a vhost-user-blk disk from our daemon and one from
qemu-storage-daemon, and times O_DIRECT dd reads and writes on each, the backends taking turns.

  --count N          4 KiB blocks per run of the 4 KiB workloads (default 1000)
  --count-1m N       1 MiB blocks per run of the 1 MiB workloads (default 64)
  --rounds N         runs of every workload per backend, the backends taking turns; medians are
                     reported, and ours/qsd is the median of the per-round ratios (default 5)
  --backends LIST    ours,qsd (default both)
  --poll-us N        passed to our daemon as --poll-us N (default: not passed)
  --workers N        passed to our daemon as --workers N (default: not passed)
  --disk KIND        file (default: a raw image per backend, filled, in --image-dir) or null
  --size BYTES       disk size (default 268435456)
  --image-dir DIR    where the images go (default /dev/shm if present, else the temp dir)
  --queues N         queues per disk and guest vCPUs (default 1)
  --memory MIB       guest RAM (default 512)
  --warmup N         unmeasured 4 KiB reads and writes per backend first (default 256)
  --seed N           seed of the scattered offsets (default 1)
  --timeout SEC      give up on the guest after SEC (default: from the counts)
  --quiet-wait SEC   before booting, wait up to SEC for other processes to go idle (default 30)
  --label TEXT       stored in the JSON (e.g. before, after)
  --markdown         also print the table as Markdown
  --out DIR          results directory (default bench/results)
  --no-write         do not write JSON results
  -h, --help         this help

Needs qemu-system-x86_64, a Debian kernel with modules in /boot and /lib/modules, a static busybox,
qemu-storage-daemon (for qsd) and a built tree (npx tsc -p tsconfig.json). Exits 2 when any is missing,
1 when a run failed.
`;

/** One timed run of a workload on a backend. */
interface Sample {
  round: number;
  /** Guest-measured duration. */
  seconds: number;
  rc: number;
  iops: number;
  mbps: number;
  /** Backend CPU (utime + stime) between the BEGIN and END markers. */
  backendCpuSec: number;
  /** QEMU's CPU in the same window (vCPU + device emulation). */
  qemuCpuSec: number;
  /** Host-side time between the markers (console latency included). */
  hostSeconds: number;
  /** Cores other processes (not QEMU, not the backends) kept busy in that window. */
  foreignCores: number;
}

interface Cell {
  samples: Sample[];
  medianIops?: number;
  medianMBps?: number;
  /** Sum of backend CPU over the sum of blocks, all good rounds. */
  cpuUsPerIo?: number;
  qemuCpuUsPerIo?: number;
  noisy: boolean;
}

interface WorkloadResult {
  workload: Workload;
  cells: Partial<Record<BackendName, Cell>>;
  /** ours / qsd of the medians. */
  iopsRatio?: number;
  /** Median over rounds of ours / qsd within the round (each pair ran back to back: less exposed to drift). */
  pairedIopsRatio?: number;
  cpuPerIoRatio?: number;
}

function intArg(v: string | undefined, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: '${v}' is not an integer in ${min}..${max}`);
  return n;
}

class UsageError extends Error {
  override name = 'UsageError';
}

function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

/** Fills the image with a non-zero pattern (every 4 KiB block distinct) so reads hit real page-cache data. */
function writeImage(file: string, size: number): void {
  const chunk = Buffer.alloc(MiB);
  const fd = fs.openSync(file, 'w');
  try {
    for (let off = 0; off < size; off += chunk.length) {
      for (let b = 0; b < chunk.length; b += 4096) chunk.fill(((off + b) / 4096) & 0xff | 1, b, b + 4096);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Waits until fewer than `maxCores` cores are busy (sampled over 500 ms), for at most `timeoutMs`. */
async function waitForQuiet(maxCores: number, timeoutMs: number): Promise<{ quiet: boolean; busy: number }> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const a = machineBusySeconds();
    await new Promise((r) => setTimeout(r, 500));
    const busy = (machineBusySeconds() - a) / 0.5;
    if (busy < maxCores || Date.now() >= end) return { quiet: busy < maxCores, busy };
  }
}

function gitDescribe(): { commit?: string; dirtyFiles?: number } {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: repoRoot(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const status = execFileSync('git', ['status', '--porcelain'], { cwd: repoRoot(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return { commit, dirtyFiles: status.split('\n').filter((l) => l.trim() !== '').length };
  } catch {
    return {};
  }
}

function firstLine(command: string, args: string[]): string | undefined {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0]?.trim() : undefined;
}

const live = new Set<Backend>();
let liveGuest: Guest | undefined;
/** Temporary directories (sockets, images in /dev/shm) removed on every way out, Ctrl-C included. */
const scratch = new Set<string>();

function removeScratch(): void {
  for (const dir of scratch) fs.rmSync(dir, { recursive: true, force: true });
  scratch.clear();
}

async function main(): Promise<number> {
  const { values: v } = parseArgs({
    options: {
      count: { type: 'string' }, 'count-1m': { type: 'string' }, rounds: { type: 'string' }, backends: { type: 'string' },
      'poll-us': { type: 'string' }, workers: { type: 'string' }, disk: { type: 'string' }, size: { type: 'string' },
      'image-dir': { type: 'string' }, queues: { type: 'string' }, memory: { type: 'string' }, warmup: { type: 'string' },
      seed: { type: 'string' }, 'quiet-wait': { type: 'string' }, timeout: { type: 'string' }, label: { type: 'string' }, markdown: { type: 'boolean' },
      out: { type: 'string' }, 'no-write': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
  });
  if (v.help) {
    process.stdout.write(help);
    return 0;
  }
  const count = intArg(v.count, 'count', 1000, 1);
  const count1m = intArg(v['count-1m'], 'count-1m', 64, 1);
  const rounds = intArg(v.rounds, 'rounds', 5, 1, 100);
  const size = intArg(v.size, 'size', 256 * MiB, MiB);
  if (size % 4096 !== 0) throw new UsageError('--size must be a multiple of 4096');
  const queues = intArg(v.queues, 'queues', 1, 1, 8);
  const memoryMiB = intArg(v.memory, 'memory', 512, 128);
  const warmupCount = intArg(v.warmup, 'warmup', 256, 0);
  const seed = intArg(v.seed, 'seed', 1, 0, 0xffffffff);
  const quietWaitSec = intArg(v['quiet-wait'], 'quiet-wait', 30, 0);
  const pollUs = v['poll-us'] === undefined ? undefined : intArg(v['poll-us'], 'poll-us', 0, 0);
  const workers = v.workers === undefined ? undefined : intArg(v.workers, 'workers', 0, 0);
  const diskKind = v.disk ?? 'file';
  if (diskKind !== 'file' && diskKind !== 'null') throw new UsageError(`--disk: '${diskKind}' (file or null)`);
  const wanted = v.backends?.split(',').map((s) => s.trim()).filter(Boolean) ?? ['ours', 'qsd'];
  for (const b of wanted) if (b !== 'ours' && b !== 'qsd') throw new UsageError(`--backends: unknown backend '${b}' (ours, qsd)`);
  const backends = [...new Set(wanted)] as BackendName[];
  if (backends.length === 0) throw new UsageError('--backends is empty');
  const workloads = defaultWorkloads(count, count1m);
  for (const w of workloads) {
    if (workloadBytes(w) > size) throw new UsageError(`${w.name} moves ${workloadBytes(w)} bytes: more than the disk (--size ${size})`);
  }

  // ---- prerequisites: say exactly what is missing, exit 2 ----
  const missing = [...missingGuestPrerequisites()];
  if (backends.includes('ours')) {
    const why = oursUnavailable();
    if (why) missing.push(`our daemon: ${why}`);
  }
  if (backends.includes('qsd')) {
    const why = qsdUnavailable();
    if (why) missing.push(why);
  }
  if (missing.length > 0) {
    process.stderr.write(`bench:guest: cannot run, missing:\n${missing.map((m) => `  - ${m}`).join('\n')}\n`);
    return 2;
  }

  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhg-'));
  const imageRoot = v['image-dir'] ?? (fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir());
  scratch.add(sockDir);
  const imageDir = diskKind === 'file' ? fs.mkdtempSync(path.join(imageRoot, 'bench-guest-')) : undefined;
  if (imageDir !== undefined) scratch.add(imageDir);
  try {
    return await measure();
  } finally {
    for (const b of live) await b.stop();
    await liveGuest?.kill();
    removeScratch();
  }

  async function measure(): Promise<number> {
    const disks = new Map<BackendName, DiskSpec>();
    for (const b of backends) {
      const disk: DiskSpec = { kind: diskKind as 'file' | 'null', size, queues, ...(imageDir ? { image: path.join(imageDir, `${b}.img`) } : {}) };
      if (disk.image !== undefined) writeImage(disk.image, size);
      disks.set(b, disk);
    }
    const oursOptions = { serial: OURS_SERIAL, ...(pollUs === undefined ? {} : { pollUs }), ...(workers === undefined ? {} : { workers }) };
    const script = guestScript({ workloads, backends, rounds, diskSize: size, warmupCount, oursSerial: OURS_SERIAL, seed });
    process.stderr.write('building the initramfs and kernel image... ');
    const initramfs = await buildInitramfs({ script });
    const kernelImage = await guestKernelImage();
    process.stderr.write('done\n');

    const started = new Map<BackendName, Backend>();
    for (const b of backends) {
      const backend = await Backend.start(b, path.join(sockDir, `${b}.sock`), disks.get(b)!, oursOptions);
      live.add(backend);
      started.set(b, backend);
    }
    const extraArgs: string[] = [];
    backends.forEach((b, i) => {
      extraArgs.push('-chardev', `socket,id=vu${i},path=${started.get(b)!.socketPath}`,
        '-device', `vhost-user-blk-pci,chardev=vu${i},num-queues=${queues}`);
    });
    // Generous: TCG runs ~1-3 k 4 KiB IOPS here; allow 2 ms per 4 KiB block, 60 ms per MiB, boot 60 s.
    const blocks4k = workloads.filter((w) => w.bs === 4096).reduce((s, w) => s + w.count, 0);
    const blocks1m = workloads.filter((w) => w.bs === MiB).reduce((s, w) => s + w.count, 0);
    const autoTimeout = 60 + backends.length * (rounds * (blocks4k * 0.002 + blocks1m * 0.06) + warmupCount * 2 * 0.002);
    const timeoutSec = v.timeout === undefined ? Math.ceil(autoTimeout) : intArg(v.timeout, 'timeout', 0, 1);

    // ---- the console drives the CPU sampling ----
    const results = new Map<string, WorkloadResult>(workloads.map((w) => [w.name, { workload: w, cells: {} }]));
    const guestErrors: string[] = [];
    const diskInfo: Partial<Record<BackendName, Extract<GuestEvent, { kind: 'disk' }>>> = {};
    interface Snapshot { at: number; backendCpu: number; qemuCpu: number; allCpu: number; busy: number }
    let open: { key: string; snap: Snapshot } | undefined;
    let qemuPid = -1;
    const snapshot = (b: BackendName): Snapshot => {
      const backendCpu = processCpuSeconds(started.get(b)!.pid);
      const qemuCpu = processCpuSeconds(qemuPid);
      let allCpu = qemuCpu;
      for (const x of started.values()) allCpu += processCpuSeconds(x.pid);
      return { at: performance.now(), backendCpu, qemuCpu, allCpu, busy: machineBusySeconds() };
    };
    const splitter = new LineSplitter();
    const echo = process.env['VHOST_USER_GUEST_CONSOLE'] === '1';
    const onLine = (line: string): void => {
      const ev = parseGuestLine(line);
      if (ev === null) return;
      if (ev.kind === 'disk') {
        diskInfo[ev.backend] = ev;
      } else if (ev.kind === 'err') {
        guestErrors.push(ev.text);
        process.stderr.write(`guest: ERR ${ev.text}\n`);
      } else if (ev.kind === 'begin') {
        open = { key: `${ev.workload} ${ev.backend} ${ev.round}`, snap: snapshot(ev.backend) };
      } else {
        const key = `${ev.workload} ${ev.backend} ${ev.round}`;
        const before = open?.key === key ? open.snap : undefined;
        open = undefined;
        const result = results.get(ev.workload);
        if (result === undefined) {
          if (ev.rc !== 0) process.stderr.write(`${ev.workload} ${ev.backend}: failed (rc ${ev.rc})\n`);
          return; // a warm-up phase
        }
        const after = snapshot(ev.backend);
        const w = result.workload;
        const seconds = ev.ns / 1e9;
        const hostSeconds = before ? (after.at - before.at) / 1000 : Number.NaN;
        const sample: Sample = {
          round: ev.round, seconds, rc: ev.rc,
          iops: w.count / seconds, mbps: workloadBytes(w) / seconds / 1e6,
          backendCpuSec: before ? after.backendCpu - before.backendCpu : Number.NaN,
          qemuCpuSec: before ? after.qemuCpu - before.qemuCpu : Number.NaN,
          hostSeconds,
          foreignCores: before ? Math.max(0, (after.busy - before.busy) - (after.allCpu - before.allCpu)) / hostSeconds : Number.NaN,
        };
        (result.cells[ev.backend] ??= { samples: [], noisy: false }).samples.push(sample);
        process.stderr.write(`  ${w.name.padEnd(18)} ${ev.backend.padEnd(4)} round ${ev.round}: ` +
          (ev.rc === 0 ? `${si(sample.iops).padStart(7)} IOPS ${sample.mbps.toFixed(1).padStart(7)} MB/s` : `FAILED rc ${ev.rc}`) +
          (sample.foreignCores > NOISY_CORES ? ` (* ${sample.foreignCores.toFixed(1)} foreign cores)` : '') + '\n');
      }
    };

    let quietAtStart: { quiet: boolean; busy: number } | undefined;
    if (quietWaitSec > 0) {
      const q = (quietAtStart = await waitForQuiet(NOISY_CORES, quietWaitSec * 1000));
      process.stderr.write(q.quiet ? '' : `machine still busy after ${quietWaitSec} s (${q.busy.toFixed(1)} cores): measuring anyway\n`);
    }
    process.stderr.write(`booting the guest (${backends.join(' + ')}, ${diskKind} disks of ${size / MiB} MiB, ${rounds} rounds, ` +
      `timeout ${timeoutSec} s)...\n`);
    const guest = await bootGuest({
      initramfs, memoryMiB, smp: queues, extraArgs, timeoutMs: timeoutSec * 1000,
      onOutput: (text) => {
        if (echo) process.stderr.write(text);
        for (const line of splitter.push(text)) onLine(line);
      },
    });
    liveGuest = guest;
    qemuPid = guest.pid;
    let exit: GuestExit | undefined;
    let guestFailure: string | undefined;
    try {
      exit = await guest.exited;
    } catch (err) {
      guestFailure = (err as Error).message;
    }
    liveGuest = undefined;
    const backendDied: string[] = [];
    for (const [b, backend] of started) {
      if (backend.exited) backendDied.push(`${b} exited during the run:\n${backend.output.trim().slice(-2000)}`);
      await backend.stop();
      live.delete(backend);
    }

    // ---- aggregate ----
    for (const r of results.values()) {
      for (const b of backends) {
        const cell = r.cells[b];
        if (!cell) continue;
        const good = cell.samples.filter((s) => s.rc === 0);
        cell.medianIops = median(good.map((s) => s.iops));
        cell.medianMBps = median(good.map((s) => s.mbps));
        const ios = good.length * r.workload.count;
        const cpu = good.reduce((s, x) => s + x.backendCpuSec, 0);
        const qcpu = good.reduce((s, x) => s + x.qemuCpuSec, 0);
        if (ios > 0 && Number.isFinite(cpu)) cell.cpuUsPerIo = (cpu / ios) * 1e6;
        if (ios > 0 && Number.isFinite(qcpu)) cell.qemuCpuUsPerIo = (qcpu / ios) * 1e6;
        cell.noisy = good.some((s) => s.foreignCores > NOISY_CORES);
      }
      const o = r.cells.ours;
      const q = r.cells.qsd;
      if (o?.medianIops !== undefined && q?.medianIops !== undefined) r.iopsRatio = o.medianIops / q.medianIops;
      const pairs: number[] = [];
      for (const so of o?.samples ?? []) {
        const sq = q?.samples.find((x) => x.round === so.round);
        if (so.rc === 0 && sq?.rc === 0) pairs.push(so.iops / sq.iops);
      }
      r.pairedIopsRatio = median(pairs);
      if (o?.cpuUsPerIo !== undefined && q?.cpuUsPerIo !== undefined && q.cpuUsPerIo > 0) r.cpuPerIoRatio = o.cpuUsPerIo / q.cpuUsPerIo;
    }

    // ---- report ----
    const rate = (c: Cell | undefined): string => (c?.medianIops === undefined ? '–' : `${si(c.medianIops)}${c.noisy ? '*' : ''}`);
    const mbps = (c: Cell | undefined): string => (c?.medianMBps === undefined ? '–' : c.medianMBps.toFixed(1));
    const cpu = (c: Cell | undefined): string => (c?.cpuUsPerIo === undefined ? '–' : c.cpuUsPerIo.toFixed(1));
    const header = ['workload'];
    for (const b of backends) header.push(`${b} IOPS`, `${b} MB/s`);
    if (backends.length === 2) header.push('ours/qsd');
    for (const b of backends) header.push(`${b} CPU µs/IO`);
    if (backends.length === 2) header.push('CPU/IO ours/qsd');
    const rows: string[][] = [header];
    for (const r of results.values()) {
      const row = [r.workload.name];
      for (const b of backends) row.push(rate(r.cells[b]), mbps(r.cells[b]));
      if (backends.length === 2) row.push(r.pairedIopsRatio === undefined ? '–' : `${r.pairedIopsRatio.toFixed(2)}×`);
      for (const b of backends) row.push(cpu(r.cells[b]));
      if (backends.length === 2) row.push(ratio(r.cells.ours?.cpuUsPerIo, r.cells.qsd?.cpuUsPerIo));
      rows.push(row);
    }
    const oursCommand = started.get('ours')?.command;
    const lines: string[] = [];
    lines.push(`guest O_DIRECT dd on vhost-user-blk (QEMU TCG, ${queues} vCPU/queue${queues > 1 ? 's' : ''}, ${diskKind} disks of ` +
      `${size / MiB} MiB): median of ${rounds} rounds (ours/qsd: median of the per-round ratios); 4 KiB runs of ${count} blocks, 1 MiB runs of ${count1m}; ` +
      `an I/O is one dd block; CPU is the daemon's utime+stime per I/O over all rounds.`);
    lines.push(textTable(rows));
    if (results.size > 0 && [...results.values()].some((r) => Object.values(r.cells).some((c) => c?.noisy))) {
      lines.push(`* other processes kept more than ${NOISY_CORES} cores busy during at least one round`);
    }
    if (oursCommand) lines.push(`ours: node ${path.relative(process.cwd(), oursCommand[1]!)} ${oursCommand.slice(2).join(' ')}`);
    for (const e of guestErrors) lines.push(`guest error: ${e}`);
    for (const d of backendDied) lines.push(`error: ${d}`);
    if (guestFailure) lines.push(`error: ${guestFailure}`);
    else if (exit && exit.guestExitCode !== 0) {
      lines.push(`error: the guest script exited with ${exit.guestExitCode ?? 'no GUEST-EXIT marker'} (QEMU exit ${exit.qemuExitCode ?? exit.qemuSignal})` +
        `\n${exit.output.split('\n').slice(-30).join('\n')}\n${exit.stderr.trim()}`);
    }
    const missingCells = [...results.values()].flatMap((r) =>
      backends.filter((b) => (r.cells[b]?.samples.filter((s) => s.rc === 0).length ?? 0) < rounds).map((b) => `${r.workload.name}/${b}`));
    if (missingCells.length > 0) lines.push(`error: incomplete results for ${missingCells.join(', ')}`);
    process.stdout.write(lines.join('\n') + '\n');
    if (v.markdown) process.stdout.write('\n' + markdownTable(rows) + '\n');

    if (!v['no-write']) {
      const kernel = findGuestKernel();
      const data = {
        benchmark: 'guest',
        label: v.label,
        date: new Date().toISOString(),
        ...gitDescribe(),
        host: hostInfo(),
        tools: {
          qemu: firstLine('qemu-system-x86_64', ['--version']),
          qemuStorageDaemon: backends.includes('qsd') ? firstLine('qemu-storage-daemon', ['--version']) : undefined,
          guestKernel: kernel?.version, kernelImage: kernelImage.pvh ? 'vmlinux (PVH)' : 'bzImage',
        },
        params: {
          count, count1m, rounds, backends, diskKind, size, queues, memoryMiB, warmupCount, seed, pollUs, workers,
          imageDir: imageDir === undefined ? undefined : imageRoot, noisyCores: NOISY_CORES,
        },
        commands: Object.fromEntries(backends.map((b) => [b, backendCommand(b, '<socket>', disks.get(b)!, oursOptions)])),
        quietAtStart,
        disks: diskInfo,
        workloads: [...results.values()].map((r) => ({ ...r.workload, ...r.cells, iopsRatio: r.iopsRatio, pairedIopsRatio: r.pairedIopsRatio, cpuPerIoRatio: r.cpuPerIoRatio })),
        guestExitCode: exit?.guestExitCode,
        guestElapsedMs: exit?.elapsedMs,
        errors: [...guestErrors, ...backendDied, ...(guestFailure ? [guestFailure] : [])],
        table: markdownTable(rows),
      };
      const paths = writeResults('guest', data, v.out);
      process.stderr.write(`wrote ${path.relative(process.cwd(), paths.dated)} and ${path.relative(process.cwd(), paths.latest)}\n`);
    }
    const ok = !guestFailure && exit?.guestExitCode === 0 && backendDied.length === 0 && guestErrors.length === 0 && missingCells.length === 0;
    return ok ? 0 : 1;
  }
}

const emergencyStop = (): void => {
  for (const b of live) b.killNow();
  void liveGuest?.kill(); // QEMU also dies with us: the harness's exit hook and setpriv --pdeathsig
  removeScratch();
  process.exit(130);
};
process.once('SIGINT', emergencyStop);
process.once('SIGTERM', emergencyStop);

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`bench:guest: ${err instanceof UsageError ? '' : 'failed: '}${(err as Error).message}\n`);
  for (const b of live) b.killNow();
  removeScratch();
  process.exitCode = 2;
}
