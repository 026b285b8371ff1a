/**
 * Soak: `npm run soak -- [--minutes N] [--queues Q] [--disk SIZE]` (`node dist/bench/soak/run.js`). Not run in CI.
 *
 * Boots a real guest (the test/guest harness: QEMU TCG, Debian kernel, busybox) on the `vhost-user blk` daemon
 * serving a sparse image file, and runs a verified read/write workload for the given time (default 10 minutes):
 * writer loops each rewrite the 256 KiB chunks of their own region in turn (O_DIRECT write, O_DIRECT read back,
 * compare), each chunk's content naming its writer and step so that a lost or stale write shows; a reader
 * streams 1 MiB O_DIRECT reads elsewhere. At the end the guest hashes every region and the host checks the image
 * file holds exactly the last write of every chunk.
 *
 * Every 30 s it prints the throughput of the window (MB/s written and read), the errors so far and the daemon's
 * memory and fds (from /proc/<pid>/status and /proc/<pid>/fd, sampled every 5 s). At the end: the slope of the
 * daemon's anonymous RSS (its own heap and buffers; guest RAM it touched is shared memory and reported apart)
 * over the run after a warm-up, by least squares. Exit code 0 only with zero errors, a verified image and a flat
 * memory (the fitted growth after warm-up under 8 MiB).
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';
import { buildInitramfs } from '../../test/guest/initramfs.js';
import { bootGuest, type Guest } from '../../test/guest/qemu.js';
import { missingGuestPrerequisites } from '../../test/guest/host.js';
import { tempDir } from '../../test/helpers/tmp.js';
import { DaemonProcess } from '../../test/fuzz/daemon-process.js';
import { sizeOption } from '../../src/cli/daemon.js';

/** Bytes per workload chunk (one write, one read back). */
const CHUNK = 256 * 1024;
/** A line of chunk content: `W<w>S<12-digit step>\n`. */
const LINE = 16;
const MiB = 1024 * 1024;

interface Shape {
  writers: number;
  /** Chunks per writer region. */
  chunks: number;
  /** First chunk of writer 0; writer w starts w * stride chunks later. */
  first: number;
  stride: number;
  /** Reader range, in MiB from `readerStart`. */
  readerStartMiB: number;
  readerMiB: number;
}

function chunkContent(w: number, s: number): Buffer {
  return Buffer.from(`W${w}S${String(s).padStart(12, '0')}\n`.repeat(CHUNK / LINE), 'latin1');
}

/** The guest script: writers and a reader until `seconds` of guest uptime have passed, then region hashes. */
function guestScript(shape: Shape, seconds: number): string {
  return [
    'set -u',
    `end=$(( $(cut -d. -f1 /proc/uptime) + ${seconds} ))`,
    'writer() {',
    '  w=$1; base=$2; n=$3; s=0',
    '  while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do',
    '    b=$((base + s % n))',
    `    yes "W\${w}S$(printf %012d $s)" | head -c ${CHUNK} > /tmp/w$w`,
    `    dd if=/tmp/w$w of=/dev/vda bs=${CHUNK} count=1 seek=$b oflag=direct conv=notrunc 2>/tmp/e$w ||`,
    '      { echo "WRITE-ERROR $w $s $(cat /tmp/e$w)"; return 1; }',
    `    dd if=/dev/vda of=/tmp/r$w bs=${CHUNK} count=1 skip=$b iflag=direct 2>/tmp/e$w ||`,
    '      { echo "READ-ERROR $w $s $(cat /tmp/e$w)"; return 1; }',
    '    cmp -s /tmp/w$w /tmp/r$w || { echo "VERIFY-FAIL $w $s chunk $b"; return 1; }',
    '    echo "ACK $w $s"',
    '    s=$((s + 1))',
    '  done',
    '  echo "WRITER-DONE $w $s"',
    '}',
    'reader() {',
    '  i=0',
    '  while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do',
    `    dd if=/dev/vda of=/dev/null bs=1048576 count=1 skip=$((${shape.readerStartMiB} + i)) iflag=direct 2>/tmp/er ||`,
    '      { echo "READER-ERROR $(cat /tmp/er)"; return 1; }',
    '    echo "RD"',
    `    i=$(( (i + 1) % ${shape.readerMiB} ))`,
    '  done',
    '}',
    'reader & rpid=$!',
    ...Array.from({ length: shape.writers }, (_, w) =>
      `writer ${w} ${shape.first + w * shape.stride} ${shape.chunks} & pid${w}=$!`),
    'rc=0',
    ...Array.from({ length: shape.writers }, (_, w) => `wait $pid${w} || rc=1`),
    'wait $rpid || rc=1',
    ...Array.from({ length: shape.writers }, (_, w) =>
      `echo "HASH ${w} $(dd if=/dev/vda bs=${CHUNK} count=${shape.chunks} skip=${shape.first + w * shape.stride} iflag=direct 2>/dev/null | sha256sum | cut -c1-64)"`),
    'exit $rc',
    '',
  ].join('\n');
}

/** A writer's region as its last writes left it (`steps` writes done). */
function expectedRegion(shape: Shape, w: number, steps: number): Buffer {
  const region = Buffer.alloc(shape.chunks * CHUNK);
  for (let s = Math.max(0, steps - shape.chunks); s < steps; s++) chunkContent(w, s).copy(region, (s % shape.chunks) * CHUNK);
  return region;
}

interface Sample {
  t: number;
  rssKb: number;
  anonKb: number;
  shmemKb: number;
  fds: number;
}

/** Least-squares slope of y over x. */
function slope(points: readonly [number, number][]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

function clock(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string' },
      queues: { type: 'string' },
      disk: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write('usage: npm run soak -- [--minutes N (default 10)] [--queues 1|2] [--disk SIZE (default 256M)]\n');
    return 0;
  }
  const minutes = Number(values.minutes ?? 10);
  if (!(minutes > 0 && minutes <= 24 * 60)) throw new Error(`--minutes must be a positive number, got '${values.minutes}'`);
  const queues = Number(values.queues ?? 1);
  if (queues !== 1 && queues !== 2) throw new Error('--queues must be 1 or 2');
  const disk = values.disk ?? '256M';
  // The reader works on [64 MiB, 128 MiB).
  if (sizeOption(disk, 'disk') < 128 * MiB) throw new Error('--disk must be at least 128M');
  const missing = missingGuestPrerequisites();
  if (missing.length > 0) throw new Error(`the soak needs a guest: ${missing.join('; ')}`);

  const seconds = Math.round(minutes * 60);
  // 2 writers of 64 chunks (16 MiB each) at 1 MiB and 21 MiB, the reader over 64 MiB from 64 MiB on.
  const shape: Shape = { writers: 2, chunks: 64, first: 4, stride: 80, readerStartMiB: 64, readerMiB: 64 };
  const { dir, cleanup } = tempDir('vhost-soak-');
  const image = join(dir, 'disk.img');
  const socketPath = join(dir, 'blk.sock');
  let daemon: DaemonProcess | undefined;
  let guest: Guest | undefined;
  try {
    daemon = await DaemonProcess.start(socketPath, ['--image', image, '--size', disk, '--num-queues', String(queues),
      '--log-level', 'info']);
    const d = daemon;
    process.stdout.write(`soak: ${minutes} min, daemon pid ${d.pid} (${disk} image, ${queues} queue${queues > 1 ? 's' : ''}), ` +
      `${shape.writers} writers x ${shape.chunks} x ${CHUNK / 1024} KiB chunks (write, read back, compare) + a 1 MiB reader\n`);
    const initramfs = await buildInitramfs({ script: guestScript(shape, seconds) });
    const started = Date.now();
    guest = await bootGuest({
      initramfs, smp: queues, timeoutMs: (seconds + 600) * 1000,
      extraArgs: ['-chardev', `socket,id=c0,path=${socketPath}`, '-device', `vhost-user-blk-pci,chardev=c0,num-queues=${queues}`],
    });
    const g = guest;
    const samples: Sample[] = [];
    const sample = (): void => {
      if (!d.running) return;
      samples.push({ t: Date.now() - started, rssKb: d.statusKb('VmRSS'), anonKb: d.statusKb('RssAnon'), shmemKb: d.statusKb('RssShmem'), fds: d.fds() });
    };
    sample();
    const sampler = setInterval(sample, 5000);
    let seen = 0;
    let acks = 0;
    let reads = 0;
    let errors = 0;
    let windowStart = started;
    const header = '  time   write MB/s  read MB/s  verified writes  errors  daemon VmRSS  RssAnon  RssShmem  fds';
    process.stdout.write(`${header}\n`);
    const report = (final = false): void => {
      const now = Date.now();
      if (final && now - windowStart < 1000) return;
      const text = g.output.slice(seen);
      seen = g.output.length;
      const wAcks = (text.match(/^ACK \d+ \d+$/gm) ?? []).length;
      const wReads = (text.match(/^RD$/gm) ?? []).length;
      errors += (text.match(/^(WRITE-ERROR|READ-ERROR|VERIFY-FAIL|READER-ERROR)/gm) ?? []).length;
      acks += wAcks;
      reads += wReads;
      const secs = (now - windowStart) / 1000;
      windowStart = now;
      const s = samples.at(-1);
      const mb = (b: number) => (b / MiB / secs).toFixed(2).padStart(10);
      process.stdout.write(`  ${clock(now - started).padStart(5)}  ${mb(wAcks * CHUNK)} ${mb(wAcks * CHUNK + wReads * MiB)}  ` +
        `${String(acks).padStart(15)}  ${String(errors).padStart(6)}  ${String(s ? `${(s.rssKb / 1024).toFixed(1)} MiB` : '-').padStart(12)}  ` +
        `${String(s ? `${(s.anonKb / 1024).toFixed(1)}` : '-').padStart(7)}  ${String(s ? `${(s.shmemKb / 1024).toFixed(1)}` : '-').padStart(8)}  ${s?.fds ?? '-'}\n`);
    };
    await g.waitFor(/^GUEST-READY/m, 120_000);
    windowStart = Date.now();
    const reporter = setInterval(() => report(), 30_000);
    const result = await g.exited;
    clearInterval(reporter);
    clearInterval(sampler);
    report(true);

    // Verification: the guest's own check, its hashes, and the image file on the host.
    const problems: string[] = [];
    if (result.guestExitCode !== 0) problems.push(`guest workload exit code ${result.guestExitCode}`);
    const imageData = readFileSync(image);
    for (let w = 0; w < shape.writers; w++) {
      const done = /^WRITER-DONE (\d+) (\d+)$/m.exec(result.output.split('\n').filter((l) => l.startsWith(`WRITER-DONE ${w} `)).join('\n'));
      if (!done) {
        problems.push(`writer ${w} did not finish`);
        continue;
      }
      const want = expectedRegion(shape, w, Number(done[2]));
      const start = (shape.first + w * shape.stride) * CHUNK;
      if (!imageData.subarray(start, start + want.length).equals(want)) problems.push(`writer ${w}'s region in the image is not its last writes`);
      const hash = new RegExp(`^HASH ${w} ([0-9a-f]{64})$`, 'm').exec(result.output)?.[1];
      if (hash !== createHash('sha256').update(want).digest('hex')) problems.push(`writer ${w}'s region as the guest read it back differs`);
    }
    // Memory: fitted slope of RssAnon after the warm-up (the first minute, or the first fifth of a short run).
    const warmUp = Math.min(60_000, (seconds * 1000) / 5);
    const steady = samples.filter((s) => s.t >= warmUp);
    const perMin = slope(steady.map((s) => [s.t / 60_000, s.anonKb]));
    const rssPerMin = slope(steady.map((s) => [s.t / 60_000, s.rssKb]));
    const spanMin = steady.length > 1 ? (steady.at(-1)!.t - steady[0]!.t) / 60_000 : 0;
    const fittedGrowth = perMin * spanMin;
    const flat = Math.abs(fittedGrowth) < 8 * 1024;
    const fds = [...new Set(steady.map((s) => s.fds))].join(', ');
    process.stdout.write(`\nresult after ${clock(Date.now() - started)}: ${acks} verified writes of ${CHUNK / 1024} KiB ` +
      `(${(acks * CHUNK / MiB).toFixed(0)} MiB written, ${((acks * CHUNK + reads * MiB) / MiB).toFixed(0)} MiB read), ${errors} I/O errors\n`);
    process.stdout.write(`  image: ${problems.length === 0 ? 'every region holds exactly its last writes (host file and guest read-back agree)' : problems.join('; ')}\n`);
    process.stdout.write(`  daemon memory after ${(warmUp / 1000).toFixed(0)} s warm-up (${steady.length} samples): RssAnon slope ` +
      `${perMin >= 0 ? '+' : ''}${perMin.toFixed(1)} kB/min (fitted ${fittedGrowth >= 0 ? '+' : ''}${(fittedGrowth / 1024).toFixed(2)} MiB over ` +
      `${spanMin.toFixed(1)} min), VmRSS slope ${rssPerMin >= 0 ? '+' : ''}${rssPerMin.toFixed(1)} kB/min; fds ${fds}: ${flat ? 'FLAT' : 'GROWING'}\n`);
    // The daemon logs its request counters when it shuts down.
    await d.stop();
    const served = d.lines.filter((l) => /served \d+ requests/.test(l)).at(-1);
    if (served !== undefined) process.stdout.write(`  daemon: ${served.replace(/^.*\] /, '')}\n`);
    const ok = errors === 0 && problems.length === 0 && flat && acks > 0;
    process.stdout.write(`soak: ${ok ? 'PASS' : 'FAIL'}\n`);
    return ok ? 0 : 1;
  } finally {
    await guest?.kill();
    await daemon?.stop();
    rmSync(image, { force: true });
    cleanup();
  }
}

main().then((code) => {
  process.exitCode = code;
}, (err: unknown) => {
  process.stderr.write(`soak: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 2;
});
