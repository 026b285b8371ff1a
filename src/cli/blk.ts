/**
 * `vhost-user blk`: the virtio-blk daemon. Serves a raw image, a memory disk (the default: 256 MiB) or a null
 * disk on a vhost-user socket (default ./vhost-user-blk.sock).
 */
import path from 'node:path';
import { BlkDevice, type BlkStats } from '../devices/blk/device.js';
import { openStorage, type BlockStorage, type StorageSpec } from '../devices/blk/storage/index.js';
import { Limits } from '../protocol/constants.js';
import {
  commonHelp, formatQemu, intOption, parseDaemonArgs, qemuMemoryArgs, runDaemon, sizeOption, UsageError, type CommonValues,
} from './daemon.js';

const blkOptions = {
  image: { type: 'string', short: 'i' },
  'blk-file': { type: 'string', short: 'b' },
  size: { type: 'string' },
  memory: { type: 'string' },
  null: { type: 'string' },
  'read-only': { type: 'boolean', short: 'r' },
  serial: { type: 'string' },
  'block-size': { type: 'string' },
  'num-queues': { type: 'string' },
  writeback: { type: 'boolean' },
  'write-through': { type: 'boolean' },
  aio: { type: 'string' },
} as const;

/** The memory disk served when no storage option is given. */
const DEFAULT_MEMORY = '256M';
/** Socket used when neither --socket-path nor --socket-fd is given (relative to the working directory). */
const DEFAULT_SOCKET = 'vhost-user-blk.sock';

export const blkHelp = `usage: vhost-user blk [--image FILE [--size SIZE] | --memory SIZE | --null SIZE] [options]

Serve a virtio-blk disk over vhost-user. With no storage option: a ${DEFAULT_MEMORY} memory disk; with no socket
option: ./${DEFAULT_SOCKET}.

Storage (one of):
  -i, --image FILE       raw image file or block device (--blk-file is the same); created sparse if missing and
                         --size is given
      --size SIZE        size of the image to create (e.g. 1G); an existing image must have this size
      --aio ENGINE       how the image is read and written: io_uring (default; batched submissions, falls back
                         to threads where io_uring is unavailable) or threads (libuv's thread pool)
      --memory SIZE      a disk in memory, lost on exit
      --null SIZE        a disk that stores nothing and reads back whatever the buffers held (benchmarks)
Device:
  -r, --read-only        refuse writes (offers VIRTIO_BLK_F_RO)
      --serial TEXT      answer to GET_ID (up to 20 ASCII characters)
      --block-size N     logical block size, 512 (default) or 4096
      --num-queues N     request queues (default 1, at most ${Limits.MAX_QUEUES})
      --writeback        start with a write-back cache (default): writes are durable after FLUSH
      --write-through    start write-through: every write is durable (fdatasync) before it completes
                         (the guest may switch modes through the writeback config field)
${commonHelp}`;

/** The storage described by the parsed options. */
function storageSpec(v: Record<string, unknown>): StorageSpec {
  const readOnly = v['read-only'] === true;
  const image = (v.image ?? v['blk-file']) as string | undefined;
  if (v.image !== undefined && v['blk-file'] !== undefined) throw new UsageError('give --image or --blk-file, not both');
  const given = [image, v.memory, v.null].filter((x) => x !== undefined).length;
  if (given > 1) throw new UsageError('give only one of --image, --memory and --null');
  if (v.size !== undefined && image === undefined) throw new UsageError('--size goes with --image (use --memory SIZE or --null SIZE)');
  if (v.aio !== undefined && image === undefined) throw new UsageError('--aio goes with --image');
  if (v.aio !== undefined && v.aio !== 'io_uring' && v.aio !== 'threads') {
    throw new UsageError(`--aio takes io_uring or threads, not '${String(v.aio)}'`);
  }
  if (image !== undefined) {
    const size = v.size === undefined ? undefined : sizeOption(v.size as string, 'size');
    return { kind: 'file', path: image, size, readOnly, ...(v.aio === undefined ? {} : { aio: v.aio as 'io_uring' | 'threads' }) };
  }
  if (v.null !== undefined) return { kind: 'null', size: sizeOption(v.null as string, 'null'), readOnly };
  return { kind: 'memory', size: sizeOption((v.memory as string | undefined) ?? DEFAULT_MEMORY, 'memory'), readOnly };
}

/** Counters of several threads added up. */
function sumStats(all: BlkStats[]): BlkStats {
  const total = structuredClone(all[0]!);
  for (const s of all.slice(1)) {
    for (const key of Object.keys(total) as (keyof BlkStats)[]) {
      if (key === 'perQueue') total.perQueue = total.perQueue.map((n, i) => n + (s.perQueue[i] ?? 0));
      else total[key] += s[key];
    }
  }
  return total;
}

/** QEMU arguments attaching the disk: shared memory, the chardev (QEMU is the server when we connect out), the device. */
export function blkQemuArgs(socketPath: string, numQueues: number, weConnect: boolean): string[] {
  const chardev = weConnect
    ? `socket,id=blk0,path=${socketPath},server=on,wait=off`
    : `socket,id=blk0,path=${socketPath},reconnect=1`;
  return [
    ...qemuMemoryArgs(),
    '-chardev', chardev,
    '-device', `vhost-user-blk-pci,chardev=blk0,num-queues=${numQueues}`,
  ];
}

/** CLI entry. */
export async function blkMain(argv: string[]): Promise<number> {
  const v = parseDaemonArgs(argv, blkOptions) as Record<string, unknown> & CommonValues;
  if (v.help) {
    process.stdout.write(blkHelp);
    return 0;
  }
  const spec = storageSpec(v);
  const blockSize = intOption(v['block-size'] as string | undefined, 'block-size', 512, 512, 4096);
  if (blockSize !== 512 && blockSize !== 4096) throw new UsageError('--block-size must be 512 or 4096');
  const numQueues = intOption(v['num-queues'] as string | undefined, 'num-queues', 1, 1, Limits.MAX_QUEUES);
  if (v.writeback && v['write-through']) throw new UsageError('give --writeback or --write-through, not both');
  const writeback = v['write-through'] !== true;
  const serial = v.serial as string | undefined;
  if (v['socket-path'] === undefined && v['socket-fd'] === undefined) v['socket-path'] = DEFAULT_SOCKET;
  const socketPath = v['socket-path'] === undefined ? undefined : path.resolve(v['socket-path']);
  if (socketPath !== undefined) v['socket-path'] = socketPath;

  let storage: BlockStorage | undefined;
  let device: BlkDevice | undefined;
  let logStats: ((s: BlkStats) => void) | undefined;
  const qemuArgs = (s: string) => blkQemuArgs(s, numQueues, v.client === true);
  return runDaemon(v, {
    name: 'blk',
    // Opened only when the daemon really starts (not for --print-capabilities / --print-qemu).
    get device() {
      if (!device) {
        storage = openStorage(spec);
        try {
          device = new BlkDevice({ storage, numQueues, serial, blockSize, writeback });
        } catch (err) {
          void storage.close();
          throw new UsageError((err as Error).message);
        }
      }
      return device;
    },
    capabilities: { type: 'block', features: ['read-only', 'blk-file'] },
    qemuArgs,
    started(_server, log) {
      const d = device!;
      logStats = (s: BlkStats) => {
        log.info(`served ${s.requests} requests: ${s.reads} reads (${s.bytesRead} bytes), ${s.writes} writes ` +
          `(${s.bytesWritten} bytes), ${s.flushes} flushes, ${s.discards} discards, ${s.writeZeroes} write-zeroes, ` +
          `${s.errors} IOERR, ${s.unsupported} UNSUPP; per queue [${s.perQueue.join(', ')}]`);
      };
      const where = v.client ? `connecting to ${socketPath}` : socketPath ? `listening on ${socketPath}` : `on fd ${v['socket-fd']}`;
      process.stdout.write(
        `vhost-user blk: ${d.storage.description}, ${numQueues} queue${numQueues > 1 ? 's' : ''}, ` +
        `${writeback ? 'write-back' : 'write-through'}, block size ${blockSize}` +
        `${serial ? `, serial '${serial}'` : ''}; ${where}\n` +
        `Attach QEMU with:\n${formatQemu(qemuArgs(socketPath ?? '/path/to/socket'))}\n`);
    },
    async closing(server) {
      if (!logStats || !device) return;
      // Requests served on queue workers are counted there.
      const perWorker = (await server.workers?.stats()) as BlkStats[] | undefined;
      logStats(sumStats([device.stats, ...(perWorker ?? [])]));
    },
    async stopping() {
      await storage?.close();
    },
  });
}
