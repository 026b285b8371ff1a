/**
 * A backend daemon run as a child process for a benchmark: started, awaited until its socket exists, and
 * stopped with SIGTERM (SIGKILL if it hangs). Output is kept for error messages.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/** Options for {@link BenchDaemon.start}. */
export interface DaemonSpec {
  /** Label for messages. */
  name: string;
  command: string;
  args: string[];
  /** The vhost-user socket the daemon listens on. */
  socketPath: string;
  /** How long to wait for the socket (default 15 s). */
  startTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** A running daemon. */
export class BenchDaemon {
  readonly name: string;
  readonly child: ChildProcess;
  readonly socketPath: string;
  output = '';

  private constructor(name: string, child: ChildProcess, socketPath: string) {
    this.name = name;
    this.child = child;
    this.socketPath = socketPath;
    const keep = (d: Buffer): void => {
      this.output = (this.output + d.toString()).slice(-16_384);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  /** Its pid (for /proc/<pid>/stat). */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** Start it and wait until its socket appears; throws with its output if it exits first. */
  static async start(spec: DaemonSpec): Promise<BenchDaemon> {
    fs.rmSync(spec.socketPath, { force: true });
    const child = spawn(spec.command, spec.args, { stdio: ['ignore', 'pipe', 'pipe'], env: spec.env ?? process.env });
    const daemon = new BenchDaemon(spec.name, child, spec.socketPath);
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const deadline = Date.now() + (spec.startTimeoutMs ?? 15_000);
    let failure: Error | undefined;
    void spawnError.then((e) => (failure = e));
    while (!fs.existsSync(spec.socketPath)) {
      if (failure) throw new Error(`${spec.name}: ${failure.message}`);
      if (daemon.exited) throw new Error(`${spec.name} exited before listening: ${daemon.output.trim()}`);
      if (Date.now() > deadline) {
        await daemon.stop();
        throw new Error(`${spec.name} did not create ${spec.socketPath}: ${daemon.output.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return daemon;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
}

/** utime + stime of a whole process in seconds, from /proc/<pid>/stat (clock ticks of 1/100 s on Linux). */
export function processCpuSeconds(pid: number, clockTicks = 100): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may contain spaces: count fields after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}
