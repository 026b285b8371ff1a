/**
 * The `vhost-user blk` daemon (the built CLI) as a child process, for measuring what a frontend can make it
 * hold: its open fds, its mappings and its memory, read from /proc/<pid>. Used by the resource-limit tests and
 * the known-issues reproducers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep, waitUntil } from '../helpers/tmp.js';

/** The compiled CLI (`dist/test/fuzz/` -> `dist/src/cli/main.js`). */
export const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** A running daemon. */
export class DaemonProcess {
  readonly child: ChildProcess;
  readonly socketPath: string;
  /** stderr, line by line (its log). */
  readonly lines: string[] = [];
  /** What it printed on stdout (the banner). */
  stdout = '';
  #partial = '';
  readonly exited: Promise<number | null>;

  private constructor(child: ChildProcess, socketPath: string) {
    this.child = child;
    this.socketPath = socketPath;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      const parts = (this.#partial + text).split('\n');
      this.#partial = parts.pop()!;
      this.lines.push(...parts);
    });
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (text: string) => {
      this.stdout += text;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /**
   * Start `node [nodeArgs] main.js blk --socket-path P [args]` (a 4 MiB memory disk and warn-level logging unless
   * `args` say otherwise) and wait for its socket.
   */
  static async start(socketPath: string, args: string[] = [], nodeArgs: string[] = []): Promise<DaemonProcess> {
    fs.rmSync(socketPath, { force: true });
    const all = ['blk', '--socket-path', socketPath, ...(args.some((a) => a === '--memory' || a === '--image') ? [] : ['--memory', '4M']),
      ...(args.includes('--log-level') ? [] : ['--log-level', 'warn']), ...args];
    const child = spawn(process.execPath, [...nodeArgs, CLI, ...all], { stdio: ['ignore', 'pipe', 'pipe'] });
    const d = new DaemonProcess(child, socketPath);
    // The banner comes once it listens (the socket file exists a moment earlier, between bind and listen).
    await waitUntil(() => d.stdout.includes('listening on') || child.exitCode !== null, 15_000, 'the daemon to listen');
    if (child.exitCode !== null) throw new Error(`the daemon exited: ${d.lines.join('\n')}`);
    return d;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Open fds. */
  fds(): number {
    return fs.readdirSync(`/proc/${this.pid}/fd`).length;
  }

  /** Lines of /proc/<pid>/maps naming a memfd (guest RAM, inflight areas). */
  memfdMaps(): string[] {
    return fs.readFileSync(`/proc/${this.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:'));
  }

  /** A field of /proc/<pid>/status in kB (VmRSS, RssAnon, VmSize...). */
  statusKb(field: string): number {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    if (!m) throw new Error(`no ${field} in /proc/${this.pid}/status`);
    return Number(m[1]);
  }

  /** Wait until the fd count is `n` (the daemon finished cleaning up); returns the last count seen. */
  async settleFds(n: number, timeoutMs = 5000): Promise<number> {
    const end = Date.now() + timeoutMs;
    let now = this.fds();
    while (now !== n && Date.now() < end) {
      await sleep(20);
      now = this.fds();
    }
    return now;
  }

  /** Wait until `count` log lines from index `from` on match `pattern` (the log comes through a pipe, a bit later). */
  async waitForLines(pattern: RegExp, count = 1, from = 0, timeoutMs = 5000): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    const matching = () => this.lines.slice(from).filter((l) => pattern.test(l)).length;
    while (matching() < count && Date.now() < end) await sleep(10);
    return matching() >= count;
  }

  /** SIGTERM, then SIGKILL if it lingers; resolves once it is gone. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}
