import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyBytes, copyFromViewList, copyToViewList } from '../../../src/devices/net/copy.js';

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

test('copyBytes: shifted word copies into shared memory, and reads that end at a buffer\'s last bytes', () => {
  // 4097 bytes: the last word of the buffer is partial, so a shifted copy ending there must not read past it.
  const src = new Uint8Array(new SharedArrayBuffer(4097));
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
  const dst = new Uint8Array(new SharedArrayBuffer(4104));
  for (const n of [16, 17, 31, 64, 100, 1515]) {
    for (let so = 0; so < 4; so++) {
      for (let dO = 0; dO < 4; dO++) {
        const from = src.length - n - so;
        dst.fill(0x55);
        copyBytes(dst, 4 + dO, src, from, n);
        for (let i = 0; i < dst.length; i++) {
          const want = i >= 4 + dO && i < 4 + dO + n ? src[from + i - 4 - dO] : 0x55;
          if (dst[i] !== want) assert.fail(`n=${n} from=${from} dst+${dO}: byte ${i} is ${dst[i]}, want ${want}`);
        }
      }
    }
  }
});

test('copyFromViewList / copyToViewList gather and scatter across views, short when the views end', () => {
  const backing = new Uint8Array(new SharedArrayBuffer(256));
  for (let i = 0; i < backing.length; i++) backing[i] = i;
  // Three views of different lengths and alignments.
  const views = [backing.subarray(1, 6), backing.subarray(10, 50), backing.subarray(101, 200)];
  const flat = Uint8Array.from([...views[0]!, ...views[1]!, ...views[2]!]);
  for (const [from, n] of [[0, 5], [3, 20], [5, 40], [2, 140], [44, 100], [0, 144]] as const) {
    const out = new Uint8Array(160).fill(0xee);
    assert.equal(copyFromViewList(out, 7, views, from, n), n);
    assert.deepEqual([...out.subarray(7, 7 + n)], [...flat.subarray(from, from + n)], `gather ${from}+${n}`);
    assert.equal(out[6], 0xee);
    assert.equal(out[7 + n], 0xee);
  }
  assert.equal(copyFromViewList(new Uint8Array(200), 0, views, 100, 100), 44, 'short at the end of the views');

  const target = new Uint8Array(new SharedArrayBuffer(256));
  const tviews = [target.subarray(3, 9), target.subarray(20, 83), target.subarray(130, 131), target.subarray(140, 240)];
  const src = Uint8Array.from({ length: 300 }, (_, i) => (i * 5) & 0xff);
  for (const [at, n] of [[0, 6], [4, 70], [69, 1], [68, 60], [0, 170]] as const) {
    target.fill(0);
    assert.equal(copyToViewList(tviews, at, src, 11, n), n);
    const flatT = Uint8Array.from(tviews.flatMap((v) => [...v]));
    assert.deepEqual([...flatT.subarray(at, at + n)], [...src.subarray(11, 11 + n)], `scatter ${at}+${n}`);
    assert.ok(flatT.subarray(0, at).every((b) => b === 0) && flatT.subarray(at + n).every((b) => b === 0));
    assert.equal(target[2], 0);
    assert.equal(target[9], 0);
  }
  assert.equal(copyToViewList(tviews, 160, src, 0, 50), 10, 'short at the end of the views');
});
