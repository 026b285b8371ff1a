/** Fuzz smoke run: live DeviceServers fed plausible, mutated sessions over sockets (see targets/server.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverTarget } from './targets/server.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: server (echo and blk daemons over real sockets), 500 cases', async () => {
  await smoke(serverTarget, 500);
  assert.ok(seen(serverTarget, 'ping-answered') > 20, 'sessions survived to the ping');
  assert.ok(seen(serverTarget, 'closed-by-daemon') > 20, 'sessions were closed by the daemon');
  assert.ok(seen(serverTarget, 'guest-request') > 100, 'the guest side submitted requests');
});
