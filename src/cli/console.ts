/**
 * `vhost-user console`: a virtio-console device whose ports are bound to this terminal, Unix sockets, ptys or log
 * files, with an optional monitor socket to add, remove and resize ports while the guest runs.
 */
import fs from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';
import { ConsoleDevice } from '../devices/console/device.js';
import { MAX_PORTS, queueCount, CONFIG_SIZE } from '../devices/console/protocol.js';
import { bindFile, bindPty, bindStdio, bindUnix, type Binding } from '../devices/console/bindings.js';
import { DeviceId } from '../virtio/constants.js';
import { LogLevel, logger, setLogLevel, type LogLevelName, type Logger } from '../util/log.js';
import {
  UsageError, commonHelp, formatQemu, intOption, parseDaemonArgs, qemuMemoryArgs, runDaemon, type CommonValues,
} from './daemon.js';

/** Where a port goes. */
export type BindingSpec =
  | { kind: 'stdio' }
  | { kind: 'pty' }
  | { kind: 'unix'; path: string }
  | { kind: 'file'; path: string };

/** A parsed `--port` value. */
export interface PortSpec {
  id: number;
  name?: string;
  console?: boolean;
  binding: BindingSpec;
}

const help = `usage: vhost-user console --socket-path PATH [--port SPEC]... [options]

A virtio-console device (MULTIPORT, SIZE, EMERG_WRITE). Port 0 is the console the guest sees as hvc0; named
ports appear in a Linux guest as /dev/virtio-ports/NAME.

Console options:
  --port SPEC         bind a port (repeatable; default: 0,stdio). SPEC is ID[,name=NAME][,console],BINDING
                      with BINDING one of:
                        stdio        this terminal, in raw mode; Ctrl-] quits
                        unix:PATH    a Unix socket clients attach to (e.g. socat -,raw,echo=0 UNIX-CONNECT:PATH);
                                     one client at a time, further ones are refused while it stays; the guest
                                     sees the port open (PORT_OPEN) only while a client is attached
                        pty          a new pseudo-terminal in raw mode; its path is printed
                        file:PATH    append what the guest writes to a file
                      PATH runs to the end of SPEC and may contain commas.
                      'console' marks a port other than 0 as a console (hvc) too.
                      Examples: --port 0,stdio  --port 1,name=org.test.0,unix:/tmp/p1.sock  --port 2,file:/tmp/log
  --ports N           max_nr_ports, 1..${MAX_PORTS}: room for ports added later (default: the highest --port + 1)
  --cols N, --rows N  console size (default: this terminal's when port 0 is on stdio, else 80x24)
  --monitor PATH      a Unix socket taking one command per line: 'add SPEC', 'remove ID', 'resize COLS ROWS',
                      'ports'; each answered with 'ok ...' or 'error: ...'

QEMU 7.2 has no vhost-user console device; --print-qemu shows the generic vhost-user-device-pci arguments for
QEMU builds that let -device create it (8.2 and later).

${commonHelp}`;

/**
 * Parse a port spec: `ID[,name=NAME][,console],BINDING`.
 * @throws UsageError for anything malformed.
 */
export function parsePortSpec(spec: string): PortSpec {
  const fail = (why: string): never => {
    throw new UsageError(`--port '${spec}': ${why}`);
  };
  const comma = spec.indexOf(',');
  const idText = comma < 0 ? spec : spec.slice(0, comma);
  if (!/^\d+$/.test(idText)) fail('it starts with the port number');
  const id = Number(idText);
  if (id >= MAX_PORTS) fail(`port numbers go up to ${MAX_PORTS - 1}`);
  const out: Partial<PortSpec> & { id: number } = { id };
  let rest = comma < 0 ? '' : spec.slice(comma + 1);
  while (rest.length > 0) {
    // A binding with a path takes the rest of the spec, commas included.
    const m = /^(unix|file):/.exec(rest);
    if (m) {
      const path = rest.slice(m[0].length);
      if (path.length === 0) fail(`${m[1]}: needs a path`);
      if (out.binding) fail('more than one binding');
      out.binding = { kind: m[1] as 'unix' | 'file', path };
      break;
    }
    const next = rest.indexOf(',');
    const item = next < 0 ? rest : rest.slice(0, next);
    rest = next < 0 ? '' : rest.slice(next + 1);
    if (item.startsWith('name=')) {
      if (out.name !== undefined) fail('two names');
      out.name = item.slice(5);
      if (out.name.length === 0) fail('empty name');
    } else if (item === 'console') {
      out.console = true;
    } else if (item === 'stdio' || item === 'pty') {
      if (out.binding) fail('more than one binding');
      out.binding = { kind: item };
    } else {
      fail(`unknown item '${item}' (name=NAME, console, stdio, pty, unix:PATH, file:PATH)`);
    }
  }
  if (!out.binding) fail('no binding (stdio, pty, unix:PATH or file:PATH)');
  return out as PortSpec;
}

/** The ports of a running daemon and what they are bound to. */
class Ports {
  readonly device: ConsoleDevice;
  readonly #log: Logger;
  readonly #bindings = new Map<number, Binding>();
  #stdioTaken = false;

  constructor(device: ConsoleDevice, log: Logger) {
    this.device = device;
    this.#log = log;
  }

  async add(spec: PortSpec): Promise<Binding> {
    if (spec.binding.kind === 'stdio' && this.#stdioTaken) throw new UsageError('only one port can be on stdio');
    const port = this.device.addPort({ id: spec.id, name: spec.name, console: spec.console });
    let binding: Binding;
    try {
      binding = await this.#bind(spec);
    } catch (err) {
      this.device.removePort(spec.id);
      throw err;
    }
    port.on('error', (err: Error) => this.#log.debug(`port ${spec.id}: ${err.message}`));
    this.#bindings.set(spec.id, binding);
    this.#log.info(`port ${spec.id}${spec.name ? ` (${spec.name})` : ''}${port.console ? ' [console]' : ''}: ${binding.description}`);
    return binding;
  }

  async #bind(spec: PortSpec): Promise<Binding> {
    const port = this.device.port(spec.id)!;
    switch (spec.binding.kind) {
      case 'stdio': {
        this.#stdioTaken = true;
        // Leave the terminal usable however the process ends.
        if (process.stdin.isTTY === true) process.on('exit', () => process.stdin.setRawMode?.(false));
        process.stderr.write(`vhost-user console: port ${spec.id} on this terminal; escape character is ^]\n`);
        const b = bindStdio(port, { onEscape: () => process.kill(process.pid, 'SIGTERM') });
        return {
          description: b.description,
          close: async () => {
            await b.close();
            this.#stdioTaken = false;
          },
        };
      }
      case 'unix':
        return bindUnix(port, spec.binding.path, { logger: this.#log });
      case 'file':
        return bindFile(port, spec.binding.path);
      case 'pty': {
        const b = await bindPty(port);
        process.stderr.write(`vhost-user console: port ${spec.id} is ${b.description.slice(4)}\n`);
        return b;
      }
    }
  }

  async remove(id: number): Promise<boolean> {
    const binding = this.#bindings.get(id);
    this.#bindings.delete(id);
    const removed = this.device.removePort(id);
    await binding?.close();
    return removed;
  }

  list(): string[] {
    return [...this.device.ports.values()].sort((a, b) => a.id - b.id).map((p) =>
      `${p.id} ${p.name ?? '-'} ${this.#bindings.get(p.id)?.description ?? '-'}${p.console ? ' console' : ''}` +
      ` guest:${p.guestOpen ? 'open' : 'closed'} host:${p.hostConnected ? 'open' : 'closed'}`);
  }

  async closeAll(): Promise<void> {
    const all = [...this.#bindings.values()];
    this.#bindings.clear();
    await Promise.all(all.map((b) => b.close()));
  }
}

/** Serve the monitor: one command per line, one answer line each. */
async function startMonitor(path: string, ports: Ports, log: Logger): Promise<net.Server> {
  try {
    if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path);
  } catch {
    // no stale socket
  }
  const server = net.createServer((socket) => {
    socket.on('error', () => { /* client went away */ });
    const lines = readline.createInterface({ input: socket, crlfDelay: Infinity });
    let chain = Promise.resolve();
    lines.on('line', (line) => {
      chain = chain.then(async () => {
        const answer = await monitorCommand(line.trim(), ports);
        if (!socket.destroyed) socket.write(answer + '\n');
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  fs.chmodSync(path, 0o600);
  log.info(`monitor on ${path}`);
  return server;
}

/** Run one monitor command; returns the answer line. */
export async function monitorCommand(line: string, ports: { add(spec: PortSpec): Promise<Binding>; remove(id: number): Promise<boolean>;
  list(): string[]; device: ConsoleDevice }): Promise<string> {
  const [verb = '', ...args] = line.split(/\s+/);
  try {
    switch (verb) {
      case 'add': {
        if (args.length !== 1) return 'error: usage: add ID[,name=NAME][,console],BINDING';
        const spec = parsePortSpec(args[0]!);
        const b = await ports.add(spec);
        return `ok port ${spec.id} ${b.description}`;
      }
      case 'remove': {
        const id = Number(args[0]);
        if (args.length !== 1 || !Number.isInteger(id)) return 'error: usage: remove ID';
        return (await ports.remove(id)) ? `ok port ${id} removed` : `error: no port ${id}`;
      }
      case 'resize': {
        const [cols, rows] = args.map(Number);
        if (args.length !== 2) return 'error: usage: resize COLS ROWS';
        ports.device.resize(cols!, rows!);
        return `ok ${cols}x${rows}`;
      }
      case 'ports':
        return `ok ${ports.list().join('; ')}`;
      case '':
        return 'error: empty command';
      default:
        return `error: unknown command '${verb}' (add, remove, resize, ports)`;
    }
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

/** `vhost-user console` entry point. */
export async function consoleMain(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    values = parseDaemonArgs(argv, {
      port: { type: 'string', multiple: true },
      ports: { type: 'string' },
      cols: { type: 'string' },
      rows: { type: 'string' },
      monitor: { type: 'string' },
    });
  } catch (err) {
    process.stderr.write(`vhost-user console: ${(err as Error).message}\n\n${help}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(help);
    return 0;
  }
  try {
    return await run(values);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`vhost-user console: ${err.message}\n(see vhost-user console --help)\n`);
      return 2;
    }
    throw err;
  }
}

async function run(values: Record<string, string | boolean | (string | boolean)[] | undefined>): Promise<number> {
  const specs = ((values.port as string[] | undefined) ?? ['0,stdio']).map(parsePortSpec);
  const ids = new Set<number>();
  for (const s of specs) {
    if (ids.has(s.id)) throw new UsageError(`port ${s.id} is given twice`);
    ids.add(s.id);
  }
  if (specs.filter((s) => s.binding.kind === 'stdio').length > 1) throw new UsageError('only one port can be on stdio');
  const highest = Math.max(0, ...ids);
  const maxPorts = intOption(values.ports as string | undefined, 'ports', highest + 1, 1, MAX_PORTS);
  if (highest >= maxPorts) throw new UsageError(`--port ${highest} needs --ports ${highest + 1} or more`);
  const onTerminal = specs.some((s) => s.id === 0 && s.binding.kind === 'stdio') && process.stdout.isTTY === true;
  const cols = intOption(values.cols as string | undefined, 'cols', onTerminal ? process.stdout.columns : 80, 0, 0xffff);
  const rows = intOption(values.rows as string | undefined, 'rows', onTerminal ? process.stdout.rows : 24, 0, 0xffff);
  const common = values as CommonValues;
  const device = new ConsoleDevice({ maxPorts, cols, rows });
  const qemuArgs = (socketPath: string) => [
    ...qemuMemoryArgs(),
    '-chardev', `socket,id=vhost-console,path=${socketPath}`,
    '-device', `vhost-user-device-pci,chardev=vhost-console,virtio-id=${DeviceId.CONSOLE},` +
      `num_vqs=${queueCount(maxPorts, true)},config_size=${CONFIG_SIZE}`,
  ];
  if (common['print-qemu']) {
    process.stderr.write('# QEMU has no vhost-user console device; this needs a QEMU that lets -device create the generic ' +
      'vhost-user-device-pci (8.2 or later)\n');
    process.stdout.write(formatQemu(qemuArgs(common['socket-path'] ?? '/path/to/socket')) + '\n');
    return 0;
  }
  if (common['print-capabilities']) {
    return runDaemon(common, { name: 'console', device, capabilities: { type: 'console', features: [] }, qemuArgs });
  }
  // Bind before serving so that a bad path fails at once, not after a guest connected.
  if ((common['socket-path'] === undefined) === (common['socket-fd'] === undefined)) {
    throw new UsageError('give exactly one of --socket-path and --socket-fd');
  }
  const level = common['log-level'] ?? 'info';
  if (!(level in LogLevel)) throw new UsageError(`--log-level must be one of ${Object.keys(LogLevel).join(', ')}`);
  setLogLevel(level as LogLevelName);
  const log = logger('console');
  const ports = new Ports(device, log);
  let monitor: net.Server | undefined;
  try {
    for (const spec of specs) await ports.add(spec);
    if (typeof values.monitor === 'string') monitor = await startMonitor(values.monitor, ports, log);
  } catch (err) {
    await ports.closeAll();
    if (err instanceof UsageError) throw err;
    throw new Error(`cannot bind the ports: ${(err as Error).message}`);
  }
  let onResize: (() => void) | undefined;
  if (onTerminal && values.cols === undefined && values.rows === undefined) {
    onResize = () => device.resize(process.stdout.columns, process.stdout.rows);
    process.stdout.on('resize', onResize);
  }
  return runDaemon(common, {
    name: 'console',
    device,
    capabilities: { type: 'console', features: [] },
    qemuArgs,
    started: (server) => {
      device.attach(server);
    },
    stopping: async () => {
      if (onResize) process.stdout.off('resize', onResize);
      if (monitor) {
        const m = monitor;
        await new Promise<void>((resolve) => m.close(() => resolve()));
        try {
          fs.unlinkSync(values.monitor as string);
        } catch {
          // already gone
        }
      }
      await ports.closeAll();
    },
  });
}
