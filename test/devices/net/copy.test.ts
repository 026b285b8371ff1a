import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyBytes, copyFromViewList, copyToViewList, forgetViews, wordIndex, wordsOfView } from '../../../src/devices/net/copy.js';
import { native } from '../../../src/native/index.js';

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

test('wordsOfView: the word view of the view\'s own buffer, also for views that share a cache slot', () => {
  const a = new SharedArrayBuffer(4096);
  const b = new ArrayBuffer(4096);
  // Same offset and length: the same slot, so each lookup must check the view itself.
  const va = new Uint8Array(a, 256, 64);
  const vb = new Uint8Array(b, 256, 64);
  for (let round = 0; round < 3; round++) {
    for (const [v, buf] of [[va, a], [vb, b]] as const) {
      const w = wordsOfView(v, v.byteOffset);
      assert.equal(w.buffer, buf);
      assert.equal(w.length, 1024);
    }
  }
  forgetViews();
  assert.equal(wordsOfView(vb, vb.byteOffset).buffer, b, 'looked up again after forgetViews');
  // A view over a buffer whose length is not a multiple of 4: whole words only.
  const odd = new Uint8Array(new ArrayBuffer(4099), 3, 8);
  assert.equal(wordsOfView(odd, odd.byteOffset).length, 1024);
});

test('wordIndex stays exact past 2^31 and 2^32 (regions above 4 GiB)', () => {
  assert.equal(wordIndex(0), 0);
  assert.equal(wordIndex(7), 1);
  assert.equal(wordIndex(0x7fffffff), 0x1fffffff);
  assert.equal(wordIndex(2 ** 31), 2 ** 29);
  assert.equal(wordIndex(2 ** 32 + 13), 2 ** 30 + 3);
  assert.equal(wordIndex(2 ** 35 + 4), 2 ** 33 + 1);
});

test('copies at byte offsets past 4 GiB land there, not 4 GiB lower (a sparse memfd mapping)', () => {
  const size = 2 ** 32 + 65536;
  const fd = native.memfdCreate('net-copy-4g', size);
  try {
    const buf = native.mmap(fd, size, true);
    const high = 2 ** 32 + 4096;
    for (const n of [100, 1514]) {
      for (const shift of [0, 1, 3]) {
        const dst = new Uint8Array(buf, high + shift, 2048);
        const low = new Uint8Array(buf, 4096 + shift, 2048);
        const src = new Uint8Array(new ArrayBuffer(2048 + 4), 4 - shift);
        for (let i = 0; i < src.length; i++) src[i] = (i * 31 + n + shift) & 0xff;
        dst.fill(0);
        low.fill(0);
        copyBytes(dst, 5, src, 7, n);
        for (let i = 0; i < n; i++) {
          if (dst[5 + i] !== src[7 + i]) assert.fail(`n=${n} shift=${shift}: byte ${i} is ${dst[5 + i]}, want ${src[7 + i]}`);
        }
        assert.equal(dst[4], 0);
        assert.equal(dst[5 + n], 0);
        assert.ok(low.every((x) => x === 0), `n=${n} shift=${shift}: nothing written 4 GiB lower`);
        // And out of it again.
        const back = new Uint8Array(2048);
        copyBytes(back, 3, dst, 5, n);
        assert.deepEqual(back.subarray(3, 3 + n), src.subarray(7, 7 + n));
      }
    }
  } finally {
    native.close(fd);
  }
});
