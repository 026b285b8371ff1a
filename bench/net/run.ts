#!/usr/bin/env node
/**
 * `npm run bench:net`: our virtio-net switch against DPDK, with DPDK's testpmd as the traffic source.
 *
 * - into a port: testpmd (virtio-user, txonly) sends 64- and 1518-byte frames into one port of ours, and into
 *   DPDK's own vhost-user backend (a second testpmd with `net_vhost`, rxonly);
 * - through the switch: testpmd A sends into port 0, the switch forwards to port 1 where testpmd B (virtio-user,
 *   rxonly) sinks them. The DPDK figure given for comparison is DPDK's vhost backend taking the same sender's frames
 *   (the "into a port" case): a testpmd io-forwarding between two `net_vhost` ports would be the closer match, but
 *   with DPDK 22.11 here the second virtio-user to attach to it fails its handshake (EINTR on the reply-ack).
 *
 * Placement on a 2-core machine: the sender forwards on core 0; the backend under test (our daemon, pinned with
 * taskset, or DPDK's vhost testpmd) runs on core 1; a sink forwards on core 0 too. Prints Mpps and Gbit/s with
 * our/DPDK ratios and writes bench/results/net-<time>.json and net-latest.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatProfile, summarizeCpuProfiles, type ProfileSummary } from '../common/cpuprofile.js';
import { processCpuSeconds } from '../common/daemon.js';
import { cliPath, repoRoot, resultsDir } from '../common/paths.js';
import { hostInfo, writeResults } from '../common/results.js';
import { waitForQuiet } from '../common/system.js';
import { markdownTable, ratio, textTable } from '../common/table.js';
import { Testpmd, testpmdUnavailable, waitForSocket } from './testpmd.js';

const help = `usage: npm run bench:net -- [options]

  --time SEC        measured seconds per run (default 5)
  --warmup SEC      seconds of traffic before measuring (default 2)
  --sizes LIST      frame lengths (default 64,1518)
  --repeat N        runs per case and backend, best kept (default 1)
  --quiet-wait SEC  wait up to SEC for other processes to go idle before each run (default 10)
  --no-switch       skip the switch-forwarding cases
  --only SIDE       run only 'ours' or only 'dpdk' (no ratio then)
  --poll-us N       pass --poll-us N to our daemon (its default otherwise)
  --workers N       pass --workers N to our daemon (its default otherwise)
  --profile         afterwards, run port-64 once more with our daemon under node --cpu-prof and print where its
                    time goes (kept as bench/results/net-profile-port-64.cpuprofile)
  --markdown        also print the table as Markdown
  --no-write        do not write JSON results
  -h, --help        this help
`;

/** The issue's target: at 64 bytes into a port, at least half of DPDK's packet rate. */
const TARGET = { case: 'port-64', minRatio: 0.5 };

interface Measurement {
  /** Frames per second into the backend under test (what the sender got rid of). */
  pps: number;
  gbps: number;
  /** Switch cases: frames per second the sink received (the rest found its ring full and were dropped). */
  deliveredPps?: number;
  /** CPU seconds per second used by the backend under test (ours only). */
  cpu?: number;
  /** Other processes were busy during the window. */
  disturbed: boolean;
}

interface CaseResult {
  name: string;
  kind: 'port' | 'switch';
  frameLength: number;
  ours?: Measurement;
  dpdk?: Measurement;
  errors: { ours?: string; dpdk?: string };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The monotonic-clock span (µs) of the last measurement, to cut a profile to it. */
let lastWindow = { fromUs: 0, toUs: 0 };

interface Options {
  time: number;
  warmup: number;
  quietWait: number;
  /** Extra arguments for our daemon (--poll-us, --workers when given). */
  daemonArgs: string[];
  /** Run our daemon under `node --cpu-prof`, writing here. */
  cpuProfileDir?: string;
}

/** Start our daemon with `ports` sockets in `dir`, pinned to core 1. */
async function startOurs(o: Options, dir: string, ports: number):
  Promise<{ child: ChildProcess; sockets: string[]; output: () => string }> {
  const sockets = Array.from({ length: ports }, (_, i) => path.join(dir, `ours${i}.sock`));
  for (const s of sockets) fs.rmSync(s, { force: true });
  const node = o.cpuProfileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', o.cpuProfileDir];
  const child = spawn('taskset', ['-c', '1', process.execPath, ...node, cliPath, 'net', ...sockets.flatMap((s) => ['--port', s]),
    '--queue-size', '4096', '--log-level', 'warn', ...o.daemonArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-8192)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-8192)));
  for (const s of sockets) await waitForSocket(s, 15_000, () => child.exitCode === null, 'our daemon');
  return { child, sockets, output: () => out };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/**
 * Run traffic and measure the rate seen by `meter` (a testpmd port counter) over the window. `pids` are the
 * processes of the backend under test, whose CPU time is reported.
 */
async function measure(o: Options, frameLength: number, meter: () => { pmd: Testpmd; port: number; which: 'rx' | 'tx' },
  backendPid?: number, sink?: Testpmd): Promise<Measurement> {
  // testpmd takes seconds to start on a loaded machine: the warm-up begins with its first statistics.
  const first = meter();
  const end = Date.now() + 60_000;
  while ((first.pmd.samples[first.port]?.length ?? 0) < 1) {
    if (first.pmd.exited) throw new Error(`${first.pmd.name} exited: ${first.pmd.output.slice(-2000)}`);
    if (Date.now() > end) throw new Error(`no statistics from ${first.pmd.name}: ${first.pmd.output.slice(-2000)}`);
    await sleep(50);
  }
  await sleep(o.warmup * 1000);
  const from = performance.now();
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const cpu0 = backendPid === undefined ? 0 : processCpuSeconds(backendPid);
  await sleep(o.time * 1000 + 1100);
  const to = performance.now();
  lastWindow = { fromUs, toUs: Number(process.hrtime.bigint() / 1000n) };
  const cpu1 = backendPid === undefined ? 0 : processCpuSeconds(backendPid);
  const m = meter();
  const pps = m.pmd.rate(m.port, m.which, from, to);
  if (pps === undefined) throw new Error(`no statistics from ${m.pmd.name}: ${m.pmd.output.slice(-2000)}`);
  return {
    pps,
    gbps: (pps * frameLength * 8) / 1e9,
    deliveredPps: sink?.rate(0, 'rx', from, to),
    cpu: backendPid === undefined ? undefined : (cpu1 - cpu0) / ((to - from) / 1000),
    disturbed: false,
  };
}

async function sender(dir: string, socket: string, frameLength: number, name: string): Promise<Testpmd> {
  return Testpmd.start({ name: `${name}-${process.pid}`, vdevs: [`net_virtio_user0,path=${socket},queue_size=1024`],
    mode: 'txonly', mainCore: 1, frameLength });
}

async function portOurs(o: Options, dir: string, frameLength: number): Promise<Measurement> {
  const ours = await startOurs(o, dir, 1);
  let tx: Testpmd | undefined;
  try {
    tx = await sender(dir, ours.sockets[0]!, frameLength, 'tx');
    const pmd = tx;
    return await measure(o, frameLength, () => ({ pmd, port: 0, which: 'tx' }), ours.child.pid);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${ours.output()}`);
  } finally {
    await tx?.stop();
    await stopChild(ours.child);
  }
}

async function portDpdk(o: Options, dir: string, frameLength: number): Promise<Measurement> {
  const socket = path.join(dir, 'dpdk0.sock');
  fs.rmSync(socket, { force: true });
  const rx = Testpmd.start({ name: `vh-${process.pid}`, vdevs: [`net_vhost0,iface=${socket}`], mode: 'rxonly', mainCore: 0 });
  let tx: Testpmd | undefined;
  try {
    await waitForSocket(socket, 30_000, () => !rx.exited, 'testpmd (net_vhost)');
    tx = await sender(dir, socket, frameLength, 'tx');
    const pmd = tx;
    return await measure(o, frameLength, () => ({ pmd, port: 0, which: 'tx' }));
  } finally {
    await tx?.stop();
    await rx.stop();
  }
}

async function switchOurs(o: Options, dir: string, frameLength: number): Promise<Measurement> {
  const ours = await startOurs(o, dir, 2);
  let tx: Testpmd | undefined;
  let rx: Testpmd | undefined;
  try {
    // The sink forwards on core 0 next to the sender (core 1 is the switch's). The two take turns on that core in
    // scheduler slices, so the sink drains its ring only part of the time: the rate reported is what the switch
    // took in and forwarded, the sink's own rate is reported as "delivered".
    rx = Testpmd.start({ name: `rx-${process.pid}`, vdevs: [`net_virtio_user1,path=${ours.sockets[1]},queue_size=4096`],
      mode: 'rxonly', mainCore: 1 });
    await sleep(1500);
    tx = await sender(dir, ours.sockets[0]!, frameLength, 'tx');
    const pmd = tx;
    return await measure(o, frameLength, () => ({ pmd, port: 0, which: 'tx' }), ours.child.pid, rx);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${ours.output()}`);
  } finally {
    await tx?.stop();
    await rx?.stop();
    await stopChild(ours.child);
  }
}

function fmt(m: Measurement | undefined): [string, string] {
  if (!m) return ['–', '–'];
  return [`${(m.pps / 1e6).toFixed(3)}${m.disturbed ? '*' : ''}`, m.gbps.toFixed(2)];
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      time: { type: 'string' }, warmup: { type: 'string' }, sizes: { type: 'string' }, repeat: { type: 'string' },
      'quiet-wait': { type: 'string' }, 'no-switch': { type: 'boolean' }, markdown: { type: 'boolean' },
      'no-write': { type: 'boolean' }, 'poll-us': { type: 'string' }, workers: { type: 'string' },
      profile: { type: 'boolean' }, only: { type: 'string' }, help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(help);
    return 0;
  }
  const missing = testpmdUnavailable();
  if (missing) {
    process.stderr.write(`bench:net: ${missing}\n`);
    return 1;
  }
  if (!fs.existsSync(cliPath)) {
    process.stderr.write(`bench:net: ${cliPath} is missing: build first (npx tsc -p tsconfig.json)\n`);
    return 1;
  }
  const o: Options = {
    time: Number(values.time ?? 5),
    warmup: Number(values.warmup ?? 2),
    quietWait: Number(values['quiet-wait'] ?? 10),
    daemonArgs: [
      ...(values['poll-us'] !== undefined ? ['--poll-us', values['poll-us']] : []),
      ...(values.workers !== undefined ? ['--workers', values.workers] : []),
    ],
  };
  if (values.only !== undefined && values.only !== 'ours' && values.only !== 'dpdk') {
    process.stderr.write(`bench:net: --only takes 'ours' or 'dpdk'\n`);
    return 2;
  }
  const sizes = (values.sizes ?? '64,1518').split(',').map(Number);
  const repeat = Math.max(1, Number(values.repeat ?? 1));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhu-bench-net-'));
  const cases: { name: string; kind: 'port' | 'switch'; size: number }[] = [
    ...sizes.map((size) => ({ name: `port-${size}`, kind: 'port' as const, size })),
    ...(values['no-switch'] ? [] : sizes.map((size) => ({ name: `switch-${size}`, kind: 'switch' as const, size }))),
  ];
  const results: CaseResult[] = [];
  let profile: ProfileSummary | undefined;
  let profileError: string | undefined;
  try {
    for (const c of cases) {
      const r: CaseResult = { name: c.name, kind: c.kind, frameLength: c.size, errors: {} };
      // The switch cases compare with DPDK's vhost taking the same frames (see the header comment).
      const sides = (c.kind === 'port' ? (['dpdk', 'ours'] as const) : (['ours'] as const))
        .filter((side) => values.only === undefined || values.only === side);
      if (c.kind === 'switch') {
        const port = results.find((x) => x.kind === 'port' && x.frameLength === c.size);
        if (port?.dpdk) r.dpdk = port.dpdk;
      }
      for (const side of sides) {
        for (let i = 0; i < repeat; i++) {
          const quiet = await waitForQuiet(0.3, o.quietWait * 1000);
          process.stderr.write(`bench:net: ${c.name} ${side}${repeat > 1 ? ` #${i + 1}` : ''}` +
            `${quiet.quiet ? '' : ` (machine busy: ${quiet.busy.toFixed(1)} cores)`}...\n`);
          try {
            const run = c.kind === 'port' ? (side === 'ours' ? portOurs : portDpdk) : switchOurs;
            const m = await run(o, dir, c.size);
            m.disturbed = !quiet.quiet;
            if (!r[side] || m.pps > r[side]!.pps) r[side] = m;
          } catch (err) {
            r.errors[side] = (err as Error).message;
            process.stderr.write(`bench:net: ${c.name} ${side} failed: ${(err as Error).message}\n`);
          }
        }
      }
      results.push(r);
    }
    if (values.profile) {
      const profileDir = path.join(dir, 'profile');
      fs.mkdirSync(profileDir, { recursive: true });
      process.stderr.write(`bench:net: ${TARGET.case} ours under node --cpu-prof...\n`);
      try {
        await portOurs({ ...o, cpuProfileDir: profileDir }, dir, 64);
        const written = fs.readdirSync(profileDir).filter((f) => f.endsWith('.cpuprofile'));
        if (written.length === 0) throw new Error('the daemon wrote no .cpuprofile (did it exit cleanly on SIGTERM?)');
        const keep = path.join(resultsDir, `net-profile-${TARGET.case}.cpuprofile`);
        fs.mkdirSync(path.dirname(keep), { recursive: true });
        fs.copyFileSync(path.join(profileDir, written.sort()[0]!), keep);
        profile = summarizeCpuProfiles([keep], repoRoot, 25, lastWindow);
      } catch (err) {
        profileError = (err as Error).message;
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const rows = [['case', 'frame', 'ours Mpps', 'ours Gbit/s', 'ours CPU', 'delivered Mpps', 'DPDK Mpps', 'DPDK Gbit/s', 'ours/DPDK']];
  for (const r of results) {
    const [op, og] = fmt(r.ours);
    const [dp, dg] = fmt(r.dpdk);
    const delivered = r.ours?.deliveredPps;
    rows.push([r.name, `${r.frameLength} B`, op, og, r.ours?.cpu !== undefined ? `${(r.ours.cpu * 100).toFixed(0)}%` : '–',
      delivered === undefined ? '–' : (delivered / 1e6).toFixed(3), dp, dg, ratio(r.ours?.pps, r.dpdk?.pps)]);
  }
  process.stdout.write(`\n${textTable(rows)}\n`);
  process.stdout.write('port: testpmd txonly (virtio-user) into one port, against DPDK\'s vhost backend (rxonly) taking ' +
    'the same frames.\nswitch: testpmd -> port 0 -> switch -> port 1 -> testpmd rxonly; Mpps is what the switch took in ' +
    'and forwarded, "delivered" what the sink (sharing a core with the sender) drained; DPDK column as for port.\n' +
    'CPU: our daemon\'s CPU time per second. * = other processes were busy during the run.\n');
  if (values.markdown) process.stdout.write(`\n${markdownTable(rows)}\n`);
  if (o.daemonArgs.length > 0) process.stdout.write(`our daemon: ${o.daemonArgs.join(' ')}\n`);
  if (profile) process.stdout.write(`\nprofile of our daemon, ${TARGET.case} (profiling slows it):\n${formatProfile(profile)}\n`);
  else if (profileError) process.stdout.write(`\nprofile failed: ${profileError}\n`);
  const target = results.find((r) => r.name === TARGET.case);
  const achieved = target?.ours && target.dpdk ? target.ours.pps / target.dpdk.pps : undefined;
  if (achieved !== undefined) {
    process.stdout.write(`target (${TARGET.case}: ours >= ${TARGET.minRatio} x DPDK): ${achieved.toFixed(2)} -> ` +
      `${achieved >= TARGET.minRatio ? 'met' : 'NOT met'}\n`);
  }
  if (!values['no-write']) {
    const files = writeResults('net', {
      date: new Date().toISOString(), host: hostInfo(), options: { ...o, sizes, repeat },
      profile: profile ? { case: TARGET.case, ...profile } : profileError ? { error: profileError } : undefined,
      target: { ...TARGET, achieved, met: achieved !== undefined && achieved >= TARGET.minRatio },
      results,
    });
    process.stdout.write(`results: ${files.dated}\n`);
  }
  return 0;
}

process.exitCode = await main();
