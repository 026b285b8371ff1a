import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetSwitch, type SwitchPort } from '../../../src/devices/net/switch.js';
import { Packet } from '../../../src/devices/net/packet.js';
import { testFrame, tagOf } from './net-guest.js';

class FakePort implements SwitchPort {
  readonly name: string;
  readonly got: number[] = [];
  constructor(name: string) {
    this.name = name;
  }
  receive(packet: Packet): void {
    this.got.push(tagOf(packet.frame));
  }
}

function packetOf(frame: Uint8Array): Packet {
  const p = new Packet();
  p.buffer.set(frame);
  p.reset(frame.length);
  return p;
}

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';
const BCAST = 'ff:ff:ff:ff:ff:ff';

function rig(options: ConstructorParameters<typeof NetSwitch>[0] = {}) {
  let now = 0;
  const sw = new NetSwitch({ autoSweep: false, clock: () => now, ...options });
  const ports = [new FakePort('p0'), new FakePort('p1'), new FakePort('p2')];
  for (const p of ports) sw.addPort(p);
  return { sw, ports, advance: (ms: number) => (now += ms) };
}

test('broadcast and unknown unicast are flooded to every other port', () => {
  const { sw, ports: [p0, p1, p2] } = rig();
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 1)));
  sw.forward(p0!, packetOf(testFrame(B, A, 2)));
  sw.forward(p0!, packetOf(testFrame('01:00:5e:00:00:01', A, 3)));
  assert.deepEqual(p0!.got, []);
  assert.deepEqual(p1!.got, [1, 2, 3]);
  assert.deepEqual(p2!.got, [1, 2, 3]);
  assert.equal(sw.counters.flooded, 3);
});

test('a learned address gets its unicast frames, and only it', () => {
  const { sw, ports: [p0, p1, p2] } = rig();
  sw.forward(p1!, packetOf(testFrame(BCAST, B, 1)));
  assert.equal(sw.lookup(Buffer.from([2, 0, 0, 0, 0, 0x0b]))?.name, 'p1');
  sw.forward(p0!, packetOf(testFrame(B, A, 2)));
  assert.deepEqual(p1!.got, [2]);
  assert.deepEqual(p2!.got, [1]);
  // The reply goes straight back: A was learned from the frame above.
  sw.forward(p1!, packetOf(testFrame(A, B, 3)));
  assert.deepEqual(p0!.got, [1, 3]);
  assert.deepEqual(p2!.got, [1]);
  assert.equal(sw.counters.unicast, 2);
});

test('multicast sources are not learned; a frame to its own port is dropped', () => {
  const { sw, ports: [p0, p1] } = rig();
  sw.forward(p0!, packetOf(testFrame(B, '03:00:00:00:00:01', 1)));
  assert.equal(sw.entries().length, 0);
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 2)));
  sw.forward(p0!, packetOf(testFrame(BCAST, C, 3)));
  sw.forward(p0!, packetOf(testFrame(C, A, 4)));
  assert.deepEqual(p1!.got, [1, 2, 3]);
  assert.equal(sw.counters.hairpin, 1);
});

test('a station that moves is re-learned on its new port', () => {
  const { sw, ports: [p0, p1, p2] } = rig();
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 1)));
  sw.forward(p2!, packetOf(testFrame(BCAST, A, 2)));
  sw.forward(p1!, packetOf(testFrame(A, B, 3)));
  assert.deepEqual(p2!.got, [1, 3], 'p2 got the first flood, then the unicast to A');
  assert.deepEqual(p0!.got, [2], 'nothing for A on its old port');
});

test('entries age out; traffic keeps them fresh', () => {
  const { sw, ports: [p0, p1, p2], advance } = rig({ agingMs: 1000 });
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 1)));
  sw.forward(p1!, packetOf(testFrame(BCAST, B, 2)));
  advance(600);
  sw.sweep();
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 3))); // refreshes A at t=600
  advance(600);
  assert.equal(sw.sweep(), 1); // B, last seen at 0
  assert.deepEqual(sw.entries().map((e) => e.mac), [A]);
  sw.forward(p2!, packetOf(testFrame(B, C, 4)));
  assert.deepEqual(p1!.got.includes(4), true, 'B is unknown again: flooded');
  assert.deepEqual(p0!.got.includes(4), true);
  advance(1001);
  sw.sweep();
  assert.equal(sw.lookup(Buffer.from([2, 0, 0, 0, 0, 0x0a])), undefined);
  assert.equal(sw.counters.aged, 3); // B, then A and C
});

test('a port that goes away is forgotten; a removed port gets nothing', () => {
  const { sw, ports: [p0, p1, p2] } = rig();
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 1)));
  sw.forward(p1!, packetOf(testFrame(BCAST, B, 2)));
  assert.equal(sw.forget(p0!), 1);
  assert.deepEqual(sw.entries().map((e) => e.port), ['p1']);
  sw.removePort(p1!);
  assert.equal(sw.entries().length, 0);
  sw.forward(p2!, packetOf(testFrame(BCAST, C, 3)));
  assert.deepEqual(p1!.got, [1]);
  assert.deepEqual(p0!.got, [2, 3]);
});

test('a full table stops learning but keeps forwarding by flooding', () => {
  const { sw, ports: [p0, p1, p2] } = rig({ maxEntries: 1 });
  sw.forward(p0!, packetOf(testFrame(BCAST, A, 1)));
  sw.forward(p1!, packetOf(testFrame(BCAST, B, 2)));
  assert.equal(sw.counters.tableFull, 1);
  sw.forward(p2!, packetOf(testFrame(B, C, 3)));
  assert.deepEqual(p0!.got, [2, 3]);
  assert.deepEqual(p1!.got, [1, 3]);
});

test('runt frames are not forwarded', () => {
  const { sw, ports: [p0, p1] } = rig();
  sw.forward(p0!, packetOf(new Uint8Array(13)));
  assert.deepEqual(p1!.got, []);
});

test('repeated frames between the same stations follow every table change (learn, move, age, forget)', () => {
  const { sw, ports: [p0, p1, p2], advance } = rig({ agingMs: 1000 });
  sw.forward(p0!, packetOf(testFrame(B, A, 1))); // B unknown: flooded
  sw.forward(p0!, packetOf(testFrame(B, A, 2))); // still unknown
  sw.forward(p1!, packetOf(testFrame(A, B, 3))); // B learned on p1, A known on p0
  sw.forward(p0!, packetOf(testFrame(B, A, 4))); // now unicast to p1 only
  assert.deepEqual(p1!.got, [1, 2, 4]);
  assert.deepEqual(p2!.got, [1, 2]);
  assert.deepEqual(p0!.got, [3]);
  sw.forward(p2!, packetOf(testFrame(B, A, 5))); // A moves to p2
  sw.forward(p1!, packetOf(testFrame(A, B, 6))); // goes to p2
  sw.forward(p0!, packetOf(testFrame(B, A, 7))); // A back on p0 (the memo on p0 must not hide the move)
  sw.forward(p1!, packetOf(testFrame(A, B, 8)));
  assert.deepEqual(p2!.got, [1, 2, 6]);
  assert.deepEqual(p0!.got, [3, 8]);
  sw.forget(p1!);
  sw.forward(p0!, packetOf(testFrame(B, A, 9))); // B forgotten: flooded again
  assert.deepEqual(p2!.got, [1, 2, 6, 9]);
  sw.forward(p1!, packetOf(testFrame(A, B, 10)));
  advance(600);
  sw.sweep();
  sw.forward(p0!, packetOf(testFrame(B, A, 11))); // refreshes A through the memo
  advance(600);
  sw.sweep(); // B (seen at 0) ages out, A (seen at 600) stays
  assert.equal(sw.lookup(Buffer.from([2, 0, 0, 0, 0, 0x0a])), p0);
  assert.equal(sw.lookup(Buffer.from([2, 0, 0, 0, 0, 0x0b])), undefined);
  sw.forward(p0!, packetOf(testFrame(B, A, 12)));
  assert.deepEqual(p2!.got, [1, 2, 6, 9, 12]);
});
