/**
 * The benchmark runner's ratios (bench/common/runner.ts): best against best, median against median, and the
 * median of adjacent pairs, which the virtio-scsi target is judged on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CASES } from '../../bench/common/cases.js';
import type { DriverReport } from '../../bench/common/c-driver.js';
import { BenchDaemon } from '../../bench/common/daemon.js';
import { runCase, sideRatio, type CaseRun, type RunSettings, type Side } from '../../bench/common/runner.js';

function report(iops: number, cpuUsPerIo: number): DriverReport {
  return { iops, backendCpuUsPerIo: cpuUsPerIo } as DriverReport;
}

function caseRun(a: number[], b: number[]): CaseRun {
  return {
    case: CASES[0]!,
    sides: {
      a: { samples: a, best: report(Math.max(...a), 0.3) },
      b: { samples: b, best: report(Math.max(...b), 0.2) },
    },
  };
}

test('sideRatio: the paired ratio is the median of run i against run i, with its range', () => {
  // The machine's speed drifts: best against best compares a fast moment of one side with a slow one of the other.
  const r = sideRatio(caseRun([5, 2, 2.7, 1.8, 4.4], [4, 2.5, 3, 2, 5]), 'a', 'b')!;
  assert.equal(r.iops, 1);
  assert.equal(r.medianIops, 2.7 / 3);
  assert.equal(r.pairs, 5);
  // Pair ratios 1.25, 0.8, 0.9, 0.9, 0.88.
  assert.ok(Math.abs(r.pairedIops! - 0.9) < 1e-12);
  assert.deepEqual(r.pairedRange, [0.8, 1.25]);
  assert.ok(Math.abs(r.cpuPerIo! - 1.5) < 1e-12);
});

test('sideRatio: no paired ratio when a side lost runs (run i of one is not run i of the other)', () => {
  const r = sideRatio(caseRun([5, 2, 2.7], [4, 2.5]), 'a', 'b')!;
  assert.equal(r.pairedIops, undefined);
  assert.equal(r.pairs, undefined);
  assert.equal(r.iops, 5 / 4);
});

test('sideRatio: a failed side gives no ratio', () => {
  const run = caseRun([1], [2]);
  run.sides.b!.error = 'exited';
  assert.equal(sideRatio(run, 'a', 'b'), undefined);
});

/**
 * runCase with stand-in daemons (a Node process holding a listening socket) and a stand-in driver that reports the
 * pid it was given as its IOPS, so each sample says which daemon instance served it.
 */
async function pidsPerRun(repeat: number, restartEvery: number): Promise<Record<string, number[]>> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runner-test-'));
  try {
    const driver = path.join(dir, 'driver.mjs');
    fs.writeFileSync(driver, `#!${process.execPath}
const a = process.argv;
const pid = Number(a[a.indexOf('--backend-pid') + 1]);
console.log(JSON.stringify({ iops: pid, ios: 1, errors: 0, seconds: 1, foreignCpuSec: 0 }));
`, { mode: 0o755 });
    const side = (label: string): Side => ({
      label,
      binary: driver,
      start: () => {
        const socketPath = path.join(dir, `${label}.sock`);
        return BenchDaemon.start({
          name: label, command: process.execPath, socketPath,
          args: ['-e', 'require("node:net").createServer().listen(process.argv[1])', socketPath],
        });
      },
    });
    const settings: RunSettings = { seconds: 1, warmup: 0, size: 1 << 20, repeat, restartEvery, quietWaitMs: 0, cpus: 2, pin: false };
    const run = await runCase(CASES[0]!, [side('a'), side('b')], settings);
    return Object.fromEntries(Object.entries(run.sides).map(([k, v]) => {
      assert.equal(v.error, undefined);
      return [k, v.samples];
    }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('runCase: one daemon per side for the whole case by default', async () => {
  const pids = await pidsPerRun(4, 0);
  for (const label of ['a', 'b']) {
    assert.equal(pids[label]!.length, 4);
    assert.equal(new Set(pids[label]).size, 1, `${label}: ${pids[label]}`);
  }
  assert.notEqual(pids.a![0], pids.b![0]);
});

test('runCase: --restart-every N starts every daemon afresh after each N of its runs', async () => {
  const pids = await pidsPerRun(5, 2);
  for (const label of ['a', 'b']) {
    const p = pids[label]!;
    assert.equal(p.length, 5);
    // Runs 0-1 on one instance, 2-3 on a second, 4 on a third.
    assert.equal(p[0], p[1]);
    assert.equal(p[2], p[3]);
    assert.equal(new Set(p).size, 3, `${label}: ${p}`);
  }
});
