/**
 * Device-to-driver control messages waiting for the driver to post control receive buffers. Bounded: repeats
 * collapse (the driver only needs the latest size or open state of a port, and one copy of anything else), so a
 * driver that asks again and again without posting buffers cannot make the queue grow.
 */
import { ControlEvent, encodeControl } from './protocol.js';

/** A queued message. */
export interface OutgoingControl {
  id: number;
  event: number;
  value: number;
  /** The encoded message, header and payload. */
  bytes: Uint8Array;
}

/** Events whose newest message replaces an undelivered older one for the same port. */
const LATEST_WINS: ReadonlySet<number> = new Set([ControlEvent.RESIZE, ControlEvent.PORT_OPEN]);

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isBarrier(event: number): boolean {
  return event === ControlEvent.DEVICE_ADD || event === ControlEvent.DEVICE_REMOVE;
}

/** The outgoing control queue. */
export class ControlOutbox {
  /** Hard cap on queued messages (a safety net; collapsing keeps real queues far below it). */
  readonly limit: number;
  /** Messages refused because the queue was at {@link limit}. */
  dropped = 0;
  #queue: OutgoingControl[] = [];

  constructor(limit = 1024) {
    this.limit = limit;
  }

  /** Messages waiting. */
  get length(): number {
    return this.#queue.length;
  }

  /**
   * Queue a message. Looking back to the port's last DEVICE_ADD/REMOVE: an undelivered RESIZE or PORT_OPEN is
   * replaced by the new one; an identical message makes this one a no-op. Returns false when it was dropped
   * because the queue is full.
   */
  push(id: number, event: number, value: number, payload?: Uint8Array): boolean {
    const bytes = encodeControl(id, event, value, payload);
    const q = this.#queue;
    for (let i = q.length - 1; i >= 0; i--) {
      const m = q[i]!;
      if (m.id !== id) continue;
      if (m.event === event) {
        if (LATEST_WINS.has(event)) {
          q.splice(i, 1);
          break;
        }
        if (sameBytes(m.bytes, bytes)) return true;
      }
      if (isBarrier(m.event)) break;
    }
    if (q.length >= this.limit) {
      this.dropped++;
      return false;
    }
    q.push({ id, event, value, bytes });
    return true;
  }

  /** The next message to deliver. */
  peek(): OutgoingControl | undefined {
    return this.#queue[0];
  }

  /** Remove the next message (after delivering it). */
  shift(): OutgoingControl | undefined {
    return this.#queue.shift();
  }

  /** Is a message of this kind for this port waiting? */
  has(id: number, event: number): boolean {
    return this.#queue.some((m) => m.id === id && m.event === event);
  }

  /**
   * Take back an undelivered DEVICE_ADD of port `id` together with every later message about the port.
   * Returns false (and changes nothing) when no DEVICE_ADD of the port is waiting.
   */
  retractAdd(id: number): boolean {
    const q = this.#queue;
    let at = -1;
    for (let i = q.length - 1; i >= 0; i--) {
      if (q[i]!.id === id && q[i]!.event === ControlEvent.DEVICE_ADD) {
        at = i;
        break;
      }
    }
    if (at < 0) return false;
    this.#queue = q.filter((m, i) => i < at || m.id !== id);
    return true;
  }

  /** Forget everything (driver reset). */
  clear(): void {
    this.#queue = [];
  }
}
