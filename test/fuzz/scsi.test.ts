/** Fuzz smoke run: the virtio-scsi device and SCSI target on random requests against a reference (see targets/scsi.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scsiTarget } from './targets/scsi.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: scsi (random commands, layouts, task management, hotplug on the real framework), 800 cases', async () => {
  await smoke(scsiTarget, 800);
  // Reads and writes that ran and were refused, every kind of misaddressed or misshapen request, and the rest.
  for (const key of ['read-r0-s0', 'write-r0-s0', 'read-refused-r0-s2', 'write-refused-r0-s2', 'bad-target-r3-s0',
    'rw-no-lun-r0-s2', 'short-r9-s0', 'no-response', 'rw-other-r1-s0', 'other-r0-s0', 'control-completed',
    'event-completed', 'event-reset-1', 'event-reset-2', 'hot-added', 'hot-removed', 'disabled-ring', 'ring-broken']) {
    assert.ok(seen(scsiTarget, key) > 0, `${key} never happened`);
  }
  // Task management ended reads and writes that were in flight on the deferred disks.
  const ended = ['read-r2-s0', 'read-r4-s0', 'write-r2-s0', 'write-r4-s0'].reduce((n, k) => n + seen(scsiTarget, k), 0);
  assert.ok(ended > 0, 'no READ or WRITE was ever aborted or reset in flight');
});
