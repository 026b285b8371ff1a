import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DeviceServer, type DeviceServerOptions } from '../../../src/device/server.js';
import { NetPort, type NetPortOptions } from '../../../src/devices/net/port.js';
import { NetSwitch } from '../../../src/devices/net/switch.js';
import type { Packet } from '../../../src/devices/net/packet.js';
import { CtrlAck, CtrlClass, CtrlMac, CtrlMq, CtrlRx } from '../../../src/devices/net/ctrl.js';
import { decodeNetConfig } from '../../../src/virtio/config.js';
import { CommonFeature, hasFeature, NetFeature } from '../../../src/virtio/constants.js';
import { tempDir, waitUntil } from '../../helpers/tmp.js';
import { NetGuest, ipv4L4, ipv6Udp, l4ChecksumOk, mac, tagOf, testFrame, type NetGuestOptions } from './net-guest.js';

const MAC = ['02:00:00:00:00:0a', '02:00:00:00:00:0b', '02:00:00:00:00:0c'];
const BCAST = 'ff:ff:ff:ff:ff:ff';

interface Rig {
  sw: NetSwitch;
  ports: NetPort[];
  sockets: string[];
  servers: DeviceServer[];
  guests: NetGuest[];
  connect(i: number, options?: NetGuestOptions): Promise<NetGuest>;
}

async function withRig(count: number, fn: (rig: Rig) => Promise<void>, portOptions: NetPortOptions = {},
  serverOptions: Partial<DeviceServerOptions> = {}): Promise<void> {
  const { dir, cleanup } = tempDir('vhost-net-test-');
  const sw = new NetSwitch({ autoSweep: false });
  const ports = Array.from({ length: count }, (_, i) => new NetPort(sw, { name: `p${i}`, mac: MAC[i], ...portOptions }));
  const sockets = ports.map((_, i) => path.join(dir, `p${i}.sock`));
  const servers = ports.map((p, i) => new DeviceServer(p, { ...serverOptions, socketPath: sockets[i] }).listen());
  const guests: NetGuest[] = [];
  const rig: Rig = {
    sw, ports, sockets, servers, guests,
    async connect(i, options) {
      const g = await NetGuest.connect(sockets[i]!, options);
      guests.push(g);
      return g;
    },
  };
  try {
    await fn(rig);
  } finally {
    for (const g of guests) g.close();
    await Promise.all(servers.map((s) => s.close()));
    sw.close();
    cleanup();
  }
}

function tags(g: NetGuest): number[] {
  return g.received.map((r) => tagOf(r.frame));
}

test('offers the virtio-net features and config space', async () => {
  await withRig(1, async ({ connect }) => {
    const g = await connect(0);
    for (const bit of [NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.MTU, NetFeature.MAC, NetFeature.MRG_RXBUF,
      NetFeature.STATUS, NetFeature.CTRL_VQ, NetFeature.CTRL_RX, NetFeature.CTRL_MAC_ADDR, NetFeature.MQ]) {
      assert.ok(hasFeature(g.features, bit), `feature ${bit}`);
    }
    assert.ok(hasFeature(g.features, CommonFeature.VERSION_1));
    assert.ok(hasFeature(g.features, CommonFeature.EVENT_IDX));
    assert.equal(g.queues, 5);
    const config = decodeNetConfig(await g.driver.getConfig(0, 12));
    assert.deepEqual(config, { mac: MAC[0], status: 1, max_virtqueue_pairs: 2, mtu: 9000 });
  }, { mtu: 9000, queuePairs: 2 });
});

test('forwards between two guests: flooding first, then learned unicast', async () => {
  await withRig(3, async ({ connect, ports, sw }) => {
    const [a, b, c] = [await connect(0), await connect(1), await connect(2)];
    await a.send(testFrame(BCAST, MAC[0]!, 1));
    await b.waitFrames(1);
    await c.waitFrames(1);
    // B answers A by unicast: A is learned, so C does not see it.
    await b.send(testFrame(MAC[0]!, MAC[1]!, 2, 1000));
    await a.waitFrames(1);
    // And A to B: learned from B's frame.
    await a.send(testFrame(MAC[1]!, MAC[0]!, 3));
    await b.waitFrames(2);
    // A frame C sends to an unknown address is flooded to A and B.
    await c.send(testFrame('02:00:00:00:00:99', MAC[2]!, 4));
    await a.waitFrames(2);
    await b.waitFrames(3);
    assert.deepEqual(tags(a), [2, 4]);
    assert.deepEqual(tags(b), [1, 3, 4]);
    assert.deepEqual(tags(c), [1]);
    assert.deepEqual(a.received[0]!.frame, testFrame(MAC[0]!, MAC[1]!, 2, 1000));
    assert.deepEqual(a.received[0]!.hdr, { flags: 0, gsoType: 0, csumStart: 0, csumOffset: 0, numBuffers: 1 });
    assert.equal(sw.lookup(mac(MAC[0]!)), ports[0]);
    const s = ports[0]!.stats.snapshot();
    assert.equal(s.txPackets, 2);
    assert.equal(s.txBytes, 60 * 2);
    assert.equal(s.rxPackets, 2);
    assert.equal(s.rxBytes, 1014 + 60);
    assert.equal(s.rxDropped, 0);
  });
});

test('a guest that goes away is forgotten by the switch; its port drops frames until a new one comes', async () => {
  await withRig(2, async ({ connect, ports, sw }) => {
    const a = await connect(0);
    const b = await connect(1);
    await a.send(testFrame(BCAST, MAC[0]!, 1));
    await b.waitFrames(1);
    assert.equal(sw.lookup(mac(MAC[0]!)), ports[0]);
    a.close();
    await waitUntil(() => sw.lookup(mac(MAC[0]!)) === undefined, 5000, 'port 0 forgotten');
    await b.send(testFrame(MAC[0]!, MAC[1]!, 2));
    assert.equal(ports[0]!.stats.rxDropped, 1);
    const again = await connect(0);
    await b.send(testFrame(MAC[0]!, MAC[1]!, 3));
    await again.waitFrames(1);
    assert.deepEqual(tags(again), [3]);
  });
});

test('a full receive ring drops and counts, without holding up other receivers', async () => {
  await withRig(3, async ({ connect, ports }) => {
    const a = await connect(0);
    const slow = await connect(1, { rxBuffers: 2, refill: false });
    const c = await connect(2);
    const sent = [];
    for (let i = 1; i <= 10; i++) sent.push(a.send(testFrame(BCAST, MAC[0]!, i)));
    await Promise.all(sent);
    await c.waitFrames(10);
    await slow.waitFrames(2);
    assert.deepEqual(tags(c), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(tags(slow), [1, 2]);
    assert.equal(ports[1]!.stats.rxDropped, 8);
    assert.equal(ports[1]!.stats.rxPackets, 2);
    assert.equal(ports[2]!.stats.rxDropped, 0);
    // Buffers posted later are used again.
    slow.postRx(0, 1);
    await a.send(testFrame(BCAST, MAC[0]!, 11));
    await slow.waitFrames(3);
    assert.equal(tags(slow)[2], 11);
  });
});

test('mergeable receive buffers: a large frame spans several, num_buffers says how many', async () => {
  await withRig(2, async ({ connect }) => {
    const a = await connect(0);
    const b = await connect(1, { rxBufferSize: 1024 });
    assert.ok(b.mrg);
    const big = testFrame(MAC[1]!, MAC[0]!, 7, 4000);
    await a.send(big);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 8, 100));
    await b.waitFrames(2);
    assert.equal(b.received[0]!.hdr.numBuffers, Math.ceil((12 + big.length) / 1024));
    assert.deepEqual(b.received[0]!.frame, big);
    assert.equal(b.received[1]!.hdr.numBuffers, 1);
    assert.equal(tagOf(b.received[1]!.frame), 8);
  }, { mtu: 9000 });
});

test('without mergeable buffers a frame larger than the buffer is an error; it does not stop the ring', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1, { refuse: [NetFeature.MRG_RXBUF], rxBufferSize: 1024 });
    assert.equal(b.mrg, false);
    assert.equal(b.hdrLen, 12);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 1, 2000));
    await a.send(testFrame(MAC[1]!, MAC[0]!, 2, 500));
    await b.waitFrames(1);
    await waitUntil(() => b.emptyBuffers === 1, 2000, 'the too-small buffer back');
    assert.deepEqual(tags(b), [2]);
    assert.equal(b.received[0]!.hdr.numBuffers, 1);
    assert.equal(ports[1]!.stats.rxErrors, 1);
  });
});

test('a legacy driver (no VERSION_1, no MRG_RXBUF) gets the 10-byte header', async () => {
  await withRig(2, async ({ connect }) => {
    const a = await connect(0, { refuse: [CommonFeature.VERSION_1, NetFeature.MRG_RXBUF] });
    const b = await connect(1, { refuse: [CommonFeature.VERSION_1, NetFeature.MRG_RXBUF] });
    assert.equal(a.hdrLen, 10);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 5));
    await b.waitFrames(1);
    assert.deepEqual(b.received[0]!.frame, testFrame(MAC[1]!, MAC[0]!, 5));
  });
});

test('a receiver gets a header of ours: what the sender put in its header never shows through', async () => {
  await withRig(3, async ({ connect }) => {
    const a = await connect(0);
    const b = await connect(1);
    const legacy = await connect(2, { refuse: [CommonFeature.VERSION_1, NetFeature.MRG_RXBUF] });
    // No NEEDS_CSUM and gso_type NONE, so the frame is valid; every other field is junk a receiver must not see.
    const junk = Uint8Array.of(0, 0, 0x34, 0x12, 0x78, 0x56, 0xff, 0xff, 0xee, 0xee, 9, 9);
    await a.send(testFrame(BCAST, MAC[0]!, 1), { header: junk });
    await b.waitFrames(1);
    await legacy.waitFrames(1);
    assert.deepEqual([...b.received[0]!.header], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert.deepEqual(b.received[0]!.frame, testFrame(BCAST, MAC[0]!, 1));
    assert.deepEqual([...legacy.received[0]!.header], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(legacy.received[0]!.frame, testFrame(BCAST, MAC[0]!, 1));
    // And from a legacy sender (10-byte header) into a 12-byte one.
    await legacy.send(testFrame(MAC[1]!, MAC[2]!, 2), { header: junk.subarray(0, 10) });
    await b.waitFrames(2);
    assert.deepEqual([...b.received[1]!.header], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert.deepEqual(b.received[1]!.frame, testFrame(MAC[1]!, MAC[2]!, 2));
  });
});

test('partial checksums: completed in software for a guest without GUEST_CSUM, passed on to one with it', async () => {
  await withRig(3, async ({ connect, ports }) => {
    const a = await connect(0);
    const plain = await connect(1, { refuse: [NetFeature.GUEST_CSUM] });
    const offload = await connect(2);
    const cases = [ipv4L4(BCAST, MAC[0]!, 6, Buffer.alloc(1200, 0x5a)), ipv4L4(BCAST, MAC[0]!, 17, Buffer.from('odd')),
      ipv6Udp(BCAST, MAC[0]!, Buffer.alloc(333, 7))];
    for (const c of cases) {
      // Broadcast: both receive it, each must end up with a frame whose checksum it can trust.
      await a.send(c.frame, { csum: { start: c.csumStart, offset: c.csumOffset } });
    }
    await plain.waitFrames(3);
    await offload.waitFrames(3);
    for (let i = 0; i < 3; i++) {
      const p = plain.received[i]!;
      assert.equal(p.hdr.flags, 0);
      assert.ok(l4ChecksumOk(p.frame), `case ${i}: checksum completed`);
      const o = offload.received[i]!;
      // Port 2 gets either the frame already completed for port 1 (no flag), or the partial one with NEEDS_CSUM.
      if (o.hdr.flags === 1) {
        assert.equal(o.hdr.csumStart, cases[i]!.csumStart);
        assert.equal(o.hdr.csumOffset, cases[i]!.csumOffset);
        assert.deepEqual(o.frame, cases[i]!.frame);
      } else {
        assert.ok(l4ChecksumOk(o.frame));
      }
    }
    assert.equal(ports[1]!.stats.csumComputed, 3);
  });
});

test('a partial checksum to a GUEST_CSUM guest arrives untouched with NEEDS_CSUM and its offsets', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1);
    const c = ipv4L4(MAC[1]!, MAC[0]!, 6, Buffer.alloc(100, 1));
    await a.send(c.frame, { csum: { start: c.csumStart, offset: c.csumOffset } });
    await b.waitFrames(1);
    assert.deepEqual(b.received[0]!.hdr, { flags: 1, gsoType: 0, csumStart: 34, csumOffset: 16, numBuffers: 1 });
    assert.deepEqual(b.received[0]!.frame, c.frame);
    assert.equal(ports[1]!.stats.csumComputed, 0);
  });
});

test('malformed transmit requests are counted and returned; the ring keeps working', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1);
    assert.equal(await a.sendRaw(new Uint8Array(5)), 0); // shorter than the header
    assert.equal(await a.send(new Uint8Array(10)), 0); // shorter than an Ethernet header
    const gso = new Uint8Array(12);
    gso[1] = 1; // TCPV4
    assert.equal(await a.send(testFrame(MAC[1]!, MAC[0]!, 1), { header: gso }), 0);
    const f = testFrame(MAC[1]!, MAC[0]!, 2);
    assert.equal(await a.send(f, { csum: { start: 50, offset: 20 } }), 0); // checksum field past the end
    await a.send(testFrame(MAC[1]!, MAC[0]!, 3));
    await b.waitFrames(1);
    assert.deepEqual(tags(b), [3]);
    assert.equal(ports[0]!.stats.txErrors, 4);
    assert.equal(ports[0]!.stats.txPackets, 1);
  });
});

test('a sender that did not negotiate CSUM may not ask for checksum completion', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0, { refuse: [NetFeature.CSUM] });
    const b = await connect(1);
    const c = ipv4L4(MAC[1]!, MAC[0]!, 17, Buffer.alloc(10));
    await a.send(c.frame, { csum: { start: c.csumStart, offset: c.csumOffset } });
    await a.send(testFrame(MAC[1]!, MAC[0]!, 9));
    await b.waitFrames(1);
    assert.deepEqual(tags(b), [9]);
    assert.equal(ports[0]!.stats.txErrors, 1);
  });
});

test('a disabled transmit ring has no side effects: its frames are discarded and returned', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1);
    await a.driver.frontend.setVringEnable(1, false);
    // Returned (length 0) without reaching B.
    assert.equal(await a.send(testFrame(MAC[1]!, MAC[0]!, 1)), 0);
    assert.equal(await a.send(testFrame(MAC[1]!, MAC[0]!, 2)), 0);
    assert.equal(ports[0]!.stats.txDropped, 2);
    assert.equal(ports[0]!.stats.txPackets, 0);
    await a.driver.frontend.setVringEnable(1, true);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 3));
    await b.waitFrames(1);
    assert.deepEqual(tags(b), [3]);
    // A disabled receive ring gets nothing either.
    await b.driver.frontend.setVringEnable(0, false);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 4));
    assert.equal(ports[1]!.stats.rxDropped, 1);
    assert.deepEqual(tags(b), [3]);
  }, { disabledPollMs: 5 });
});

test('control queue: promiscuous off filters by own address and MAC table; all-multicast', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1);
    const other = '02:00:00:00:00:77';
    const extra = '02:00:00:00:00:55';
    const group = '01:00:5e:00:00:fb';
    // Promiscuous by default: frames for other addresses (flooded) arrive.
    await a.send(testFrame(other, MAC[0]!, 1));
    await b.waitFrames(1);
    assert.equal(await b.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), CtrlAck.OK);
    const table = Buffer.concat([
      Buffer.from([1, 0, 0, 0]), mac(extra), // unicast
      Buffer.from([1, 0, 0, 0]), mac(group), // multicast
    ]);
    assert.equal(await b.control(CtrlClass.MAC, CtrlMac.TABLE_SET, table), CtrlAck.OK);
    for (const [dst, tag] of [[other, 2], [MAC[1]!, 3], [extra, 4], [group, 5], ['01:00:5e:00:00:01', 6], [BCAST, 7]] as const) {
      await a.send(testFrame(dst, MAC[0]!, tag));
    }
    await a.send(testFrame(BCAST, MAC[0]!, 8));
    await b.waitFrames(6);
    assert.deepEqual(tags(b), [1, 3, 4, 5, 7, 8]);
    assert.equal(ports[1]!.stats.rxFiltered, 2);
    assert.equal(await b.control(CtrlClass.RX, CtrlRx.ALLMULTI, Uint8Array.of(1)), CtrlAck.OK);
    await a.send(testFrame('01:00:5e:00:00:01', MAC[0]!, 9));
    await b.waitFrames(7);
    assert.equal(tags(b)[6], 9);
  });
});

test('a disabled control ring has no side effects: commands come back unexecuted, with no ack', async () => {
  await withRig(1, async ({ connect, ports }) => {
    const a = await connect(0);
    await a.driver.frontend.setVringEnable(2, false);
    await assert.rejects(a.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), /completed with length 0/);
    assert.equal(ports[0]!.filter.promiscuous, true);
    await assert.rejects(a.control(CtrlClass.MAC, CtrlMac.ADDR_SET, mac('02:00:00:00:00:99')), /length 0/);
    assert.equal(ports[0]!.mac, MAC[0]);
    await a.driver.frontend.setVringEnable(2, true);
    assert.equal(await a.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), CtrlAck.OK);
    assert.equal(ports[0]!.filter.promiscuous, false);
  });
});

test('control queue: MAC address set changes the config space and the filter; bad commands are refused', async () => {
  await withRig(2, async ({ connect }) => {
    const a = await connect(0);
    const b = await connect(1);
    const fresh = '02:12:34:56:78:9a';
    assert.equal(await b.control(CtrlClass.MAC, CtrlMac.ADDR_SET, mac(fresh)), CtrlAck.OK);
    assert.equal(decodeNetConfig(await b.driver.getConfig(0, 12)).mac, fresh);
    assert.equal(await b.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), CtrlAck.OK);
    await a.send(testFrame(MAC[1]!, MAC[0]!, 1)); // old address: filtered
    await a.send(testFrame(fresh, MAC[0]!, 2));
    await b.waitFrames(1);
    assert.deepEqual(tags(b), [2]);
    // Refused: multicast address, wrong lengths, unknown commands and classes, features not offered.
    assert.equal(await b.control(CtrlClass.MAC, CtrlMac.ADDR_SET, mac('03:00:00:00:00:01')), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.MAC, CtrlMac.ADDR_SET, Uint8Array.of(2, 0, 0)), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0, 0)), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.RX, CtrlRx.NOBCAST, Uint8Array.of(1)), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.VLAN, 0, Uint8Array.of(1, 0)), CtrlAck.ERR);
    assert.equal(await b.control(99, 0), CtrlAck.ERR);
    // A table whose entry count runs past the data.
    assert.equal(await b.control(CtrlClass.MAC, CtrlMac.TABLE_SET, Buffer.from([9, 0, 0, 0, 1, 2, 3])), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0)), CtrlAck.ERR, 'MQ not offered');
    // A reset restores the configured address.
    b.close();
    const again = await connect(1);
    assert.equal(decodeNetConfig(await again.driver.getConfig(0, 12)).mac, MAC[1]);
  });
});

test('control commands need CTRL_RX negotiated', async () => {
  await withRig(1, async ({ connect }) => {
    const g = await connect(0, { refuse: [NetFeature.CTRL_RX] });
    assert.equal(await g.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), CtrlAck.ERR);
    assert.equal(await g.control(CtrlClass.MAC, CtrlMac.TABLE_SET, Buffer.alloc(8)), CtrlAck.ERR);
  });
});

test('multiqueue: VQ_PAIRS_SET chooses the pairs in use; frames from every tx queue are forwarded', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0);
    const b = await connect(1);
    assert.equal(b.queues, 5);
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(3, 0)), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(0, 0)), CtrlAck.ERR);
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0)), CtrlAck.OK);
    assert.equal(ports[1]!.activeQueuePairs, 1);
    // One pair in use: everything on rx0, whatever the flow.
    for (let i = 0; i < 8; i++) {
      const c = ipv4L4(MAC[1]!, MAC[0]!, 17, Buffer.alloc(i + 1));
      await a.send(c.frame, { pair: i % 2 });
    }
    await b.waitFrames(8);
    assert.deepEqual(b.received.map((r) => r.queue), [0, 0, 0, 0, 0, 0, 0, 0]);
    b.take();
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(2, 0)), CtrlAck.OK);
    // Two pairs: with rx0 disabled, everything goes to rx1.
    await b.driver.frontend.setVringEnable(0, false);
    for (let i = 0; i < 4; i++) await a.send(testFrame(MAC[1]!, MAC[0]!, 100 + i), { pair: 1 });
    await b.waitFrames(4);
    assert.deepEqual(b.received.map((r) => r.queue), [2, 2, 2, 2]);
    assert.equal(ports[0]!.stats.txPackets, 12);
  }, { queuePairs: 2 });
});

test('multiqueue refused: one pair, the control queue is queue 2 whatever the port offers', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0, { refuse: [NetFeature.MQ] });
    const b = await connect(1, { refuse: [NetFeature.MQ] });
    assert.equal(b.queues, 3);
    assert.equal(b.ctrlQueue, 2);
    // Commands on queue 2 are control commands: acked, and they take effect. (A device that took queue 2 for a
    // receive queue would hold the command until a frame came.)
    let timer: NodeJS.Timeout | undefined;
    const unanswered = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('no answer on queue 2: the device does not serve it as the control queue')), 5000);
    });
    try {
      assert.equal(await Promise.race([b.control(CtrlClass.RX, CtrlRx.PROMISC, Uint8Array.of(0)), unanswered]), CtrlAck.OK);
    } finally {
      clearTimeout(timer);
    }
    assert.equal(await b.control(CtrlClass.MQ, CtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0)), CtrlAck.ERR, 'MQ not negotiated');
    assert.equal(ports[1]!.activeQueuePairs, 1);
    // Promiscuous mode is off: the frame for another address (flooded by the switch, which has not seen it) is
    // dropped, the one for b's own address, sent after it on the same ring, arrives on rx0.
    await a.send(testFrame('02:00:00:00:00:77', MAC[0]!, 2));
    await a.send(testFrame(MAC[1]!, MAC[0]!, 1));
    const got = await b.waitFrames(1);
    assert.deepEqual(got.map((r) => [r.queue, tagOf(r.frame)]), [[0, 1]]);
    assert.equal(ports[0]!.stats.txPackets, 2);
  }, { queuePairs: 2 });
});

test('the framework polls transmit rings (kicks off while busy, on again once idle), never receive rings', async () => {
  await withRig(2, async ({ connect, servers }) => {
    const a = await connect(0, { refuse: [CommonFeature.EVENT_IDX], queueSize: 256 });
    const b = await connect(1, { queueSize: 256, rxBufferSize: 256 });
    const sends = [];
    for (let i = 0; i < 600; i++) {
      sends.push(a.send(testFrame(MAC[1]!, MAC[0]!, i)));
      if (sends.length === 200) await Promise.all(sends.splice(0));
    }
    await Promise.all(sends);
    await b.waitFrames(600);
    assert.deepEqual(tags(b), Array.from({ length: 600 }, (_, i) => i));
    // VRING_USED_F_NO_NOTIFY (1) goes again when the ring has been idle for the poll window.
    await waitUntil(() => a.driver.queue(1).readUsedFlags() === 0 && !servers[0]!.backend!.poller.polling, 5000,
      'kicks requested again');
    await a.send(testFrame(MAC[1]!, MAC[0]!, 1000));
    await b.waitFrames(601);
    assert.equal(tagOf(b.received[600]!.frame), 1000);
    // Receive rings never ask for kicks, polling or not: frames are written when they arrive.
    assert.equal(b.driver.queue(0).readUsedFlags() & 1, 0, 'b negotiated EVENT_IDX: no flag, avail_event instead');
    assert.equal(a.driver.queue(0).readUsedFlags(), 1);
    const port = servers[0]!.device as NetPort;
    assert.equal(port.pollQueue(0), false);
    assert.equal(port.pollQueue(1), true);
    assert.equal(port.pollQueue(2), false, 'the control queue');
  }, {}, { pollUs: 2000 });
});

test('a transmit pass takes at most txBurst chains; the rest follows without another kick', async () => {
  await withRig(2, async ({ connect, ports }) => {
    const a = await connect(0, { queueSize: 64 });
    const b = await connect(1, { queueSize: 64 });
    // Made available together, one kick: passes of 4, continued on later event-loop turns.
    const sends = [];
    for (let i = 0; i < 40; i++) sends.push(a.send(testFrame(MAC[1]!, MAC[0]!, i)));
    await Promise.all(sends);
    await b.waitFrames(40);
    assert.deepEqual(tags(b), Array.from({ length: 40 }, (_, i) => i));
    assert.equal(ports[0]!.stats.txPackets, 40);
  }, { txBurst: 4 });
});

test('a frame split over transmit descriptors arrives whole, also into receive chains that split the header', async () => {
  await withRig(2, async ({ connect }) => {
    const a = await connect(0);
    const b = await connect(1, { rxBuffers: 0 });
    const ram = b.driver.ram;
    // Receive chains of three buffers: the 12-byte header straddles the first two.
    const rx = [0, 1].map(() => {
      const parts = [5, 9, 2048].map((len) => ({ addr: ram.alloc(len, 4), len }));
      return { parts, done: b.driver.submit(0, [], parts) };
    });
    const frames = [testFrame(MAC[1]!, MAC[0]!, 1, 1400), testFrame(MAC[1]!, MAC[0]!, 2, 60)];
    for (const frame of frames) {
      // Header alone, then the frame in three pieces at odd offsets (not word-aligned with the receive side).
      const hdr = a.driver.ram.alloc(12, 8);
      a.driver.ram.bytes(hdr, 12).fill(0);
      const cuts = [0, 7, Math.min(300, frame.length - 10), frame.length];
      const pieces = cuts.slice(1).map((end, i) => {
        const len = end - cuts[i]!;
        const addr = a.driver.ram.alloc(len + 3, 4) + 3;
        a.driver.ram.bytes(addr, len).set(frame.subarray(cuts[i]!, end));
        return { addr, len };
      });
      await a.driver.submit(1, [{ addr: hdr, len: 12 }, ...pieces], []);
    }
    for (let i = 0; i < 2; i++) {
      const len = await rx[i]!.done;
      assert.equal(len, 12 + frames[i]!.length);
      const bytes = Buffer.concat(rx[i]!.parts.map((p) => Buffer.from(ram.bytes(p.addr, p.len))));
      assert.deepEqual([...bytes.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], 'header, num_buffers 1');
      assert.deepEqual(bytes.subarray(12, len), frames[i]);
    }
  });
});

test('what one transmit pass delivers is published once per receiver, not per frame', async () => {
  await withRig(1, async ({ connect, sw, ports }) => {
    const got: number[] = [];
    let publishes = 0;
    let dirty = false;
    // A receiver that defers publishing, as a guest port does.
    const sink = {
      name: 'sink',
      receive(packet: Packet) {
        got.push(tagOf(packet.frame));
        if (!dirty) {
          dirty = true;
          sw.deferPublish(sink);
        }
      },
      publish() {
        dirty = false;
        publishes++;
      },
    };
    sw.addPort(sink);
    const a = await connect(0);
    const sends = [];
    for (let i = 0; i < 10; i++) sends.push(a.send(testFrame(BCAST, MAC[0]!, i)));
    await Promise.all(sends);
    assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(ports[0]!.stats.txPackets, 10);
    assert.equal(publishes, 1, 'ten frames made available together: one pass, one publish');
  });
});
