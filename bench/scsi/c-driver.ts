/**
 * The virtio-scsi benchmark driver (bench/scsi/driver/scsi_bench.c), built with the blk driver's vhost-user and
 * ring code. It takes blk-bench's options (those that apply) and prints the same report, so bench/blk's
 * `runBlkDriver` runs it.
 */
import path from 'node:path';
import { buildC } from '../common/c-build.js';
import { repoRoot } from '../common/paths.js';

/** Compile the driver if needed; returns the binary's path. */
export function buildScsiDriver(): string {
  return buildC({
    name: 'scsi-bench',
    dir: path.join(repoRoot, 'bench'),
    files: ['scsi/driver/scsi_bench.c', 'blk/driver/vhost_user.c', 'blk/driver/vhost_user.h', 'blk/driver/ring.h'],
  });
}
