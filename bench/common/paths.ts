/**
 * Where things are: the repository root (found from this file, so it works from bench/ and from dist/bench/),
 * the compile cache and the results folder.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && fs.existsSync(path.join(dir, 'bench'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root (package.json next to bench/)');
    dir = up;
  }
}

/** The repository root. */
export const repoRoot = findRoot();

/** Compiled helpers (C drivers), cached by source hash: `bench/.build/`. */
export const buildDir = path.join(repoRoot, 'bench', '.build');

/** Benchmark results: `bench/results/`. */
export const resultsDir = path.join(repoRoot, 'bench', 'results');

/** The CLI entry point of the compiled project. */
export const cliPath = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
