/**
 * The peer bench:blk compares our daemon with: qemu-storage-daemon's vhost-user-blk export of a `null-co` node
 * (null cases) or of a `file` node with `aio=threads` or `aio=io_uring` (file cases).
 */
import { spawnSync } from 'node:child_process';
import { BenchDaemon } from '../common/daemon.js';

/** qemu-storage-daemon's ways of doing file I/O that the bench compares with. */
export type QsdAio = 'threads' | 'io_uring';

/** How to start qemu-storage-daemon for one case. */
export interface QsdOptions {
  socketPath: string;
  /** Size of the null disk (ignored with `image`). */
  size: number;
  /** Export this image file (a `file` node) instead of a null disk. */
  image?: string;
  /** With `image`: the file node's `aio` (default threads). */
  aio?: QsdAio;
  queues: number;
}

/** Is qemu-storage-daemon installed? Returns why not, or undefined. */
export function qsdUnavailable(): string | undefined {
  const r = spawnSync('qemu-storage-daemon', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'qemu-storage-daemon is not installed (apt-get install qemu-system-common)';
}

/** The `--blockdev` value for node `n0`. */
export function qsdBlockdev(o: QsdOptions): string {
  if (!o.image) return `driver=null-co,node-name=n0,size=${o.size}`;
  // QEMU's option syntax doubles commas inside values. Page cache on (cache.direct=off), as our daemon reads.
  return `driver=file,node-name=n0,filename=${o.image.replace(/,/g, ',,')},aio=${o.aio ?? 'threads'},cache.direct=off`;
}

/** Start qemu-storage-daemon exporting a null-co or file node. */
export function startQsd(o: QsdOptions): Promise<BenchDaemon> {
  return BenchDaemon.start({
    name: `qemu-storage-daemon${o.image ? ` (aio=${o.aio ?? 'threads'})` : ''}`,
    command: 'qemu-storage-daemon',
    args: [
      '--blockdev', qsdBlockdev(o),
      '--export', `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${o.socketPath},writable=on,num-queues=${o.queues}`,
    ],
    socketPath: o.socketPath,
  });
}
