/**
 * The CI smoke run of a fuzz target: a fixed seed and a fixed number of cases (a few seconds each), failing with
 * every failure's message and reproducer command.
 */
import assert from 'node:assert/strict';
import { reproducer, runTarget, type FuzzTarget, type RunResult } from './harness.js';

/** The seed of every smoke run (a failing case is reproduced with `npm run fuzz -- --seed` this `--case N`). */
export const SMOKE_SEED = 20261121;

/** Run `cases` cases of `target` from {@link SMOKE_SEED}; assert that none failed and that resources were audited. */
export async function smoke(target: FuzzTarget, cases: number): Promise<RunResult> {
  const result = await runTarget(target, { seed: SMOKE_SEED, cases, stopOnFailure: false });
  assert.deepEqual(result.failures.map((f) => `${f.error}\n  reproduce: ${reproducer(f.target, f.seed, f.batchStart ?? f.caseIndex)}` +
    `${f.batchStart !== undefined ? ` --count ${f.caseIndex - f.batchStart + 1}` : ''}`), []);
  assert.equal(result.cases, cases);
  assert.ok(result.audits >= 1, 'fds and mappings were audited');
  return result;
}

/** How often the target's statistics counted `key` (to check that the smoke run reached a path at all). */
export function seen(target: FuzzTarget, key: string): number {
  return target.stats?.get(key) ?? 0;
}
