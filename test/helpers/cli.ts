/**
 * The `vhost-user` CLI in child processes, for the daemons' CLI tests: run a command to completion, keep a
 * daemon running until the test is done with it, talk to its monitor socket.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled CLI entry point. */
export const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

/** Run the CLI to completion. */
export function runCli(args: string[], cwd?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { cwd, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** A `vhost-user <device>` daemon running in a child process. */
export class CliDaemon {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(device: string, args: string[], cwd?: string) {
    this.child = spawn(process.execPath, [MAIN, device, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => (this.stdout += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Resolves once the daemon printed its start-up line (it listens by then). */
  async started(): Promise<void> {
    const end = Date.now() + 20_000;
    while (!this.stdout.includes('Attach QEMU with:')) {
      if (this.child.exitCode !== null) throw new Error(`daemon exited: ${this.stderr}`);
      if (Date.now() > end) throw new Error(`daemon did not start: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Signal it (SIGTERM by default) and resolve with its exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null) this.child.kill(signal);
    return (await this.exited).code;
  }
}

/** Start `vhost-user <device> ...args`, wait until it listens, run `fn`, and kill it if it still runs. */
export async function withCliDaemon(device: string, args: string[], fn: (d: CliDaemon) => Promise<void>,
  cwd?: string): Promise<void> {
  const d = new CliDaemon(device, args, cwd);
  try {
    await d.started();
    await fn(d);
  } finally {
    if (d.child.exitCode === null) d.child.kill('SIGKILL');
  }
}

/** Send one command to a daemon's monitor socket (`vhost-user scsi --monitor`) and resolve with its answer line. */
export function monitorCommand(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let answer = '';
    socket.on('error', reject);
    socket.on('connect', () => socket.write(command + '\n'));
    socket.on('data', (d) => {
      answer += d.toString('utf8');
      const nl = answer.indexOf('\n');
      if (nl >= 0) {
        socket.end();
        resolve(answer.slice(0, nl));
      }
    });
  });
}
