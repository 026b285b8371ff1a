/**
 * `vhost-user net`: a user-space Ethernet switch whose ports are virtio-net devices, one vhost-user socket per
 * port, with an optional TAP uplink to the host.
 */
import { createHash } from 'node:crypto';
import { type ParseArgsConfig } from 'node:util';
import { Network, type NetworkPortSpec } from '../devices/net/network.js';
import { formatMac, parseMac } from '../devices/net/mac.js';
import { commonHelp, DEFAULT_POLL_US, formatQemu, intOption, parseDaemonArgs, qemuMemoryArgs, UsageError } from './daemon.js';
import { logger, setLogLevel, LogLevel, type LogLevelName } from '../util/log.js';

const netOptions = {
  port: { type: 'string', multiple: true, short: 'p' },
  ports: { type: 'string' },
  mac: { type: 'string', multiple: true },
  mtu: { type: 'string' },
  'queue-pairs': { type: 'string' },
  'queue-size': { type: 'string' },
  tap: { type: 'string' },
  'tap-fd': { type: 'string' },
  'tap-vnet-hdr': { type: 'boolean' },
  aging: { type: 'string' },
  'stats-interval': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

const help = `usage: vhost-user net (--port PATH ... | --socket-path PATH [--ports N]) [options]

A MAC-learning Ethernet switch; each port is a virtio-net device on its own vhost-user socket.

Net options:
  -p, --port PATH        a port listening on PATH (repeat for more ports)
  --ports N              with --socket-path: N ports on PATH.0 .. PATH.<N-1> (or PATH with %d replaced);
                         one port uses PATH itself
  --mac MAC              MAC address of the next port (repeatable, in port order); default: derived from the
                         socket path (locally administered, stable across runs)
  --mtu N                MTU offered to guests (68..65535, default 1500)
  --queue-pairs N        queue pairs per port (multiqueue, 1..127, default 1)
  --queue-size N         largest ring size accepted (default 1024)
  --tap NAME             uplink to the host through TAP interface NAME (created if missing; bring it up with
                         'ip link set NAME up')
  --tap-fd FD            uplink through an already open TAP fd (IFF_TAP|IFF_NO_PI) inherited from the caller
  --tap-vnet-hdr         the --tap-fd TAP was opened with IFF_VNET_HDR (frames carry a virtio-net header)
  --aging SECONDS        forget a MAC address not seen for this long (default 300)
  --stats-interval SEC   print the port counters every SEC seconds (they are also printed on SIGUSR1)

${commonHelp}`;

/** The socket paths of `--socket-path PATH --ports N`. */
export function expandSocketPaths(path: string, count: number): string[] {
  if (count === 1 && !path.includes('%d')) return [path];
  return Array.from({ length: count }, (_, i) => (path.includes('%d') ? path.replace('%d', String(i)) : `${path}.${i}`));
}

/** A stable locally administered unicast MAC for a socket path. */
export function macForPath(path: string): string {
  const bytes = createHash('sha256').update(`vhost-user-net:${path}`).digest().subarray(0, 6);
  bytes[0] = (bytes[0]! & 0xfc) | 0x02;
  return formatMac(bytes);
}

/** QEMU arguments attaching one port as `virtio-net-pci` (vectors=0: QEMU 7.2 under TCG crashes with MSI-X). */
export function qemuNetArgs(socketPath: string, mac: string,
  options: { id?: number; queuePairs?: number; mtu?: number; deviceProps?: string } = {}): string[] {
  const id = options.id ?? 0;
  const pairs = options.queuePairs ?? 1;
  const netdev = `vhost-user,id=n${id},chardev=c${id}` + (pairs > 1 ? `,queues=${pairs}` : '');
  const device = `virtio-net-pci,netdev=n${id},mac=${mac},vectors=0` + (pairs > 1 ? ',mq=on' : '') +
    (options.mtu !== undefined ? `,host_mtu=${options.mtu}` : '') + (options.deviceProps ? `,${options.deviceProps}` : '');
  return ['-chardev', `socket,id=c${id},path=${socketPath}`, '-netdev', netdev, '-device', device];
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function strs(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** Entry point of `vhost-user net`. */
export async function netMain(argv: string[]): Promise<number> {
  try {
    return await run(argv);
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`vhost-user net: ${(err as Error).message}\n\n${help}`);
      return 2;
    }
    throw err;
  }
}

async function run(argv: string[]): Promise<number> {
  const v = parseDaemonArgs(argv, netOptions);
  if (v.help) {
    process.stdout.write(help);
    return 0;
  }
  const level = str(v['log-level']) ?? 'info';
  if (!(level in LogLevel)) throw new UsageError(`--log-level must be one of ${Object.keys(LogLevel).join(', ')}`);
  setLogLevel(level as LogLevelName);
  if (v['print-capabilities']) {
    process.stdout.write(JSON.stringify({ type: 'net', features: [] }, null, 2) + '\n');
    return 0;
  }

  const portPaths = strs(v.port);
  const socketPath = str(v['socket-path']);
  const socketFd = str(v['socket-fd']);
  const given = Number(portPaths.length > 0) + Number(socketPath !== undefined) + Number(socketFd !== undefined);
  if (given !== 1 && !v['print-qemu']) throw new UsageError('give --port (repeatable), or --socket-path, or --socket-fd');
  if (given > 1) throw new UsageError('--port, --socket-path and --socket-fd exclude each other');
  const count = intOption(str(v.ports), 'ports', 1, 1, 256);
  if (v.ports !== undefined && socketPath === undefined) throw new UsageError('--ports goes with --socket-path');
  const client = v.client === true;
  if (client && socketFd !== undefined) throw new UsageError('--client needs socket paths');

  let specs: NetworkPortSpec[];
  if (portPaths.length > 0) specs = portPaths.map((p) => ({ socketPath: p, client }));
  else if (socketFd !== undefined) specs = [{ socketFd: intOption(socketFd, 'socket-fd', 0, 0, 1 << 20) }];
  else specs = expandSocketPaths(socketPath ?? '/path/to/net.sock', count).map((p) => ({ socketPath: p, client }));

  const macs = strs(v.mac);
  if (macs.length > specs.length) throw new UsageError(`${macs.length} --mac for ${specs.length} port(s)`);
  specs.forEach((s, i) => {
    const m = macs[i];
    if (m !== undefined) {
      let bytes: Uint8Array;
      try {
        bytes = parseMac(m);
      } catch (err) {
        throw new UsageError(`--mac: ${(err as Error).message}`);
      }
      if ((bytes[0]! & 1) === 1) throw new UsageError(`--mac ${m} is a multicast address`);
      s.mac = formatMac(bytes);
    } else if (s.socketPath !== undefined) {
      s.mac = macForPath(s.socketPath);
    }
  });

  const mtu = v.mtu === undefined ? undefined : intOption(str(v.mtu), 'mtu', 1500, 68, 65535);
  const queuePairs = intOption(str(v['queue-pairs']), 'queue-pairs', 1, 1, 127);
  const queueSize = intOption(str(v['queue-size']), 'queue-size', 1024, 2, 32768);
  if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError('--queue-size must be a power of two');
  const agingMs = intOption(str(v.aging), 'aging', 300, 1, 86_400) * 1000;
  const statsInterval = v['stats-interval'] === undefined ? undefined
    : intOption(str(v['stats-interval']), 'stats-interval', 0, 1, 86_400);
  const tap = str(v.tap);
  const tapFdText = str(v['tap-fd']);
  if (tap !== undefined && tapFdText !== undefined) throw new UsageError('--tap and --tap-fd exclude each other');
  const tapFd = tapFdText === undefined ? undefined : intOption(tapFdText, 'tap-fd', 0, 0, 1 << 20);
  if (v['tap-vnet-hdr'] && tapFd === undefined) throw new UsageError('--tap-vnet-hdr goes with --tap-fd');
  let socketMode: number | undefined;
  const modeText = str(v['socket-mode']);
  if (modeText !== undefined) {
    if (!/^[0-7]{3,4}$/.test(modeText)) throw new UsageError('--socket-mode takes octal permission bits, e.g. 0660');
    socketMode = parseInt(modeText, 8);
  }

  if (v['print-qemu']) {
    const out: string[] = [];
    specs.forEach((s, i) => {
      out.push(`# guest on port ${i}${s.socketPath ? ` (${s.socketPath})` : ''}`);
      out.push(formatQemu([...qemuMemoryArgs(), ...qemuNetArgs(s.socketPath ?? '/path/to/socket', s.mac ?? macForPath(`fd:${i}`),
        { id: 0, queuePairs, mtu })]));
    });
    process.stdout.write(out.join('\n') + '\n');
    return 0;
  }

  const log = logger('net');
  const network = new Network({
    ports: specs, mtu, queuePairs, maxQueueSize: queueSize, agingMs, socketMode, tap, tapFd, logger: log,
    tapVnetHdr: v['tap-vnet-hdr'] === true,
    reconnectDelayMs: intOption(str(v['reconnect-ms']), 'reconnect-ms', 1000, 1, 3_600_000),
    pollUs: intOption(str(v['poll-us']), 'poll-us', DEFAULT_POLL_US, 0, 1_000_000),
    workers: intOption(str(v.workers), 'workers', 0, 0, 64),
  });
  try {
    network.listen();
  } catch (err) {
    await network.close();
    throw err;
  }
  network.ports.forEach((p, i) => {
    const where = specs[i]!.socketPath ?? `fd ${specs[i]!.socketFd}`;
    log.info(`port ${p.name}: ${where}, mac ${p.mac}, ${p.maxQueuePairs} queue pair(s), mtu ${p.mtu}`);
  });
  if (network.uplink) log.info(`uplink: ${network.tapName ?? `fd ${tapFd}`}`);

  const printStats = () => process.stdout.write(`${new Date().toISOString()} port counters\n${network.formatStats()}\n`);
  const timer = statsInterval === undefined ? undefined : setInterval(printStats, statsInterval * 1000);
  process.on('SIGUSR1', printStats);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info(`${signal}: shutting down`);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve();
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
  if (timer) clearInterval(timer);
  process.off('SIGUSR1', printStats);
  await network.close();
  return 0;
}
