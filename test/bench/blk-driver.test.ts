/**
 * The C benchmark driver (bench/blk/driver/, on the shared frontend in bench/common/driver/) is a correct virtio-blk frontend, not just a fast one: it builds,
 * completes reads against qemu-storage-daemon, returns every ring in a consistent state, and the data it reads
 * from a file export carries the stamps written there (and fails to when it does not).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { buildDriver, runDriver, writePatternImage, DriverError } from '../../bench/common/c-driver.js';
import { StorageDaemon, requireCommand } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

test('the C driver completes reads against qemu-storage-daemon (null-co, 1 and 2 queues, 4 KiB and 1 MiB)', async (t) => {
  if (!requireCommand(t, 'gcc', 'gcc') || !requireCommand(t, 'qemu-storage-daemon', 'qemu-system-common')) return;
  const binary = buildDriver('blk');
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'qsd.sock');
  const qsd = await StorageDaemon.start(socketPath, `driver=null-co,node-name=n0,size=${64 * MiB}`, 2);
  try {
    const one = await runDriver(binary, {
      socketPath, queues: 1, qd: 4, bs: 4096, pattern: 'rand', seconds: 0.3, warmup: 0.1, backendPid: qsd.process.pid,
    });
    assert.equal(one.mode, 'vhost-user');
    assert.ok(one.ios > 0, 'reads completed in the window');
    assert.ok(one.completedTotal >= one.ios);
    assert.equal(one.errors, 0);
    assert.equal(one.drained, true);
    assert.equal(one.ringBasesChecked, 1);
    assert.equal(one.ringBasesOk, true, 'qsd stopped the ring where the driver left it');
    assert.equal(one.spanBytes, 64 * MiB, 'capacity read from config space');
    assert.equal(one.eventIdx, true, 'EVENT_IDX negotiated with qsd');
    assert.ok(one.kicks > 0, 'at least the first request was kicked');
    assert.ok(one.backendCpuSec >= 0, 'backend CPU read from /proc');

    const two = await runDriver(binary, {
      socketPath, queues: 2, threads: 1, qd: 4, bs: 4096, pattern: 'rand', seconds: 0.3, warmup: 0.1,
    });
    assert.ok(two.ios > 0);
    assert.equal(two.errors, 0);
    assert.equal(two.ringBasesChecked, 2);
    assert.equal(two.ringBasesOk, true);

    const big = await runDriver(binary, { socketPath, queues: 1, qd: 2, bs: MiB, pattern: 'seq', seconds: 0.3, warmup: 0.1 });
    assert.ok(big.ios > 0);
    assert.equal(big.errors, 0);
    assert.equal(big.ringBasesOk, true);
    assert.ok(big.mbps > 0);
  } finally {
    await qsd.stop();
    cleanup();
  }
});

test('the C driver reads back the stamped blocks of a qemu-storage-daemon file export (--verify)', async (t) => {
  if (!requireCommand(t, 'gcc', 'gcc') || !requireCommand(t, 'qemu-storage-daemon', 'qemu-system-common')) return;
  const binary = buildDriver('blk');
  const { dir, cleanup } = tempDir();
  const image = path.join(dir, 'pattern.img');
  await writePatternImage(binary, image, 16 * MiB);
  const socketPath = path.join(dir, 'qsd.sock');
  const qsd = await StorageDaemon.start(socketPath, `driver=file,node-name=n0,filename=${image}`, 2);
  try {
    for (const run of [
      { queues: 2, qd: 4, bs: 4096, pattern: 'rand' as const },
      { queues: 1, qd: 3, bs: 64 * 1024, pattern: 'seq' as const },
    ]) {
      const r = await runDriver(binary, { socketPath, ...run, threads: 1, seconds: 0.3, warmup: 0.1, verify: true, seed: 7 });
      assert.equal(r.verify, true);
      assert.ok(r.completedTotal > 0, 'reads were checked');
      assert.equal(r.errors, 0);
      assert.equal(r.verifyFailures, 0, `every ${run.bs}-byte read carried the stamps of its blocks`);
      assert.equal(r.lenMismatches, 0, 'qsd reported bs + 1 written bytes for each read');
      assert.equal(r.ringBasesOk, true);
    }
  } finally {
    await qsd.stop();
    cleanup();
  }
});

test('--verify fails when the device does not return the stamped data (null-co leaves buffers untouched)', async (t) => {
  if (!requireCommand(t, 'gcc', 'gcc') || !requireCommand(t, 'qemu-storage-daemon', 'qemu-system-common')) return;
  const binary = buildDriver('blk');
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'qsd.sock');
  const qsd = await StorageDaemon.start(socketPath, `driver=null-co,node-name=n0,size=${16 * MiB}`, 1);
  try {
    const err = await runDriver(binary, { socketPath, queues: 1, qd: 2, bs: 4096, pattern: 'rand', seconds: 0.2, warmup: 0, verify: true })
      .then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof DriverError, 'the run fails');
    assert.equal(err.code, 2);
    assert.ok(err.report && err.report.verifyFailures > 0 && err.report.verifyFailures === err.report.completedTotal);
    assert.match(err.stderr, /does not verify/);
  } finally {
    await qsd.stop();
    cleanup();
  }
});

test('the C driver\'s ceiling mode completes reads through its in-process device', (t) => {
  if (!requireCommand(t, 'gcc', 'gcc')) return;
  const binary = buildDriver('blk');
  return runDriver(binary, { ceiling: true, queues: 2, threads: 1, qd: 8, bs: 4096, pattern: 'rand', seconds: 0.2, warmup: 0 })
    .then((r) => {
      assert.equal(r.mode, 'ceiling');
      assert.ok(r.ios > 0);
      assert.equal(r.errors, 0);
      assert.equal(r.kicks, 0, 'the polling device never asks for a kick');
      assert.equal(r.drained, true);
    });
});
