/** Fuzz smoke run: the virtio-blk device on random requests against a reference (see targets/blk.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blkTarget } from './targets/blk.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: blk (random requests on the real framework), 800 cases', async () => {
  await smoke(blkTarget, 800);
  // Every request type completed with OK, and the error statuses were produced too.
  for (const key of ['in-0', 'out-0', 'flush-0', 'getid-0', 'discard-0', 'wzeroes-0', 'in-1', 'out-1', 'other-2',
    'discard-2', 'no-status', 'disabled-ring', 'ring-broken']) {
    assert.ok(seen(blkTarget, key) > 0, `${key} never happened`);
  }
});
