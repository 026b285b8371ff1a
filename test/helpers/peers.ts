/**
 * Real peers started by tests: qemu-storage-daemon. A test that needs a peer that is not installed skips loudly.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { TestContext } from 'node:test';
import { waitUntil } from './tmp.js';

/** Is the command on PATH? */
export function haveCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** Skip the test loudly when a command is missing (CI installs them all, so nothing skips there). */
export function requireCommand(t: TestContext, name: string, apt: string): boolean {
  if (haveCommand(name)) return true;
  const message = `SKIPPED: '${name}' is not installed (apt-get install ${apt})`;
  // CI installs every tool: there a missing one is a failure, not a skip.
  if (process.env['VHOST_USER_REQUIRE_QEMU'] === '1') throw new Error(`${message} (VHOST_USER_REQUIRE_QEMU=1)`);
  process.stderr.write(`\n*** ${message} ***\n`);
  t.skip(message);
  return false;
}

/** A qemu-storage-daemon exporting one vhost-user-blk device. */
export class StorageDaemon {
  readonly process: ChildProcess;
  readonly socketPath: string;
  output = '';

  private constructor(child: ChildProcess, socketPath: string) {
    this.process = child;
    this.socketPath = socketPath;
    child.stdout?.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  /**
   * Start one. `blockdev` is the --blockdev value for node `n0` (e.g. `driver=null-co,node-name=n0,size=N` or
   * `driver=file,node-name=n0,filename=F`).
   */
  static async start(socketPath: string, blockdev: string, numQueues = 1, extraExport = ''): Promise<StorageDaemon> {
    const child = spawn('qemu-storage-daemon', [
      '--blockdev', blockdev,
      '--export', `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${socketPath},writable=on,` +
        `num-queues=${numQueues}${extraExport}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const daemon = new StorageDaemon(child, socketPath);
    try {
      await waitUntil(() => fs.existsSync(socketPath) || child.exitCode !== null, 10_000, 'qemu-storage-daemon socket');
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${daemon.output}`);
    return daemon;
  }

  /** Stop it and wait for the exit. */
  async stop(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.kill('SIGTERM');
    await exited;
  }
}
