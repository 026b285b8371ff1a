/**
 * How bench:scsi runs the target's case (bench/scsi/target.ts): by the protocol the target is judged by, unless
 * the command line sets the protocol itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CASES } from '../../bench/common/cases.js';
import type { RunSettings } from '../../bench/common/runner.js';
import { TARGET, TARGET_PROTOCOL, settingsFor } from '../../bench/scsi/target.js';

const base: RunSettings = { seconds: 3, warmup: 0.5, size: 1 << 30, repeat: 1, restartEvery: 0, quietWaitMs: 5000, cpus: 2, pin: false };
const target = CASES.find((c) => c.name === TARGET.case)!;
const other = CASES.find((c) => c.name !== TARGET.case)!;

test('the target case follows the judging protocol when the command line does not set one', () => {
  const s = settingsFor(target, base, {});
  assert.equal(s.repeat, TARGET_PROTOCOL.repeat);
  assert.equal(s.restartEvery, TARGET_PROTOCOL.restartEvery);
  assert.equal(s.seconds, TARGET_PROTOCOL.seconds);
  assert.ok(s.repeat >= 20 && s.restartEvery > 0 && s.restartEvery < s.repeat, 'several starts of each daemon, 20 pairs');
  assert.equal(s.warmup, base.warmup);
  assert.equal(base.repeat, 1, 'the shared settings are not changed');
});

test('--time still sets the target case\'s run length', () => {
  assert.equal(settingsFor(target, { ...base, seconds: 0.4 }, { time: '0.4' }).seconds, 0.4);
});

test('--repeat or --restart-every on the command line: the target case runs as told', () => {
  assert.equal(settingsFor(target, base, { repeat: '1' }), base);
  assert.equal(settingsFor(target, base, { 'restart-every': '0' }), base);
});

test('other cases run with the common settings', () => {
  assert.equal(settingsFor(other, base, {}), base);
});
