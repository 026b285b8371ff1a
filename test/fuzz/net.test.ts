/** Fuzz smoke run: virtio-net ports on one switch driven by hostile guests, against a model (see targets/net.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { netTarget } from './targets/net.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: net (ports on a switch: frames, receive buffers, control commands, ring enables), 500 cases', async () => {
  await smoke(netTarget, 500);
  // Both transmit paths, every receive outcome, offloads and the control commands were reached.
  for (const key of ['tx-pop-single', 'tx-pop-chain', 'tx-misaligned', 'tx-forward-csum', 'tx-error-short', 'tx-error-gso',
    'tx-error-csum-range', 'tx-dropped-ring-disabled', 'tx-continued-pass', 'switch-flood', 'switch-unicast',
    'switch-hairpin', 'switch-aged', 'switch-table-full', 'frames-received', 'frames-received-merged',
    'frames-received-csum-completed', 'frames-received-partial-csum', 'rx-filtered', 'rx-too-small',
    'rx-merge-out-of-buffers', 'rx-merge-first-too-small', 'ctrl-promisc-ok', 'ctrl-table-ok', 'ctrl-addr-ok',
    'ctrl-pairs-ok', 'ctrl-table-err', 'ring-broken-tx', 'ring-broken-rx']) {
    assert.ok(seen(netTarget, key) > 0, `${key} never happened`);
  }
});
