/**
 * Writing benchmark results: `bench/results/<name>-<UTC timestamp>.json` plus `<name>-latest.json`, and a
 * description of the machine they were measured on.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resultsDir } from './paths.js';

/** The machine and tools a run used. */
export interface HostInfo {
  cpus: number;
  cpuModel: string;
  kernel: string;
  node: string;
  memoryGiB: number;
}

export function hostInfo(): HostInfo {
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    kernel: os.release(),
    node: process.version,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  };
}

/** First line of `<command> --version`, or undefined when it does not run. */
export function toolVersion(command: string): string | undefined {
  try {
    return execFileSync(command, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]?.trim();
  } catch {
    return undefined;
  }
}

/** Write the result twice (dated and latest); returns both paths. */
export function writeResults(name: string, data: unknown, dir = resultsDir): { dated: string; latest: string } {
  fs.mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:]/g, '').replace(/\.\d+Z$/, 'Z');
  const dated = path.join(dir, `${name}-${stamp}.json`);
  const latest = path.join(dir, `${name}-latest.json`);
  const text = JSON.stringify(data, null, 2) + '\n';
  // Through a temporary file so a reader never sees half a result.
  for (const file of [dated, latest]) {
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file);
  }
  return { dated, latest };
}
