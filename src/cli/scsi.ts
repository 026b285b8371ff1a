/**
 * `vhost-user scsi`: the virtio-scsi daemon. Serves any number of disks (raw images, memory or null disks) as
 * LUNs of one or more targets behind one virtio-scsi controller, with a monitor socket to add and remove LUNs
 * while the guest runs (the guest hears of them through hot-plug events).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { openStorage, type BlockStorage, type StorageSpec } from '../devices/blk/storage/index.js';
import { ScsiDevice } from '../devices/scsi/device.js';
import { LogicalUnit } from '../scsi/logical-unit.js';
import { MAX_LUN } from '../scsi/constants.js';
import { MAX_UNITS_PER_TARGET } from '../scsi/target.js';
import { LogLevel, logger, setLogLevel, type LogLevelName, type Logger } from '../util/log.js';
import {
  commonHelp, formatQemu, intOption, parseDaemonArgs, qemuMemoryArgs, runDaemon, sizeOption, UsageError, type CommonValues,
} from './daemon.js';

/** Request queues at most (the vhost-user limit less the control and event queues). */
const MAX_REQUEST_QUEUES = 254;
/** Socket used when neither --socket-path nor --socket-fd is given (relative to the working directory). */
const DEFAULT_SOCKET = 'vhost-user-scsi.sock';
/** The disk served when no --lun is given. */
const DEFAULT_LUN = 'memory:256M';

const scsiOptions = {
  lun: { type: 'string', multiple: true, short: 'l' },
  targets: { type: 'string' },
  'num-queues': { type: 'string' },
  monitor: { type: 'string' },
  'no-hotplug': { type: 'boolean' },
} as const;

export const scsiHelp = `usage: vhost-user scsi [--lun SPEC]... [options]

Serve a virtio-scsi controller over vhost-user, with disks as LUNs. With no --lun: one ${DEFAULT_LUN.slice(7)} memory
disk; with no socket option: ./${DEFAULT_SOCKET}.

LUNs:
  -l, --lun SPEC         a disk (repeatable; up to ${MAX_UNITS_PER_TARGET} per target). SPEC is STORAGE[,OPTION]...
                         STORAGE is one of
                           PATH           a raw image file or block device (created sparse with size=)
                           memory:SIZE    a disk in memory, lost on exit
                           null:SIZE      a disk that stores nothing (reads leave the buffers alone)
                         OPTION is one of
                           ro             read-only (writes fail with DATA PROTECT)
                           serial=TEXT    unit serial number (VPD page 80h), up to 64 ASCII characters
                           target=T       target 0..255 (default: LUNs are spread over --targets)
                           lun=L          LUN 0..${MAX_LUN} (default: the lowest free one on the target)
                           size=SIZE      size of an image to create (an existing one must have it)
                           block-size=N   logical block size, 512 (default) or 4096
                           vendor=TEXT    INQUIRY vendor (8 characters, default VHOSTUSR)
                           product=TEXT   INQUIRY product (16 characters, default VIRTUAL-DISK)
                           write-through  start with the write cache off (the guest may switch it)
                         A comma inside PATH or TEXT is written twice (,,).
                         Example: --lun /var/disk.img,serial=disk0 --lun memory:1G,target=1,lun=3,ro
      --targets N        spread LUNs without target= round-robin over targets 0..N-1 (default 1)
Controller:
      --num-queues N     request queues (default 1, at most ${MAX_REQUEST_QUEUES}); give QEMU the same num_queues
      --no-hotplug       do not offer hot-plug events (the guest then has to rescan by itself)
      --monitor PATH     a Unix socket taking one command per line, each answered with 'ok ...' or 'error: ...':
                           add SPEC       add a LUN while the guest runs (reported as a hot-plug event)
                           remove T:L     remove LUN L of target T (after its running commands end)
                           list           the LUNs
${commonHelp}`;

/** A parsed `--lun` value. */
export interface LunSpec {
  storage: StorageSpec;
  target?: number;
  lun?: number;
  serial?: string;
  blockSize: number;
  vendor?: string;
  product?: string;
  writeThrough: boolean;
}

/** Split on commas, with `,,` standing for a literal comma. */
function splitSpec(spec: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < spec.length; i++) {
    const ch = spec[i]!;
    if (ch === ',' && spec[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (ch === ',') {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts;
}

function intIn(value: string, what: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`${what} must be an integer in ${min}..${max}, got '${value}'`);
  return n;
}

/**
 * Parse a LUN spec: `STORAGE[,ro][,serial=S][,target=T][,lun=L][,size=SIZE][,block-size=N][,vendor=V][,product=P]
 * [,write-through]`. @throws UsageError for anything malformed.
 */
export function parseLunSpec(spec: string): LunSpec {
  const fail = (why: string): never => {
    throw new UsageError(`--lun '${spec}': ${why}`);
  };
  const [where = '', ...options] = splitSpec(spec);
  if (where === '') fail('it starts with the storage: an image path, memory:SIZE or null:SIZE');
  let readOnly = false;
  let size: number | undefined;
  const out: Omit<LunSpec, 'storage'> = { blockSize: 512, writeThrough: false };
  for (const opt of options) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? undefined : opt.slice(eq + 1);
    const need = (): string => value ?? fail(`${key} needs a value (${key}=...)`);
    switch (key) {
      case 'ro':
      case 'readonly':
        if (value !== undefined) fail(`${key} takes no value`);
        readOnly = true;
        break;
      case 'write-through':
        if (value !== undefined) fail(`${key} takes no value`);
        out.writeThrough = true;
        break;
      case 'serial': out.serial = need(); break;
      case 'vendor': out.vendor = need(); break;
      case 'product': out.product = need(); break;
      case 'target': out.target = intIn(need(), 'target', 0, 255); break;
      case 'lun': out.lun = intIn(need(), 'lun', 0, MAX_LUN); break;
      case 'size': size = sizeOption(need(), 'lun size'); break;
      case 'block-size':
      case 'bs': {
        const bs = intIn(need(), 'block-size', 512, 4096);
        if (bs !== 512 && bs !== 4096) fail('block-size must be 512 or 4096');
        out.blockSize = bs;
        break;
      }
      default:
        fail(`unknown option '${key}' (ro, serial=, target=, lun=, size=, block-size=, vendor=, product=, write-through)`);
    }
  }
  let storage: StorageSpec;
  const m = /^(memory|null):(.*)$/.exec(where);
  if (m) {
    if (size !== undefined) fail(`size= goes with an image path (${m[1]}: has its own size)`);
    storage = { kind: m[1] as 'memory' | 'null', size: sizeOption(m[2]!, 'lun'), readOnly };
  } else {
    storage = { kind: 'file', path: path.resolve(where), size, readOnly };
  }
  return { storage, ...out };
}

/** Where each LUN goes: explicit addresses first, the others round-robin over `targets`, lowest free LUN. */
export function placeLuns(specs: readonly LunSpec[], targets: number): { target: number; lun: number }[] {
  const used = new Map<number, Set<number>>();
  const take = (t: number, l: number): void => {
    let set = used.get(t);
    if (!set) used.set(t, (set = new Set()));
    if (set.has(l)) throw new UsageError(`LUN ${t}:${l} is given twice`);
    set.add(l);
    if (set.size > MAX_UNITS_PER_TARGET) throw new UsageError(`target ${t} has more than ${MAX_UNITS_PER_TARGET} LUNs`);
  };
  const out: ({ target: number; lun: number } | undefined)[] = specs.map(() => undefined);
  specs.forEach((s, i) => {
    if (s.lun === undefined) return;
    const t = s.target ?? i % targets;
    take(t, s.lun);
    out[i] = { target: t, lun: s.lun };
  });
  specs.forEach((s, i) => {
    if (s.lun !== undefined) return;
    const t = s.target ?? i % targets;
    let l = 0;
    while (used.get(t)?.has(l)) l++;
    take(t, l);
    out[i] = { target: t, lun: l };
  });
  return out as { target: number; lun: number }[];
}

/** Open a LUN's storage and make its unit. */
function openUnit(spec: LunSpec, log: Logger): { unit: LogicalUnit; storage: BlockStorage } {
  let storage: BlockStorage;
  try {
    storage = openStorage(spec.storage);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  try {
    const unit = new LogicalUnit({
      storage, blockSize: spec.blockSize, serial: spec.serial, vendor: spec.vendor, product: spec.product,
      writeCache: !spec.writeThrough, logger: log,
    });
    return { unit, storage };
  } catch (err) {
    void storage.close();
    throw new UsageError((err as Error).message);
  }
}

/** QEMU arguments attaching the controller: shared memory, the chardev (QEMU is the server when we connect out), the device. */
export function scsiQemuArgs(socketPath: string, numQueues: number, weConnect: boolean): string[] {
  const chardev = weConnect ? `socket,id=c0,path=${socketPath},server=on,wait=off` : `socket,id=c0,path=${socketPath}`;
  return [
    ...qemuMemoryArgs(),
    '-chardev', chardev,
    '-device', `vhost-user-scsi-pci,chardev=c0,num_queues=${numQueues}`,
  ];
}

/** The LUNs the daemon serves, with their storage (closed when a LUN goes). */
export class ScsiLuns {
  readonly device: ScsiDevice;
  readonly #log: Logger;
  readonly #storage = new Map<LogicalUnit, BlockStorage>();

  constructor(device: ScsiDevice, log: Logger) {
    this.device = device;
    this.#log = log;
  }

  /** Open and add a LUN at target:lun (the lowest free LUN of the target, or target 0, when not given). */
  add(spec: LunSpec, target = spec.target ?? 0, lun = spec.lun): { target: number; lun: number; unit: LogicalUnit } {
    const l = lun ?? this.device.bus.freeLun(target);
    if (this.device.bus.unit(target, l)) throw new UsageError(`LUN ${target}:${l} is taken`);
    const { unit, storage } = openUnit(spec, this.#log);
    try {
      this.device.addUnit(target, l, unit);
    } catch (err) {
      void storage.close();
      throw new UsageError((err as Error).message);
    }
    this.#storage.set(unit, storage);
    return { target, lun: l, unit };
  }

  async remove(target: number, lun: number): Promise<LogicalUnit | undefined> {
    const unit = await this.device.removeUnit(target, lun);
    if (!unit) return undefined;
    const storage = this.#storage.get(unit);
    this.#storage.delete(unit);
    await storage?.close();
    return unit;
  }

  list(): string[] {
    return this.device.bus.units().map(({ target, lun, unit }) => `${target}:${lun} ${unit.description}`);
  }

  async closeAll(): Promise<void> {
    const all = [...this.#storage.values()];
    this.#storage.clear();
    for (const s of all) {
      try {
        await s.close();
      } catch (err) {
        this.#log.warn(`closing ${s.description}: ${(err as Error).message}`);
      }
    }
  }
}

/** Run one monitor command; returns the answer line. */
export async function scsiMonitorCommand(line: string, luns: ScsiLuns): Promise<string> {
  const m = /^(\S*)\s*(.*)$/.exec(line.trim())!;
  const verb = m[1]!;
  const arg = m[2]!;
  try {
    switch (verb) {
      case 'add': {
        if (arg === '') return 'error: usage: add SPEC';
        const r = luns.add(parseLunSpec(arg));
        return `ok ${r.target}:${r.lun} ${r.unit.description}`;
      }
      case 'remove': {
        const a = /^(\d+):(\d+)$/.exec(arg);
        if (!a) return 'error: usage: remove TARGET:LUN';
        const unit = await luns.remove(Number(a[1]), Number(a[2]));
        return unit ? `ok removed ${a[1]}:${a[2]}` : `error: no LUN ${a[1]}:${a[2]}`;
      }
      case 'list':
        return `ok ${luns.list().join('; ')}`;
      case '':
        return 'error: empty command';
      default:
        return `error: unknown command '${verb}' (add, remove, list)`;
    }
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

/** Serve the monitor socket. */
async function startMonitor(file: string, luns: ScsiLuns, log: Logger): Promise<net.Server> {
  try {
    if (fs.lstatSync(file).isSocket()) fs.unlinkSync(file);
  } catch {
    // no stale socket
  }
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    const lines = readline.createInterface({ input: socket, crlfDelay: Infinity });
    let chain = Promise.resolve();
    lines.on('line', (line) => {
      chain = chain.then(async () => {
        const answer = await scsiMonitorCommand(line, luns);
        log.info(`monitor: ${line.trim()} -> ${answer}`);
        if (!socket.destroyed) socket.write(answer + '\n');
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => resolve());
  });
  fs.chmodSync(file, 0o600);
  return server;
}

/** CLI entry. */
export async function scsiMain(argv: string[]): Promise<number> {
  const v = parseDaemonArgs(argv, scsiOptions) as Record<string, unknown> & CommonValues;
  if (v.help) {
    process.stdout.write(scsiHelp);
    return 0;
  }
  const specs = ((v.lun as string[] | undefined) ?? [DEFAULT_LUN]).map(parseLunSpec);
  const targets = intOption(v.targets as string | undefined, 'targets', 1, 1, 256);
  const places = placeLuns(specs, targets);
  const numQueues = intOption(v['num-queues'] as string | undefined, 'num-queues', 1, 1, MAX_REQUEST_QUEUES);
  if (v['socket-path'] !== undefined && v['socket-fd'] !== undefined) throw new UsageError('give exactly one of --socket-path and --socket-fd');
  if (v['socket-path'] === undefined && v['socket-fd'] === undefined) v['socket-path'] = DEFAULT_SOCKET;
  const socketPath = v['socket-path'] === undefined ? undefined : path.resolve(v['socket-path']);
  if (socketPath !== undefined) v['socket-path'] = socketPath;
  const monitorPath = v.monitor === undefined ? undefined : path.resolve(v.monitor as string);
  const qemuArgs = (s: string) => scsiQemuArgs(s, numQueues, v.client === true);
  const capabilities = { type: 'scsi', features: [] as string[] };
  const device = new ScsiDevice({ numQueues, hotplug: v['no-hotplug'] !== true });
  if (v['print-capabilities'] || v['print-qemu']) return runDaemon(v, { name: 'scsi', device, capabilities, qemuArgs });

  const level = v['log-level'] ?? 'info';
  if (!(level in LogLevel)) throw new UsageError(`--log-level must be one of ${Object.keys(LogLevel).join(', ')}`);
  setLogLevel(level as LogLevelName);
  const log = logger('scsi');
  const luns = new ScsiLuns(device, log);
  let monitor: net.Server | undefined;
  try {
    specs.forEach((s, i) => luns.add(s, places[i]!.target, places[i]!.lun));
    if (monitorPath !== undefined) monitor = await startMonitor(monitorPath, luns, log);
  } catch (err) {
    await luns.closeAll();
    throw err;
  }
  return runDaemon(v, {
    name: 'scsi',
    device,
    capabilities,
    qemuArgs,
    started() {
      const where = v.client ? `connecting to ${socketPath}` : socketPath ? `listening on ${socketPath}` : `on fd ${v['socket-fd']}`;
      process.stdout.write(
        `vhost-user scsi: ${numQueues} request queue${numQueues > 1 ? 's' : ''}, ` +
        `${device.hotplugOffered ? 'hot-plug events' : 'no hot-plug events'}; ${where}\n` +
        luns.list().map((l) => `  LUN ${l}\n`).join('') +
        (monitorPath ? `Monitor on ${monitorPath}\n` : '') +
        `Attach QEMU with:\n${formatQemu(qemuArgs(socketPath ?? '/path/to/socket'))}\n`);
    },
    async stopping() {
      if (monitor) {
        const m = monitor;
        await new Promise<void>((resolve) => m.close(() => resolve()));
        try {
          fs.unlinkSync(monitorPath!);
        } catch {
          // already gone
        }
      }
      const d = device.stats;
      log.info(`served ${d.requests} requests, per request queue [${d.perQueue.join(', ')}]; ${d.badTarget} BAD_TARGET, ` +
        `${d.failures} FAILURE, ${d.tmfs} task management, ${d.events} events (${d.eventsDropped} dropped)`);
      for (const { unit } of device.bus.units()) {
        const s = unit.stats;
        log.info(`${unit.address}: ${s.commands} commands, ${s.reads} reads (${s.bytesRead} bytes), ${s.writes} writes ` +
          `(${s.bytesWritten} bytes), ${s.flushes} flushes, ${s.unmaps} unmaps, ${s.checkConditions} check conditions`);
      }
      device.dispose();
      await luns.closeAll();
    },
  });
}
