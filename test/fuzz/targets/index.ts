/** Every fuzz target, by name. */
import type { FuzzTarget } from '../harness.js';
import { blkTarget } from './blk.js';
import { chainTarget } from './chain.js';
import { codecTarget } from './codec.js';
import { consoleTarget } from './console.js';
import { netTarget } from './net.js';
import { scsiTarget } from './scsi.js';
import { serverTarget } from './server.js';

export const targets: Record<string, FuzzTarget> = {
  codec: codecTarget,
  server: serverTarget,
  chain: chainTarget,
  blk: blkTarget,
  console: consoleTarget,
  net: netTarget,
  scsi: scsiTarget,
};
