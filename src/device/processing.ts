/**
 * One processing pass over a ring for a device's ring handler: the same on the connection's thread and on a
 * queue worker.
 */
import type { DescriptorChain } from '../virtqueue/chain.js';
import type { Vring } from './vring.js';

/** What processes a ring's buffers: a device, or a device's per-thread queue handler on a worker. */
export interface RingHandler {
  handleChain?(vring: Vring, chain: DescriptorChain): void;
  /**
   * Take the ring's buffers on the handler's own schedule. Return true when the handler stopped with buffers
   * left (it should stop after about {@link PASS_BUDGET}): another pass follows soon, without a kick.
   */
  onAvailable?(vring: Vring): void | boolean;
  /**
   * May the poll loop watch queue `index`? Default: yes for chain handlers, no for handlers with `onAvailable`
   * (they consume buffers on their own schedule and may manage a ring's notifications themselves).
   */
  pollQueue?(index: number): boolean;
}

/** May the ring be processed now? Disabled rings are processed only by handlers that take buffers themselves. */
export function processable(handler: RingHandler, vring: Vring): boolean {
  // Read whatever the ring's state. Read only while a ring is disabled, it had no type feedback when this was
  // compiled (rings are disabled only at the start of a connection, and the first one's came before any feedback),
  // and the next connection's disabled ring dropped the compiled code.
  const takesBuffers = handler.onAvailable !== undefined;
  return vring.started && vring.error === undefined && (vring.enabled || takesBuffers);
}

/** What {@link processRing} did. */
export const PassResult = {
  /** The ring may not be processed now (not started, broken, disabled). */
  SKIPPED: 0,
  /** Every chain that was available was handled. */
  DONE: 1,
  /** The pass stopped at {@link PASS_BUDGET} chains (more may be waiting): run another pass soon. */
  MORE: 2,
} as const;
export type PassResult = (typeof PassResult)[keyof typeof PassResult];
// Module-local copies for processRing: a read of the object's property needs type feedback, and SKIPPED is
// first returned when a new connection's rings start, after the pass was compiled without it (that dropped it).
const SKIPPED = PassResult.SKIPPED;
const DONE = PassResult.DONE;
const MORE = PassResult.MORE;

/**
 * Most chains one pass hands to `handleChain`. A driver that keeps refilling the ring as fast as it is served
 * would otherwise keep the pass, and the thread, to itself: control messages, other rings and other connections
 * wait for the pass to end.
 */
export const PASS_BUDGET = 256;

/**
 * One pass: the available chains to `handleChain` (at most {@link PASS_BUDGET}), or the ring to `onAvailable`,
 * completions published as they go and the driver notified once at the end. A throwing handler breaks the ring.
 * Returns {@link PassResult}: SKIPPED (0, falsy) when the ring may not be processed now.
 */
export function processRing(handler: RingHandler, vring: Vring): PassResult {
  if (!processable(handler, vring)) return SKIPPED;
  let result: PassResult = DONE;
  const token = vring.beginBatch();
  try {
    if (handler.onAvailable) {
      try {
        if (handler.onAvailable(vring) === true) result = MORE;
      } catch (err) {
        vring.fail(err as Error);
      }
    } else if (handler.handleChain) {
      let budget = PASS_BUDGET;
      for (let chain = vring.pop(); chain !== null; chain = vring.pop()) {
        try {
          handler.handleChain(vring, chain);
        } catch (err) {
          // Give the chain back (length 0) so the ring's inflight count can reach zero for stop and reset.
          vring.complete(chain, 0);
          vring.fail(err as Error);
          break;
        }
        if (--budget === 0) {
          // Another pass even if the ring looks empty now: only a pop that finds it empty asks the driver for the
          // next kick (EVENT_IDX avail_event), and without that request no kick would come.
          result = MORE;
          break;
        }
      }
    }
  } finally {
    vring.endBatch(token);
  }
  return result;
}
