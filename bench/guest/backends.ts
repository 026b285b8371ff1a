/**
 * The two vhost-user-blk backends the guest benchmark compares, started as child processes on the same kind of
 * disk: our daemon (`dist/src/cli/main.js blk`) and qemu-storage-daemon's `vhost-user-blk` export. Also the
 * /proc readings the report uses (process CPU time, machine-wide busy time).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findExecutable } from '../../test/guest/host.js';
import type { BackendName } from './workloads.js';

/** The compiled CLI (`dist/bench/guest/backends.js` -> `dist/src/cli/main.js`). */
export const CLI_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** What both backends serve. */
export interface DiskSpec {
  /** `file`: a raw image (each backend its own copy, same content); `null`: nothing stored. */
  readonly kind: 'file' | 'null';
  readonly size: number;
  /** The image, for `file`. */
  readonly image?: string;
  readonly queues: number;
}

/** Options only our daemon takes; passed only when given. */
export interface OursOptions {
  readonly serial: string;
  readonly pollUs?: number;
  readonly workers?: number;
}

/** The exact command line of a backend. */
export function backendCommand(name: BackendName, socketPath: string, disk: DiskSpec, ours: OursOptions): string[] {
  if (name === 'ours') {
    const storage = disk.kind === 'file' ? ['--image', disk.image!] : ['--null', String(disk.size)];
    return [
      process.execPath, CLI_PATH, 'blk', '--socket-path', socketPath, ...storage, '--num-queues', String(disk.queues),
      '--serial', ours.serial, '--log-level', 'warn',
      ...(ours.pollUs === undefined ? [] : ['--poll-us', String(ours.pollUs)]),
      ...(ours.workers === undefined ? [] : ['--workers', String(ours.workers)]),
    ];
  }
  // The file driver with the host page cache (cache.direct=off, the default), like our daemon's buffered I/O.
  const node = disk.kind === 'file'
    ? `driver=file,node-name=d0,filename=${disk.image!}`
    : `driver=null-co,node-name=d0,size=${disk.size}`;
  return [
    'qemu-storage-daemon', '--blockdev', node,
    '--export', `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${socketPath},writable=on,num-queues=${disk.queues}`,
  ];
}

/** Why our daemon cannot run, or undefined. */
export function oursUnavailable(): string | undefined {
  if (!fs.existsSync(CLI_PATH)) return `${CLI_PATH} is missing (build first: npx tsc -p tsconfig.json)`;
  const r = spawnSync(process.execPath, [CLI_PATH, 'blk', '--help'], { encoding: 'utf8', timeout: 15_000 });
  if (r.status !== 0) return `'vhost-user blk --help' failed: ${(r.stderr || r.stdout || String(r.error)).trim().split('\n')[0]}`;
  return undefined;
}

/** Why qemu-storage-daemon cannot run, or undefined. */
export function qsdUnavailable(): string | undefined {
  if (findExecutable('qemu-storage-daemon') === null) return 'qemu-storage-daemon is not installed (apt-get install qemu-system-common)';
  return undefined;
}

/** A running backend. */
export class Backend {
  readonly name: BackendName;
  readonly command: readonly string[];
  readonly socketPath: string;
  readonly #child: ChildProcess;
  #output = '';
  #exited = false;
  readonly #exit: Promise<void>;

  private constructor(name: BackendName, command: string[], socketPath: string, child: ChildProcess) {
    this.name = name;
    this.command = command;
    this.socketPath = socketPath;
    this.#child = child;
    const keep = (d: Buffer): void => {
      this.#output = (this.#output + d.toString('utf8')).slice(-16_384);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.#exit = new Promise((resolve) => {
      child.once('close', () => {
        this.#exited = true;
        live.delete(this);
        resolve();
      });
      child.once('error', (err) => {
        this.#output += `\n[spawn error: ${err.message}]`;
        this.#exited = true;
        live.delete(this);
        resolve();
      });
    });
  }

  /**
   * Starts the backend and waits until its socket exists. Rejects with its output if it exits first or does
   * not listen within `timeoutMs`.
   */
  static async start(name: BackendName, socketPath: string, disk: DiskSpec, ours: OursOptions, timeoutMs = 20_000): Promise<Backend> {
    fs.rmSync(socketPath, { force: true });
    const command = backendCommand(name, socketPath, disk, ours);
    // setpriv: the kernel kills the daemon if this process dies without cleaning up.
    const setpriv = findExecutable('setpriv');
    const argv = setpriv === null ? command : [setpriv, '--pdeathsig', 'KILL', '--', ...command];
    installExitHook();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    const backend = new Backend(name, command, socketPath, child);
    live.add(backend);
    const deadline = Date.now() + timeoutMs;
    while (!fs.existsSync(socketPath)) {
      if (backend.#exited) throw new Error(`${name} (${command.join(' ')}) exited before listening:\n${backend.output.trim()}`);
      if (Date.now() > deadline) {
        await backend.stop();
        throw new Error(`${name} did not create ${socketPath} within ${timeoutMs} ms:\n${backend.output.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return backend;
  }

  /** Its pid (setpriv execs the daemon, so this is the daemon's own). */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  get exited(): boolean {
    return this.#exited;
  }

  /** The last 16 KiB it printed. */
  get output(): string {
    return this.#output;
  }

  /** SIGTERM, SIGKILL after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.#exited) return;
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), graceMs);
    await this.#exit;
    clearTimeout(timer);
  }

  /** SIGKILL (for emergencies). */
  killNow(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }
}

const live = new Set<Backend>();
let hookInstalled = false;

function installExitHook(): void {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const b of live) b.killNow();
  });
}

let clockTicks: number | undefined;

/** `getconf CLK_TCK` (100 on Linux almost always). */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number(r.stdout?.trim());
    clockTicks = r.status === 0 && Number.isInteger(n) && n > 0 ? n : 100;
  }
  return clockTicks;
}

/**
 * utime + stime of a process and all its threads (live or exited) in seconds, from /proc/<pid>/stat;
 * NaN when the process is gone.
 */
export function processCpuSeconds(pid: number): number {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return Number.NaN;
  }
  // comm (field 2) may contain spaces and ')': the fields after the last ')' start at field 3 (state).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / ticksPerSecond();
}

/** Busy CPU time of the whole machine so far, in seconds (all CPUs; from the first line of /proc/stat). */
export function machineBusySeconds(): number {
  const first = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const v = first.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already included in user)
  const busy = (v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0) + (v[5] ?? 0) + (v[6] ?? 0) + (v[7] ?? 0);
  return busy / ticksPerSecond();
}
