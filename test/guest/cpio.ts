/**
 * Writer for the "newc" cpio format (magic 070701), the only format the Linux
 * initramfs unpacker accepts. Written by hand so the harness needs no cpio
 * binary at run time.
 *
 * Layout per entry: a 110-byte ASCII header (magic + 13 eight-digit hex
 * fields), the NUL-terminated name padded to a multiple of 4 bytes (counting
 * the header), then the data padded to a multiple of 4 bytes. The archive ends
 * with an entry named `TRAILER!!!`.
 */

/** File type bits of `st_mode`, as the kernel expects them in the header. */
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

/** One archive member. Paths are relative to the archive root, without a leading slash. */
export type CpioEntry =
  | { readonly kind: 'dir'; readonly path: string; readonly mode?: number }
  | { readonly kind: 'file'; readonly path: string; readonly data: Uint8Array; readonly mode?: number }
  | { readonly kind: 'symlink'; readonly path: string; readonly target: string }
  | { readonly kind: 'chardev'; readonly path: string; readonly major: number; readonly minor: number; readonly mode?: number };

const HEADER_SIZE = 110;
const MAX_FIELD = 0xffffffff;

function hex8(value: number, field: string): string {
  if (!Number.isInteger(value) || value < 0 || value > MAX_FIELD) {
    throw new RangeError(`cpio: field ${field} out of range: ${value}`);
  }
  return value.toString(16).padStart(8, '0');
}

function pad4(length: number): number {
  return (4 - (length % 4)) % 4;
}

/** Strips leading "/" and "./", rejects empty names and ".." components. */
export function normalizeArchivePath(path: string): string {
  const trimmed = path.replace(/^(\.?\/)+/, '').replace(/\/+$/, '');
  if (trimmed === '' || trimmed.split('/').some((part) => part === '..' || part === '')) {
    throw new Error(`cpio: invalid archive path ${JSON.stringify(path)}`);
  }
  return trimmed;
}

interface HeaderFields {
  readonly ino: number;
  readonly mode: number;
  readonly nlink: number;
  readonly fileSize: number;
  readonly rdevMajor: number;
  readonly rdevMinor: number;
  readonly name: string;
}

function header(fields: HeaderFields): Buffer {
  const name = Buffer.from(`${fields.name}\0`, 'utf8');
  const text =
    '070701' +
    hex8(fields.ino, 'ino') +
    hex8(fields.mode, 'mode') +
    hex8(0, 'uid') +
    hex8(0, 'gid') +
    hex8(fields.nlink, 'nlink') +
    hex8(0, 'mtime') + // fixed: archives must be byte-for-byte reproducible for caching
    hex8(fields.fileSize, 'filesize') +
    hex8(0, 'devmajor') +
    hex8(0, 'devminor') +
    hex8(fields.rdevMajor, 'rdevmajor') +
    hex8(fields.rdevMinor, 'rdevminor') +
    hex8(name.length, 'namesize') +
    hex8(0, 'check');
  const head = Buffer.from(text, 'ascii');
  return Buffer.concat([head, name, Buffer.alloc(pad4(HEADER_SIZE + name.length))]);
}

/**
 * Serialises entries into one uncompressed newc archive, trailer included.
 * Inode numbers start at `firstIno` so that several archives concatenated
 * into one initramfs never share an inode number (the unpacker treats equal
 * inode numbers with nlink > 1 as hard links).
 */
export function writeCpio(entries: readonly CpioEntry[], firstIno = 1): Buffer {
  const parts: Buffer[] = [];
  let ino = firstIno;
  for (const entry of entries) {
    const name = normalizeArchivePath(entry.path);
    let type: number;
    let perm: number;
    let data: Uint8Array = new Uint8Array(0);
    let rdevMajor = 0;
    let rdevMinor = 0;
    switch (entry.kind) {
      case 'dir':
        type = S_IFDIR;
        perm = entry.mode ?? 0o755;
        break;
      case 'file':
        type = S_IFREG;
        perm = entry.mode ?? 0o644;
        data = entry.data;
        break;
      case 'symlink':
        type = S_IFLNK;
        perm = 0o777;
        data = Buffer.from(entry.target, 'utf8');
        break;
      case 'chardev':
        type = S_IFCHR;
        perm = entry.mode ?? 0o600;
        rdevMajor = entry.major;
        rdevMinor = entry.minor;
        break;
    }
    if (!Number.isInteger(perm) || perm < 0 || perm > 0o7777) {
      throw new RangeError(`cpio: bad permission bits ${perm} for ${name}`);
    }
    const mode = type | perm;
    parts.push(
      header({
        ino: ino++,
        mode,
        nlink: entry.kind === 'dir' ? 2 : 1,
        fileSize: data.length,
        rdevMajor,
        rdevMinor,
        name,
      }),
    );
    if (data.length > 0) {
      parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength), Buffer.alloc(pad4(data.length)));
    }
  }
  parts.push(header({ ino: 0, mode: 0, nlink: 1, fileSize: 0, rdevMajor: 0, rdevMinor: 0, name: 'TRAILER!!!' }));
  return Buffer.concat(parts);
}

/** Adds directory entries for every parent of `paths` not already in `known` (which is updated). */
export function parentDirs(paths: readonly string[], known: Set<string>): CpioEntry[] {
  const dirs: CpioEntry[] = [];
  for (const path of paths) {
    const parts = normalizeArchivePath(path).split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!known.has(dir)) {
        known.add(dir);
        dirs.push({ kind: 'dir', path: dir });
      }
    }
  }
  return dirs;
}
