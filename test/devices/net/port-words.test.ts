/**
 * The port's in-place word paths (headers, addresses and short frames read and written through a region's word
 * view) against every layout that must fall back: buffers split where they cross from one region into the next
 * (no region known), odd offsets, a region whose buffer offsets are not word-aligned, the legacy header, a region
 * without a word view, separate header and frame descriptors. Driven in-process: rings written by a driver queue,
 * the port's rings started on the same memory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Vring, type VringOwner } from '../../../src/device/vring.js';
import { NetPort } from '../../../src/devices/net/port.js';
import { NetSwitch } from '../../../src/devices/net/switch.js';
import { GuestMemory } from '../../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../../src/memory/region.js';
import { native } from '../../../src/native/index.js';
import { logger, setLogLevel } from '../../../src/util/log.js';
import { CommonFeature, featureMask, NetFeature } from '../../../src/virtio/constants.js';
import { DriverQueue } from '../../../src/virtqueue/driver-queue.js';
import { availRingBytes, descTableBytes, usedRingBytes } from '../../../src/virtqueue/layout.js';
import { ipv4L4, l4ChecksumOk, mac, testFrame } from './net-guest.js';

setLogLevel('warn');

const MAC_A = '02:00:00:00:00:0a';
const MAC_B = '02:00:00:00:00:0b';
/** Frontend-virtual address of guest-physical 0 (rings are given in that space). */
const USER = 0x7f00_0000_0000;
/** Three adjacent regions of 64 KiB each; the second's data starts at an odd offset of its buffer. */
const SPLIT = 0x10000;
const ODD_OFFSET = 0x1001;
/** Where the third region starts in its mapping in the test of offsets past 4 GiB. */
const HIGH = 2 ** 32 + 0x3000;

const owner: VringOwner = {
  available() {},
  broken(_v, error) {
    throw error;
  },
};

class Ram {
  readonly memory = new GuestMemory();
  readonly regions: MemoryRegion[] = [];

  /** With `high`, the third region lies past 4 GiB of its mapping (a sparse memfd): buffer offsets above 2^32. */
  constructor(high?: SharedArrayBuffer) {
    for (const [gpa, mmapOffset] of [[0, 0], [SPLIT, ODD_OFFSET], [2 * SPLIT, high ? HIGH : 0]] as const) {
      const buf = gpa === 2 * SPLIT && high ? high : new SharedArrayBuffer(mmapOffset + SPLIT);
      const r = MemoryRegion.fromBuffer({ guestPhysAddr: gpa, size: SPLIT, userAddr: USER + gpa, mmapOffset }, buf);
      this.memory.add(r);
      this.regions.push(r);
    }
  }

  write(gpa: number, bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length; i++) this.#at(gpa + i).bytes[gpa + i - this.#at(gpa + i).guestPhysAddr] = bytes[i]!;
  }

  read(gpa: number, len: number): Buffer {
    const out = Buffer.alloc(len);
    for (let i = 0; i < len; i++) out[i] = this.#at(gpa + i).bytes[gpa + i - this.#at(gpa + i).guestPhysAddr]!;
    return out;
  }

  #at(gpa: number): MemoryRegion {
    return this.regions[Math.floor(gpa / SPLIT)]!;
  }
}

interface Ring {
  driver: DriverQueue;
  vring: Vring;
}

function ring(ram: Ram, index: number, at: number): Ring {
  const size = 16;
  const desc = at;
  const avail = at + 0x400;
  const used = at + 0x800;
  if (descTableBytes(size) > 0x400 || availRingBytes(size, true) > 0x400 || usedRingBytes(size, true) > 0x400) {
    throw new Error('ring layout');
  }
  const driver = new DriverQueue<number>(ram.memory, size, { desc, avail, used }, { eventIdx: true });
  const vring = new Vring(index, owner, logger('test'));
  vring.size = size;
  vring.addresses = { desc: USER + desc, avail: USER + avail, used: USER + used };
  vring.eventIdx = true;
  vring.enabled = true;
  vring.start(native.eventfd(0), ram.memory);
  return { driver, vring };
}

interface Rig {
  ram: Ram;
  a: NetPort;
  b: NetPort;
  aTx: Ring;
  bRx: Ring;
  close(): void;
}

/** Port A sends, port B (learned) receives; A with `features`, B with `bFeatures` (default the same). */
function rig(features: bigint, high?: SharedArrayBuffer, bFeatures = features): Rig {
  const ram = new Ram(high);
  const sw = new NetSwitch({ autoSweep: false });
  const a = new NetPort(sw, { name: 'a', mac: MAC_A, logger: logger('test:a') });
  const b = new NetPort(sw, { name: 'b', mac: MAC_B, logger: logger('test:b') });
  a.featuresNegotiated(features);
  b.featuresNegotiated(bFeatures);
  const aTx = ring(ram, 1, 0x0000);
  const bRx = ring(ram, 0, 0x1000);
  const bTx = ring(ram, 1, 0x2000);
  a.ringStarted(aTx.vring);
  b.ringStarted(bRx.vring);
  b.ringStarted(bTx.vring);
  // B is learned from one frame it sends.
  ram.write(0x3000, Buffer.concat([Buffer.alloc(12), testFrame(MAC_A, MAC_B, 0)]));
  bTx.driver.add([{ addr: 0x3000, len: 12 + 60 }], [], 0);
  bTx.driver.publish();
  bTx.vring.batch(() => b.onAvailable(bTx.vring));
  assert.ok(bTx.driver.popUsed() !== null);
  return {
    ram, a, b, aTx, bRx,
    close() {
      for (const r of [aTx, bRx, bTx]) r.vring.dispose();
      sw.close();
    },
  };
}

/** A frame of exactly `len` bytes (at least 12) from A to B, its bytes after the addresses set by `tag`. */
function frameOf(len: number, tag: number): Buffer {
  const f = Buffer.alloc(len);
  mac(MAC_B).copy(f, 0);
  mac(MAC_A).copy(f, 6);
  for (let i = 12; i < len; i++) f[i] = (i * 13 + tag) & 0xff;
  return f;
}

/** A transmit header: flags, gso_type, csum_start, csum_offset (num_buffers 0), `hdrLen` bytes of it. */
function txHeader(hdrLen: number, flags = 0, gso = 0, csumStart = 0, csumOffset = 0): Buffer {
  const h = Buffer.alloc(hdrLen);
  h[0] = flags;
  h[1] = gso;
  h.writeUInt16LE(csumStart, 6);
  h.writeUInt16LE(csumOffset, 8);
  return h;
}

/**
 * Send one frame from A (its header and frame at `txAt`, in one buffer or, with `split`, header and frame in
 * two) into one receive buffer of B at `rxAt` (`rxLen` bytes, scrubbed first). Returns the used length and what
 * B's buffer holds.
 */
function send(r: Rig, hdr: Buffer, frame: Buffer, txAt: number, rxAt: number, rxLen = 2048, split = false): { len: number; got: Buffer } {
  r.ram.write(rxAt, Buffer.alloc(rxLen, 0xee));
  if (split) {
    r.ram.write(txAt, hdr);
    r.ram.write(txAt + hdr.length + 4, frame);
    r.aTx.driver.add([{ addr: txAt, len: hdr.length }, { addr: txAt + hdr.length + 4, len: frame.length }], [], 0);
  } else {
    r.ram.write(txAt, Buffer.concat([hdr, frame]));
    r.aTx.driver.add([{ addr: txAt, len: hdr.length + frame.length }], [], 0);
  }
  r.bRx.driver.add([], [{ addr: rxAt, len: rxLen }], 0);
  r.bRx.driver.publish();
  r.aTx.driver.publish();
  r.aTx.vring.batch(() => r.a.onAvailable(r.aTx.vring));
  assert.ok(r.aTx.driver.popUsed() !== null, 'transmit buffer returned');
  r.bRx.vring.flush();
  const used = r.bRx.driver.popUsed();
  assert.ok(used !== null, 'receive buffer used');
  return { len: used.len, got: r.ram.read(rxAt, rxLen) };
}

const MODERN = featureMask(CommonFeature.VERSION_1, CommonFeature.EVENT_IDX, NetFeature.MRG_RXBUF, NetFeature.CSUM,
  NetFeature.GUEST_CSUM);
const LEGACY = featureMask(CommonFeature.EVENT_IDX);
/** Frame lengths: the shortest, every tail of 0-3 bytes past whole words, around the word/native-copy limit, full. */
const LENGTHS = [14, 15, 60, 61, 62, 63, 64, 255, 256, 257, 258, 1514];

/**
 * Transmit buffer places: aligned (word paths), odd offsets, crossing into the second region (split: no region),
 * inside the second region (odd buffer offsets). Receive buffer places likewise.
 */
const TX_AT = [0x4000, 0x4001, 0x4002, 0x4003, SPLIT - 40, SPLIT + 0x4100, SPLIT + 0x4103];
const RX_AT = [0x8000, 0x8001, 0x8002, 2 * SPLIT - 30, SPLIT + 0x8000, SPLIT + 0x8803];

test('every frame arrives whole with our header, whatever the buffers\' places (word paths and their fallbacks)', () => {
  for (const [features, hdrLen, bFeatures, bHdrLen] of [[MODERN, 12, MODERN, 12], [LEGACY, 10, LEGACY, 10],
    [MODERN, 12, LEGACY, 10], [LEGACY, 10, MODERN, 12]] as const) {
    const r = rig(features, undefined, bFeatures);
    try {
      let n = 0;
      for (const len of LENGTHS) {
        for (const txAt of TX_AT) {
          for (const rxAt of RX_AT) {
            for (const split of [false, true]) {
              const frame = frameOf(len, n++);
              const { len: used, got } = send(r, txHeader(hdrLen), frame, txAt, rxAt, 2048, split);
              const where = `hdr ${hdrLen}/${bHdrLen} len ${len} tx ${txAt.toString(16)} rx ${rxAt.toString(16)} split ${split}`;
              assert.equal(used, bHdrLen + len, where);
              const header = bHdrLen === 12 ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] : [0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
              assert.deepEqual([...got.subarray(0, bHdrLen)], header, where);
              assert.deepEqual(got.subarray(bHdrLen, bHdrLen + len), frame, where);
              assert.ok(got.subarray(bHdrLen + len).every((x) => x === 0xee), `${where}: nothing written past the frame`);
            }
          }
        }
      }
      assert.equal(r.b.stats.rxPackets, n);
      assert.equal(r.a.stats.txPackets, n);
      assert.equal(r.a.stats.txErrors, 0);
    } finally {
      r.close();
    }
  }
});

test('header fields read in place: a GSO frame is refused, a partial checksum is passed on or completed', () => {
  for (const txAt of [0x4000, 0x4001, SPLIT - 20]) {
    const r = rig(MODERN);
    try {
      const c = ipv4L4(MAC_B, MAC_A, 17, Buffer.alloc(300, 3));
      // Passed on to B (GUEST_CSUM): flags, csum_start and csum_offset in our header, the frame untouched.
      let out = send(r, txHeader(12, 1, 0, c.csumStart, c.csumOffset), c.frame, txAt, 0x8000);
      assert.deepEqual([...out.got.subarray(0, 12)], [1, 0, 0, 0, 0, 0, c.csumStart, 0, c.csumOffset, 0, 1, 0]);
      assert.deepEqual(out.got.subarray(12, 12 + c.frame.length), c.frame);
      // csum_start + csum_offset past the frame: an error, the buffer comes back unused.
      r.ram.write(txAt, Buffer.concat([txHeader(12, 1, 0, c.frame.length - 1, 0), c.frame]));
      r.aTx.driver.add([{ addr: txAt, len: 12 + c.frame.length }], [], 0);
      r.aTx.driver.publish();
      r.aTx.vring.batch(() => r.a.onAvailable(r.aTx.vring));
      assert.ok(r.aTx.driver.popUsed() !== null);
      assert.equal(r.a.stats.txErrors, 1);
      // gso_type TCPV4: an error.
      r.ram.write(txAt, Buffer.concat([txHeader(12, 0, 1), c.frame]));
      r.aTx.driver.add([{ addr: txAt, len: 12 + c.frame.length }], [], 0);
      r.aTx.driver.publish();
      r.aTx.vring.batch(() => r.a.onAvailable(r.aTx.vring));
      assert.ok(r.aTx.driver.popUsed() !== null);
      assert.equal(r.a.stats.txErrors, 2);
      assert.equal(r.b.stats.rxPackets, 1);
      // A receiver without GUEST_CSUM gets the checksum completed (the frame is then copied from our buffer).
      r.b.featuresNegotiated(MODERN & ~featureMask(NetFeature.GUEST_CSUM));
      out = send(r, txHeader(12, 1, 0, c.csumStart, c.csumOffset), c.frame, txAt, 0x8001);
      assert.deepEqual([...out.got.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      assert.ok(l4ChecksumOk(out.got.subarray(12, 12 + c.frame.length)));
      assert.equal(r.b.stats.csumComputed, 1);
    } finally {
      r.close();
    }
  }
});

test('a region without a word view: header, addresses and frames go the byte way', () => {
  const r = rig(MODERN);
  try {
    // As for a region too large for one (over 16 GiB).
    for (const region of r.ram.regions) Object.defineProperty(region, 'u32', { value: null });
    for (const len of [60, 61, 1514]) {
      const frame = frameOf(len, len);
      const { len: used, got } = send(r, txHeader(12), frame, 0x4000, 0x8000);
      assert.equal(used, 12 + len);
      assert.deepEqual([...got.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      assert.deepEqual(got.subarray(12, 12 + len), frame);
    }
  } finally {
    r.close();
  }
});

test('buffers at offsets past 4 GiB of their mapping take the general paths, and land where they belong', () => {
  const size = HIGH + SPLIT;
  const fd = native.memfdCreate('net-port-4g', size);
  try {
    const buf = native.mmap(fd, size, true);
    const r = rig(MODERN, buf);
    try {
      const low = new Uint8Array(buf, HIGH - 2 ** 32, SPLIT);
      for (const len of [60, 64, 1514]) {
        for (const [txAt, rxAt] of [[2 * SPLIT + 0x100, 0x8000], [0x4000, 2 * SPLIT + 0x4000], [2 * SPLIT + 0x100, 2 * SPLIT + 0x4000]]) {
          const frame = frameOf(len, len + txAt);
          const { len: used, got } = send(r, txHeader(12), frame, txAt!, rxAt!);
          const where = `len ${len} tx ${txAt!.toString(16)} rx ${rxAt!.toString(16)}`;
          assert.equal(used, 12 + len, where);
          assert.deepEqual([...got.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], where);
          assert.deepEqual(got.subarray(12, 12 + len), frame, where);
        }
      }
      assert.ok(low.every((b) => b === 0), 'nothing written 4 GiB below the region');
    } finally {
      r.close();
    }
  } finally {
    native.close(fd);
  }
});
