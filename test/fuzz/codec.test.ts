/** Fuzz smoke run: the message parser against a reference parser, and every payload decoder (see targets/codec.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { codecTarget } from './targets/codec.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: codec (parser over a fake recvmsg, decoders), 1200 cases', async () => {
  await smoke(codecTarget, 1200);
  // The run reached every ending and every fd fate, and decoded valid payloads of every kind.
  for (const key of ['ending-eof', 'ending-error', 'ending-blocked', 'fds-delivered', 'fds-closed-by-parser',
    'fds-dropped-by-kernel', 'decoded-memory-table', 'decoded-config', 'decoded-inflight', 'decoded-vring-address']) {
    assert.ok(seen(codecTarget, key) > 0, `${key} never happened`);
  }
});
