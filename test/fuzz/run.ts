/**
 * The long fuzz run: `npm run fuzz -- [--seconds N] [--target T] [--seed S] [--case C [--count K]]`
 * (`node dist/test/fuzz/run.js ...`).
 *
 * Without --target every target runs, each for its share of --seconds (default 60). The seed defaults to a
 * random one and is printed. Prints cases/s per target and, for every failing case, the error and the command
 * that reproduces it (--case runs exactly that case, or K cases from it). Exit code 1 if anything failed.
 */
import { parseArgs } from 'node:util';
import { setLogLevel } from '../../src/util/log.js';
import { reproducer, runTarget, type RunResult } from './harness.js';
import { targets } from './targets/index.js';

const usage = `usage: npm run fuzz -- [--seconds N] [--target ${Object.keys(targets).join('|')}] [--seed S] [--case C [--count K]]

  --seconds N   time budget for the whole run (default 60), shared by the targets
  --target T    one target (default: all)
  --seed S      run seed (default: random; printed)
  --case C      run only case C (as printed in a failure's reproducer); --count K runs K cases from C
  --keep-going  do not stop a target at its first failure

FUZZ_BATCH=1 in the environment checks fds and mappings after every case instead of every batch.
`;

/** Progress lines: rewritten in place on a terminal, every 10 s otherwise. */
function progress(): (cases: number, ms: number) => void {
  let last = 0;
  return (cases, ms) => {
    const line = `  ${cases} cases, ${(cases / (ms / 1000)).toFixed(0)} cases/s`;
    if (process.stdout.isTTY) process.stdout.write(`${line}\r`);
    else if (ms - last >= 10_000) {
      last = ms;
      process.stdout.write(`${line}\n`);
    }
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string' },
      target: { type: 'string' },
      seed: { type: 'string' },
      case: { type: 'string' },
      count: { type: 'string' },
      'keep-going': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(usage);
    return 0;
  }
  const int = (v: string | undefined, name: string, fallback: number): number => {
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`--${name} must be a non-negative integer, got '${v}'`);
    return n;
  };
  const seconds = int(values.seconds, 'seconds', 60);
  const seed = int(values.seed, 'seed', Math.floor(Math.random() * 2 ** 32));
  const names = values.target === undefined ? Object.keys(targets) : [values.target];
  for (const n of names) if (!(n in targets)) throw new Error(`unknown target '${n}' (${Object.keys(targets).join(', ')})`);
  const single = values.case !== undefined;
  // The code under test logs through the global logger; only errors are of interest here.
  setLogLevel('error');

  process.stdout.write(`fuzz: seed ${seed}, ${single ? `case ${values.case}` : `${seconds} s`}, targets ${names.join(', ')}\n`);
  const results: RunResult[] = [];
  for (const name of names) {
    const target = targets[name]!;
    process.stdout.write(`\n[${name}] ${target.description}\n`);
    const result = await runTarget(target, single
      ? { seed, first: int(values.case, 'case', 0), cases: int(values.count, 'count', 1), stopOnFailure: false }
      : {
        seed, seconds: seconds / names.length, stopOnFailure: !values['keep-going'],
        onProgress: progress(),
      });
    results.push(result);
    const rate = result.cases / Math.max(result.elapsedMs / 1000, 1e-3);
    process.stdout.write(`  ${result.cases} cases in ${(result.elapsedMs / 1000).toFixed(1)} s: ${rate.toFixed(0)} cases/s, ` +
      `${result.audits} resource audits, ${result.failures.length} failure(s)\n`);
    if (target.stats) process.stdout.write(`  exercised: ${target.stats.toString()}\n`);
    for (const f of result.failures) {
      const which = f.batchStart !== undefined ? `cases ${f.batchStart}..${f.caseIndex}` : `case ${f.caseIndex}`;
      process.stdout.write(`  FAILED ${which}: ${f.error}\n`);
      const repro = f.batchStart !== undefined
        ? `${reproducer(name, f.seed, f.batchStart)} --count ${f.caseIndex - f.batchStart + 1}`
        : reproducer(name, f.seed, f.caseIndex);
      process.stdout.write(`  reproduce: ${repro}\n`);
    }
  }
  const failed = results.reduce((n, r) => n + r.failures.length, 0);
  const total = results.reduce((n, r) => n + r.cases, 0);
  process.stdout.write(`\nfuzz: ${total} cases, ${failed} failure(s) (seed ${seed})\n`);
  return failed === 0 ? 0 : 1;
}

main().then((code) => {
  process.exitCode = code;
}, (err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${usage}`);
  process.exitCode = 2;
});
