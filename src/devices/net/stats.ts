/**
 * Per-port counters. "rx" is what the switch delivered to the port's endpoint (a guest's receive queue, the TAP
 * device); "tx" is what the endpoint sent into the switch. For a guest port that is the guest's own view.
 */

/** Counter names, in display order. */
export const COUNTER_NAMES = [
  'rxPackets', 'rxBytes', 'rxDropped', 'rxFiltered', 'rxErrors',
  'txPackets', 'txBytes', 'txDropped', 'txErrors', 'csumComputed',
] as const;

/** One port's counters. */
export type PortCounters = Record<(typeof COUNTER_NAMES)[number], number>;

/**
 * Mutable counters of a port.
 * - rxPackets/rxBytes: frames written into the endpoint.
 * - rxDropped: frames for the endpoint that had nowhere to go (no guest, ring not ready, receive ring full).
 * - rxFiltered: frames the guest's receive filter (promiscuous, all-multicast, MAC tables) refused.
 * - rxErrors: frames that did not fit the buffers the guest gave (without MRG_RXBUF, or past the ring's end).
 * - txPackets/txBytes: frames the endpoint sent into the switch.
 * - txDropped: frames discarded because their ring was disabled.
 * - txErrors: malformed frames (short, too long, GSO, bad checksum offsets).
 * - csumComputed: partial checksums completed in software for this endpoint.
 */
export class PortStats implements PortCounters {
  rxPackets = 0;
  rxBytes = 0;
  rxDropped = 0;
  rxFiltered = 0;
  rxErrors = 0;
  txPackets = 0;
  txBytes = 0;
  txDropped = 0;
  txErrors = 0;
  csumComputed = 0;

  /** A copy of the counters. */
  snapshot(): PortCounters {
    const out = {} as PortCounters;
    for (const k of COUNTER_NAMES) out[k] = this[k];
    return out;
  }
}

/** A table of counters, one line per port, for logs and SIGUSR1. */
export function formatStats(rows: { name: string; counters: PortCounters }[]): string {
  const header = ['port', ...COUNTER_NAMES];
  const lines = [header, ...rows.map((r) => [r.name, ...COUNTER_NAMES.map((k) => String(r.counters[k]))])];
  const widths = header.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  return lines.map((l) => l.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  '))
    .join('\n');
}
