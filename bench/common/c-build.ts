/**
 * Compile a small C program with gcc on first use and cache the binary under bench/.build/, keyed by a hash of
 * its sources and flags so an edited source rebuilds.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { buildDir } from './paths.js';

/** What to build. */
export interface CProgram {
  /** Binary name prefix, e.g. `blk-bench`. */
  name: string;
  /** Directory of the sources. */
  dir: string;
  /** Files compiled (`.c`) or only hashed (`.h`), relative to `dir`. */
  files: string[];
  /** Compiler flags (default `-O2 -pthread`). */
  flags?: string[];
}

/** A compile failure, with gcc's output. */
export class CBuildError extends Error {
  override name = 'CBuildError';
}

/** Returns the path of the binary, compiling it if no cached build matches the sources. */
export function buildC(program: CProgram): string {
  const flags = program.flags ?? ['-O2', '-pthread', '-Wall', '-Wextra'];
  const hash = crypto.createHash('sha256');
  hash.update(flags.join(' '));
  for (const f of [...program.files].sort()) {
    hash.update(f);
    hash.update(fs.readFileSync(path.join(program.dir, f)));
  }
  const binary = path.join(buildDir, `${program.name}-${hash.digest('hex').slice(0, 16)}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(buildDir, { recursive: true });
  const sources = program.files.filter((f) => f.endsWith('.c')).map((f) => path.join(program.dir, f));
  // Build under a temporary name and rename, so a concurrent or interrupted build never leaves a broken binary.
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    execFileSync('gcc', [...flags, '-o', tmp, ...sources], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new CBuildError(`gcc failed building ${program.name}: ${e.stderr?.toString() || e.message}`);
  }
  fs.renameSync(tmp, binary);
  // Drop builds of older sources.
  for (const f of fs.readdirSync(buildDir)) {
    const stale = f.startsWith(`${program.name}-`) && /^[0-9a-f]{16}$/.test(f.slice(program.name.length + 1));
    if (stale && path.join(buildDir, f) !== binary) fs.rmSync(path.join(buildDir, f), { force: true });
  }
  return binary;
}
