/**
 * The virtio-net control queue (virtio 1.2, 5.1.6.5): each request is `{class u8, command u8, data...}`
 * (device-readable) then one `ack u8` (device-writable). We implement the receive filter (CTRL_RX), the MAC
 * table and address (CTRL_RX, CTRL_MAC_ADDR) and the number of queue pairs (MQ).
 */
import { hasFeature, NetFeature } from '../../virtio/constants.js';
import { isMulticastAt, macKeyAt, MAC_LENGTH } from './mac.js';
import type { RxFilter } from './rx-filter.js';

/** Command classes. */
export const CtrlClass = { RX: 0, MAC: 1, VLAN: 2, ANNOUNCE: 3, MQ: 4, GUEST_OFFLOADS: 5 } as const;
/** CtrlClass.RX commands (ALLUNI and later need CTRL_RX_EXTRA, which we do not offer). */
export const CtrlRx = { PROMISC: 0, ALLMULTI: 1, ALLUNI: 2, NOMULTI: 3, NOUNI: 4, NOBCAST: 5 } as const;
/** CtrlClass.MAC commands. */
export const CtrlMac = { TABLE_SET: 0, ADDR_SET: 1 } as const;
/** CtrlClass.MQ commands. */
export const CtrlMq = { VQ_PAIRS_SET: 0, RSS_CONFIG: 1, HASH_CONFIG: 2 } as const;
/** Ack values. */
export const CtrlAck = { OK: 0, ERR: 1 } as const;

/** Largest request we read (a MAC table of about 10 000 entries); longer ones are refused unread. */
export const MAX_CTRL_REQUEST = 64 * 1024;

/** What control commands act on. */
export interface ControlTarget {
  /** Features the driver accepted. */
  readonly negotiatedFeatures: bigint;
  readonly filter: RxFilter;
  /** MAC_ADDR_SET. */
  setMac(mac: Uint8Array): void;
  /** VQ_PAIRS_SET with a value already range-checked against `maxQueuePairs`. */
  setQueuePairs(pairs: number): void;
  readonly maxQueuePairs: number;
}

function macList(data: Uint8Array, at: number): { keys: number[]; next: number } | undefined {
  if (at + 4 > data.length) return undefined;
  const entries = new DataView(data.buffer, data.byteOffset + at, 4).getUint32(0, true);
  const start = at + 4;
  if (entries > (data.length - start) / MAC_LENGTH) return undefined;
  const keys: number[] = [];
  for (let i = 0; i < entries; i++) keys.push(macKeyAt(data, start + i * MAC_LENGTH));
  return { keys, next: start + entries * MAC_LENGTH };
}

/** Run one command; returns the ack byte. Never throws on guest input. */
export function executeControl(target: ControlTarget, cls: number, cmd: number, data: Uint8Array): number {
  const has = (bit: number) => hasFeature(target.negotiatedFeatures, bit);
  switch (cls) {
    case CtrlClass.RX: {
      if (!has(NetFeature.CTRL_RX) || data.length !== 1) return CtrlAck.ERR;
      const on = data[0] !== 0;
      if (cmd === CtrlRx.PROMISC) target.filter.promiscuous = on;
      else if (cmd === CtrlRx.ALLMULTI) target.filter.allMulticast = on;
      else return CtrlAck.ERR;
      return CtrlAck.OK;
    }
    case CtrlClass.MAC: {
      if (cmd === CtrlMac.TABLE_SET) {
        if (!has(NetFeature.CTRL_RX)) return CtrlAck.ERR;
        const uni = macList(data, 0);
        const multi = uni && macList(data, uni.next);
        if (!uni || !multi || multi.next !== data.length) return CtrlAck.ERR;
        target.filter.setTables(uni.keys, multi.keys);
        return CtrlAck.OK;
      }
      if (cmd === CtrlMac.ADDR_SET) {
        if (!has(NetFeature.CTRL_MAC_ADDR) || data.length !== MAC_LENGTH || isMulticastAt(data, 0)) return CtrlAck.ERR;
        target.setMac(data.slice());
        return CtrlAck.OK;
      }
      return CtrlAck.ERR;
    }
    case CtrlClass.MQ: {
      if (cmd !== CtrlMq.VQ_PAIRS_SET || !has(NetFeature.MQ) || data.length !== 2) return CtrlAck.ERR;
      const pairs = data[0]! | (data[1]! << 8);
      if (pairs < 1 || pairs > target.maxQueuePairs) return CtrlAck.ERR;
      target.setQueuePairs(pairs);
      return CtrlAck.OK;
    }
    default:
      return CtrlAck.ERR;
  }
}
