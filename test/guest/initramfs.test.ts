import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { missingGuestPrerequisites } from './host.js';
import { buildInitramfs, stripModuleSignature } from './initramfs.js';

test('stripModuleSignature removes an appended PKCS#7 signature and nothing else', () => {
  const body = Buffer.from('\x7fELF module body');
  const sig = Buffer.alloc(37, 0x5a);
  const info = Buffer.alloc(12);
  info[2] = 2; // id_type PKCS#7
  info.writeUInt32BE(sig.length, 8);
  const signed = Buffer.concat([body, sig, info, Buffer.from('~Module signature appended~\n')]);
  assert.deepEqual(stripModuleSignature(signed), body);
  assert.deepEqual(stripModuleSignature(body), body, 'unsigned module unchanged');
  const lying = Buffer.from(signed);
  lying.writeUInt32BE(1 << 30, body.length + sig.length + 8); // sig_len larger than the file
  assert.deepEqual(stripModuleSignature(lying), lying, 'bogus length leaves the file alone');
});

test('buildInitramfs: common part plus per-test part, content-addressed', (t) => {
  const missing = missingGuestPrerequisites().filter((m) => !m.startsWith('qemu'));
  if (missing.length > 0) {
    t.skip(`needs ${missing.join('; ')}`);
    return;
  }
  return (async () => {
    const script = `echo unique-${process.pid}\n`;
    const a = await buildInitramfs({ script, extraFiles: [{ path: '/etc/deep/data.bin', data: new Uint8Array([1, 2, 3]) }] });
    const b = await buildInitramfs({ script, extraFiles: [{ path: '/etc/deep/data.bin', data: new Uint8Array([1, 2, 3]) }] });
    const c = await buildInitramfs({ script: 'exit 0\n' });
    assert.equal(a, b, 'same inputs, same file');
    assert.notEqual(a, c);
    const file = readFileSync(a);
    assert.deepEqual([...file.subarray(0, 2)], [0x1f, 0x8b]);
    // gunzip decodes concatenated members: the whole initramfs, both archives.
    const text = gunzipSync(file).toString('latin1');
    // namesize 0x0b, check 0, name: a trailer header (busybox itself contains the bare string).
    const trailers = text.split('0000000b00000000TRAILER!!!\0').length - 1;
    assert.equal(trailers, 2, 'two archives');
    for (const name of ['init\0', 'bin/busybox\0', 'lib/modules/guest/virtio_pci.ko\0', 'test.sh\0', 'etc/deep\0', 'etc/deep/data.bin\0']) {
      assert.ok(text.includes(name), `${name} in the initramfs`);
    }
    assert.ok(text.includes(script));
  })();
});
