/** Fuzz smoke run: split rings and the chain walker in guarded memory against a reference (see targets/chain.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chainTarget } from './targets/chain.js';
import { seen, smoke } from './smoke.js';

test('fuzz smoke: chain (random rings in guarded memory), 2500 cases', async () => {
  await smoke(chainTarget, 2500);
  assert.ok(seen(chainTarget, 'chains') > 1000, 'well-formed chains were walked');
  assert.ok(seen(chainTarget, 'chains-crossing-regions') > 0, 'chains crossed from one region into the next');
  assert.ok(seen(chainTarget, 'inflight-resubmitted') > 0, 'inflight areas were recovered');
  assert.ok(seen(chainTarget, 'configure-refused') > 0, 'misplaced rings were refused');
  const kinds = ['LOOP', 'TOO_LONG', 'NESTED_INDIRECT', 'INDIRECT_WITH_NEXT', 'INDIRECT_LENGTH', 'HEAD_OUT_OF_RANGE',
    'NEXT_OUT_OF_RANGE', 'AVAIL_INDEX_JUMP', 'ZERO_LENGTH', 'OUT_OF_MEMORY', 'READ_AFTER_WRITE', 'INDIRECT_NOT_NEGOTIATED'];
  // Most kinds of malformed chain were met (the rarest ones need longer runs).
  const met = kinds.filter((k) => seen(chainTarget, `error-${k}`) > 0);
  assert.ok(met.length >= 9, `only ${met.join(', ')} were met`);
});
