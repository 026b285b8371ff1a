/**
 * Test stand-ins for a TAP fd: a socketpair(AF_UNIX, SOCK_SEQPACKET) keeps frame boundaries as a TAP does. Node
 * cannot make one, so a short python3 script does and passes both ends over a Unix socket (SCM_RIGHTS). The same
 * trick opens a real TAP device (open + TUNSETIFF) until the native addon has `tapOpen`.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, closeQuietly, isSystemError } from '../../../src/native/index.js';
import { sleep, tempDir } from '../../helpers/tmp.js';

/** Is python3 (3.9+, for socket.send_fds) available? */
export function havePython(): boolean {
  const r = spawnSync('python3', ['-c', 'import socket,sys; sys.exit(0 if hasattr(socket, "send_fds") else 1)'], { stdio: 'ignore' });
  return r.status === 0;
}

const PAIR_SCRIPT = `
import socket, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [b'x'], [a.fileno(), b.fileno()])
`;

const TAP_SCRIPT = `
import fcntl, os, socket, struct, sys
fd = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK)
ifr = struct.pack('16sH22x', sys.argv[2].encode(), 0x0002 | 0x1000)  # IFF_TAP | IFF_NO_PI
fcntl.ioctl(fd, 0x400454ca, ifr)  # TUNSETIFF
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [b'x'], [fd])
`;

async function receiveFds(script: string, args: string[], count: number): Promise<number[]> {
  const { dir, cleanup } = tempDir('vhost-fds-');
  const sockPath = path.join(dir, 'fds.sock');
  const listenFd = native.unixListen(sockPath, 1);
  let stderr = '';
  const child = spawn('python3', ['-c', script, sockPath, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let conn = -1;
  try {
    const end = Date.now() + 10_000;
    for (;;) {
      if (conn < 0) conn = native.unixAccept(listenFd);
      if (conn >= 0) {
        const got = native.recvMsg(conn, new Uint8Array(16), count);
        if (got !== null && got.fds.length > 0) {
          await exited;
          return got.fds;
        }
      }
      if (child.exitCode !== null && child.exitCode !== 0) throw new Error(`python3 failed: ${stderr}`);
      if (Date.now() > end) throw new Error(`no fds from python3 in time: ${stderr}`);
      await sleep(5);
    }
  } finally {
    closeQuietly(conn);
    closeQuietly(listenFd);
    if (child.exitCode === null) child.kill();
    fs.rmSync(sockPath, { force: true });
    cleanup();
  }
}

/** Two connected SOCK_SEQPACKET sockets. */
export async function seqpacketPair(): Promise<[number, number]> {
  const fds = await receiveFds(PAIR_SCRIPT, [], 2);
  if (fds.length !== 2) throw new Error(`expected 2 fds, got ${fds.length}`);
  return [fds[0]!, fds[1]!];
}

/** Open (creating) TAP `name` via python3; needs CAP_NET_ADMIN. */
export async function pythonOpenTap(name: string): Promise<number> {
  const fds = await receiveFds(TAP_SCRIPT, [name], 1);
  return fds[0]!;
}

/** Read one frame from a non-blocking packet fd, waiting up to `timeoutMs`. */
export async function readFrame(fd: number, timeoutMs = 5000): Promise<Buffer> {
  const buf = Buffer.alloc(65536);
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      return Buffer.from(buf.subarray(0, n));
    } catch (err) {
      if (!isSystemError(err, 'EAGAIN')) throw err;
    }
    if (Date.now() > end) throw new Error('no frame in time');
    await sleep(2);
  }
}
