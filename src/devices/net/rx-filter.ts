/**
 * A guest's receive filter, as the control queue sets it (virtio 1.2, 5.1.6.5.1-2): promiscuous and
 * all-multicast modes, its own address, and the unicast and multicast MAC tables. It starts promiscuous, as
 * QEMU's virtio-net does, so that a driver that never uses the control queue (or a frontend that handles the
 * control queue itself, as QEMU does for vhost-user) receives everything flooded to it.
 */
import { BROADCAST_KEY, isMulticastAt, macKeyAt } from './mac.js';

/** Entries per table before it counts as overflowed (accept every address of that kind), as QEMU does. */
export const MAC_TABLE_ENTRIES = 64;

/** The filter state. */
export class RxFilter {
  promiscuous = true;
  allMulticast = false;
  /** The device's own address (config space `mac`, or the last MAC_ADDR_SET). */
  ownKey = 0;
  readonly unicast = new Set<number>();
  readonly multicast = new Set<number>();
  unicastOverflow = false;
  multicastOverflow = false;

  /** Back to the initial state with `ownKey` as the address. */
  reset(ownKey: number): void {
    this.promiscuous = true;
    this.allMulticast = false;
    this.ownKey = ownKey;
    this.unicast.clear();
    this.multicast.clear();
    this.unicastOverflow = false;
    this.multicastOverflow = false;
  }

  /** Replace both tables (MAC_TABLE_SET). */
  setTables(unicast: readonly number[], multicast: readonly number[]): void {
    this.unicast.clear();
    this.multicast.clear();
    this.unicastOverflow = unicast.length > MAC_TABLE_ENTRIES;
    this.multicastOverflow = multicast.length > MAC_TABLE_ENTRIES;
    if (!this.unicastOverflow) for (const k of unicast) this.unicast.add(k);
    if (!this.multicastOverflow) for (const k of multicast) this.multicast.add(k);
  }

  /** Does the frame's destination (bytes 0-5) pass? */
  accepts(frame: Uint8Array): boolean {
    return this.promiscuous || this.acceptsKey(macKeyAt(frame, 0), isMulticastAt(frame, 0));
  }

  /** Does a destination address (a MAC key, see `macKeyAt`) pass? */
  acceptsKey(key: number, multicast: boolean): boolean {
    if (this.promiscuous) return true;
    if (multicast) {
      if (key === BROADCAST_KEY || this.allMulticast || this.multicastOverflow) return true;
      return this.multicast.has(key);
    }
    return key === this.ownKey || this.unicastOverflow || this.unicast.has(key);
  }
}
