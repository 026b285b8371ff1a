/**
 * What every daemon shares: the common options (`--socket-path`, `--socket-fd`, `--client`, `--socket-mode`,
 * `--print-capabilities`, `--print-qemu`, `--log-level`), starting the {@link DeviceServer}, and a clean exit on
 * SIGINT/SIGTERM that removes the socket file it created.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DeviceServer } from '../device/server.js';
import type { VirtioDevice } from '../device/device.js';
import { logger, setLogLevel, LogLevel, type LogLevelName, type Logger } from '../util/log.js';

/** Options every daemon takes. */
export const commonOptions = {
  'socket-path': { type: 'string', short: 's' },
  'socket-fd': { type: 'string' },
  client: { type: 'boolean' },
  'socket-mode': { type: 'string' },
  'reconnect-ms': { type: 'string' },
  'poll-us': { type: 'string' },
  workers: { type: 'string' },
  'print-capabilities': { type: 'boolean' },
  'print-qemu': { type: 'boolean' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

/** Default most microseconds of adaptive polling (QEMU's AioContext polls up to 32 us by default). */
export const DEFAULT_POLL_US = 50;

export const commonHelp = `Common options:
  --socket-path PATH     vhost-user socket to listen on (or connect to, with --client)
  --socket-fd FD         use an inherited listening socket (systemd socket activation)
  --client               connect to the frontend's socket instead of listening; reconnect when it drops
  --reconnect-ms MS      delay between connection attempts in client mode (default 1000)
  --socket-mode MODE     permission bits of the socket file, octal (default 0600)
  --poll-us US           after a kick, poll the rings for up to US microseconds of idleness with kicks
                         off; the window adapts to how fast kicks come (default ${DEFAULT_POLL_US}; 0: notifications only)
  --workers N            serve the request queues on N worker threads (default 0: on the main thread);
                         queue i goes to worker i mod N
  --print-capabilities   print the backend's capabilities as JSON (vhost-user spec) and exit
  --print-qemu           print the QEMU arguments that attach this device and exit
  --log-level LEVEL      error, warn, info (default) or debug
  -h, --help             this help
`;

/** Values of the common options after parsing. */
export interface CommonValues {
  'socket-path'?: string;
  'socket-fd'?: string;
  client?: boolean;
  'socket-mode'?: string;
  'reconnect-ms'?: string;
  'poll-us'?: string;
  workers?: string;
  'print-capabilities'?: boolean;
  'print-qemu'?: boolean;
  'log-level'?: string;
  help?: boolean;
}

/** A usage error: printed with the usage line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Parse an integer option with bounds; throws {@link UsageError}. */
export function intOption(value: string | undefined, name: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}, got '${value}'`);
  return n;
}

/** Parse a size like 512M, 1G, 4096, 64K (binary units). */
export function sizeOption(value: string, name: string): number {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(value.trim());
  if (!m) throw new UsageError(`--${name}: '${value}' is not a size (e.g. 512M, 2G, 4096)`);
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`--${name}: '${value}' is out of range`);
  return n;
}

/**
 * Parse a daemon's argv: the common options plus the device's. Values come back untyped per option; each
 * daemon reads its own with the accessors it expects.
 */
export function parseDaemonArgs(argv: string[], options: NonNullable<ParseArgsConfig['options']>):
  Record<string, string | boolean | (string | boolean)[] | undefined> {
  return parseArgs({ args: argv, options: { ...commonOptions, ...options }, strict: true, allowPositionals: false }).values;
}

/** What a daemon needs from its device module to run. */
export interface DaemonSpec {
  /** Command name, for messages (`blk`). */
  name: string;
  /** The device to serve. */
  device: VirtioDevice;
  /** --print-capabilities content. */
  capabilities: { type: string; features: string[] };
  /** QEMU arguments that attach the device on `socketPath` (shared memory included). */
  qemuArgs(socketPath: string): string[];
  /** Called once the server listens (print how to attach, start stats timers...). */
  started?(server: DeviceServer, log: Logger): void;
  /** Called on shutdown after the server closed (close storage...). */
  stopping?(): Promise<void> | void;
  /** Called on a stop request while the server (and its queue workers) still run: last statistics. */
  closing?(server: DeviceServer): Promise<void> | void;
}

/** Shell-quote an argument for printing a command line. */
function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Format QEMU arguments as a copy-pasteable command line. */
export function formatQemu(args: string[]): string {
  const lines: string[] = ['qemu-system-x86_64 \\'];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (a.startsWith('-') && next !== undefined && !next.startsWith('-')) {
      lines.push(`  ${a} ${quote(next)} \\`);
      i++;
    } else {
      lines.push(`  ${quote(a)} \\`);
    }
  }
  lines.push('  ...');
  return lines.join('\n');
}

/** The shared-memory arguments every vhost-user device needs on the QEMU side. */
export function qemuMemoryArgs(sizeMiB = 1024): string[] {
  return ['-object', `memory-backend-memfd,id=mem,size=${sizeMiB}M,share=on`, '-machine', 'memory-backend=mem'];
}

/**
 * Run a daemon until SIGINT/SIGTERM. Returns the exit code.
 * Handles --print-capabilities and --print-qemu before anything is opened.
 */
export async function runDaemon(values: CommonValues, spec: DaemonSpec): Promise<number> {
  const level = values['log-level'] ?? 'info';
  if (!(level in LogLevel)) throw new UsageError(`--log-level must be one of ${Object.keys(LogLevel).join(', ')}`);
  setLogLevel(level as LogLevelName);
  const log = logger(spec.name);
  const socketPath = values['socket-path'];
  if (values['print-capabilities']) {
    process.stdout.write(JSON.stringify(spec.capabilities, null, 2) + '\n');
    return 0;
  }
  if (values['print-qemu']) {
    process.stdout.write(formatQemu(spec.qemuArgs(socketPath ?? '/path/to/socket')) + '\n');
    return 0;
  }
  if ((socketPath === undefined) === (values['socket-fd'] === undefined)) {
    throw new UsageError('give exactly one of --socket-path and --socket-fd');
  }
  const socketFd = values['socket-fd'] === undefined ? undefined : intOption(values['socket-fd'], 'socket-fd', 0, 0, 1 << 20);
  if (values.client && socketPath === undefined) throw new UsageError('--client needs --socket-path');
  let socketMode: number | undefined;
  if (values['socket-mode'] !== undefined) {
    if (!/^[0-7]{3,4}$/.test(values['socket-mode'])) throw new UsageError('--socket-mode takes octal permission bits, e.g. 0660');
    socketMode = parseInt(values['socket-mode'], 8);
  }
  const server = new DeviceServer(spec.device, {
    socketPath,
    socketFd,
    client: values.client ?? false,
    socketMode,
    reconnectDelayMs: intOption(values['reconnect-ms'], 'reconnect-ms', 1000, 1, 3_600_000),
    pollUs: intOption(values['poll-us'], 'poll-us', DEFAULT_POLL_US, 0, 1_000_000),
    workers: intOption(values.workers, 'workers', 0, 0, 64),
    logger: log,
  });
  // Signal handlers go in before the socket exists, so a SIGTERM at any point still removes it.
  let stopRequested!: (signal: string) => void;
  const stopped = new Promise<string>((resolve) => (stopRequested = resolve));
  const onInt = () => stopRequested('SIGINT');
  const onTerm = () => stopRequested('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  let failed = false;
  try {
    server.listen();
    server.ready.then(() => {
      const pool = server.workers;
      if (!pool) return;
      const queues = Array.from({ length: spec.device.numQueues }, (_, i) => i)
        .filter((i) => spec.device.workerQueue?.(i) ?? true);
      log.info(`${pool.size} queue worker(s): ${pool.describe(queues)}`);
    }, (err: Error) => {
      log.error(`cannot start the queue workers: ${err.message}`);
      failed = true;
      stopRequested('error');
    });
    spec.started?.(server, log);
    log.info(`${await stopped}: shutting down`);
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  try {
    await spec.closing?.(server);
  } catch (err) {
    log.warn(`before closing: ${(err as Error).message}`);
  }
  await server.close();
  await spec.stopping?.();
  return failed ? 1 : 0;
}
