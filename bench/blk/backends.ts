/**
 * The two backends the benchmark compares, both on a null disk: our `vhost-user blk --null` and
 * qemu-storage-daemon's vhost-user-blk export of a `null-co` node.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BenchDaemon } from '../common/daemon.js';
import { cliPath } from '../common/paths.js';

export type BackendName = 'ours' | 'qsd';

/** How to start a backend for one case. */
export interface BackendOptions {
  socketPath: string;
  /** Disk size in bytes. */
  size: number;
  queues: number;
  /** ours only: write a V8 CPU profile (`node --cpu-prof`) into this directory. */
  cpuProfileDir?: string;
}

/** Is our blk daemon built (dist/src/cli/main.js with the `blk` command)? Returns why not, or undefined. */
export function oursUnavailable(): string | undefined {
  if (!fs.existsSync(cliPath)) return `${path.relative(process.cwd(), cliPath)} is missing (run npx tsc -p tsconfig.json)`;
  const r = spawnSync(process.execPath, [cliPath, 'blk', '--help'], { encoding: 'utf8', timeout: 15_000 });
  if (r.status !== 0) return `'vhost-user blk' is not available: ${(r.stderr || r.stdout).trim().split('\n')[0]}`;
  return undefined;
}

/** Is qemu-storage-daemon installed? Returns why not, or undefined. */
export function qsdUnavailable(): string | undefined {
  const r = spawnSync('qemu-storage-daemon', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'qemu-storage-daemon is not installed (apt-get install qemu-system-common)';
}

/** Start our daemon on a null disk. */
export function startOurs(o: BackendOptions): Promise<BenchDaemon> {
  const node = o.cpuProfileDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfileDir] : [];
  return BenchDaemon.start({
    name: 'vhost-user blk',
    command: process.execPath,
    args: [...node, cliPath, 'blk', '--socket-path', o.socketPath, '--null', String(o.size), '--num-queues', String(o.queues),
      '--log-level', 'warn'],
    socketPath: o.socketPath,
  });
}

/** Start qemu-storage-daemon exporting a null-co node. */
export function startQsd(o: BackendOptions): Promise<BenchDaemon> {
  return BenchDaemon.start({
    name: 'qemu-storage-daemon',
    command: 'qemu-storage-daemon',
    args: [
      '--blockdev', `driver=null-co,node-name=n0,size=${o.size}`,
      '--export', `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${o.socketPath},writable=on,num-queues=${o.queues}`,
    ],
    socketPath: o.socketPath,
  });
}

/** Start one of the two. */
export function startBackend(name: BackendName, o: BackendOptions): Promise<BenchDaemon> {
  return name === 'ours' ? startOurs(o) : startQsd(o);
}
