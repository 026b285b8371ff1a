/**
 * virtio-blk on queue workers (`--workers N`): each worker runs a {@link BlkDevice} over its own handle on the
 * same storage, with the negotiated state the connection's thread decides (features, cache mode) pushed to it.
 * Loaded by the framework's queue worker; not imported by anything else.
 */
import type { QueueHandler } from '../../device/device.js';
import { logger } from '../../util/log.js';
import { BlkDevice, type BlkWorkerData, type BlkWorkerState } from './device.js';
import { openSharedStorage } from './storage/shared.js';

/** Build this worker's virtio-blk queue handler. */
export function createQueueHandler(data: unknown): QueueHandler {
  const d = data as BlkWorkerData;
  const storage = openSharedStorage(d.storage);
  const device = new BlkDevice({ ...d.options, storage, logger: logger('blk') });
  device.applyWorkerState(d.state);
  return {
    handleChain: (vring, chain) => device.handleChain(vring, chain),
    update: (state) => device.applyWorkerState(state as BlkWorkerState),
    reset: () => device.reset(),
    stats: () => device.stats,
  };
}
