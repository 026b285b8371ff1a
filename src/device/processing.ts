/**
 * One processing pass over a ring for a device's ring handler: the same on the connection's thread and on a
 * queue worker.
 */
import type { DescriptorChain } from '../virtqueue/chain.js';
import type { Vring } from './vring.js';

/** What processes a ring's buffers: a device, or a device's per-thread queue handler on a worker. */
export interface RingHandler {
  handleChain?(vring: Vring, chain: DescriptorChain): void;
  onAvailable?(vring: Vring): void;
  /**
   * May the poll loop watch queue `index`? Default: yes for chain handlers, no for handlers with `onAvailable`
   * (they consume buffers on their own schedule and may manage a ring's notifications themselves).
   */
  pollQueue?(index: number): boolean;
}

/** May the ring be processed now? Disabled rings are processed only by handlers that take buffers themselves. */
export function processable(handler: RingHandler, vring: Vring): boolean {
  return vring.started && vring.error === undefined && (vring.enabled || handler.onAvailable !== undefined);
}

/**
 * One pass: every available chain to `handleChain` (or the ring to `onAvailable`), completions published once at
 * the end. A throwing handler breaks the ring. Returns false when the ring may not be processed now.
 */
export function processRing(handler: RingHandler, vring: Vring): boolean {
  if (!processable(handler, vring)) return false;
  const token = vring.beginBatch();
  try {
    if (handler.onAvailable) {
      try {
        handler.onAvailable(vring);
      } catch (err) {
        vring.fail(err as Error);
      }
    } else if (handler.handleChain) {
      for (let chain = vring.pop(); chain; chain = vring.pop()) {
        try {
          handler.handleChain(vring, chain);
        } catch (err) {
          // Give the chain back (length 0) so the ring's inflight count can reach zero for stop and reset.
          vring.complete(chain, 0);
          vring.fail(err as Error);
          break;
        }
      }
    }
  } finally {
    vring.endBatch(token);
  }
  return true;
}
