import { test } from 'node:test';
import assert from 'node:assert/strict';
import { completeChecksum } from '../../../src/devices/net/checksum.js';
import { ipv4L4, ipv6Udp, l4ChecksumOk } from './net-guest.js';

const D = '02:00:00:00:00:0b';
const S = '02:00:00:00:00:0a';

function payload(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

for (const [name, make] of [
  ['TCP over IPv4', (p: Buffer) => ipv4L4(D, S, 6, p)],
  ['UDP over IPv4', (p: Buffer) => ipv4L4(D, S, 17, p)],
  ['UDP over IPv6', (p: Buffer) => ipv6Udp(D, S, p)],
] as const) {
  test(`completes a partial ${name} checksum (even and odd lengths)`, () => {
    for (const n of [0, 1, 2, 99, 1000, 1401]) {
      const { frame, csumStart, csumOffset } = make(payload(n, n));
      assert.equal(l4ChecksumOk(frame), false, 'partial checksum is not yet valid');
      assert.equal(completeChecksum(frame, frame.length, csumStart, csumOffset), true);
      assert.equal(l4ChecksumOk(frame), true, `${name}, ${n} bytes`);
    }
  });
}

test('a checksum that computes to zero is written as 0xffff', () => {
  // Find a UDP payload whose checksum comes out 0 by adjusting two payload bytes.
  const { frame, csumStart, csumOffset } = ipv4L4(D, S, 17, Buffer.alloc(2));
  const copy = Buffer.from(frame);
  completeChecksum(copy, copy.length, csumStart, csumOffset);
  const c = copy.readUInt16BE(csumStart + csumOffset);
  // Adding c into the payload makes the sum 0xffff before complement: the checksum is then 0.
  frame.writeUInt16BE(c, frame.length - 2);
  assert.equal(completeChecksum(frame, frame.length, csumStart, csumOffset), true);
  assert.equal(frame.readUInt16BE(csumStart + csumOffset), 0xffff);
  assert.equal(l4ChecksumOk(frame), true);
});

test('offsets outside the frame are refused and change nothing', () => {
  const { frame } = ipv4L4(D, S, 17, payload(10, 1));
  const before = Buffer.from(frame);
  assert.equal(completeChecksum(frame, frame.length, frame.length, 0), false);
  assert.equal(completeChecksum(frame, frame.length, 34, frame.length - 35), false);
  assert.equal(completeChecksum(frame, frame.length, 60000, 6), false);
  assert.deepEqual(frame, before);
});
