import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { DeviceServer } from '../../../src/device/server.js';
import { NetPort } from '../../../src/devices/net/port.js';
import { NetSwitch } from '../../../src/devices/net/switch.js';
import { openTap, tapSupported, TapUplink } from '../../../src/devices/net/tap.js';
import { closeQuietly } from '../../../src/native/index.js';
import { tempDir } from '../../helpers/tmp.js';
import { NetGuest, ipv4L4, l4ChecksumOk, mac, tagOf, testFrame } from './net-guest.js';
import { havePython, readFrame, seqpacketPair } from './seqpacket.js';

const A = '02:00:00:00:00:0a';
const HOST = '02:00:00:00:00:f0';

test('uplink: frames pass both ways through a packet fd, checksums are completed on the way out', async (t) => {
  if (!havePython()) {
    const message = 'SKIPPED: python3 (3.9+) is needed to make a SOCK_SEQPACKET pair';
    process.stderr.write(`\n*** ${message} ***\n`);
    t.skip(message);
    return;
  }
  const [uplinkFd, hostFd] = await seqpacketPair();
  const { dir, cleanup } = tempDir('vhost-net-tap-');
  const sw = new NetSwitch({ autoSweep: false });
  const port = new NetPort(sw, { name: 'p0', mac: A });
  const server = new DeviceServer(port, { socketPath: path.join(dir, 'p0.sock') }).listen();
  const uplink = new TapUplink(sw, uplinkFd);
  let guest: NetGuest | undefined;
  try {
    guest = await NetGuest.connect(path.join(dir, 'p0.sock'), { refuse: [] });
    // Guest -> host: broadcast, flooded to the uplink.
    await guest.send(testFrame('ff:ff:ff:ff:ff:ff', A, 1));
    assert.deepEqual(await readFrame(hostFd), testFrame('ff:ff:ff:ff:ff:ff', A, 1));
    // Host -> guest: unicast to the learned guest address.
    fs.writeSync(hostFd, testFrame(A, HOST, 2, 300));
    await guest.waitFrames(1);
    assert.deepEqual(guest.received[0]!.frame, testFrame(A, HOST, 2, 300));
    assert.equal(sw.lookup(mac(HOST)), uplink);
    // Guest -> host with a partial checksum: the TAP carries no virtio header, so it is completed here.
    const c = ipv4L4(HOST, A, 6, Buffer.alloc(777, 3));
    await guest.send(c.frame, { csum: { start: c.csumStart, offset: c.csumOffset } });
    const out = await readFrame(hostFd);
    assert.equal(out.length, c.frame.length);
    assert.ok(l4ChecksumOk(out));
    // A runt from the host is counted and dropped; the next frame still gets through.
    fs.writeSync(hostFd, Buffer.alloc(10));
    fs.writeSync(hostFd, testFrame(A, HOST, 3));
    await guest.waitFrames(2);
    assert.equal(tagOf(guest.received[1]!.frame), 3);
    const s = uplink.stats.snapshot();
    assert.equal(s.rxPackets, 2);
    assert.equal(s.txPackets, 2);
    assert.equal(s.txErrors, 1);
    assert.equal(s.csumComputed, 1);
  } finally {
    guest?.close();
    await server.close();
    uplink.close();
    sw.close();
    closeQuietly(hostFd);
    cleanup();
  }
  // Closing the uplink takes it out of the switch.
  assert.equal(sw.ports.includes(uplink), false);
});

test('uplink: a frame the fd will not take is dropped and counted, never queued', async (t) => {
  if (!havePython()) {
    t.skip('SKIPPED: python3 (3.9+) is needed to make a SOCK_SEQPACKET pair');
    return;
  }
  const [uplinkFd, hostFd] = await seqpacketPair();
  const sw = new NetSwitch({ autoSweep: false });
  const uplink = new TapUplink(sw, uplinkFd);
  const sender = { name: 'fake', receive: () => undefined };
  sw.addPort(sender);
  try {
    // Nobody reads the host end: the socket buffer fills, then writes fail with EAGAIN.
    const { Packet } = await import('../../../src/devices/net/packet.js');
    const p = new Packet();
    const frame = testFrame('ff:ff:ff:ff:ff:ff', A, 1, 1400);
    for (let i = 0; i < 2000; i++) {
      p.buffer.set(frame);
      p.reset(frame.length);
      sw.forward(sender, p);
    }
    const s = uplink.stats.snapshot();
    assert.ok(s.rxDropped > 0, 'some frames were dropped');
    assert.equal(s.rxPackets + s.rxDropped, 2000);
  } finally {
    uplink.close();
    sw.close();
    closeQuietly(hostFd);
  }
});

test('uplink with a virtio-net header: partial checksums pass to the kernel untouched, and from it to a guest', async (t) => {
  if (!havePython()) {
    t.skip('SKIPPED: python3 (3.9+) is needed to make a SOCK_SEQPACKET pair');
    return;
  }
  const [uplinkFd, hostFd] = await seqpacketPair();
  const { dir, cleanup } = tempDir('vhost-net-tap-');
  const sw = new NetSwitch({ autoSweep: false });
  const port = new NetPort(sw, { name: 'p0', mac: A });
  const server = new DeviceServer(port, { socketPath: path.join(dir, 'p0.sock') }).listen();
  const uplink = new TapUplink(sw, uplinkFd, { vnetHdr: true });
  let guest: NetGuest | undefined;
  const hdr = (flags: number, gso: number, start: number, offset: number) => {
    const h = Buffer.alloc(10);
    h[0] = flags;
    h[1] = gso;
    h.writeUInt16LE(start, 6);
    h.writeUInt16LE(offset, 8);
    return h;
  };
  try {
    guest = await NetGuest.connect(path.join(dir, 'p0.sock'));
    const c = ipv4L4(HOST, A, 17, Buffer.alloc(99, 1));
    await guest.send(c.frame, { csum: { start: c.csumStart, offset: c.csumOffset } });
    const out = await readFrame(hostFd);
    assert.deepEqual(out.subarray(0, 10), hdr(1, 0, c.csumStart, c.csumOffset));
    assert.deepEqual(out.subarray(10), c.frame, 'frame untouched: the kernel completes the checksum');
    const plain = testFrame(A, HOST, 5);
    fs.writeSync(hostFd, Buffer.concat([hdr(0, 0, 0, 0), plain]));
    const p = ipv4L4(A, HOST, 6, Buffer.alloc(40, 2));
    fs.writeSync(hostFd, Buffer.concat([hdr(1, 0, p.csumStart, p.csumOffset), p.frame]));
    fs.writeSync(hostFd, Buffer.concat([hdr(0, 1, 0, 0), plain])); // GSO: refused
    fs.writeSync(hostFd, Buffer.concat([hdr(1, 0, 60, 60), plain])); // checksum past the end: refused
    fs.writeSync(hostFd, Buffer.concat([hdr(0, 0, 0, 0), testFrame(A, HOST, 6)]));
    await guest.waitFrames(3);
    assert.deepEqual(guest.received[0]!.frame, plain);
    assert.deepEqual(guest.received[1]!.hdr, { flags: 1, gsoType: 0, csumStart: p.csumStart, csumOffset: p.csumOffset, numBuffers: 1 });
    assert.deepEqual(guest.received[1]!.frame, p.frame);
    assert.equal(tagOf(guest.received[2]!.frame), 6);
    const s = uplink.stats.snapshot();
    assert.equal(s.csumComputed, 0);
    assert.equal(s.txErrors, 2);
    assert.equal(s.txPackets, 3);
    assert.equal(s.rxPackets, 1);
  } finally {
    guest?.close();
    await server.close();
    uplink.close();
    sw.close();
    closeQuietly(hostFd);
    cleanup();
  }
});

test('openTap: refuses bad names; opens (and creates) a TAP with a virtio-net header', (t) => {
  if (!tapSupported()) {
    assert.throws(() => openTap('vhu0'), /cannot open TAP devices/);
    return;
  }
  assert.throws(() => openTap('x'.repeat(16)), RangeError);
  assert.throws(() => openTap('a/b'), RangeError);
  if (process.getuid?.() !== 0) {
    t.skip('SKIPPED: creating a TAP needs root');
    return;
  }
  const name = `vhut${process.pid % 100000}o`;
  const tap = openTap(name);
  try {
    assert.equal(tap.name, name);
    assert.equal(tap.vnetHdr, true);
    assert.ok(fs.existsSync(`/sys/class/net/${name}`));
  } finally {
    closeQuietly(tap.fd);
  }
  // Not persistent: the interface goes with its last fd.
  assert.equal(fs.existsSync(`/sys/class/net/${name}`), false);
});
