/**
 * The `vhost-user` CLI in child processes, for the daemons' CLI tests: run a command to completion, keep a
 * daemon ({@link VhostDaemon}) running until the test is done with it, talk to its monitor socket.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import { CLI_PATH, VhostDaemon } from './daemon.js';

/** The compiled CLI entry point. */
export const MAIN = CLI_PATH;

/** Run the CLI to completion. */
export function runCli(args: string[], cwd?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { cwd, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Start `vhost-user <device> ...args` (in `cwd`), wait until it prints how to attach QEMU (it listens by then),
 * run `fn`, and kill it if it still runs.
 */
export async function withCliDaemon(device: string, args: string[], fn: (d: VhostDaemon) => Promise<void>,
  cwd?: string): Promise<void> {
  const d = await VhostDaemon.run([device, ...args], { options: undefined, ready: /Attach QEMU with:/, timeoutMs: 20_000, cwd });
  try {
    await fn(d);
  } finally {
    await d.kill();
  }
}

/** Send one command to a daemon's monitor socket (`vhost-user scsi --monitor`) and resolve with its answer line. */
export function monitorCommand(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let answer = '';
    socket.on('error', reject);
    socket.on('connect', () => socket.write(command + '\n'));
    socket.on('data', (d) => {
      answer += d.toString('utf8');
      const nl = answer.indexOf('\n');
      if (nl >= 0) {
        socket.end();
        resolve(answer.slice(0, nl));
      }
    });
  });
}
