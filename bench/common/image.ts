/**
 * The image file of the file-backend cases, with all of its blocks in the page cache: on a tmpfs (/dev/shm by
 * default) or, on another filesystem, read once after writing, so that the cases measure the backends' I/O
 * paths, not the disk.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const TMPFS_MAGIC = 0x01021994;

/** A prepared image. */
export interface CachedImage {
  path: string;
  size: number;
  /** It lives on a tmpfs (otherwise it was read once to fill the page cache). */
  onTmpfs: boolean;
  /** Delete it (idempotent). */
  remove(): void;
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

function isTmpfs(dir: string): boolean {
  return fs.statfsSync(dir).type === TMPFS_MAGIC;
}

/** Where to put it: `dir`, else /dev/shm when it is a tmpfs with room, else the temporary directory. */
function chooseDir(size: number, dir: string | undefined): string {
  if (dir) return dir;
  try {
    if (isTmpfs('/dev/shm') && freeBytes('/dev/shm') > size * 2) return '/dev/shm';
  } catch {
    // no /dev/shm
  }
  return os.tmpdir();
}

/** Read a file through once, so its pages are cached. */
function readThrough(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    for (let pos = 0; ; pos += buf.length) if (fs.readSync(fd, buf, 0, buf.length, pos) < buf.length) break;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Create an image of `size` bytes with `write` (which fills a file, e.g. blk-bench --make-pattern, so that no
 * block is a hole) and bring it into the page cache.
 */
export async function prepareImage(o: { size: number; dir?: string; write: (file: string) => Promise<void> }): Promise<CachedImage> {
  const dir = chooseDir(o.size, o.dir);
  const file = path.join(dir, `vhost-user-bench-${process.pid}.img`);
  const remove = (): void => fs.rmSync(file, { force: true });
  try {
    await o.write(file);
    const onTmpfs = isTmpfs(dir);
    if (!onTmpfs) readThrough(file);
    return { path: file, size: o.size, onTmpfs, remove };
  } catch (err) {
    remove();
    throw err;
  }
}
