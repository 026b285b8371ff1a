import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = 'vhost-user-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Number of open fds of this process (for trends over many rounds; {@link fdsOpenedSince} to check for leaks). */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** What each open fd of this process is (its /proc/self/fd link), by number. */
export function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      fds.set(Number(name), fs.readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // Closed meanwhile (the directory's own fd, or another thread's).
    }
  }
  return fds;
}

/** The kinds of fd our code and tests receive, make and pass on: sockets, eventfds, memfds, temporary files. */
const OUR_KINDS = /^(socket:|anon_inode:\[eventfd\]|\/memfd:)/;
const TMP = `${os.tmpdir()}/`;

/**
 * Fds of our kinds open now that were not open at `before` (a number reused for another file counts), as
 * `fd link` strings. Judged by kind, not by count: the runtime opens fds of its own now and then (libuv's io_uring
 * on first use, for one), and a count comparison failed on one in CI.
 */
export function fdsOpenedSince(before: ReadonlyMap<number, string>): string[] {
  const opened: string[] = [];
  for (const [fd, link] of openFds()) if (before.get(fd) !== link && (OUR_KINDS.test(link) || link.startsWith(TMP))) opened.push(`${fd} ${link}`);
  return opened;
}

/** Resolve after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `cond` until it is true or `timeoutMs` passes. */
export async function waitUntil(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
