/** mapRegion against the real addon: memfd-backed regions, as QEMU's memory-backend-memfd provides them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { MemoryError } from '../../src/memory/errors.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { mapRegion } from '../../src/memory/mapping.js';

const PAGE = 4096;

test('a memfd region is shared between two mappings and translates by GPA', () => {
  const fd = native.memfdCreate('vhost-test-mem', 4 * PAGE);
  try {
    const desc = { guestPhysAddr: 0x100000, size: 2 * PAGE, userAddr: 0x7f0000000000, mmapOffset: PAGE };
    const a = mapRegion(fd, desc);
    const b = mapRegion(fd, { ...desc, guestPhysAddr: 0 });
    assert.equal(a.buffer.byteLength, 3 * PAGE);
    const mem = new GuestMemory();
    mem.add(a);
    mem.gpaSlice(0x100000 + 10, 3).set([7, 8, 9]);
    assert.deepEqual([...b.bytes.subarray(10, 13)], [7, 8, 9], 'same file pages');
    a.release();
    b.release();
  } finally {
    native.close(fd);
  }
});

test('a file shorter than mmapOffset + size is a MemoryError, not a later SIGBUS', () => {
  const fd = native.memfdCreate('vhost-test-short', 2 * PAGE);
  try {
    assert.throws(() => mapRegion(fd, { guestPhysAddr: 0, size: 2 * PAGE, userAddr: 0, mmapOffset: PAGE }),
      MemoryError);
    assert.throws(() => mapRegion(fd, { guestPhysAddr: 0, size: 0, userAddr: 0, mmapOffset: 0 }), MemoryError);
    const ok = mapRegion(fd, { guestPhysAddr: 0, size: PAGE, userAddr: 0, mmapOffset: PAGE });
    ok.release();
  } finally {
    native.close(fd);
  }
});

test('release drops the guest pages at once: the old buffer no longer shows guest data', () => {
  const fd = native.memfdCreate('vhost-test-release', PAGE);
  try {
    const desc = { guestPhysAddr: 0, size: PAGE, userAddr: 0, mmapOffset: 0 };
    const r = mapRegion(fd, desc);
    r.bytes[0] = 0x5a;
    const stale = new Uint8Array(r.buffer);
    r.release();
    r.release();
    assert.equal(stale[0], 0, 'replaced by zero pages');
    const again = mapRegion(fd, desc);
    assert.equal(again.bytes[0], 0x5a, 'the file still holds the data');
    again.release();
  } finally {
    native.close(fd);
  }
});
