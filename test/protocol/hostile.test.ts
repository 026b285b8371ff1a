/**
 * Hostile frontends against a real DeviceServer(EchoDevice) over a Unix socket. For every malformed message:
 * the daemon closes the connection, closes every fd it received (the daemon runs in this process, so
 * /proc/self/fd must come back to where it was), logs the reason, and serves a good frontend afterwards.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { native, closeQuietly } from '../../src/native/index.js';
import { DeviceServer } from '../../src/device/server.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { FrontendConnection, RequestFailed } from '../../src/protocol/frontend.js';
import { FrontendRequest as R, ProtocolFeature } from '../../src/protocol/constants.js';
import { setLogLevel, setLogSink, getLogLevel } from '../../src/util/log.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { fdsOpenedSince, openFds, tempDir, waitUntil, sleep } from '../helpers/tmp.js';
import {
  Bytes, NEED_REPLY, REPLY, RawPeer, V1, configPayload, inflightPayload, memTable, readU64, singleRegion, u64,
  vringAddr, vringState, type WireMessage, type WireRegion,
} from '../helpers/wire.js';
import { negotiate } from '../helpers/frontend-rig.js';

const lines: string[] = [];
let restoreSink: ((line: string) => void) | undefined;
let restoreLevel: ReturnType<typeof getLogLevel> = 'warn';
let dir = '';
let cleanupDir: () => void = () => {};
let socketPath = '';
let device: EchoDevice;
let server: DeviceServer;

before(() => {
  restoreSink = setLogSink((line) => lines.push(line));
  restoreLevel = getLogLevel();
  setLogLevel('warn');
  ({ dir, cleanup: cleanupDir } = tempDir());
  socketPath = path.join(dir, 'echo.sock');
  device = new EchoDevice();
  server = new DeviceServer(device, { socketPath }).listen();
});

after(async () => {
  await server.close();
  cleanupDir();
  if (restoreSink) setLogSink(restoreSink);
  setLogLevel(restoreLevel);
});

/** The server has no frontend and its last backend is cleaned up. */
async function idle(s: DeviceServer = server): Promise<void> {
  await waitUntil(() => s.endpoint.active === undefined && s.backend === undefined, 5000, 'the server to be idle');
}

/** fds a case creates to send; all are closed by us right after sending. */
class Fds {
  readonly list: number[] = [];

  add(fd: number): number {
    this.list.push(fd);
    return fd;
  }

  eventfd(): number {
    return this.add(native.eventfd(0));
  }

  memfd(size = 1 << 20): number {
    return this.add(native.memfdCreate('hostile-test', size));
  }

  /** One end of a socketpair (both ends are ours to close). */
  socket(): number {
    const [a, b] = native.socketPair();
    this.add(b);
    return this.add(a);
  }

  /** A regular file opened read-only, `size` bytes. */
  readOnlyFile(size: number): number {
    const file = path.join(dir, `ro-${this.list.length}-${Math.random().toString(36).slice(2)}`);
    fs.writeFileSync(file, new Uint8Array(size));
    const fd = fs.openSync(file, 'r');
    fs.unlinkSync(file);
    return this.add(fd);
  }

  closeAll(): void {
    for (const fd of this.list.splice(0)) closeQuietly(fd);
  }
}

/** A good frontend: negotiate, one queue, one echo round trip. */
async function goodRoundTrip(target: string = socketPath): Promise<void> {
  const driver = await VirtioDriver.connect({ socketPath: target, ramSize: 1 << 20 });
  try {
    await driver.startQueues(1, 8);
    const data = Buffer.from('still serving');
    const addr = driver.ram.alloc(data.length, 8);
    driver.ram.bytes(addr, data.length).set(data);
    const out = driver.ram.alloc(32, 8);
    const len = await driver.submit(0, [{ addr, len: data.length }], [{ addr: out, len: 32 }]);
    assert.equal(Buffer.from(driver.ram.bytes(out, len)).toString(), 'STILL SERVING');
  } finally {
    driver.close();
  }
}

/**
 * Send `build`'s messages on a fresh connection and check the daemon's reaction: it closes the connection,
 * logs `reason`, leaves no fd of ours open, and still serves a good frontend.
 */
async function expectDropped(build: (fds: Fds) => WireMessage[], reason: RegExp): Promise<void> {
  await idle();
  const baseline = openFds();
  const mark = lines.length;
  const fds = new Fds();
  const peer = RawPeer.connect(socketPath);
  try {
    const messages = build(fds);
    for (const m of messages) await peer.sendMessage(m);
    // Our copies go now: from here on, any of these still open is the daemon's.
    fds.closeAll();
    const { ending } = await peer.closedByPeer();
    assert.ok(ending === 'eof' || ending === 'reset');
  } finally {
    fds.closeAll();
    peer.close();
  }
  await idle();
  const logged = lines.slice(mark).filter((l) => /closing connection: /.test(l));
  assert.equal(logged.length, 1, `one logged reason, got:\n${lines.slice(mark).join('\n')}`);
  assert.match(logged[0]!, reason);
  try {
    await waitUntil(() => fdsOpenedSince(baseline).length === 0, 2000, 'fds to be closed');
  } catch {
    // fall through to the assertion, which names them
  }
  assert.deepEqual(fdsOpenedSince(baseline), [], 'every fd the daemon received was closed');
  await goodRoundTrip();
}

const one: WireRegion = { gpa: 0, size: 1 << 20, uaddr: 0x7f0000000000 };

function hostile(name: string, reason: RegExp, build: (fds: Fds) => WireMessage[]): void {
  test(`hostile: ${name}`, () => expectDropped(build, reason));
}

// ---- malformed headers ----

for (const flags of [0x0, 0x2, 0x3]) {
  hostile(`header version ${flags & 3} (flags 0x${flags.toString(16)})`, /header version \d, expected 1/,
    (fds) => [{ request: R.GET_FEATURES, flags, fds: [fds.eventfd()] }]);
}
hostile('header version 2 on SET_MEM_TABLE with a region fd', /header version 2/,
  (fds) => [{ request: R.SET_MEM_TABLE, flags: 2, payload: memTable([one]), fds: [fds.memfd()] }]);
hostile('payload size 4097 in the header (no payload follows)', /payload size 4097 over the 4096-byte limit/,
  () => [{ request: R.SET_CONFIG, size: 4097 }]);
hostile('payload size 2^32-1 in the header, with an fd', /payload size 4294967295 over/,
  (fds) => [{ request: R.SET_MEM_TABLE, size: 0xffffffff, fds: [fds.memfd()] }]);

// ---- wrong payload size, per request type ----

for (const request of [R.GET_FEATURES, R.SET_OWNER, R.RESET_OWNER, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM,
  R.GET_MAX_MEM_SLOTS, R.RESET_DEVICE, R.GET_STATUS]) {
  hostile(`request ${request} with an 8-byte payload where none is allowed`, /payload is 8 bytes, expected none/,
    () => [{ request, payload: u64(0) }]);
}
hostile('SET_BACKEND_REQ_FD with a payload', /SET_BACKEND_REQ_FD: unexpected 8-byte payload/,
  (fds) => [{ request: R.SET_BACKEND_REQ_FD, payload: u64(0), fds: [fds.socket()] }]);
for (const request of [R.SET_FEATURES, R.SET_PROTOCOL_FEATURES, R.SET_STATUS]) {
  for (const size of [0, 4, 16]) {
    hostile(`request ${request} with a ${size}-byte u64`, new RegExp(`payload is ${size} bytes, expected 8`),
      () => [{ request, payload: new Uint8Array(size) }]);
  }
}
for (const request of [R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]) {
  hostile(`request ${request} with a 4-byte payload and an fd`, /payload is 4 bytes, expected 8/,
    (fds) => [{ request, payload: new Uint8Array(4), fds: [fds.eventfd()] }]);
}
for (const request of [R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE]) {
  hostile(`request ${request} with a 12-byte vring state`, /vring state: payload is 12 bytes, expected 8/,
    () => [{ request, payload: new Uint8Array(12) }]);
}
hostile('SET_VRING_ADDR with 32 bytes', /vring address: payload is 32 bytes, expected 40/,
  () => [{ request: R.SET_VRING_ADDR, payload: vringAddr(0, 0, 0, 0).subarray(0, 32) }]);
hostile('SET_MEM_TABLE one byte short, with its fd', /39 bytes for 1 regions/,
  (fds) => [{ request: R.SET_MEM_TABLE, payload: memTable([one]).subarray(0, 39), fds: [fds.memfd()] }]);
for (const request of [R.ADD_MEM_REG, R.REM_MEM_REG]) {
  hostile(`request ${request} with a 32-byte region`, /single memory region: payload is 32 bytes, expected 40/,
    (fds) => [{ request, payload: singleRegion(one).subarray(8), fds: [fds.memfd()] }]);
}
for (const request of [R.GET_CONFIG, R.SET_CONFIG]) {
  hostile(`request ${request} whose size field disagrees with the payload`, /payload is 20 bytes for a 9-byte config/,
    () => [{ request, payload: configPayload(0, new Uint8Array(8), 0, 9) }]);
}
hostile('GET_INFLIGHT_FD with the unpadded 20-byte struct', /inflight: payload is 20 bytes, expected 24/,
  () => [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 1, 64, 20) }]);
hostile('SET_INFLIGHT_FD with the unpadded 20-byte struct', /inflight: payload is 20 bytes, expected 24/,
  (fds) => [{ request: R.SET_INFLIGHT_FD, payload: inflightPayload(4096, 0, 1, 64, 20), fds: [fds.memfd(4096)] }]);

// ---- missing fds ----

hostile('SET_MEM_TABLE with 2 regions and 1 fd', /SET_MEM_TABLE: carries 1 file descriptors, expected 2/,
  (fds) => [{ request: R.SET_MEM_TABLE, payload: memTable([one, { gpa: 1 << 20, size: 1 << 20, uaddr: 0x7f0000100000 }]),
    fds: [fds.memfd()] }]);
hostile('SET_MEM_TABLE with 1 region and no fd', /SET_MEM_TABLE: carries 0 file descriptors, expected 1/,
  () => [{ request: R.SET_MEM_TABLE, payload: memTable([one]) }]);
hostile('ADD_MEM_REG without an fd', /ADD_MEM_REG: carries 0 file descriptors, expected 1/,
  () => [{ request: R.ADD_MEM_REG, payload: singleRegion(one) }]);
for (const request of [R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]) {
  hostile(`request ${request} without an fd and without NOFD`, /carries 0 file descriptors, expected 1/,
    () => [{ request, payload: u64(0) }]);
}
hostile('SET_BACKEND_REQ_FD without an fd', /SET_BACKEND_REQ_FD: carries 0 file descriptors, expected 1/,
  () => [{ request: R.SET_BACKEND_REQ_FD }]);
hostile('SET_INFLIGHT_FD without an fd', /SET_INFLIGHT_FD: carries 0 file descriptors, expected 1/,
  () => [{ request: R.SET_INFLIGHT_FD, payload: inflightPayload(4096, 0, 1, 64) }]);

// ---- surplus fds ----

hostile('GET_FEATURES with an fd', /GET_FEATURES: carries 1 file descriptors, expected 0/,
  (fds) => [{ request: R.GET_FEATURES, fds: [fds.eventfd()] }]);
hostile('SET_FEATURES with an fd', /SET_FEATURES: carries 1 file descriptors, expected 0/,
  (fds) => [{ request: R.SET_FEATURES, payload: u64(0), fds: [fds.memfd()] }]);
hostile('SET_VRING_KICK with NOFD and an fd', /SET_VRING_KICK: carries 1 file descriptors, expected 0/,
  (fds) => [{ request: R.SET_VRING_KICK, payload: u64(0x100), fds: [fds.eventfd()] }]);
hostile('SET_VRING_CALL with 2 fds', /SET_VRING_CALL: carries 2 file descriptors, expected 1/,
  (fds) => [{ request: R.SET_VRING_CALL, payload: u64(0), fds: [fds.eventfd(), fds.eventfd()] }]);
hostile('SET_MEM_TABLE with 1 region and 2 fds', /SET_MEM_TABLE: carries 2 file descriptors, expected 1/,
  (fds) => [{ request: R.SET_MEM_TABLE, payload: memTable([one]), fds: [fds.memfd(), fds.memfd()] }]);
hostile('ADD_MEM_REG with 2 fds', /ADD_MEM_REG: carries 2 file descriptors, expected 1/,
  (fds) => [{ request: R.ADD_MEM_REG, payload: singleRegion(one), fds: [fds.memfd(), fds.memfd()] }]);
hostile('REM_MEM_REG with 2 fds', /REM_MEM_REG: carries 2 file descriptors, expected 0\.\.1/,
  (fds) => [{ request: R.REM_MEM_REG, payload: singleRegion(one), fds: [fds.memfd(), fds.memfd()] }]);
hostile('GET_INFLIGHT_FD with an fd', /GET_INFLIGHT_FD: carries 1 file descriptors, expected 0/,
  (fds) => [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 1, 64), fds: [fds.memfd(4096)] }]);
for (const count of [9, 16, 253]) {
  hostile(`GET_FEATURES with ${count} fds`, /more than 8 file descriptors/,
    (fds) => [{ request: R.GET_FEATURES, fds: Array.from({ length: count }, () => fds.eventfd()) }]);
}
hostile('SET_MEM_TABLE with 8 regions and 9 fds', /more than 8 file descriptors/, (fds) => {
  const regions = Array.from({ length: 8 }, (_, i) => ({ gpa: i << 20, size: 1 << 20, uaddr: 0x7f0000000000 + (i << 20) }));
  return [{ request: R.SET_MEM_TABLE, payload: memTable(regions), fds: Array.from({ length: 9 }, () => fds.memfd()) }];
});

// ---- unknown and unsupported requests ----

for (const request of [0, 41, 42, 43, 99, 1000, 0xffffffff]) {
  hostile(`unknown request ${request}`, new RegExp(`unsupported request UNKNOWN\\(${request}\\)`),
    (fds) => [{ request, payload: u64(0), fds: [fds.eventfd()] }]);
}
for (const [request, name, withFd] of [[R.SET_LOG_BASE, 'SET_LOG_BASE', true], [R.SET_LOG_FD, 'SET_LOG_FD', true],
  [R.IOTLB_MSG, 'IOTLB_MSG', false], [R.SET_VRING_ENDIAN, 'SET_VRING_ENDIAN', false],
  [R.CREATE_CRYPTO_SESSION, 'CREATE_CRYPTO_SESSION', false], [R.POSTCOPY_ADVISE, 'POSTCOPY_ADVISE', false],
  [R.GPU_SET_SOCKET, 'GPU_SET_SOCKET', true], [R.VRING_KICK, 'VRING_KICK', false]] as const) {
  hostile(`${name}, not offered`, new RegExp(`unsupported request ${name}`),
    (fds) => [{ request, payload: new Bytes().u64(4096).u64(0).build(), fds: withFd ? [fds.memfd(4096)] : [] }]);
}
hostile('NET_SET_MTU to a device that is not a network device', /NET_SET_MTU: not a network device/,
  () => [{ request: R.NET_SET_MTU, payload: u64(1500) }]);
hostile('SEND_RARP to a device that is not a network device', /SEND_RARP: not a network device/,
  () => [{ request: R.SEND_RARP, payload: u64(0) }]);

// ---- impossible values ----

hostile('SET_MEM_TABLE claiming 1000 regions', /1000 regions/,
  (fds) => [{ request: R.SET_MEM_TABLE, payload: memTable([one], 1000), fds: [fds.memfd()] }]);
hostile('SET_MEM_TABLE with 9 regions', /9 regions/, () => {
  const regions = Array.from({ length: 9 }, (_, i) => ({ gpa: i << 20, size: 1 << 20, uaddr: i << 20 }));
  return [{ request: R.SET_MEM_TABLE, payload: memTable(regions) }];
});
hostile('SET_MEM_TABLE with 0 regions', /0 regions/, () => [{ request: R.SET_MEM_TABLE, payload: memTable([]) }]);
hostile('SET_MEM_TABLE with overlapping regions', /SET_MEM_TABLE: /, (fds) => [{
  request: R.SET_MEM_TABLE, payload: memTable([one, { gpa: 0x80000, size: 1 << 20, uaddr: 0x7e0000000000 }]),
  fds: [fds.memfd(), fds.memfd()],
}]);
hostile('ADD_MEM_REG overlapping a region added before', /ADD_MEM_REG: /, (fds) => [
  { request: R.ADD_MEM_REG, payload: singleRegion(one), fds: [fds.memfd()] },
  { request: R.ADD_MEM_REG, payload: singleRegion({ gpa: 4096, size: 4096, uaddr: 0x7d0000000000 }), fds: [fds.memfd()] },
]);
hostile('REM_MEM_REG of a region that was never added', /REM_MEM_REG: /,
  () => [{ request: R.REM_MEM_REG, payload: singleRegion(one) }]);
for (const size of [0, 3, 100, 512, 65536, 0xffffffff]) {
  hostile(`SET_VRING_NUM with size ${size}`, new RegExp(`SET_VRING_NUM: size ${size} is not a power of two in 1\\.\\.256`),
    () => [{ request: R.SET_VRING_NUM, payload: vringState(0, size) }]);
}
for (const [request, name, payload, withFd] of [
  [R.SET_VRING_NUM, 'SET_VRING_NUM', vringState(2, 8), false],
  [R.SET_VRING_BASE, 'SET_VRING_BASE', vringState(2, 0), false],
  [R.GET_VRING_BASE, 'GET_VRING_BASE', vringState(200, 0), false],
  [R.SET_VRING_ADDR, 'SET_VRING_ADDR', vringAddr(9, 0, 0, 0), false],
  [R.SET_VRING_ENABLE, 'SET_VRING_ENABLE', vringState(2, 1), false],
  [R.SET_VRING_KICK, 'SET_VRING_KICK', u64(2), true],
  [R.SET_VRING_CALL, 'SET_VRING_CALL', u64(255), true],
  [R.SET_VRING_ERR, 'SET_VRING_ERR', u64(0x102), false],
] as const) {
  hostile(`${name} for a queue that does not exist`, new RegExp(`${name}: queue \\d+ does not exist \\(the device has 2\\)`),
    (fds) => [{ request, payload, fds: withFd ? [fds.eventfd()] : [] }]);
}
hostile('SET_VRING_ENABLE with value 2', /SET_VRING_ENABLE: enable value 2 is neither 0 nor 1/,
  () => [{ request: R.SET_VRING_ENABLE, payload: vringState(0, 2) }]);
hostile('SET_VRING_ENABLE after SET_FEATURES without PROTOCOL_FEATURES', /SET_VRING_ENABLE without PROTOCOL_FEATURES/,
  () => [{ request: R.SET_FEATURES, payload: u64(1n << 32n) }, { request: R.SET_VRING_ENABLE, payload: vringState(0, 1) }]);
hostile('SET_VRING_BASE beyond a 16-bit index', /SET_VRING_BASE: 65536 is not a split-ring index/,
  () => [{ request: R.SET_VRING_BASE, payload: vringState(0, 0x10000) }]);
hostile('SET_VRING_KICK with reserved bits', /SET_VRING_KICK: reserved bits set in 0x200/,
  (fds) => [{ request: R.SET_VRING_KICK, payload: u64(0x200), fds: [fds.eventfd()] }]);
hostile('SET_VRING_CALL with the high word set', /SET_VRING_CALL: reserved bits set/,
  (fds) => [{ request: R.SET_VRING_CALL, payload: u64(1n << 40n), fds: [fds.eventfd()] }]);
hostile('SET_VRING_KICK with NOFD (polling is not supported)', /SET_VRING_KICK: polled rings \(NOFD\) are not supported/,
  () => [{ request: R.SET_VRING_KICK, payload: u64(0x100) }]);
hostile('SET_FEATURES with a bit that was not offered (63)', /SET_FEATURES: bits 0x8000000000000000 were not offered/,
  () => [{ request: R.SET_FEATURES, payload: u64(1n << 63n) }]);
hostile('SET_FEATURES with LOG_ALL, never offered', /SET_FEATURES: bits 0x4000000 were not offered/,
  () => [{ request: R.SET_FEATURES, payload: u64(1n << 26n) }]);
hostile('SET_PROTOCOL_FEATURES with LOG_SHMFD, not offered', /SET_PROTOCOL_FEATURES: bits 0x2 were not offered/,
  () => [{ request: R.SET_PROTOCOL_FEATURES, payload: u64(1n << 1n) }]);
hostile('SET_STATUS 0x100', /SET_STATUS: status 0x100 does not fit 8 bits/,
  () => [{ request: R.SET_STATUS, payload: u64(0x100) }]);
hostile('GET_CONFIG past the config space', /config: range 250\+8 is outside the config space/,
  () => [{ request: R.GET_CONFIG, payload: configPayload(250, new Uint8Array(8)) }]);
hostile('SET_CONFIG of 257 bytes', /config: size 257 over 256/,
  () => [{ request: R.SET_CONFIG, payload: configPayload(0, new Uint8Array(257)) }]);
hostile('GET_INFLIGHT_FD for more queues than the device has', /GET_INFLIGHT_FD: 3 queues \(the device has 2\)/,
  () => [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 3, 64) }]);
hostile('GET_INFLIGHT_FD for 0 queues', /GET_INFLIGHT_FD: 0 queues/,
  () => [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 0, 64) }]);
hostile('GET_INFLIGHT_FD with queue size 100', /GET_INFLIGHT_FD: queue size 100 is not a power of two/,
  () => [{ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, 1, 100) }]);
hostile('SET_INFLIGHT_FD with an area too small for its queues', /SET_INFLIGHT_FD: area of 64 bytes, \d+ needed/,
  (fds) => [{ request: R.SET_INFLIGHT_FD, payload: inflightPayload(64, 0, 1, 64), fds: [fds.memfd(4096)] }]);
hostile('SET_INFLIGHT_FD with an area past the end of its file', /SET_INFLIGHT_FD: 4096\+4096 is past the end of the 4096-byte file/,
  (fds) => [{ request: R.SET_INFLIGHT_FD, payload: inflightPayload(4096, 4096, 1, 64), fds: [fds.memfd(4096)] }]);

// ---- region fds that cannot back their region ----

hostile('ADD_MEM_REG whose memfd is smaller than the region', /memory region cannot be mapped: .*file has 0x1000 bytes, region needs 0x100000/,
  (fds) => [{ request: R.ADD_MEM_REG, payload: singleRegion(one), fds: [fds.memfd(4096)] }]);
hostile('SET_MEM_TABLE whose second memfd is smaller than its region', /memory region cannot be mapped: .*file has/,
  (fds) => [{
    request: R.SET_MEM_TABLE, payload: memTable([one, { gpa: 1 << 20, size: 1 << 20, uaddr: 0x7f0000100000 }]),
    fds: [fds.memfd(), fds.memfd((1 << 20) - 4096)],
  }]);
hostile('ADD_MEM_REG whose mmap offset runs past the end of the file', /memory region cannot be mapped: .*region needs 0x2000/,
  (fds) => [{ request: R.ADD_MEM_REG, payload: singleRegion({ gpa: 0, size: 4096, uaddr: 0, offset: 4096 }), fds: [fds.memfd(4096)] }]);
hostile('ADD_MEM_REG with an eventfd as the region', /memory region cannot be mapped/,
  (fds) => [{ request: R.ADD_MEM_REG, payload: singleRegion({ gpa: 0, size: 4096, uaddr: 0 }), fds: [fds.eventfd()] }]);
hostile('ADD_MEM_REG with a read-only file as the region', /memory region cannot be mapped/,
  (fds) => [{ request: R.ADD_MEM_REG, payload: singleRegion({ gpa: 0, size: 4096, uaddr: 0 }), fds: [fds.readOnlyFile(4096)] }]);

// ---- the REPLY flag on a request ----

hostile('GET_FEATURES with the REPLY flag', /GET_FEATURES: request has the REPLY flag set/,
  () => [{ request: R.GET_FEATURES, flags: V1 | REPLY }]);
hostile('SET_MEM_TABLE with REPLY|NEED_REPLY and its fd', /SET_MEM_TABLE: request has the REPLY flag set/,
  (fds) => [{ request: R.SET_MEM_TABLE, flags: V1 | REPLY | NEED_REPLY, payload: memTable([one]), fds: [fds.memfd()] }]);

// ---- a bad message after a good session ----

hostile('a malformed message after negotiation, memory and a started ring', /SET_VRING_NUM: size 3/, (fds) => {
  const ram = fds.memfd(1 << 20);
  return [
    { request: R.SET_OWNER },
    { request: R.SET_FEATURES, payload: u64((1n << 32n) | (1n << 30n)) },
    { request: R.ADD_MEM_REG, payload: singleRegion(one), fds: [ram] },
    { request: R.SET_VRING_NUM, payload: vringState(0, 8) },
    { request: R.SET_VRING_ADDR, payload: vringAddr(0, 0x7f0000000000, 0x7f0000002000, 0x7f0000001000) },
    { request: R.SET_VRING_CALL, payload: u64(0), fds: [fds.eventfd()] },
    { request: R.SET_VRING_ERR, payload: u64(0), fds: [fds.eventfd()] },
    { request: R.SET_VRING_KICK, payload: u64(0), fds: [fds.eventfd()] },
    { request: R.SET_BACKEND_REQ_FD, fds: [fds.socket()] },
    { request: R.SET_VRING_NUM, payload: vringState(1, 3) },
  ];
});

// ---- disconnecting in the middle of a message ----

for (const [what, cut] of [['header', 5], ['payload', 12 + 10]] as const) {
  test(`a frontend that disconnects inside a message ${what}: logged, its fds closed, server goes on`, async () => {
    await idle();
    const baseline = openFds();
    const mark = lines.length;
    const peer = RawPeer.connect(socketPath);
    const memfd = native.memfdCreate('hostile-test', 1 << 20);
    const wire = new Bytes().u32(R.SET_MEM_TABLE).u32(V1).u32(40).raw(memTable([one])).build();
    await peer.send(wire.subarray(0, cut), [memfd]);
    native.close(memfd);
    // Let the daemon read the partial message (and take the fd) before we go.
    await sleep(20);
    peer.close();
    await waitUntil(() => lines.slice(mark).some((l) => /closing connection/.test(l)), 5000, 'the log line');
    await idle();
    assert.match(lines.slice(mark).find((l) => /closing connection/.test(l))!,
      new RegExp(`connection closed inside a message ${what} \\(${what === 'header' ? '5 of 12' : '10 of 40'} bytes\\)`));
    await waitUntil(() => fdsOpenedSince(baseline).length === 0, 2000, 'fds to be closed').catch(() => {});
    assert.deepEqual(fdsOpenedSince(baseline), []);
    await goodRoundTrip();
  });
}

test('a frontend that disconnects between messages is a clean close: nothing logged above debug', async () => {
  await idle();
  const mark = lines.length;
  const peer = RawPeer.connect(socketPath);
  await peer.sendMessage({ request: R.GET_FEATURES });
  const reply = await peer.readMessage();
  assert.equal(reply.request, R.GET_FEATURES);
  peer.close();
  await idle();
  assert.deepEqual(lines.slice(mark).filter((l) => /closing connection/.test(l)), []);
  await goodRoundTrip();
});

// ---- REPLY_ACK: a refused request is answered, and the connection stays ----

/** A device whose config space is read-only: SET_CONFIG is refused with RequestRejected. */
function readOnlyEcho(): EchoDevice {
  const d = new EchoDevice();
  (d as { writeConfig?: unknown }).writeConfig = undefined;
  return d;
}

async function withServer(dev: EchoDevice, fn: (sockPath: string, s: DeviceServer) => Promise<void>): Promise<void> {
  const sockPath = path.join(dir, `extra-${Math.random().toString(36).slice(2)}.sock`);
  const s = new DeviceServer(dev, { socketPath: sockPath }).listen();
  try {
    await fn(sockPath, s);
  } finally {
    await s.close();
  }
}

test('REPLY_ACK: a refused SET_CONFIG gets a non-zero ack with flags 0x5, and the connection stays up', async () => {
  const dev = readOnlyEcho();
  await withServer(dev, async (sockPath) => {
    const mark = lines.length;
    const peer = RawPeer.connect(sockPath);
    try {
      await peer.sendMessage({ request: R.SET_PROTOCOL_FEATURES, payload: u64(1n << BigInt(ProtocolFeature.REPLY_ACK)) });
      // A request that succeeds is acked with 0.
      await peer.sendMessage({ request: R.SET_OWNER, flags: V1 | NEED_REPLY });
      const ok = await peer.readMessage();
      assert.deepEqual([ok.request, ok.flags, readU64(ok.payload)], [R.SET_OWNER, 0x5, 0n]);
      await peer.sendMessage({ request: R.SET_CONFIG, flags: V1 | NEED_REPLY, payload: configPayload(0, [9, 9]) });
      const nak = await peer.readMessage();
      assert.equal(nak.request, R.SET_CONFIG);
      assert.equal(nak.flags, 0x5, 'never echo NEED_REPLY back');
      assert.notEqual(readU64(nak.payload), 0n);
      assert.deepEqual(nak.fds, []);
      // Still up: config unchanged, and other requests answered.
      await peer.sendMessage({ request: R.GET_CONFIG, payload: configPayload(0, [0, 0]) });
      const config = await peer.readMessage();
      assert.deepEqual([...config.payload.subarray(12)], [1, 2]);
      await peer.sendMessage({ request: R.GET_FEATURES });
      assert.equal((await peer.readMessage()).request, R.GET_FEATURES);
      assert.equal(peer.ending, undefined);
      assert.ok(lines.slice(mark).some((l) => /SET_CONFIG refused: config space is read-only/.test(l)));
      assert.ok(!lines.slice(mark).some((l) => /closing connection/.test(l)));
    } finally {
      peer.close();
    }
  });
});

test('REPLY_ACK not negotiated: a refused request with NEED_REPLY gets no reply; the connection stays up', async () => {
  await withServer(readOnlyEcho(), async (sockPath) => {
    const peer = RawPeer.connect(sockPath);
    try {
      await peer.sendMessage({ request: R.SET_CONFIG, flags: V1 | NEED_REPLY, payload: configPayload(0, [9]) });
      await peer.sendMessage({ request: R.SET_OWNER, flags: V1 | NEED_REPLY });
      await peer.sendMessage({ request: R.GET_QUEUE_NUM });
      const first = await peer.readMessage();
      assert.equal(first.request, R.GET_QUEUE_NUM, 'no ack came before the GET reply');
      assert.equal(readU64(first.payload), 2n);
    } finally {
      peer.close();
    }
  });
});

test('REPLY_ACK through our frontend: RequestFailed for the refused request, later requests fine', async () => {
  await withServer(readOnlyEcho(), async (sockPath) => {
    const f = FrontendConnection.connect(sockPath);
    try {
      await negotiate(f);
      await assert.rejects(f.setConfig(0, Uint8Array.of(1)), (err: unknown) => err instanceof RequestFailed && err.code !== 0n);
      assert.equal(await f.getQueueNum(), 2);
      assert.deepEqual([...await f.getConfig(0, 3)], [1, 2, 3]);
      assert.equal(f.closed, false);
    } finally {
      f.close();
    }
  });
});

test('REPLY_ACK: a writable config is acked with 0 and changed', async () => {
  await withServer(new EchoDevice(), async (sockPath) => {
    const f = FrontendConnection.connect(sockPath);
    try {
      await negotiate(f);
      await f.setConfig(2, Uint8Array.of(0xaa, 0xbb));
      assert.deepEqual([...await f.getConfig(0, 5)], [1, 2, 0xaa, 0xbb, 5]);
    } finally {
      f.close();
    }
  });
});

test('every case above left the server serving: a final round trip', async () => {
  await idle();
  await goodRoundTrip();
});
