/** Fuzz smoke run: the virtio-console device's control messages, queues and ports (see targets/console.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { consoleTarget } from './targets/console.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: console (control messages, buffers, port data, host operations), 1500 cases', async () => {
  await smoke(consoleTarget, 1500);
  assert.ok(seen(consoleTarget, 'control-sent') > 100, 'the device sent control messages');
  assert.ok(seen(consoleTarget, 'bytes-to-host') > 0, 'guest data reached the ports');
  assert.ok(seen(consoleTarget, 'bytes-to-guest') > 0, 'port data reached the guest');
});
