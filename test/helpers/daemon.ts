/**
 * Runs a `vhost-user <device>` daemon (the built CLI, `dist/src/cli/main.js`) as a child process for tests: start
 * it, wait until it is ready, read its output, stop it with a signal or SIGKILL, and inspect its /proc entries
 * (open fds, mappings). Every daemon started here is killed when its test ends, whatever happens, and also if the
 * test process dies (`setpriv --pdeathsig KILL`, plus an exit hook).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { findExecutable } from '../guest/host.js';

/** The compiled CLI next to this compiled file (`dist/test/helpers/daemon.js` -> `dist/src/cli/main.js`). */
export const CLI_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

/** How the daemon ended. */
export interface DaemonExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

const TAIL_LINES = 40;
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** How to start a daemon with {@link VhostDaemon.start}. */
export interface StartOptions<O> {
  /** What the test started it with, kept on the daemon (`options`). */
  options: O;
  /** Wait until this appears in its output (e.g. that it listens); not at all when undefined. */
  ready?: RegExp;
  timeoutMs?: number;
  /** Working directory of the daemon (the test's own by default). */
  cwd?: string;
}

/** A running (or finished) `vhost-user <device>` process; `options` is what the test started it with. */
export class VhostDaemon<O = undefined> {
  readonly options: O;
  readonly command: readonly string[];
  readonly #child: ChildProcess;
  #output = '';
  #stdout = '';
  #stderr = '';
  #exit: DaemonExit | undefined;
  readonly #waiters = new Set<() => void>();
  /** Settles when the process has exited (never rejects). */
  readonly exited: Promise<DaemonExit>;

  private constructor(options: O, command: string[], child: ChildProcess) {
    this.options = options;
    this.command = command;
    this.#child = child;
    const append = (chunk: Buffer, stderr: boolean): void => {
      const text = chunk.toString('utf8');
      this.#output += text;
      if (stderr) this.#stderr += text;
      else this.#stdout += text;
      for (const w of [...this.#waiters]) w();
    };
    child.stdout!.on('data', (chunk: Buffer) => append(chunk, false));
    child.stderr!.on('data', (chunk: Buffer) => append(chunk, true));
    this.exited = new Promise<DaemonExit>((resolve) => {
      // 'close': the output pipes are drained by then.
      child.on('close', (code, signal) => {
        live.delete(child);
        this.#exit = { code, signal };
        for (const w of [...this.#waiters]) w();
        resolve(this.#exit);
      });
      child.on('error', (err) => {
        live.delete(child);
        this.#output += `\n[spawn error: ${err.message}]\n`;
        this.#exit ??= { code: null, signal: null };
        for (const w of [...this.#waiters]) w();
        resolve(this.#exit);
      });
    });
  }

  /**
   * Starts `vhost-user ...args` and waits for `start.ready` in its output, if given. It is SIGKILLed when `t`
   * ends. Rejects, with the daemon's output, if it exits or `ready` does not appear within `timeoutMs`.
   */
  static async start<O>(t: TestContext, args: readonly string[], start: StartOptions<O>): Promise<VhostDaemon<O>> {
    const daemon = VhostDaemon.spawn(args, start);
    t.after(() => daemon.kill());
    await daemon.#ready(start);
    return daemon;
  }

  /**
   * Like {@link start}, for a caller that kills the daemon itself (it is still SIGKILLed if the test process
   * exits first).
   */
  static async run<O>(args: readonly string[], start: StartOptions<O>): Promise<VhostDaemon<O>> {
    const daemon = VhostDaemon.spawn(args, start);
    await daemon.#ready(start);
    return daemon;
  }

  private static spawn<O>(args: readonly string[], start: StartOptions<O>): VhostDaemon<O> {
    const node = process.execPath;
    const setpriv = findExecutable('setpriv');
    const base = [node, CLI_PATH, ...args];
    const command = setpriv === null ? base : [setpriv, '--pdeathsig', 'KILL', '--', ...base];
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on('exit', () => {
        for (const c of live) c.kill('SIGKILL');
      });
    }
    const child = spawn(command[0]!, command.slice(1), { cwd: start.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    return new VhostDaemon(start.options, command, child);
  }

  async #ready(start: StartOptions<O>): Promise<void> {
    if (start.ready === undefined) return;
    try {
      await this.waitForOutput(start.ready, start.timeoutMs ?? 30_000);
    } catch (err) {
      await this.kill();
      throw err;
    }
  }

  /** Process id (setpriv execs the daemon, so this is node's pid). */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** Everything it printed so far (stdout and stderr interleaved). */
  get output(): string {
    return this.#output;
  }

  /** What it printed on stdout so far. */
  get stdout(): string {
    return this.#stdout;
  }

  /** What it printed on stderr so far (its log). */
  get stderr(): string {
    return this.#stderr;
  }

  /** The exit status, once it has exited. */
  get exitStatus(): DaemonExit | undefined {
    return this.#exit;
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /**
   * Resolves with the first match of `pattern` in the output from index `from` on. Rejects with the output
   * tail if the daemon exits first or `timeoutMs` passes.
   */
  waitForOutput(pattern: RegExp, timeoutMs = 30_000, from = 0): Promise<RegExpExecArray> {
    const re = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const m = re.exec(this.#output.slice(from));
        if (m !== null) {
          m.index += from;
          done();
          resolve(m);
        } else if (this.#exit !== undefined) {
          done();
          reject(new Error(`daemon exited (${describeExit(this.#exit)}) before ${pattern} appeared\n${this.describe()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${pattern} did not appear in the daemon's output within ${timeoutMs} ms\n${this.describe()}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** Sends `signal` (SIGTERM by default) and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<DaemonExit> {
    if (this.#exit === undefined) this.#child.kill(signal);
    return this.exited;
  }

  /** Sends SIGKILL and waits for the exit (idempotent). */
  async kill(): Promise<DaemonExit> {
    if (this.#exit === undefined) this.#child.kill('SIGKILL');
    return this.exited;
  }

  /** Number of open file descriptors, from /proc. */
  fdCount(): number {
    return readdirSync(`/proc/${this.pid}/fd`).length;
  }

  /** The memfd mappings in /proc/<pid>/maps (guest RAM, inflight areas), one line per mapping. */
  memfdMappings(): string[] {
    return readFileSync(`/proc/${this.pid}/maps`, 'utf8')
      .split('\n')
      .filter((l) => l.includes('/memfd:'));
  }

  /** Command line and the last lines of output, for assertion messages. */
  describe(): string {
    const lines = this.#output.split('\n');
    if (lines.at(-1) === '') lines.pop();
    return (
      `daemon: ${this.command.join(' ')}\n--- last ${Math.min(lines.length, TAIL_LINES)} of ${lines.length} daemon lines ---\n` +
      `${lines.slice(-TAIL_LINES).join('\n')}\n--- end of daemon output ---`
    );
  }
}

function describeExit(e: DaemonExit): string {
  return e.signal === null ? `code ${e.code}` : `signal ${e.signal}`;
}
