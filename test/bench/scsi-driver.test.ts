/**
 * The C virtio-scsi benchmark driver (bench/scsi/driver/scsi_bench.c) against our own `vhost-user scsi`: the
 * driver checks every response (response OK, status GOOD, used length = response header + data), so a run
 * with no errors says that both sides agree on the request layout; the rings end where the driver left them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { buildDriver, runDriver } from '../../bench/common/c-driver.js';
import { startOurs } from '../../bench/common/ours.js';
import { requireCommand } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1024 * 1024;

test('scsi-bench completes READ(16)s through our virtio-scsi daemon (1 and 2 request queues, 4 KiB and 1 MiB)', async (t) => {
  if (!requireCommand(t, 'gcc', 'gcc')) return;
  const binary = buildDriver('scsi');
  const { dir, cleanup } = tempDir();
  const daemon = await startOurs('scsi', { socketPath: path.join(dir, 'scsi.sock'), size: 64 * MiB, queues: 2 });
  try {
    for (const run of [
      { queues: 1, qd: 8, bs: 4096, pattern: 'rand' as const },
      { queues: 2, qd: 4, bs: 4096, pattern: 'rand' as const },
      { queues: 1, qd: 2, bs: MiB, pattern: 'seq' as const },
    ]) {
      const r = await runDriver(binary, {
        socketPath: daemon.socketPath, size: 64 * MiB, ...run, threads: 1, seconds: 0.3, warmup: 0.1, backendPid: daemon.pid,
      });
      assert.equal(r.transport, 'scsi');
      assert.ok(r.ios > 0, 'commands completed in the window');
      assert.equal(r.errors, 0, 'every response was OK with status GOOD');
      assert.equal(r.lenMismatches, 0, 'every used length was the response header plus the data');
      assert.equal(r.ringBasesChecked, run.queues);
      assert.equal(r.ringBasesOk, true, 'the daemon stopped each ring where the driver left it');
      assert.equal(r.spanBytes, 64 * MiB);
    }
  } finally {
    await daemon.stop();
    cleanup();
  }
});
