import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyBytes } from '../../../src/devices/net/copy.js';

test('copyBytes copies exactly the range, for every alignment and size, shared or not', () => {
  const shared = new Uint8Array(new SharedArrayBuffer(4099), 3);
  const plain = new Uint8Array(new ArrayBuffer(4101), 1);
  for (let i = 0; i < shared.length; i++) shared[i] = (i * 13 + 7) & 0xff;
  for (const n of [0, 1, 3, 15, 16, 17, 63, 64, 65, 100, 1514, 2047]) {
    for (let so = 0; so < 5; so++) {
      for (let dO = 0; dO < 5; dO++) {
        plain.fill(0xaa);
        copyBytes(plain, dO, shared, so, n);
        for (let i = 0; i < plain.length; i++) {
          const want = i >= dO && i < dO + n ? shared[so + i - dO] : 0xaa;
          if (plain[i] !== want) assert.fail(`n=${n} src+${so} dst+${dO}: byte ${i} is ${plain[i]}, want ${want}`);
        }
      }
    }
  }
  // And back into shared memory, next to bytes that must not change.
  const back = new Uint8Array(new SharedArrayBuffer(64), 8, 40);
  back.fill(1);
  copyBytes(back, 4, plain, 1, 30);
  assert.deepEqual([...back.subarray(0, 4)], [1, 1, 1, 1]);
  assert.deepEqual([...back.subarray(4, 34)], [...plain.subarray(1, 31)]);
  assert.deepEqual([...back.subarray(34)], [1, 1, 1, 1, 1, 1]);
  assert.deepEqual([...new Uint8Array(back.buffer, 0, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
});
