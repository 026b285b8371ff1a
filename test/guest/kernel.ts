/**
 * The kernel image QEMU boots. Under TCG, decompressing Debian's xz bzImage
 * in the guest takes about 4 s, more than the rest of the boot; so the
 * payload is decompressed once on the host into an ELF vmlinux and booted
 * through its PVH entry point (QEMU loads PVH ELF kernels with `-kernel`),
 * which also skips the firmware's Linux loader. Falls back to the bzImage when
 * the kernel has no PVH entry or the payload cannot be extracted.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { type GuestKernel, findExecutable, findGuestKernel, guestCacheDir } from './host.js';

const execFileAsync = promisify(execFile);
const gunzipAsync = promisify(gunzip);

/** What to pass to `-kernel`. */
export interface KernelImage {
  readonly kernel: GuestKernel;
  /** Path for `-kernel`. */
  readonly path: string;
  /** True for an extracted vmlinux booted via PVH, false for the original bzImage. */
  readonly pvh: boolean;
  /** Why the bzImage is used, when `pvh` is false. */
  readonly fallbackReason?: string;
}

/** The compressed payload of a bzImage (boot protocol ≥ 2.08), or null. */
export function bzImagePayload(image: Buffer): Buffer | null {
  if (image.length < 0x260 || image.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  if (image.readUInt16LE(0x206) < 0x208) return null;
  const setupSectors = image[0x1f1] === 0 ? 4 : image[0x1f1]!;
  const start = (setupSectors + 1) * 512 + image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  if (start + length > image.length) return null;
  return image.subarray(start, start + length);
}

/** True if `elf` is an x86-64 ELF with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY). */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let at = Number(elf.readBigUInt64LE(ph + 8));
    const end = Math.min(at + Number(elf.readBigUInt64LE(ph + 32)), elf.length);
    while (at + 12 <= end) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      const type = elf.readUInt32LE(at + 8);
      const name = elf.toString('latin1', at + 12, at + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === 18) return true;
      at += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

async function decompress(payload: Buffer): Promise<Buffer> {
  const run = async (tool: string, args: string[]): Promise<Buffer> => {
    if (findExecutable(tool) === null) throw new Error(`${tool} not installed`);
    const child = execFileAsync(tool, args, { encoding: 'buffer', maxBuffer: 1 << 30 });
    child.child.stdin?.end(payload);
    return (await child).stdout;
  };
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    // The kernel build appends the decompressed size after the xz stream.
    return run('xz', ['-dc', '--single-stream']);
  }
  if (payload[0] === 0x1f && payload[1] === 0x8b) return gunzipAsync(payload);
  if (payload.readUInt32LE(0) === 0xfd2fb528) return run('zstd', ['-dc']);
  throw new Error(`unsupported kernel compression (magic ${payload.subarray(0, 4).toString('hex')})`);
}

let image: Promise<KernelImage> | undefined;

/** The image to boot, extracting and caching the vmlinux on first use. */
export function guestKernelImage(): Promise<KernelImage> {
  if (image === undefined) {
    image = resolveImage();
    image.catch(() => {
      image = undefined;
    });
  }
  return image;
}

async function resolveImage(): Promise<KernelImage> {
  const kernel = findGuestKernel();
  if (kernel === null) throw new Error('guest kernel: no /boot/vmlinuz-* with /lib/modules/<version> (apt-get install linux-image-amd64)');
  const st = await stat(kernel.vmlinuz);
  const dir = guestCacheDir();
  const out = join(dir, `vmlinux-${kernel.version}-${st.size}-${Math.trunc(st.mtimeMs)}`);
  try {
    if ((await stat(out)).isFile()) return { kernel, path: out, pvh: true };
  } catch {
    // not extracted yet
  }
  try {
    const payload = bzImagePayload(await readFile(kernel.vmlinuz));
    if (payload === null) throw new Error('not a bzImage with boot protocol >= 2.08');
    const elf = await decompress(payload);
    if (!hasPvhNote(elf)) throw new Error('vmlinux has no PVH entry note (CONFIG_PVH)');
    await mkdir(dir, { recursive: true });
    const tmp = `${out}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, elf);
      await rename(tmp, out);
    } finally {
      await rm(tmp, { force: true });
    }
    return { kernel, path: out, pvh: true };
  } catch (err) {
    return { kernel, path: kernel.vmlinuz, pvh: false, fallbackReason: (err as Error).message };
  }
}
