/**
 * The vhost-user life cycle against a real DeviceServer over a socket: ring enable rules, stop on
 * GET_VRING_BASE, status, reset, memory table changes, inflight tracking across backend connections, the backend
 * channel, broken rings, client mode, socket activation and the socket file's security defaults.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { native, closeQuietly } from '../../src/native/index.js';
import { DeviceServer, type DeviceServerOptions } from '../../src/device/server.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { BackendRequest, ProtocolFeature } from '../../src/protocol/constants.js';
import { CommonFeature, DeviceStatus, featureMask, hasFeature } from '../../src/virtio/constants.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtqueue/layout.js';
import { setLogLevel, setLogSink, getLogLevel } from '../../src/util/log.js';
import type { VirtioDevice } from '../../src/device/device.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { HoldDevice } from '../helpers/hold-device.js';
import { fdsOpenedSince, openFds, sleep, tempDir, waitUntil } from '../helpers/tmp.js';
import {
  FrontendConnection, GuestRam, addEcho, allocQueue, attachQueue, negotiate, put, takeUsed, text,
  type Negotiated,
} from '../helpers/frontend-rig.js';

const lines: string[] = [];
let restoreSink: ((line: string) => void) | undefined;
let restoreLevel: ReturnType<typeof getLogLevel> = 'warn';
let dir = '';
let cleanupDir: () => void = () => {};

before(() => {
  restoreSink = setLogSink((line) => lines.push(line));
  restoreLevel = getLogLevel();
  setLogLevel('info');
  ({ dir, cleanup: cleanupDir } = tempDir());
});

after(() => {
  cleanupDir();
  if (restoreSink) setLogSink(restoreSink);
  setLogLevel(restoreLevel);
});

let socketCounter = 0;
function freshPath(name = 'dev'): string {
  return path.join(dir, `${name}-${++socketCounter}.sock`);
}

async function withServer<D extends VirtioDevice>(device: D,
  fn: (socketPath: string, server: DeviceServer, device: D) => Promise<void>,
  options: Partial<DeviceServerOptions> = {}): Promise<void> {
  const socketPath = freshPath();
  const server = new DeviceServer(device, { socketPath, ...options }).listen();
  try {
    await fn(socketPath, server, device);
  } finally {
    await server.close();
  }
}

/** A frontend built by hand, with its own RAM. */
async function handFrontend(socketPath: string, options: Parameters<typeof negotiate>[1] = {}):
  Promise<{ f: FrontendConnection; ram: GuestRam; neg: Negotiated; close: () => void }> {
  const f = FrontendConnection.connect(socketPath);
  const ram = new GuestRam({ size: 1 << 20 });
  try {
    const neg = await negotiate(f, { ram, ...options });
    return { f, ram, neg, close: () => { f.close(); ram.close(); } };
  } catch (err) {
    f.close();
    ram.close();
    throw err;
  }
}

/**
 * Give the backend every chance to act on what we did (a kick): a request/reply round trip on the connection
 * (the backend handles messages in order) plus a few event-loop turns for the kick eventfd.
 */
async function settle(f: FrontendConnection): Promise<void> {
  await f.getFeatures();
  await sleep(30);
  await f.getFeatures();
}

const ALL_OK = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK;

// ---- ring enable rules ----

test('without PROTOCOL_FEATURES a ring is enabled as soon as it starts (no SET_VRING_ENABLE)', async () => {
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath, { protocol: false });
    try {
      assert.equal(hasFeature(neg.features, CommonFeature.PROTOCOL_FEATURES), false);
      assert.equal(neg.protocolFeatures, 0n);
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg);
      const { out } = addEcho(ram, q, 'auto enabled');
      a.kick();
      const [used] = await takeUsed(q);
      assert.equal(text(ram, out.addr, used!.len), 'AUTO ENABLED');
      assert.equal(server.backend!.vrings[0]!.enabled, true);
      assert.equal(device.handled, 1);
      a.close();
    } finally {
      close();
    }
  });
});

test('with PROTOCOL_FEATURES a started ring does not process until SET_VRING_ENABLE(1); ENABLE(0) pauses it', async () => {
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    try {
      assert.ok(hasFeature(neg.features, CommonFeature.PROTOCOL_FEATURES));
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg, { enable: false });
      const first = addEcho(ram, q, 'wait for enable');
      a.kick();
      await settle(f);
      assert.equal(server.backend!.vrings[0]!.started, true, 'the ring started with its kick fd');
      assert.equal(device.handled, 0, 'a disabled ring is not processed');
      assert.equal(q.usedPending(), 0);

      await f.setVringEnable(0, true);
      const [u1] = await takeUsed(q);
      assert.equal(u1!.head, first.head);
      assert.equal(text(ram, first.out.addr, u1!.len), 'WAIT FOR ENABLE');

      await f.setVringEnable(0, false);
      const second = addEcho(ram, q, 'paused');
      a.kick();
      await settle(f);
      assert.equal(device.handled, 1, 'disabled again: nothing processed');
      await f.setVringEnable(0, true);
      const [u2] = await takeUsed(q);
      assert.equal(text(ram, second.out.addr, u2!.len), 'PAUSED');
      a.close();
    } finally {
      close();
    }
  });
});

// ---- GET_VRING_BASE ----

test('GET_VRING_BASE stops the ring: later kicks are ignored until it is started again from that base', async () => {
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    try {
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg);
      addEcho(ram, q, 'one');
      a.kick();
      await takeUsed(q);
      addEcho(ram, q, 'two');
      a.kick();
      await takeUsed(q);
      assert.equal(await f.getVringBase(0), 2, 'the next avail index to process');
      const ring = server.backend!.vrings[0]!;
      assert.equal(ring.started, false);
      assert.equal(ring.enabled, false, 'with PROTOCOL_FEATURES the stopped ring is also disabled');

      const third = addEcho(ram, q, 'three');
      a.kick();
      await settle(f);
      assert.equal(device.handled, 2, 'a stopped ring does not process kicks');
      assert.equal(q.usedPending(), 0);

      // Restart as a frontend does after migration or stop/cont: base, addresses, fresh kick fd, enable.
      a.close();
      const b = await attachQueue(f, ram, 0, q, neg, { base: 2 });
      const [u] = await takeUsed(q);
      assert.equal(u!.head, third.head, 'the chain added while stopped is processed on restart');
      assert.equal(text(ram, third.out.addr, u!.len), 'THREE');
      assert.equal(device.handled, 3);
      assert.equal(await f.getVringBase(0), 3);
      b.close();
    } finally {
      close();
    }
  });
});

test('GET_VRING_BASE of a ring that never started returns what SET_VRING_BASE set', async () => {
  await withServer(new EchoDevice(), async (socketPath) => {
    const { f, close } = await handFrontend(socketPath);
    try {
      await f.setVringNum(1, 16);
      await f.setVringBase(1, 1234);
      assert.equal(await f.getVringBase(1), 1234);
      assert.equal(await f.getVringBase(0), 0);
    } finally {
      close();
    }
  });
});

test('without PROTOCOL_FEATURES a ring stopped by GET_VRING_BASE restarts on its next kick fd alone', async () => {
  await withServer(new EchoDevice(), async (socketPath, server) => {
    const { f, ram, neg, close } = await handFrontend(socketPath, { protocol: false });
    try {
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg);
      assert.equal(await f.getVringBase(0), 0);
      assert.equal(server.backend!.vrings[0]!.enabled, true);
      const c = addEcho(ram, q, 'again');
      a.close();
      const b = await attachQueue(f, ram, 0, q, neg);
      const [u] = await takeUsed(q);
      assert.equal(text(ram, c.out.addr, u!.len), 'AGAIN');
      b.close();
    } finally {
      close();
    }
  });
});

// ---- status ----

test('SET_STATUS / GET_STATUS: every value set is reported back, 0 included', async () => {
  await withServer(new EchoDevice(), async (socketPath) => {
    const { f, close } = await handFrontend(socketPath);
    try {
      assert.ok(hasFeature(f.protocolFeatures, ProtocolFeature.STATUS));
      assert.equal(await f.getStatus(), 0);
      // QEMU ORs bits into what it reads back: each step must see exactly the previous value.
      let status = 0;
      for (const bit of [DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK, DeviceStatus.DRIVER_OK]) {
        status = (await f.getStatus()) | bit;
        await f.setStatus(status);
        assert.equal(await f.getStatus(), status);
      }
      assert.equal(status, ALL_OK);
      await f.setStatus(DeviceStatus.FAILED);
      assert.equal(await f.getStatus(), DeviceStatus.FAILED);
      await f.setStatus(0);
      assert.equal(await f.getStatus(), 0);
    } finally {
      close();
    }
  });
});

// ---- RESET_DEVICE ----

test('RESET_DEVICE stops rings, clears status and features, resets the device; the device can be set up again', async () => {
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    try {
      assert.ok(hasFeature(neg.protocolFeatures, ProtocolFeature.RESET_DEVICE));
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg);
      await f.setStatus(ALL_OK);
      addEcho(ram, q, 'before reset');
      a.kick();
      await takeUsed(q);
      const resets = device.resets;

      await f.resetDevice();
      assert.equal(await f.getStatus(), 0);
      assert.equal(device.resets, resets + 1);
      const backend = server.backend!;
      assert.equal(backend.features, 0n);
      assert.ok(backend.vrings.every((v) => !v.started && !v.enabled && v.size === 0));
      addEcho(ram, q, 'after reset, not set up');
      a.kick();
      await settle(f);
      assert.equal(device.handled, 1, 'a reset ring does not process');

      // Set up again from scratch on fresh rings: features, rings, status.
      await f.setFeatures(neg.features);
      const q2 = allocQueue(ram, 8);
      const b = await attachQueue(f, ram, 0, q2, neg);
      await f.setStatus(ALL_OK);
      const c = addEcho(ram, q2, 'set up again');
      b.kick();
      const [u] = await takeUsed(q2);
      assert.equal(text(ram, c.out.addr, u!.len), 'SET UP AGAIN');
      assert.equal(await f.getStatus(), ALL_OK);
      a.close();
      b.close();
    } finally {
      close();
    }
  });
});

// ---- memory table changes ----

function memfdMappings(name: string): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`memfd:${name}`)).length;
}

test('SET_MEM_TABLE replacing ADD_MEM_REG memory: a running ring keeps working, and restarts on a new layout', async () => {
  await withServer(new EchoDevice(), async (socketPath, server) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    try {
      assert.ok(hasFeature(neg.protocolFeatures, ProtocolFeature.CONFIGURE_MEM_SLOTS), 'memory came by ADD_MEM_REG');
      const q = allocQueue(ram, 8);
      const a = await attachQueue(f, ram, 0, q, neg);
      addEcho(ram, q, 'first table');
      a.kick();
      await takeUsed(q);

      // Same layout, fresh mapping, while the ring runs: the ring is re-translated.
      await f.setMemTable([ram.description], [ram.fd]);
      assert.equal(server.backend!.memory.regions.length, 1);
      const c = addEcho(ram, q, 'same layout');
      a.kick();
      const [u1] = await takeUsed(q);
      assert.equal(text(ram, c.out.addr, u1!.len), 'SAME LAYOUT');

      // New layout: the same RAM at another frontend-virtual address plus a second region. Stop, replace, restart.
      const base = await f.getVringBase(0);
      a.close();
      const extraFd = native.memfdCreate('lifecycle-extra', 1 << 20);
      const extraBuf = native.mmap(extraFd, 1 << 20, true);
      try {
        const moved = { ...ram.description, userAddr: 0x6000_0000_0000 };
        const extra = { guestPhysAddr: 0x4000_0000, size: 1 << 20, userAddr: 0x6100_0000_0000, mmapOffset: 0 };
        await f.setMemTable([moved, extra], [ram.fd, extraFd]);
        assert.deepEqual(server.backend!.memory.regions.map((r) => r.userAddr), [moved.userAddr, extra.userAddr]);
        const b = await attachQueue(f, ram, 0, q, neg, { base, vaOf: (gpa) => gpa + moved.userAddr });
        // A request reading from the second region and writing into the first.
        new Uint8Array(extraBuf).set(Buffer.from('from region two'), 64);
        const out = ram.alloc(64, 8);
        q.add([{ addr: extra.guestPhysAddr + 64, len: 15 }], [{ addr: out, len: 64 }], 0);
        q.publish();
        b.kick();
        const [u2] = await takeUsed(q);
        assert.equal(text(ram, out, u2!.len), 'FROM REGION TWO');
        b.close();
      } finally {
        native.unmapNow(extraBuf);
        closeQuietly(extraFd);
      }
    } finally {
      close();
    }
  });
});

test('REM_MEM_REG: a removed region is unmapped by the backend and no longer reachable by descriptors', async () => {
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    const extraFd = native.memfdCreate('lifecycle-rem', 1 << 20);
    const extraBuf = native.mmap(extraFd, 1 << 20, true);
    try {
      const q = allocQueue(ram, 8);
      const errFd = native.eventfd(0);
      const a = await attachQueue(f, ram, 0, q, neg, { errFd });
      const extra = { guestPhysAddr: 0x8000_0000, size: 1 << 20, userAddr: 0x6200_0000_0000, mmapOffset: 0 };
      await f.addMemRegion(extra, extraFd);
      assert.equal(server.backend!.memory.regions.length, 2);
      assert.equal(memfdMappings('lifecycle-rem'), 2, 'ours and the backend\'s');
      new Uint8Array(extraBuf).set(Buffer.from('in the extra region'), 0);
      const out = ram.alloc(64, 8);
      q.add([{ addr: extra.guestPhysAddr, len: 19 }], [{ addr: out, len: 64 }], 0);
      q.publish();
      a.kick();
      const [u] = await takeUsed(q);
      assert.equal(text(ram, out, u!.len), 'IN THE EXTRA REGION');

      await f.removeMemRegion(extra);
      assert.equal(server.backend!.memory.regions.length, 1);
      assert.equal(memfdMappings('lifecycle-rem'), 1, 'the backend dropped its mapping');
      // A descriptor into the removed region is now a malformed chain, not a read of stale memory.
      q.add([{ addr: extra.guestPhysAddr, len: 19 }], [{ addr: out, len: 64 }], 0);
      q.publish();
      a.kick();
      await waitUntil(() => server.backend!.vrings[0]!.error !== undefined, 5000, 'the ring to break');
      assert.equal(device.handled, 1);
      assert.ok((await f.getStatus()) & DeviceStatus.NEEDS_RESET);
      a.close();
      closeQuietly(errFd);
    } finally {
      native.unmapNow(extraBuf);
      closeQuietly(extraFd);
      close();
    }
  });
});

// ---- inflight ----

/** Per-queue inflight area size as QEMU and libvhost-user compute it. */
function qemuInflightQueueSize(queueSize: number): number {
  return Math.ceil((16 * queueSize + 2) / 64) * 64;
}

function inflightView(buffer: SharedArrayBuffer, queue: number, queueSize: number) {
  const dv = new DataView(buffer, queue * qemuInflightQueueSize(queueSize));
  return {
    features: () => dv.getBigUint64(0, true),
    version: () => dv.getUint16(8, true),
    descNum: () => dv.getUint16(10, true),
    usedIdx: () => dv.getUint16(14, true),
    inflight: (head: number) => dv.getUint8(16 + 16 * head),
    counter: (head: number) => dv.getBigUint64(16 + 16 * head + 8, true),
  };
}

test('GET_INFLIGHT_FD: area size, zeroed until a ring starts on it (then layout version 1), entries marked in flight', async () => {
  await withServer(new HoldDevice(2), async (socketPath, _server, device) => {
    const { f, ram, neg, close } = await handFrontend(socketPath);
    let fd = -1;
    let buffer: SharedArrayBuffer | undefined;
    try {
      assert.ok(hasFeature(neg.protocolFeatures, ProtocolFeature.INFLIGHT_SHMFD));
      const got = await f.getInflightFd(2, 64);
      fd = got.fd;
      assert.deepEqual(got.description, { mmapSize: 2 * 1088, mmapOffset: 0, numQueues: 2, queueSize: 64 });
      assert.equal(qemuInflightQueueSize(64), 1088);
      assert.equal(native.fstat(fd).size, 2 * 1088);
      buffer = native.mmap(fd, 2 * 1088, true);
      // A fresh area is all zero (version 0: nothing to recover), as libvhost-user hands it out.
      assert.ok(new Uint8Array(buffer).every((b) => b === 0));
      await f.setInflightFd(got.description, fd);

      const q = allocQueue(ram, 64);
      const a = await attachQueue(f, ram, 1, q, neg);
      const v1 = inflightView(buffer, 1, 64);
      assert.equal(v1.version(), 1, 'the queue started on the area initialised its part');
      assert.equal(v1.descNum(), 64);
      assert.equal(v1.features(), 0n);
      assert.equal(v1.usedIdx(), 0);
      assert.equal(inflightView(buffer, 0, 64).version(), 0, 'queue 0 never started');

      const c1 = addEcho(ram, q, 'tracked one');
      const c2 = addEcho(ram, q, 'tracked two');
      assert.notEqual(c1.head, c2.head);
      a.kick();
      await waitUntil(() => device.popped === 2, 5000, 'both chains popped');
      assert.equal(v1.inflight(c1.head), 1);
      assert.equal(v1.inflight(c2.head), 1);
      assert.ok(v1.counter(c1.head) < v1.counter(c2.head), 'counters rise in pop order');
      assert.ok(new Uint8Array(buffer, 0, 1088).every((b) => b === 0), 'queue 0\'s part untouched');

      device.release();
      await takeUsed(q, 2);
      assert.equal(v1.inflight(c1.head), 0);
      assert.equal(v1.inflight(c2.head), 0);
      assert.equal(v1.usedIdx(), 2);
      a.close();

      // Other sizes.
      const big = await f.getInflightFd(1, 256);
      assert.deepEqual(big.description, { mmapSize: qemuInflightQueueSize(256), mmapOffset: 0, numQueues: 1, queueSize: 256 });
      assert.equal(native.fstat(big.fd).size, 4160);
      closeQuietly(big.fd);
    } finally {
      if (buffer) native.unmapNow(buffer);
      closeQuietly(fd);
      device.release();
      close();
    }
  });
});

test('inflight: a second backend given the area by SET_INFLIGHT_FD resubmits the chain the first popped and never completed', async () => {
  // Two servers play one backend before and after a restart; the frontend keeps guest RAM, rings and the area.
  const first = new HoldDevice(1);
  const second = new EchoDevice(1);
  const path1 = freshPath('before');
  const path2 = freshPath('after');
  const server1 = new DeviceServer(first, { socketPath: path1 }).listen();
  const server2 = new DeviceServer(second, { socketPath: path2 }).listen();
  const ram = new GuestRam({ size: 1 << 20 });
  let areaFd = -1;
  let areaBuf: SharedArrayBuffer | undefined;
  let f1: FrontendConnection | undefined;
  let f2: FrontendConnection | undefined;
  try {
    const q = allocQueue(ram, 16);
    f1 = FrontendConnection.connect(path1);
    const neg1 = await negotiate(f1, { ram });
    const area = await f1.getInflightFd(1, 16);
    areaFd = area.fd;
    await f1.setInflightFd(area.description, areaFd);
    const a1 = await attachQueue(f1, ram, 0, q, neg1);

    // A completes normally; B is popped and held when the backend goes away.
    const chainA = addEcho(ram, q, 'done before');
    a1.kick();
    await waitUntil(() => first.popped === 1, 5000, 'A popped');
    first.release();
    const [ua] = await takeUsed(q);
    assert.equal(ua!.head, chainA.head);
    const chainB = addEcho(ram, q, 'survive the restart');
    a1.kick();
    await waitUntil(() => first.popped === 2, 5000, 'B popped');
    areaBuf = native.mmap(areaFd, area.description.mmapSize, true);
    const view = inflightView(areaBuf, 0, 16);
    const marked = () => Array.from({ length: 16 }, (_, h) => h).filter((h) => view.inflight(h) === 1);
    assert.deepEqual(marked(), [chainB.head], 'only B is in flight');
    f1.close();
    a1.close();

    // The restarted backend: init again, SET_INFLIGHT_FD with the saved area and no GET, rings from the used index.
    f2 = FrontendConnection.connect(path2);
    const neg2 = await negotiate(f2, { ram });
    await f2.setInflightFd(area.description, areaFd);
    const a2 = await attachQueue(f2, ram, 0, q, neg2, { base: 1 });
    const [ub] = await takeUsed(q);
    assert.equal(ub!.head, chainB.head);
    assert.equal(text(ram, chainB.out.addr, ub!.len), 'SURVIVE THE RESTART');
    assert.equal(second.handled, 1, 'only the chain in flight was resubmitted');
    assert.deepEqual(marked(), []);
    assert.equal(view.usedIdx(), 2);
    assert.ok(lines.some((l) => /resubmitting 1 request\(s\) left in flight/.test(l)));
    // And the ring goes on from there.
    const chainC = addEcho(ram, q, 'after');
    a2.kick();
    const [uc] = await takeUsed(q);
    assert.equal(text(ram, chainC.out.addr, uc!.len), 'AFTER');
    assert.equal(await f2.getVringBase(0), 3);
    a2.close();
  } finally {
    f2?.close();
    await server2.close();
    f1?.close();
    // Let the first backend's held chain finish so that it can clean up.
    first.release();
    await server1.close();
    if (areaBuf) native.unmapNow(areaBuf);
    closeQuietly(areaFd);
    ram.close();
  }
});

test('a frontend that connects while the previous one\'s chain is still in flight is served once it completes; the chain completes exactly once', async () => {
  // QEMU reconnecting to the same daemon: the old connection's request finishes into the ring first.
  await withServer(new HoldDevice(1), async (socketPath, server, device) => {
    const ram = new GuestRam({ size: 1 << 20 });
    let areaFd = -1;
    let f2: FrontendConnection | undefined;
    try {
      const q = allocQueue(ram, 16);
      const f1 = FrontendConnection.connect(socketPath);
      const neg1 = await negotiate(f1, { ram });
      const area = await f1.getInflightFd(1, 16);
      areaFd = area.fd;
      await f1.setInflightFd(area.description, areaFd);
      const a1 = await attachQueue(f1, ram, 0, q, neg1);
      const x = addEcho(ram, q, 'in flight at disconnect');
      a1.kick();
      await waitUntil(() => device.popped === 1, 5000, 'the chain popped');
      f1.close();
      a1.close();

      f2 = FrontendConnection.connect(socketPath);
      const negotiating = negotiate(f2, { ram });
      await sleep(30);
      device.release();
      const neg2 = await negotiating;
      assert.equal(server.endpoint.connectionCount, 2);
      const [ux] = await takeUsed(q);
      assert.equal(ux!.head, x.head);
      assert.equal(text(ram, x.out.addr, ux!.len), 'IN FLIGHT AT DISCONNECT');

      await f2.setInflightFd(area.description, areaFd);
      const a2 = await attachQueue(f2, ram, 0, q, neg2, { base: 1 });
      await settle(f2);
      assert.equal(device.popped, 1, 'the completed chain is not resubmitted');
      assert.equal(q.usedPending(), 0);
      const y = addEcho(ram, q, 'next');
      a2.kick();
      await waitUntil(() => device.popped === 2, 5000, 'the next chain popped');
      device.release();
      const [uy] = await takeUsed(q);
      assert.equal(text(ram, y.out.addr, uy!.len), 'NEXT');
      a2.close();
    } finally {
      f2?.close();
      device.release();
      closeQuietly(areaFd);
      ram.close();
    }
  });
});

// ---- the backend channel ----

test('CONFIG_CHANGE_MSG arrives on the backend channel when the device calls configChanged()', async () => {
  const received: { request: number; size: number }[] = [];
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const driver = await VirtioDriver.connect({
      socketPath, ramSize: 1 << 20, onBackendRequest: (request, payload) => received.push({ request, size: payload.length }),
    });
    try {
      assert.ok(driver.hasProtocolFeature(ProtocolFeature.BACKEND_REQ));
      assert.ok(driver.hasProtocolFeature(ProtocolFeature.CONFIG));
      device.config = Uint8Array.of(9, 8, 7, 6, 5, 4, 3, 2);
      server.backend!.configChanged();
      await waitUntil(() => received.length === 1, 5000, 'CONFIG_CHANGE_MSG');
      assert.deepEqual(received[0], { request: BackendRequest.CONFIG_CHANGE_MSG, size: 0 });
      assert.deepEqual([...await driver.getConfig(0, 4)], [9, 8, 7, 6]);
    } finally {
      driver.close();
    }
  });
});

test('no CONFIG_CHANGE_MSG when CONFIG was not negotiated', async () => {
  const received: number[] = [];
  await withServer(new EchoDevice(), async (socketPath, server) => {
    const all = featureMask(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.BACKEND_REQ,
      ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS);
    const driver = await VirtioDriver.connect({ socketPath, ramSize: 1 << 20, protocolFeatures: all,
      onBackendRequest: (request) => received.push(request) });
    try {
      assert.ok(!driver.hasProtocolFeature(ProtocolFeature.CONFIG));
      server.backend!.configChanged();
      await settle(driver.frontend);
      assert.deepEqual(received, []);
    } finally {
      driver.close();
    }
  });
});

// ---- a broken ring ----

test('a descriptor loop: NEEDS_RESET in GET_STATUS, error eventfd signalled, CONFIG_CHANGE_MSG sent, other queues keep working', async () => {
  const received: number[] = [];
  await withServer(new EchoDevice(), async (socketPath, server, device) => {
    const driver = await VirtioDriver.connect({ socketPath, ramSize: 1 << 20, onBackendRequest: (r) => received.push(r) });
    const errFd = native.eventfd(0);
    try {
      await driver.startQueues(2, 16);
      await driver.frontend.setVringErr(0, errFd);
      assert.equal(await driver.frontend.getStatus(), ALL_OK);
      const buf = put(driver.ram, 'loop');
      const q0 = driver.queue(0);
      q0.writeDescriptor(0, buf.addr, buf.len, VIRTQ_DESC_F_NEXT, 1);
      q0.writeDescriptor(1, buf.addr, buf.len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0);
      q0.writeAvailEntry(0, 0);
      q0.writeAvailIdx(1);
      native.eventfdWrite(driver.kickFd(0), 1);

      let signalled = 0;
      await waitUntil(() => (signalled += native.eventfdRead(errFd)) > 0, 5000, 'the error eventfd');
      assert.equal(signalled, 1);
      assert.equal(await driver.frontend.getStatus(), ALL_OK | DeviceStatus.NEEDS_RESET);
      await waitUntil(() => received.includes(BackendRequest.CONFIG_CHANGE_MSG), 5000, 'CONFIG_CHANGE_MSG');
      assert.ok(lines.some((l) => /queue 0 stopped: /.test(l)), 'the reason is logged');
      assert.ok(server.backend!.vrings[0]!.error);
      assert.equal(q0.readUsedIdx(), 0, 'nothing was returned for the bad chain');
      assert.equal(device.handled, 0);

      // Queue 1 is unaffected.
      const input = put(driver.ram, 'queue one still works');
      const out = driver.ram.alloc(64, 8);
      const len = await driver.submit(1, [input], [{ addr: out, len: 64 }]);
      assert.equal(text(driver.ram, out, len), 'QUEUE ONE STILL WORKS');

      // NEEDS_RESET sticks through SET_STATUS; only a reset clears it.
      await driver.frontend.setStatus(ALL_OK);
      assert.equal(await driver.frontend.getStatus(), ALL_OK | DeviceStatus.NEEDS_RESET);
      // More kicks on the broken ring do nothing.
      native.eventfdWrite(driver.kickFd(0), 1);
      await settle(driver.frontend);
      assert.equal(native.eventfdRead(errFd), 0, 'signalled once');
      await driver.frontend.resetDevice();
      assert.equal(await driver.frontend.getStatus(), 0);
    } finally {
      closeQuietly(errFd);
      driver.close();
    }
  });
});

// ---- client mode ----

function acceptOne(listenFd: number, timeoutMs = 5000): Promise<number> {
  let fd = -1;
  return waitUntil(() => (fd = native.unixAccept(listenFd)) >= 0, timeoutMs, 'the backend to connect').then(() => fd);
}

async function roundTripOn(f: FrontendConnection, word: string): Promise<void> {
  const ram = new GuestRam({ size: 1 << 20 });
  try {
    const neg = await negotiate(f, { ram });
    const q = allocQueue(ram, 8);
    const a = await attachQueue(f, ram, 0, q, neg);
    const c = addEcho(ram, q, word);
    a.kick();
    const [u] = await takeUsed(q);
    assert.equal(text(ram, c.out.addr, u!.len), word.toUpperCase());
    a.close();
  } finally {
    f.close();
    ram.close();
  }
}

test('client mode: the backend connects to our socket, retries until it exists, and reconnects after we close', async () => {
  const socketPath = freshPath('frontend');
  const device = new EchoDevice();
  const server = new DeviceServer(device, { socketPath, client: true, reconnectDelayMs: 20 }).listen();
  let listenFd = -1;
  try {
    // Nobody listens yet: the backend keeps trying.
    await sleep(60);
    assert.equal(server.endpoint.connectionCount, 0);
    listenFd = native.unixListen(socketPath, 4);
    const first = await acceptOne(listenFd);
    await roundTripOn(FrontendConnection.adopt(first), 'first frontend');
    assert.equal(server.endpoint.connectionCount, 1);
    // We closed; the backend comes back.
    const second = await acceptOne(listenFd);
    await roundTripOn(FrontendConnection.adopt(second), 'after reconnect');
    assert.equal(server.endpoint.connectionCount, 2);
    assert.equal(device.handled, 2);
  } finally {
    await server.close();
    closeQuietly(listenFd);
  }
  // Closed: no more attempts.
  const count = server.endpoint.connectionCount;
  await sleep(60);
  assert.equal(server.endpoint.connectionCount, count);
  assert.ok(fs.existsSync(socketPath), 'client mode does not remove the frontend\'s socket');
});

// ---- socket activation ----

test('socket activation: an inherited listening fd is served; closing does not remove a socket we did not create', async () => {
  const socketPath = freshPath('activated');
  const before = openFds();
  const listenFd = native.unixListen(socketPath, 16);
  const server = new DeviceServer(new EchoDevice(), { socketFd: listenFd }).listen();
  try {
    const driver = await VirtioDriver.connect({ socketPath, ramSize: 1 << 20 });
    try {
      await driver.startQueues(1, 8);
      const input = put(driver.ram, 'activated');
      const out = driver.ram.alloc(16, 8);
      assert.equal(text(driver.ram, out, await driver.submit(0, [input], [{ addr: out, len: 16 }])), 'ACTIVATED');
    } finally {
      driver.close();
    }
  } finally {
    await server.close();
  }
  assert.ok(fs.existsSync(socketPath));
  assert.deepEqual(fdsOpenedSince(before), [], 'the inherited fd is closed with the server');
});

test('socket activation: an fd that is not a listening Unix socket is refused', () => {
  const efd = native.eventfd(0);
  const [a, b] = native.socketPair();
  try {
    assert.throws(() => new DeviceServer(new EchoDevice(), { socketFd: efd }).listen(), /not a listening Unix stream socket/);
    assert.throws(() => new DeviceServer(new EchoDevice(), { socketFd: a }).listen(), /not a listening Unix stream socket/);
  } finally {
    closeQuietly(efd);
    closeQuietly(a);
    closeQuietly(b);
  }
});

// ---- the socket file ----

function modeOf(p: string): number {
  return fs.lstatSync(p).mode & 0o777;
}

test('the socket file is 0600 by default, even with umask 0; socketMode is honoured', async () => {
  const oldMask = process.umask(0);
  try {
    const p1 = freshPath('mode');
    const s1 = new DeviceServer(new EchoDevice(), { socketPath: p1 }).listen();
    assert.equal(modeOf(p1), 0o600);
    await s1.close();
    const p2 = freshPath('mode');
    const s2 = new DeviceServer(new EchoDevice(), { socketPath: p2, socketMode: 0o660 }).listen();
    assert.equal(modeOf(p2), 0o660);
    await s2.close();
  } finally {
    process.umask(oldMask);
  }
  assert.equal(process.umask(), oldMask, 'the process umask is left as it was');
});

test('refuses to start when the path is a regular file, a symlink or a directory, and leaves it alone', async () => {
  const file = freshPath('file');
  fs.writeFileSync(file, 'precious');
  assert.throws(() => new DeviceServer(new EchoDevice(), { socketPath: file }).listen(), /exists and is not a socket/);
  assert.equal(fs.readFileSync(file, 'utf8'), 'precious');

  const dangling = freshPath('link');
  fs.symlinkSync(path.join(dir, 'nowhere'), dangling);
  assert.throws(() => new DeviceServer(new EchoDevice(), { socketPath: dangling }).listen(), /a symlink/);
  assert.ok(fs.lstatSync(dangling).isSymbolicLink());

  // A symlink to a stale socket is not followed either.
  const stale = freshPath('stale-target');
  closeQuietly(native.unixListen(stale, 1));
  const link = freshPath('link');
  fs.symlinkSync(stale, link);
  assert.throws(() => new DeviceServer(new EchoDevice(), { socketPath: link }).listen(), /a symlink/);
  assert.ok(fs.lstatSync(link).isSymbolicLink());
  assert.ok(fs.lstatSync(stale).isSocket());

  const sub = freshPath('dir');
  fs.mkdirSync(sub);
  assert.throws(() => new DeviceServer(new EchoDevice(), { socketPath: sub }).listen(), /exists and is not a socket/);
  assert.ok(fs.statSync(sub).isDirectory());
});

test('a stale socket left by a dead daemon is replaced', async () => {
  const p = freshPath('stale');
  closeQuietly(native.unixListen(p, 1));
  assert.ok(fs.lstatSync(p).isSocket());
  const mark = lines.length;
  const server = new DeviceServer(new EchoDevice(), { socketPath: p }).listen();
  try {
    assert.ok(lines.slice(mark).some((l) => /removing stale socket/.test(l)));
    const driver = await VirtioDriver.connect({ socketPath: p, ramSize: 1 << 20 });
    driver.close();
  } finally {
    await server.close();
  }
  assert.equal(fs.existsSync(p), false);
});

test('refuses to start when a live server owns the path; the owner keeps serving', async () => {
  await withServer(new EchoDevice(), async (socketPath, owner) => {
    const ino = fs.lstatSync(socketPath).ino;
    assert.throws(() => new DeviceServer(new EchoDevice(), { socketPath }).listen(), /in use by another process/);
    assert.equal(fs.lstatSync(socketPath).ino, ino, 'the socket file is untouched');
    // The refused daemon probed by connecting: the owner sees that as a frontend that came and went.
    await waitUntil(() => owner.endpoint.connectionCount === 1 && owner.endpoint.active === undefined &&
      owner.backend === undefined, 5000, 'the probe to come and go');
    const driver = await VirtioDriver.connect({ socketPath, ramSize: 1 << 20 });
    try {
      await driver.startQueues(1, 8);
      const input = put(driver.ram, 'owner');
      const out = driver.ram.alloc(8, 8);
      assert.equal(await driver.submit(0, [input], [{ addr: out, len: 8 }]), 5);
    } finally {
      driver.close();
    }
  });
});

test('close removes the socket file it created, but not one that replaced it', async () => {
  const p = freshPath('remove');
  const s1 = new DeviceServer(new EchoDevice(), { socketPath: p }).listen();
  assert.ok(fs.existsSync(p));
  await s1.close();
  assert.equal(fs.existsSync(p), false);

  const s2 = new DeviceServer(new EchoDevice(), { socketPath: p }).listen();
  fs.unlinkSync(p);
  const other = native.unixListen(p, 1);
  try {
    await s2.close();
    assert.ok(fs.lstatSync(p).isSocket(), 'somebody else\'s socket stays');
  } finally {
    closeQuietly(other);
  }
});

// ---- the CLI's socket options, in a daemon process ----

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'echo-daemon.js');

async function runDaemon(args: string[], fn: (socketPath: string) => Promise<void>): Promise<{ code: number | null; stderr: string }> {
  const socketPath = freshPath('daemon');
  const child = spawn(process.execPath, [fixture, '--socket-path', socketPath, '--log-level', 'warn', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await waitUntil(() => stdout.includes('ready') || child.exitCode !== null, 10000, 'the daemon to start');
    assert.ok(stdout.includes('ready'), `daemon failed to start: ${stderr}`);
    await fn(socketPath);
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
  }
  const code = await exited;
  assert.equal(fs.existsSync(socketPath), false, 'the daemon removed its socket on SIGTERM');
  return { code, stderr };
}

test('daemon: --socket-mode is honoured, the default is 0600, and SIGTERM removes the socket', async () => {
  const a = await runDaemon(['--socket-mode', '0660'], async (p) => {
    assert.equal(modeOf(p), 0o660);
    const driver = await VirtioDriver.connect({ socketPath: p, ramSize: 1 << 20 });
    try {
      await driver.startQueues(1, 8);
      const input = put(driver.ram, 'other process');
      const out = driver.ram.alloc(16, 8);
      assert.equal(text(driver.ram, out, await driver.submit(0, [input], [{ addr: out, len: 16 }])), 'OTHER PROCESS');
    } finally {
      driver.close();
    }
  });
  assert.equal(a.code, 0, a.stderr);
  const b = await runDaemon([], async (p) => {
    assert.equal(modeOf(p), 0o600);
  });
  assert.equal(b.code, 0, b.stderr);
});
