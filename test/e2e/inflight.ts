/**
 * Looking at the vhost-user inflight area (INFLIGHT_SHMFD) from outside, to kill the daemon while a request is
 * in flight rather than at a random moment (the daemon completes a request in well under a millisecond, so a
 * random SIGKILL almost never catches one).
 *
 * The area is a memfd named `vhost-user-inflight` (the daemon creates it for GET_INFLIGHT_FD); QEMU keeps an fd
 * to it across backend restarts, so a test can read it through QEMU's `/proc/<pid>/fd/<n>` (QEMU is its
 * child, same user). Layout per queue (vhost-user spec, split rings): a 16-byte header
 * `{features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16}`, then `desc_num` 16-byte
 * entries `{inflight u8, padding[5], next u16, counter u64}`; a queue's region is
 * `align_up(16 * desc_num + 2, 64)` bytes (as libvhost-user sizes it), queue i at i times that.
 */
import { closeSync, fstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';

/** The memfd name the daemon gives its inflight areas. */
export const INFLIGHT_MEMFD = 'vhost-user-inflight';

/** `/proc/<pid>/fd/<n>` of the first fd of `pid` that is the memfd `name`, or null. */
export function findMemfd(pid: number, name: string): string | null {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`/memfd:${name} `)) return `/proc/${pid}/fd/${fd}`;
    } catch {
      // closed meanwhile
    }
  }
  return null;
}

/** Entries marked inflight in an area (all queues). */
export function countInflight(area: Buffer): number {
  if (area.length < 16) return 0;
  const descNum = area.readUInt16LE(10);
  if (descNum === 0) return 0;
  const perQueue = Math.ceil((16 * descNum + 2) / 64) * 64;
  let n = 0;
  for (let q = 0; q + perQueue <= area.length; q += perQueue) {
    if (area.readUInt16LE(q + 8) === 0) continue; // queue region not initialised
    for (let e = 0; e < descNum; e++) if (area[q + 16 + 16 * e] === 1) n++;
  }
  return n;
}

/** Reads the whole inflight area held by `pid` (null if it holds none). */
export function readInflightArea(pid: number): Buffer | null {
  const path = findMemfd(pid, INFLIGHT_MEMFD);
  if (path === null) return null;
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(fstatSync(fd).size);
    readSync(fd, buf, 0, buf.length, 0);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/**
 * Polls the inflight area through process `holder`'s fd (QEMU keeps one; the daemon may have closed its own
 * after mapping the area) and sends SIGKILL to `victim` the moment an entry is marked inflight.
 * Polls in short synchronous bursts (the event loop must keep reading the guest's console). Resolves true if it
 * killed, false if nothing was in flight within `timeoutMs` (then nothing was sent).
 */
export async function killWhenInflight(holder: number, victim: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  let path: string | null = null;
  while (path === null) {
    path = findMemfd(holder, INFLIGHT_MEMFD);
    if (path !== null) break;
    if (Date.now() > end) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(fstatSync(fd).size);
    while (Date.now() < end) {
      const burstEnd = Date.now() + 20;
      while (Date.now() < burstEnd) {
        readSync(fd, buf, 0, buf.length, 0);
        if (countInflight(buf) > 0) {
          process.kill(victim, 'SIGKILL');
          return true;
        }
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    return false;
  } finally {
    closeSync(fd);
  }
}
