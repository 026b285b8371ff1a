/**
 * Builds the initramfs the test guest boots from: busybox, the virtio kernel
 * modules and an /init that loads them, runs the test's script and powers off.
 *
 * The initramfs is two gzip'd newc archives back to back (the kernel unpacks
 * concatenated archives in order): a common part cached per kernel/busybox,
 * and a small per-test part with /test.sh, helpers and extra files.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { type CpioEntry, normalizeArchivePath, parentDirs, writeCpio } from './cpio.js';
import { type GuestHelper, buildGuestHelper } from './helpers.js';
import { type GuestKernel, findGuestKernel, findStaticBusybox, guestCacheDir } from './host.js';

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);
const execFileAsync = promisify(execFile);

/** Bump when the layout of the common part changes, to invalidate caches. */
const FORMAT_VERSION = 2;

/**
 * Modules loaded by /init, in this order (each preceded by its modules.dep
 * dependencies). The crypto providers come before their library users so
 * those find an implementation without calling out to modprobe.
 */
export const GUEST_MODULES: readonly string[] = [
  // virtio core and PCI transport
  'virtio_ring',
  'virtio',
  'virtio_pci_legacy_dev',
  'virtio_pci_modern_dev',
  'virtio_pci',
  // block
  'virtio_blk',
  // net
  'failover',
  'net_failover',
  'virtio_net',
  // console
  'virtio_console',
  // scsi (sd_mod needs the T10 PI / CRC stack)
  'scsi_common',
  'scsi_mod',
  'crct10dif_common',
  'crct10dif_generic',
  'crc_t10dif',
  'crc64',
  'crc64_rocksoft_generic',
  'crc64_rocksoft',
  't10_pi',
  'sd_mod',
  'virtio_scsi',
  // rng (rng-core is built into Debian's kernel)
  'rng_core',
  'virtio_rng',
];

/** Lines /init prints on the serial console. */
export const GUEST_MARKERS = {
  /** `GUEST-MODULE-FAILED <name>`: insmod failed (boot goes on). */
  moduleFailed: 'GUEST-MODULE-FAILED',
  /** `GUEST-READY uptime=<seconds>`: modules loaded, /test.sh about to run. */
  ready: 'GUEST-READY',
  /** `GUEST-EXIT <code>`: /test.sh exited with <code>; poweroff follows. */
  exit: 'GUEST-EXIT',
} as const;

/** A file added to the per-test part of the initramfs. */
export interface InitramfsFile {
  /** Absolute guest path, e.g. `/etc/data.bin`; parent directories are created. */
  readonly path: string;
  readonly data: string | Uint8Array;
  /** Permission bits; default 0o644. */
  readonly mode?: number;
}

/** What the guest should run. */
export interface InitramfsOptions {
  /**
   * Shell script run by busybox `sh` as /test.sh after the modules are loaded,
   * from /tmp, with stdin from /dev/null and stdout/stderr on the serial console.
   * Its exit status is reported as `GUEST-EXIT <code>`.
   */
  readonly script: string;
  readonly extraFiles?: readonly InitramfsFile[];
  /** Static helpers to install as /bin/<name> (compiled on demand; see helpers.ts). */
  readonly helpers?: readonly GuestHelper[];
}

/** The module files of one kernel, keyed by normalised name (`-` → `_`). */
interface ModuleIndex {
  readonly files: Map<string, { readonly path: string; readonly deps: readonly string[] }>;
  readonly builtin: Set<string>;
}

function moduleNameOf(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

async function readModuleIndex(kernel: GuestKernel): Promise<ModuleIndex> {
  const files = new Map<string, { path: string; deps: string[] }>();
  const dep = await readFile(join(kernel.modulesDir, 'modules.dep'), 'utf8');
  for (const line of dep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const path = line.slice(0, colon);
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((d) => d !== '')
      .map(moduleNameOf);
    files.set(moduleNameOf(path), { path: join(kernel.modulesDir, path), deps });
  }
  const builtin = new Set<string>();
  try {
    const text = await readFile(join(kernel.modulesDir, 'modules.builtin'), 'utf8');
    for (const line of text.split('\n')) if (line.trim() !== '') builtin.add(moduleNameOf(line.trim()));
  } catch {
    // no modules.builtin: treat nothing as built in
  }
  return { files, builtin };
}

/** Load order for `wanted`, dependencies first; built-in modules are dropped. */
function resolveLoadOrder(index: ModuleIndex, wanted: readonly string[]): string[] {
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string, chain: readonly string[]): void => {
    if (seen.has(name)) return;
    if (chain.includes(name)) throw new Error(`guest modules: dependency cycle ${[...chain, name].join(' -> ')}`);
    const entry = index.files.get(name);
    if (entry === undefined) {
      if (index.builtin.has(name)) {
        seen.add(name);
        return;
      }
      throw new Error(`guest modules: ${name} is neither in modules.dep nor built in (chain: ${chain.join(' -> ') || '-'})`);
    }
    for (const dep of entry.deps) visit(dep, [...chain, name]);
    seen.add(name);
    order.push(name);
  };
  for (const name of wanted) visit(name.replace(/-/g, '_'), []);
  return order;
}

const SIGNATURE_MAGIC = Buffer.from('~Module signature appended~\n');
/** `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len. */
const SIGNATURE_INFO_SIZE = 12;

/**
 * Drops the appended module signature. Verifying it costs the TCG guest
 * noticeable time per module; Debian does not enforce signatures, so the
 * kernel loads unsigned modules (and marks itself tainted).
 */
export function stripModuleSignature(data: Buffer): Buffer {
  const magicAt = data.length - SIGNATURE_MAGIC.length;
  if (magicAt < SIGNATURE_INFO_SIZE || !data.subarray(magicAt).equals(SIGNATURE_MAGIC)) return data;
  const sigLen = data.readUInt32BE(magicAt - 4);
  const end = magicAt - SIGNATURE_INFO_SIZE - sigLen;
  return end > 0 ? data.subarray(0, end) : data;
}

/** Module bytes as busybox insmod can load them: decompressed, signature stripped. */
async function loadModuleFile(path: string): Promise<Buffer> {
  let data: Buffer;
  if (path.endsWith('.ko')) {
    data = await readFile(path);
  } else if (path.endsWith('.ko.gz')) {
    data = await gunzipAsync(await readFile(path));
  } else if (path.endsWith('.ko.xz') || path.endsWith('.ko.zst')) {
    const tool = path.endsWith('.xz') ? 'xz' : 'zstd';
    data = (await execFileAsync(tool, ['-dc', path], { encoding: 'buffer', maxBuffer: 256 << 20 })).stdout;
  } else {
    throw new Error(`guest modules: unknown module file type ${path}`);
  }
  return stripModuleSignature(data);
}

function initScript(modules: readonly string[]): string {
  return `#!/bin/sh
# PID 1 of the test guest; generated by test/guest/initramfs.ts.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# Module parameters come from the kernel command line as <module>.<param>=<value>,
# as modprobe would pass them (insmod does not read /proc/cmdline itself).
modparams() {
  for arg in $(cat /proc/cmdline); do
    case "$arg" in "$1".*) printf '%s ' "\${arg#"$1".}" ;; esac
  done
}
for m in ${modules.join(' ')}; do
  insmod "/lib/modules/guest/$m.ko" $(modparams "$m") || echo "${GUEST_MARKERS.moduleFailed} $m"
done
echo "${GUEST_MARKERS.ready} uptime=$(cut -d' ' -f1 /proc/uptime)"
cd /tmp
sh /test.sh </dev/null
rc=$?
sync
echo "${GUEST_MARKERS.exit} $rc"
poweroff -f
# Not reached unless poweroff failed; exiting PID 1 panics, and panic=-1 reboots (QEMU -no-reboot exits).
exit 1
`;
}

async function writeAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

interface CommonPart {
  readonly key: string;
  readonly path: string;
}

let commonPart: Promise<CommonPart> | undefined;

/** The cached common archive (busybox, modules, /init), built once per kernel/busybox. */
function buildCommonPart(): Promise<CommonPart> {
  if (commonPart === undefined) {
    commonPart = buildCommonPartUncached();
    commonPart.catch(() => {
      commonPart = undefined;
    });
  }
  return commonPart;
}

async function buildCommonPartUncached(): Promise<CommonPart> {
  const kernel = findGuestKernel();
  if (kernel === null) throw new Error('guest initramfs: no kernel in /boot with modules in /lib/modules');
  const busybox = findStaticBusybox();
  if (busybox === null) throw new Error('guest initramfs: no static /bin/busybox (apt-get install busybox-static)');
  const index = await readModuleIndex(kernel);
  const order = resolveLoadOrder(index, GUEST_MODULES);
  const init = initScript(order);
  const bb = await stat(busybox);
  const key = createHash('sha256')
    .update(JSON.stringify({ FORMAT_VERSION, kernel: kernel.version, busybox: [busybox, bb.size, bb.mtimeMs], order, init }))
    .digest('hex')
    .slice(0, 16);
  const dir = guestCacheDir();
  const path = join(dir, `common-${kernel.version}-${key}.cpio.gz`);
  if (await isFile(path)) return { key, path };

  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'run', 'root', 'etc']) {
    entries.push({ kind: 'dir', path: d });
  }
  entries.push({ kind: 'dir', path: 'tmp', mode: 0o1777 });
  // The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
  entries.push({ kind: 'chardev', path: 'dev/console', major: 5, minor: 1 });
  entries.push({ kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  entries.push({ kind: 'file', path: 'bin/busybox', data: await readFile(busybox), mode: 0o755 });
  entries.push({ kind: 'symlink', path: 'bin/sh', target: 'busybox' });
  for (const d of ['lib', 'lib/modules', 'lib/modules/guest']) entries.push({ kind: 'dir', path: d });
  for (const name of order) {
    const file = index.files.get(name);
    if (file === undefined) throw new Error(`guest modules: ${name} vanished from the index`);
    entries.push({ kind: 'file', path: `lib/modules/guest/${name}.ko`, data: await loadModuleFile(file.path) });
  }
  entries.push({ kind: 'file', path: 'init', data: Buffer.from(init), mode: 0o755 });
  const archive = await gzipAsync(writeCpio(entries, 1));
  await mkdir(dir, { recursive: true });
  await writeAtomic(path, archive);
  return { key, path };
}

/** Per-test archives use inode numbers far above the common part's. */
const TEST_PART_FIRST_INO = 1_000_000;
/** Combined initramfs files unused this long are deleted. */
const STALE_MS = 24 * 60 * 60 * 1000;
let pruned = false;

async function pruneStale(dir: string): Promise<void> {
  if (pruned) return;
  pruned = true;
  const now = Date.now();
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    try {
      if (now - (await stat(path)).mtimeMs > STALE_MS) await rm(path, { force: true });
    } catch {
      // raced with another process: fine
    }
  }
}

/**
 * Builds an initramfs that boots, loads the virtio modules, runs `script`
 * and powers off, printing `GUEST-EXIT <code>` first. Returns the path of a
 * gzip'd newc file for QEMU's `-initrd`. Results are content-addressed in the
 * cache directory (`.cache/guest/initrd/`), so the same inputs give the same
 * file and nothing needs deleting by the caller.
 */
export async function buildInitramfs(options: InitramfsOptions): Promise<string> {
  const common = await buildCommonPart();
  const entries: CpioEntry[] = [];
  const known = new Set<string>(['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'tmp', 'root', 'etc', 'lib']);
  const files: { path: string; data: Uint8Array; mode: number }[] = [];
  files.push({ path: 'test.sh', data: Buffer.from(options.script), mode: 0o755 });
  for (const helper of new Set(options.helpers ?? [])) {
    files.push({ path: `bin/${helper}`, data: await readFile(await buildGuestHelper(helper)), mode: 0o755 });
  }
  for (const f of options.extraFiles ?? []) {
    const mode = f.mode ?? 0o644;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new RangeError(`initramfs: bad mode for ${f.path}`);
    files.push({
      path: normalizeArchivePath(f.path),
      data: typeof f.data === 'string' ? Buffer.from(f.data) : f.data,
      mode,
    });
  }
  entries.push(...parentDirs(files.map((f) => f.path), known));
  for (const f of files) entries.push({ kind: 'file', ...f });
  const part = writeCpio(entries, TEST_PART_FIRST_INO);
  const key = createHash('sha256').update(common.key).update(part).digest('hex').slice(0, 24);
  const dir = join(guestCacheDir(), 'initrd');
  await mkdir(dir, { recursive: true });
  await pruneStale(dir);
  const path = join(dir, `${key}.cpio.gz`);
  if (await isFile(path)) {
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined); // keep it from being pruned
    return path;
  }
  const combined = Buffer.concat([await readFile(common.path), await gzipAsync(part)]);
  await writeAtomic(path, combined);
  return path;
}
