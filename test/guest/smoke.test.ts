/**
 * End-to-end check of the guest harness itself: a real kernel boots under
 * QEMU (no vhost-user devices), loads the virtio modules and runs a script.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { guestHelperUnavailable } from './helpers.js';
import { findGuestKernel } from './host.js';
import { GUEST_MARKERS, buildInitramfs } from './initramfs.js';
import { guestKernelImage } from './kernel.js';
import { GuestError, GuestTimeoutError, bootGuest, requireQemu, runGuest } from './qemu.js';
import { makeTempDir } from './tmp.js';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('guest boots, loads the virtio modules and reports the script exit code', async (t) => {
  if (!requireQemu(t)) return;
  const image = await guestKernelImage();
  t.diagnostic(image.pvh ? `kernel: PVH vmlinux ${image.path}` : `kernel: bzImage (${image.fallbackReason})`);
  const result = await runGuest({
    script: ['echo "kernel=$(uname -r)"', 'echo "drivers: $(ls /sys/bus/virtio/drivers | tr "\\n" " ")"', 'exit 7', ''].join('\n'),
    testContext: t,
  });
  const ready = /^GUEST-READY uptime=([\d.]+)$/m.exec(result.output);
  t.diagnostic(`boot to QEMU exit: ${result.elapsedMs} ms; guest uptime at GUEST-READY: ${ready?.[1] ?? '?'} s`);

  assert.equal(result.guestExitCode, 7, result.output);
  assert.equal(result.qemuExitCode, 0, 'QEMU exits by itself after poweroff');
  assert.equal(result.killed, false);
  assert.match(result.output, new RegExp(`^kernel=${findGuestKernel()!.version.replace(/\./g, '\\.')}$`, 'm'));
  assert.doesNotMatch(result.output, new RegExp(GUEST_MARKERS.moduleFailed));
  const drivers = /^drivers: (.*)$/m.exec(result.output)?.[1]?.trim().split(/\s+/) ?? [];
  for (const driver of ['virtio_blk', 'virtio_net', 'virtio_console', 'virtio_scsi', 'virtio_rng']) {
    assert.ok(drivers.includes(driver), `${driver} missing from /sys/bus/virtio/drivers: ${drivers.join(' ')}`);
  }
});

test('guest helpers: O_DIRECT dd and blkzeroout on a QEMU built-in virtio-blk disk', async (t) => {
  if (!requireQemu(t)) return;
  const unavailable = await guestHelperUnavailable('blkzeroout');
  if (unavailable !== null) {
    t.skip(unavailable);
    return;
  }
  const dir = makeTempDir(t);
  const disk = join(dir, 'disk.raw');
  writeFileSync(disk, Buffer.alloc(4 << 20, 0xaa));
  const result = await runGuest({
    script: [
      'set -e',
      'test "$(cat /sys/block/vda/size)" = 8192',
      // Read sector 0 with O_DIRECT: must be the host's 0xaa pattern.
      'dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | od -An -tx1 | head -1',
      // Write 4 KiB of 0x55 at 8 KiB with O_DIRECT.
      "printf '\\125%.0s' $(seq 4096) > /tmp/pattern",
      'dd if=/tmp/pattern of=/dev/vda bs=4096 seek=2 count=1 oflag=direct conv=notrunc 2>/dev/null',
      'blkzeroout /dev/vda 1048576 65536',
      'if blkzeroout /dev/vda 1 2 2>/tmp/err; then exit 90; fi', // unaligned: the kernel refuses
      'cat /tmp/err',
      '',
    ].join('\n'),
    helpers: ['blkzeroout'],
    extraArgs: ['-drive', `file=${disk},format=raw,if=none,id=d0`, '-device', 'virtio-blk-pci,drive=d0'],
    testContext: t,
  });
  assert.equal(result.guestExitCode, 0, result.output);
  assert.match(result.output, /^ aa aa aa aa aa aa aa aa aa aa aa aa aa aa aa aa$/m);
  assert.match(result.output, /blkzeroout: BLKZEROOUT \/dev\/vda: Invalid argument/);
  const data = readFileSync(disk);
  assert.ok(data.subarray(8192, 12288).every((b) => b === 0x55), 'O_DIRECT write reached the disk');
  assert.ok(data.subarray(1 << 20, (1 << 20) + 65536).every((b) => b === 0), 'BLKZEROOUT range is zero');
  assert.equal(data[(1 << 20) - 1], 0xaa, 'byte before the zeroed range untouched');
  assert.equal(data[(1 << 20) + 65536], 0xaa, 'byte after the zeroed range untouched');
});

test('waitFor sees console output and kill() stops the guest', async (t) => {
  if (!requireQemu(t)) return;
  const initramfs = await buildInitramfs({ script: 'echo hello-from-guest\nsleep 600\n' });
  const guest = await bootGuest({ initramfs, testContext: t });
  // Up to the end of the line: console output arrives in chunks that may split a word.
  const match = await guest.waitFor(/hello-from-(\w+)\n/);
  assert.equal(match[1], 'guest');
  assert.ok(isAlive(guest.pid));
  await guest.kill();
  const result = await guest.exited;
  assert.equal(result.killed, true);
  assert.equal(result.guestExitCode, null);
  assert.equal(isAlive(guest.pid), false, 'QEMU is gone after kill()');
  await assert.rejects(guest.waitFor(/never-printed/), (err: unknown) => {
    assert.ok(err instanceof GuestError);
    assert.match(err.message, /QEMU exited .* before \/never-printed\//);
    assert.match(err.message, /hello-from-guest/, 'error carries the console tail');
    return true;
  });
});

test('a guest that never finishes is killed at the timeout with the console tail in the error', async (t) => {
  if (!requireQemu(t)) return;
  const initramfs = await buildInitramfs({ script: 'sleep 600\n' });
  // The script never ends, so the timeout fires whatever the boot speed.
  const guest = await bootGuest({ initramfs, timeoutMs: 1500, testContext: t });
  await assert.rejects(guest.exited, (err: unknown) => {
    assert.ok(err instanceof GuestTimeoutError);
    assert.match(err.message, /did not finish within 1500 ms/);
    assert.match(err.message, /--- last \d+ of \d+ console lines ---/);
    return true;
  });
  assert.equal(isAlive(guest.pid), false, 'QEMU is gone after the timeout');
});

test('QEMU start-up errors surface with its stderr', async (t) => {
  if (!requireQemu(t)) return;
  await assert.rejects(
    runGuest({ script: 'exit 0\n', extraArgs: ['-device', 'no-such-device-xyz'], testContext: t }),
    (err: unknown) => {
      assert.ok(err instanceof GuestError);
      assert.match(err.message, /without GUEST-EXIT/);
      assert.match(err.message, /no-such-device-xyz/, 'QEMU stderr is in the message');
      return true;
    },
  );
});
