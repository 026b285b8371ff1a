/**
 * The target of issues #7 and #8 and how bench:scsi runs its case: virtio-scsi within 15% of virtio-blk's IOPS on
 * `rand4k-qd32-q1`, judged on the median of adjacent run pairs over several starts of each daemon.
 */
import type { BenchCase } from '../common/cases.js';
import type { RunSettings } from '../common/runner.js';

export const TARGET = { case: 'rand4k-qd32-q1', minRatio: 0.85 } as const;

/**
 * How the target case runs unless --repeat or --restart-every says otherwise: 20 adjacent pairs over four starts of
 * each daemon (bench/scsi/README.md). One pair says little here: single pairs range from 0.5 to 1.5.
 */
export const TARGET_PROTOCOL = { seconds: 1.5, repeat: 20, restartEvery: 5 } as const;

/** What the command line set of the run protocol. */
export interface GivenOptions {
  time?: string | undefined;
  repeat?: string | undefined;
  'restart-every'?: string | undefined;
}

/**
 * The settings case `c` runs with: `s`, except for the target's case when neither --repeat nor --restart-every was
 * given, which then follows {@link TARGET_PROTOCOL} (its time too, unless --time was given).
 */
export function settingsFor(c: BenchCase, s: RunSettings, given: GivenOptions): RunSettings {
  if (c.name !== TARGET.case || given.repeat !== undefined || given['restart-every'] !== undefined) return s;
  return {
    ...s, repeat: TARGET_PROTOCOL.repeat, restartEvery: TARGET_PROTOCOL.restartEvery,
    seconds: given.time === undefined ? TARGET_PROTOCOL.seconds : s.seconds,
  };
}
