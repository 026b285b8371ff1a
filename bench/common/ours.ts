/**
 * Our daemons as benchmark backends: `vhost-user blk` and `vhost-user scsi` started as child processes, with the
 * settings a run compares (`--poll-us`, `--workers`), one set per variant.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BenchDaemon } from './daemon.js';
import { cliPath } from './paths.js';

/** Which of our daemons. */
export type OursKind = 'blk' | 'scsi';

/** `--workers`: a count, or one worker per queue of the case. */
export type WorkersSetting = number | 'queues';

/** Settings passed to our daemon; an unset one is not passed (the daemon's default applies). */
export interface OursSettings {
  pollUs?: number;
  workers?: WorkersSetting;
}

/** A named set of settings: one column of the table. */
export interface OursVariant extends OursSettings {
  /** `ours`, or `ours-poll50-w2` style when variants are compared. */
  label: string;
}

function parseWorkers(v: string, what: string): WorkersSetting {
  if (v === 'queues') return 'queues';
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 256) throw new Error(`${what}: '${v}' is not a worker count (0..256) or 'queues'`);
  return n;
}

function parsePollUs(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 1_000_000) throw new Error(`${what}: '${v}' is not a number of microseconds`);
  return n;
}

/** The label of a variant: what differs from the daemon's defaults, e.g. `poll50-w2` (empty when nothing does). */
export function settingsLabel(s: OursSettings): string {
  const parts: string[] = [];
  if (s.pollUs !== undefined) parts.push(`poll${s.pollUs}`);
  if (s.workers !== undefined) parts.push(`w${s.workers === 'queues' ? 'q' : s.workers}`);
  return parts.join('-');
}

/**
 * The variants of our daemon a run drives. `base` comes from `--poll-us`/`--workers`; each `--variant SPEC`
 * (`poll-us=N,workers=N|queues`, keys optional) overrides it. Without variants there is one, labelled `prefix`.
 */
export function parseVariants(base: { pollUs?: string; workers?: string }, specs: readonly string[] | undefined, prefix = 'ours'): OursVariant[] {
  const settings: OursSettings = {};
  if (base.pollUs !== undefined) settings.pollUs = parsePollUs(base.pollUs, '--poll-us');
  if (base.workers !== undefined) settings.workers = parseWorkers(base.workers, '--workers');
  if (!specs?.length) return [{ label: prefix, ...settings }];
  const variants: OursVariant[] = [];
  for (const spec of specs) {
    const v: OursSettings = { ...settings };
    for (const item of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [key, value, ...rest] = item.split('=');
      if (value === undefined || rest.length) throw new Error(`--variant ${spec}: '${item}' is not KEY=VALUE`);
      if (key === 'poll-us') v.pollUs = parsePollUs(value, `--variant ${spec}`);
      else if (key === 'workers') v.workers = parseWorkers(value, `--variant ${spec}`);
      else throw new Error(`--variant ${spec}: unknown key '${key}' (poll-us, workers)`);
    }
    const suffix = settingsLabel(v);
    const label = suffix ? `${prefix}-${suffix}` : prefix;
    if (variants.some((x) => x.label === label)) throw new Error(`--variant ${spec}: the same settings as another variant (${label})`);
    variants.push({ label, ...v });
  }
  return variants;
}

/** The daemon arguments for settings on a case with `queues` queues. */
export function settingsArgs(s: OursSettings, queues: number): string[] {
  const a: string[] = [];
  if (s.pollUs !== undefined) a.push('--poll-us', String(s.pollUs));
  if (s.workers !== undefined) a.push('--workers', String(s.workers === 'queues' ? queues : s.workers));
  return a;
}

/** Is our daemon built (dist/src/cli/main.js with the command)? Returns why not, or undefined. */
export function oursUnavailable(kind: OursKind): string | undefined {
  if (!fs.existsSync(cliPath)) return `${path.relative(process.cwd(), cliPath)} is missing (run npx tsc -p tsconfig.json)`;
  const r = spawnSync(process.execPath, [cliPath, kind, '--help'], { encoding: 'utf8', timeout: 15_000 });
  if (r.status !== 0) return `'vhost-user ${kind}' is not available: ${(r.stderr || r.stdout).trim().split('\n')[0]}`;
  return undefined;
}

/** How to start one of our daemons for one case. */
export interface OursOptions extends OursSettings {
  socketPath: string;
  /** Disk size in bytes (a null disk), unless `image` is given. */
  size: number;
  /** Serve this image file instead of a null disk. */
  image?: string;
  queues: number;
  /** Write a V8 CPU profile (`node --cpu-prof`) into this directory. */
  cpuProfileDir?: string;
}

/** Start `vhost-user blk` (a null disk or `--image`) or `vhost-user scsi` (one LUN: `null:SIZE` or the image). */
export function startOurs(kind: OursKind, o: OursOptions): Promise<BenchDaemon> {
  const node = o.cpuProfileDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfileDir] : [];
  const disk = kind === 'blk'
    ? (o.image ? ['--image', o.image] : ['--null', String(o.size)])
    // A comma in a LUN path is written twice.
    : ['--lun', o.image ? o.image.replace(/,/g, ',,') : `null:${o.size}`];
  return BenchDaemon.start({
    name: `vhost-user ${kind}`,
    command: process.execPath,
    args: [...node, cliPath, kind, '--socket-path', o.socketPath, ...disk, '--num-queues', String(o.queues),
      ...settingsArgs(o, o.queues), '--log-level', 'warn'],
    socketPath: o.socketPath,
  });
}
