/**
 * Small static C programs for the guest, for what busybox cannot do. Each is
 * compiled on first use with `gcc -static` and cached by source hash.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { findExecutable, guestCacheDir, repoRoot } from './host.js';

const execFileAsync = promisify(execFile);

/**
 * Helpers that can be put into the guest at /bin/<name>:
 * - `blkzeroout DEV OFFSET LENGTH`: BLKZEROOUT ioctl (bytes; decimal or 0x-hex).
 *
 * Not needed: busybox has `blkdiscard`, and its `dd` supports `iflag=direct` / `oflag=direct`.
 */
export const GUEST_HELPERS = ['blkzeroout'] as const;

/** Name of a guest helper program. */
export type GuestHelper = (typeof GUEST_HELPERS)[number];

function sourcePath(name: GuestHelper): string {
  return join(repoRoot(), 'test', 'guest', 'helpers', `${name}.c`);
}

const inFlight = new Map<GuestHelper, Promise<string>>();

/**
 * Path of the compiled, statically linked helper, building it if needed.
 * Throws an Error naming the cause (no gcc, no static libc, compile errors).
 */
export function buildGuestHelper(name: GuestHelper): Promise<string> {
  let pending = inFlight.get(name);
  if (pending === undefined) {
    pending = compile(name);
    inFlight.set(name, pending);
    // A failure is not cached: a later call retries (e.g. after installing gcc).
    pending.catch(() => inFlight.delete(name));
  }
  return pending;
}

async function compile(name: GuestHelper): Promise<string> {
  const src = sourcePath(name);
  const source = await readFile(src);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = join(guestCacheDir(), 'helpers');
  const out = join(dir, `${name}-${hash}`);
  try {
    if ((await stat(out)).isFile()) return out;
  } catch {
    // not built yet
  }
  const gcc = findExecutable('gcc') ?? findExecutable('cc');
  if (gcc === null) {
    throw new Error(`guest helper ${name}: no C compiler (apt-get install gcc libc6-dev)`);
  }
  await mkdir(dir, { recursive: true });
  // Unique temporary name: parallel test processes may compile at the same time.
  const tmp = `${out}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await execFileAsync(gcc, ['-static', '-O2', '-s', '-Wall', '-o', tmp, src], { timeout: 120_000 });
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new Error(`guest helper ${name}: static build with ${gcc} failed (libc6-dev provides libc.a):\n${detail}`);
  }
  return out;
}

/** Null if the helper can be built here, else the reason it cannot (for `t.skip`). */
export async function guestHelperUnavailable(name: GuestHelper): Promise<string | null> {
  try {
    await buildGuestHelper(name);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}
