/**
 * Boots a Linux guest under QEMU (TCG) for end-to-end tests: serial console
 * on stdio, guest RAM in a shared memfd (vhost-user backends must map it),
 * and the `GUEST-EXIT <code>` marker from our /init turned into a result.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { StringDecoder } from 'node:string_decoder';
import type { TestContext } from 'node:test';
import { findExecutable, missingGuestPrerequisites, QEMU_BINARY } from './host.js';
import { GUEST_MARKERS, type InitramfsOptions, buildInitramfs } from './initramfs.js';
import { guestKernelImage } from './kernel.js';

/** How to boot the guest. */
export interface BootOptions {
  /** Path from {@link buildInitramfs}. */
  readonly initramfs: string;
  /** Guest RAM in MiB (memfd-backed, shared); default 512. */
  readonly memoryMiB?: number;
  /** vCPUs; default 1. */
  readonly smp?: number;
  /** Appended to QEMU's command line (devices, chardevs, ...). */
  readonly extraArgs?: readonly string[];
  /** Kill QEMU if it has not exited after this long; default 120 000 ms. */
  readonly timeoutMs?: number;
  /** Machine type; default `pc` (boots fastest here; vhost-user PCI devices work on it). */
  readonly machine?: 'pc' | 'q35';
  /**
   * Extra kernel command-line words, after the harness defaults. Module
   * parameters are written `<module>.<param>=<value>` (init passes them to insmod).
   */
  readonly append?: string;
  /**
   * Called with console text as it arrives (`\r` removed). Without it, setting
   * `VHOST_USER_GUEST_CONSOLE=1` copies the console to stderr, for debugging.
   */
  readonly onOutput?: (text: string) => void;
  /** If given, QEMU is killed when this test ends (via `t.after`), whatever the outcome. */
  readonly testContext?: TestContext;
}

/** How a guest run ended. */
export interface GuestExit {
  /** The code from `GUEST-EXIT <code>`, or null if the marker never appeared. */
  readonly guestExitCode: number | null;
  /** QEMU's own exit status (null if killed by a signal). */
  readonly qemuExitCode: number | null;
  readonly qemuSignal: NodeJS.Signals | null;
  /** True if the harness killed QEMU (kill(), timeout, or no poweroff after the marker). */
  readonly killed: boolean;
  /** Full serial console output, `\r` removed. */
  readonly output: string;
  /** QEMU's stderr (its own error messages). */
  readonly stderr: string;
  /** Milliseconds from spawning QEMU until it exited. */
  readonly elapsedMs: number;
}

/** A guest-related failure; the message carries the tail of the console and QEMU's stderr. */
export class GuestError extends Error {
  override readonly name: string = 'GuestError';
  readonly output: string;
  readonly stderr: string;
  constructor(message: string, output: string, stderr: string) {
    super(`${message}\n${describeTail(output, stderr)}`);
    this.output = output;
    this.stderr = stderr;
  }
}

/** Thrown (as the rejection of `exited`) when the overall boot timeout fires. */
export class GuestTimeoutError extends GuestError {
  override readonly name: string = 'GuestTimeoutError';
}

/** A running guest. */
export interface Guest {
  /** PID of the QEMU process. */
  readonly pid: number;
  /** The exact QEMU command line, for error reports. */
  readonly command: readonly string[];
  /** Console output so far (`\r` removed). */
  readonly output: string;
  /** QEMU's stderr so far. */
  readonly stderr: string;
  /**
   * Settles when QEMU exits: resolves with the result (also after kill()),
   * rejects with {@link GuestTimeoutError} on timeout or a spawn error.
   * Rejections are pre-handled, so ignoring this promise is safe.
   */
  readonly exited: Promise<GuestExit>;
  /**
   * Resolves with the first match of `pattern` in the output from index
   * `from` on (default 0: the whole output, so a match that already happened
   * counts). Rejects with a {@link GuestError} when `timeoutMs` (default 60 s)
   * passes or QEMU exits first.
   */
  waitFor(pattern: RegExp, timeoutMs?: number, from?: number): Promise<RegExpExecArray>;
  /** Terminates QEMU (SIGTERM, SIGKILL after 3 s); resolves once it is gone. Idempotent. */
  kill(): Promise<void>;
}

/** Default kernel command line. Quiet serial output is much faster under TCG. */
const BASE_APPEND = [
  'console=ttyS0',
  'panic=-1', // reboot at once on panic; with -no-reboot QEMU then exits
  'quiet',
  'mitigations=off', // less boot-time patching under TCG
  'i8042.noaux',
  'i8042.nokbd',
  '8250.nr_uarts=1',
  'cryptomgr.notests',
  'scsi_mod.scan=sync', // SCSI disks exist when /test.sh starts
].join(' ');

const TAIL_LINES = 60;
/** After `GUEST-EXIT`, QEMU should power off promptly; kill it if not. */
const POWEROFF_GRACE_MS = 15_000;
const KILL_GRACE_MS = 3_000;

function describeTail(output: string, stderr: string): string {
  const lines = output.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const tail = lines.slice(-TAIL_LINES).join('\n');
  const err = stderr.trim();
  return (
    `--- last ${Math.min(lines.length, TAIL_LINES)} of ${lines.length} console lines ---\n${tail}\n--- end of console ---` +
    (err === '' ? '' : `\n--- QEMU stderr ---\n${err.split('\n').slice(-20).join('\n')}\n--- end of stderr ---`)
  );
}

/** Every live QEMU, so none outlives this process even if a test forgets to kill it. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

/** Finds the `GUEST-EXIT <code>` marker (last one wins: it is printed once, by init, at the end). */
export function parseGuestExit(output: string): number | null {
  const re = new RegExp(`^${GUEST_MARKERS.exit} (\\d+)$`, 'gm');
  let code: number | null = null;
  for (const m of output.matchAll(re)) code = Number(m[1]);
  return code;
}

/** Starts QEMU with the given initramfs; see {@link BootOptions}. */
export async function bootGuest(options: BootOptions): Promise<Guest> {
  const qemu = findExecutable(QEMU_BINARY);
  if (qemu === null) throw new Error(`bootGuest: ${QEMU_BINARY} not found in PATH (apt-get install qemu-system-x86)`);
  const image = await guestKernelImage();
  const memoryMiB = options.memoryMiB ?? 512;
  const smp = options.smp ?? 1;
  const timeoutMs = options.timeoutMs ?? 120_000;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 64) throw new RangeError(`bootGuest: memoryMiB must be an integer >= 64`);
  if (!Number.isInteger(smp) || smp < 1) throw new RangeError(`bootGuest: smp must be a positive integer`);

  const args = [
    '-accel', 'tcg', // KVM hangs the guest on this machine
    '-machine', `${options.machine ?? 'pc'},memory-backend=mem`,
    // vhost-user backends mmap guest RAM: it must be a shared, fd-backed object.
    '-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`,
    '-m', `${memoryMiB}M`,
    '-smp', String(smp),
    '-nodefaults', '-no-user-config', // no VGA, NIC, floppy, CD-ROM: less to probe
    '-display', 'none',
    '-serial', 'stdio',
    '-monitor', 'none',
    '-no-reboot',
    '-kernel', image.path,
    '-initrd', options.initramfs,
    '-append', options.append === undefined ? BASE_APPEND : `${BASE_APPEND} ${options.append}`,
    ...(options.extraArgs ?? []),
  ];
  // setpriv makes the kernel kill QEMU if this process dies without cleanup (e.g. SIGKILL).
  const setpriv = findExecutable('setpriv');
  const command = setpriv === null ? [qemu, ...args] : [setpriv, '--pdeathsig', 'KILL', '--', qemu, ...args];

  installExitHook();
  const started = Date.now();
  const child = spawn(command[0]!, command.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(child);

  let output = '';
  let stderr = '';
  let killed = false;
  let done = false;
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const waiters = new Set<() => void>();
  const exitListeners = new Set<() => void>();
  let poweroffTimer: NodeJS.Timeout | undefined;

  const onOutput =
    options.onOutput ??
    (process.env['VHOST_USER_GUEST_CONSOLE'] === '1' ? (text: string) => void process.stderr.write(text) : undefined);
  const stdoutDecoder = new StringDecoder('utf8');
  const onStdout = (text: string): void => {
    const clean = text.replace(/\r/g, '');
    if (clean === '') return;
    output += clean;
    onOutput?.(clean);
    if (poweroffTimer === undefined && parseGuestExit(output) !== null) {
      poweroffTimer = setTimeout(() => void kill(), POWEROFF_GRACE_MS);
      poweroffTimer.unref();
    }
    for (const w of [...waiters]) w();
  };
  child.stdout!.on('data', (chunk: Buffer) => onStdout(stdoutDecoder.write(chunk)));
  child.stdout!.on('end', () => onStdout(stdoutDecoder.end()));
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (text: string) => {
    stderr += text;
  });
  // The guest does not read the console; keep stdin open but ignore EPIPE on exit.
  child.stdin!.on('error', () => undefined);

  let resolveExited!: (r: GuestExit) => void;
  let rejectExited!: (e: Error) => void;
  const exited = new Promise<GuestExit>((resolve, reject) => {
    resolveExited = resolve;
    rejectExited = reject;
  });
  exited.catch(() => undefined);

  let timedOut = false;
  const timeout = setTimeout(() => {
    if (done) return;
    timedOut = true;
    void kill();
  }, timeoutMs);

  const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
    if (done) return;
    done = true;
    exitInfo = { code, signal };
    live.delete(child);
    clearTimeout(timeout);
    if (poweroffTimer !== undefined) clearTimeout(poweroffTimer);
    if (timedOut) {
      rejectExited(
        new GuestTimeoutError(
          `guest did not finish within ${timeoutMs} ms (QEMU pid ${child.pid} killed); command: ${command.join(' ')}`,
          output,
          stderr,
        ),
      );
    } else {
      resolveExited({
        guestExitCode: parseGuestExit(output),
        qemuExitCode: code,
        qemuSignal: signal,
        killed,
        output,
        stderr,
        elapsedMs: Date.now() - started,
      });
    }
    for (const l of [...exitListeners]) l();
    for (const w of [...waiters]) w();
  };
  // 'close' (not 'exit'): all console output has been read by then.
  child.on('close', (code, signal) => finish(code, signal));
  child.on('error', (err) => {
    if (done) return;
    done = true;
    live.delete(child);
    clearTimeout(timeout);
    rejectExited(new GuestError(`cannot start ${command[0]}: ${err.message}`, output, stderr));
    for (const l of [...exitListeners]) l();
    for (const w of [...waiters]) w();
  });

  const kill = (): Promise<void> => {
    if (done) return Promise.resolve();
    killed = true;
    return new Promise<void>((resolve) => {
      exitListeners.add(resolve);
      child.kill('SIGTERM');
      const hard = setTimeout(() => {
        if (!done) child.kill('SIGKILL');
      }, KILL_GRACE_MS);
      hard.unref();
    });
  };

  const waitFor = (pattern: RegExp, waitMs = 60_000, from = 0): Promise<RegExpExecArray> => {
    const re = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    return new Promise<RegExpExecArray>((resolve, reject) => {
      const check = (): void => {
        const m = re.exec(output.slice(from));
        if (m !== null) {
          m.index += from;
          cleanup();
          resolve(m);
        } else if (done) {
          cleanup();
          const how = exitInfo === null ? 'failed to start' : `exited (code ${exitInfo.code}, signal ${exitInfo.signal})`;
          reject(new GuestError(`QEMU ${how} before ${pattern} appeared`, output, stderr));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new GuestError(`${pattern} did not appear within ${waitMs} ms`, output, stderr));
      }, waitMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  };

  const guest: Guest = {
    pid: child.pid ?? -1,
    command,
    get output() {
      return output;
    },
    get stderr() {
      return stderr;
    },
    exited,
    waitFor,
    kill,
  };
  options.testContext?.after(() => guest.kill());
  return guest;
}

/** Options for {@link runGuest}: what to run, and how to boot. */
export type RunGuestOptions = InitramfsOptions & Omit<BootOptions, 'initramfs'>;

/**
 * Builds an initramfs for `script`, boots it and waits for QEMU to exit.
 * Resolves with the result (check `guestExitCode`); throws a
 * {@link GuestError} if QEMU exited without the `GUEST-EXIT` marker, or on timeout.
 */
export async function runGuest(options: RunGuestOptions): Promise<GuestExit> {
  const initramfs = await buildInitramfs(options);
  const guest = await bootGuest({ ...options, initramfs });
  try {
    const result = await guest.exited;
    if (result.guestExitCode === null) {
      throw new GuestError(
        `QEMU exited (code ${result.qemuExitCode}, signal ${result.qemuSignal}) without ${GUEST_MARKERS.exit}; command: ${guest.command.join(' ')}`,
        result.output,
        result.stderr,
      );
    }
    return result;
  } finally {
    await guest.kill();
  }
}

/**
 * For tests that boot a guest: returns true if QEMU, a kernel and a static
 * busybox are present; otherwise skips the test with a message naming what is
 * missing and returns false (`if (!requireQemu(t)) return;`). With
 * `VHOST_USER_REQUIRE_QEMU=1` a missing tool fails the test instead.
 */
export function requireQemu(t: TestContext): boolean {
  const missing = missingGuestPrerequisites();
  if (missing.length === 0) return true;
  const message = `guest tests need: ${missing.join('; ')}`;
  if (process.env['VHOST_USER_REQUIRE_QEMU'] === '1') throw new Error(`${message} (VHOST_USER_REQUIRE_QEMU=1)`);
  t.diagnostic(`SKIPPED: ${message}`);
  t.skip(message);
  return false;
}
