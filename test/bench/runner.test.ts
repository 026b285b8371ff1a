/**
 * The benchmark runner's ratios (bench/common/runner.ts): best against best, median against median, and the
 * median of adjacent pairs, which the virtio-scsi target is judged on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CASES } from '../../bench/common/cases.js';
import type { DriverReport } from '../../bench/common/c-driver.js';
import { sideRatio, type CaseRun } from '../../bench/common/runner.js';

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
