import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  availEventOffset, availRingBytes, descTableBytes, isValidQueueSize, usedEventOffset, usedRingBytes, vringNeedEvent,
} from '../../src/virtqueue/layout.js';

test('ring sizes per virtio 1.2 2.7', () => {
  assert.equal(descTableBytes(256), 4096);
  assert.equal(availRingBytes(256, false), 516);
  assert.equal(availRingBytes(256, true), 518);
  assert.equal(usedRingBytes(256, false), 2052);
  assert.equal(usedRingBytes(256, true), 2054);
  assert.equal(usedEventOffset(256), 516);
  assert.equal(availEventOffset(256), 2052);
});

test('queue sizes: powers of two up to 32768', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 255, 256, 32768, 65536].map(isValidQueueSize),
    [false, true, true, false, true, false, true, true, false]);
});

test('vringNeedEvent is the spec formula, modulo 2^16', () => {
  assert.equal(vringNeedEvent(0, 1, 0), true);
  assert.equal(vringNeedEvent(1, 1, 0), false);
  assert.equal(vringNeedEvent(0xffff, 0, 0xffff), true);
  assert.equal(vringNeedEvent(0, 0, 0xffff), false);
  assert.equal(vringNeedEvent(0xfffe, 2, 0xfff0), true);
  assert.equal(vringNeedEvent(3, 2, 0xfff0), false);
  assert.equal(vringNeedEvent(5, 5, 5), false, 'no movement, no event');
});
