/**
 * `vhost-user blk` daemons for the end-to-end tests (see {@link VhostDaemon} for the process handling).
 */
import type { TestContext } from 'node:test';
import { VhostDaemon } from '../helpers/daemon.js';

export { VhostDaemon };

/** Options of `vhost-user blk` that the tests use. */
export interface BlkDaemonOptions {
  readonly socketPath: string;
  /** `--image FILE`; with {@link size}, created sparse if missing. */
  readonly image?: string;
  /** `--size SIZE` (with {@link image}). */
  readonly size?: string;
  readonly readOnly?: boolean;
  readonly serial?: string;
  readonly numQueues?: number;
  readonly blockSize?: 512 | 4096;
  /** `--write-through`: every write is durable (fdatasync) before it completes. */
  readonly writeThrough?: boolean;
  /** `--client`: connect to QEMU's socket (QEMU is the server) and reconnect when it drops. */
  readonly client?: boolean;
  /** `--reconnect-ms` (client mode). */
  readonly reconnectMs?: number;
  readonly logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

/** The command-line arguments (after `main.js`) for these options. */
export function blkDaemonArgs(o: BlkDaemonOptions): string[] {
  const args = ['blk', '--socket-path', o.socketPath];
  if (o.image !== undefined) args.push('--image', o.image);
  if (o.size !== undefined) args.push('--size', o.size);
  if (o.readOnly) args.push('--read-only');
  if (o.serial !== undefined) args.push('--serial', o.serial);
  if (o.numQueues !== undefined) args.push('--num-queues', String(o.numQueues));
  if (o.blockSize !== undefined) args.push('--block-size', String(o.blockSize));
  if (o.writeThrough) args.push('--write-through');
  if (o.client) args.push('--client');
  if (o.reconnectMs !== undefined) args.push('--reconnect-ms', String(o.reconnectMs));
  if (o.logLevel !== undefined) args.push('--log-level', o.logLevel);
  return args;
}

/** A `vhost-user blk` daemon. */
export type BlkDaemon = VhostDaemon<BlkDaemonOptions>;

export const BlkDaemon = {
  /**
   * Starts `vhost-user blk` and, in server mode, waits until it listens (`listening on <socket>` in its output);
   * in client mode it returns at once (the daemon keeps trying to connect).
   */
  start(t: TestContext, options: BlkDaemonOptions, timeoutMs = 30_000): Promise<BlkDaemon> {
    const ready = options.client ? undefined : new RegExp(`listening on ${escapeRegExp(options.socketPath)}`);
    return VhostDaemon.start(t, blkDaemonArgs(options), { options, timeoutMs, ...(ready ? { ready } : {}) });
  },
};

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
