/**
 * Discovery of the host pieces the guest harness needs: QEMU, a Debian kernel
 * with its modules, a static busybox, and the repository's cache directory.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The QEMU binary the harness runs. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** A bootable kernel and the module tree built for it. */
export interface GuestKernel {
  /** Release string, e.g. `6.1.0-56-amd64`. */
  readonly version: string;
  /** Path of the bzImage, e.g. `/boot/vmlinuz-6.1.0-56-amd64`. */
  readonly vmlinuz: string;
  /** `/lib/modules/<version>`. */
  readonly modulesDir: string;
}

/** Finds an executable in `$PATH`; null when absent. */
export function findExecutable(name: string): string | null {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      const st = statSync(candidate);
      if (st.isFile() && (st.mode & 0o111) !== 0) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * The newest kernel under /boot that has a readable bzImage and a module tree
 * (`modules.dep`) in /lib/modules; null when there is none.
 */
export function findGuestKernel(): GuestKernel | null {
  let names: string[];
  try {
    names = readdirSync('/boot');
  } catch {
    return null;
  }
  const versions = names
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .filter((v) => existsSync(join('/lib/modules', v, 'modules.dep')))
    .sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  for (const version of versions) {
    const vmlinuz = join('/boot', `vmlinuz-${version}`);
    try {
      closeSync(openSync(vmlinuz, 'r')); // Ubuntu ships 0600 kernels: must be readable by QEMU
    } catch {
      continue;
    }
    return { version, vmlinuz, modulesDir: join('/lib/modules', version) };
  }
  return null;
}

/**
 * True if `path` is an x86-64 ELF executable without a program interpreter,
 * i.e. statically linked and thus runnable inside the bare initramfs.
 */
export function isStaticElf(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const head = Buffer.alloc(64);
    if (readSync(fd, head, 0, 64, 0) !== 64) return false;
    // ELF magic, ELFCLASS64, little-endian, e_machine EM_X86_64 (62).
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1 || head.readUInt16LE(18) !== 62) {
      return false;
    }
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    if (phentsize < 4 || phnum > 256) return false;
    const table = Buffer.alloc(phentsize * phnum);
    if (readSync(fd, table, 0, table.length, phoff) !== table.length) return false;
    for (let i = 0; i < phnum; i++) {
      if (table.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    }
    return true;
  } finally {
    closeSync(fd);
  }
}

/** Path of a statically linked busybox (Debian's busybox-static), or null. */
export function findStaticBusybox(): string | null {
  for (const candidate of ['/bin/busybox', '/usr/bin/busybox']) {
    if (isStaticElf(candidate)) return candidate;
  }
  return null;
}

/**
 * Everything that keeps a guest from booting here, as human-readable items;
 * empty when QEMU tests can run.
 */
export function missingGuestPrerequisites(): string[] {
  const missing: string[] = [];
  if (findExecutable(QEMU_BINARY) === null) missing.push(`${QEMU_BINARY} (apt-get install qemu-system-x86)`);
  if (findGuestKernel() === null) {
    missing.push('a readable /boot/vmlinuz-* with /lib/modules/<version> (apt-get install linux-image-amd64)');
  }
  if (findStaticBusybox() === null) missing.push('a static /bin/busybox (apt-get install busybox-static)');
  return missing;
}

let cachedRoot: string | undefined;

/** The repository root: the nearest ancestor of this module holding package.json. */
export function repoRoot(): string {
  if (cachedRoot !== undefined) return cachedRoot;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) {
      try {
        const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown };
        if (pkg.name === 'vhost-user') return (cachedRoot = dir);
      } catch {
        // unreadable package.json: keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('guest harness: cannot locate the repository root (package.json)');
    dir = parent;
  }
}

/** Cache for built initramfs parts and helpers: `$VHOST_USER_GUEST_CACHE` or `<repo>/.cache/guest`. */
export function guestCacheDir(): string {
  return process.env['VHOST_USER_GUEST_CACHE'] ?? join(repoRoot(), '.cache', 'guest');
}
