import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sense, SenseKey, cdbLength } from '../../src/scsi/constants.js';
import { decodeFixedSense, describeSense, encodeFixedSense } from '../../src/scsi/sense.js';

test('fixed-format sense: response code 70h, key, ASC/ASCQ, additional length 10, nothing else set', () => {
  const out = new Uint8Array(32).fill(0xff);
  assert.equal(encodeFixedSense(out, Sense.LBA_OUT_OF_RANGE), 18);
  assert.deepEqual([...out.subarray(0, 18)], [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0]);
  // Bytes past the sense data are left alone.
  assert.equal(out[18], 0xff);
});

test('fixed-format sense: INFORMATION sets VALID; values outside 32 bits leave it clear', () => {
  const out = new Uint8Array(18);
  encodeFixedSense(out, Sense.READ_ERROR, 0x12345678);
  const d = decodeFixedSense(out);
  assert.equal(d.valid, true);
  assert.equal(d.information, 0x12345678);
  assert.equal(d.key, SenseKey.MEDIUM_ERROR);
  assert.deepEqual([d.asc, d.ascq], [0x11, 0x00]);
  encodeFixedSense(out, Sense.READ_ERROR, 2 ** 32);
  assert.equal(decodeFixedSense(out).valid, false);
  assert.equal(decodeFixedSense(out).information, 0);
});

test('fixed-format sense: field pointer with C/D, BPV and bit, only for ILLEGAL REQUEST', () => {
  const out = new Uint8Array(18);
  encodeFixedSense(out, Sense.INVALID_FIELD_IN_CDB, -1, { inCdb: true, byte: 1, bit: 7 });
  assert.deepEqual([...out.subarray(15, 18)], [0x80 | 0x40 | 0x08 | 7, 0, 1]);
  assert.deepEqual(decodeFixedSense(out).field, { inCdb: true, byte: 1, bit: 7 });
  encodeFixedSense(out, Sense.INVALID_FIELD_IN_PARAMETER_LIST, -1, { inCdb: false, byte: 0x123 });
  assert.deepEqual([...out.subarray(15, 18)], [0x80, 0x01, 0x23]);
  assert.deepEqual(decodeFixedSense(out).field, { inCdb: false, byte: 0x123 });
  // A field pointer means nothing for other sense keys.
  encodeFixedSense(out, Sense.WRITE_ERROR, -1, { inCdb: true, byte: 3 });
  assert.deepEqual([...out.subarray(15, 18)], [0, 0, 0]);
  assert.equal(decodeFixedSense(out).field, undefined);
});

test('decodeFixedSense refuses descriptor format and short data; describeSense names the key', () => {
  assert.throws(() => decodeFixedSense(new Uint8Array([0x72, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), /not fixed format/);
  assert.throws(() => decodeFixedSense(new Uint8Array(8)), /too short/);
  assert.equal(describeSense(Sense.INVALID_OPCODE), 'ILLEGAL REQUEST 20/00');
  assert.equal(describeSense(Sense.REPORTED_LUNS_CHANGED), 'UNIT ATTENTION 3f/0e');
});

test('CDB length follows the operation code group', () => {
  assert.equal(cdbLength(0x08), 6);
  assert.equal(cdbLength(0x28), 10);
  assert.equal(cdbLength(0x55), 10);
  assert.equal(cdbLength(0x88), 16);
  assert.equal(cdbLength(0xa0), 12);
  assert.equal(cdbLength(0x7f), 0);
});
