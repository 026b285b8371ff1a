/**
 * Virtio facts shared by every layer: device ids, status bits, feature bits and their names.
 * Pure data, no dependencies.
 */

/** Virtio device ids (virtio 1.2, section 5). */
export const DeviceId = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  RNG: 4,
  SCSI: 8,
  GPU: 16,
  INPUT: 18,
  VSOCK: 19,
  FS: 26,
  I2C: 34,
  GPIO: 41,
} as const;

/** Human names for device ids, for tools. */
export const deviceNames: Readonly<Record<number, string>> = {
  1: 'net', 2: 'blk', 3: 'console', 4: 'rng', 8: 'scsi', 16: 'gpu', 18: 'input', 19: 'vsock', 26: 'fs', 34: 'i2c', 41: 'gpio',
};

/** Device status bits. */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Feature bits common to all devices (as bit numbers). */
export const CommonFeature = {
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  /** vhost-user: GET/SET_PROTOCOL_FEATURES exist. */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  /** vhost: dirty logging of all guest writes. */
  LOG_ALL: 26,
} as const;

/** Block device feature bits. */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Network device feature bits. */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
} as const;

/** Console device feature bits. */
export const ConsoleFeature = {
  SIZE: 0,
  MULTIPORT: 1,
  EMERG_WRITE: 2,
} as const;

/** SCSI device feature bits. */
export const ScsiFeature = {
  INOUT: 0,
  HOTPLUG: 1,
  CHANGE: 2,
  T10_PI: 3,
} as const;

/** A bit mask (bigint) from bit numbers. */
export function featureMask(...bits: number[]): bigint {
  let mask = 0n;
  for (const bit of bits) mask |= 1n << BigInt(bit);
  return mask;
}

/** Does the mask have the bit? */
export function hasFeature(mask: bigint, bit: number): boolean {
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

function invert(table: Record<string, number>): Record<number, string> {
  const out: Record<number, string> = {};
  for (const [name, bit] of Object.entries(table)) out[bit] = name;
  return out;
}

const commonNames = invert(CommonFeature);
const perDevice: Record<number, Record<number, string>> = {
  [DeviceId.BLOCK]: invert(BlkFeature),
  [DeviceId.NET]: invert(NetFeature),
  [DeviceId.CONSOLE]: invert(ConsoleFeature),
  [DeviceId.SCSI]: invert(ScsiFeature),
};

/**
 * Names of the bits set in a virtio feature mask. Device-specific bits (0-23) are named for the given
 * device id when known; unknown bits come out as `bit<N>`.
 */
export function featureNames(mask: bigint, deviceId?: number): string[] {
  const names: string[] = [];
  const dev = deviceId === undefined ? undefined : perDevice[deviceId];
  for (let bit = 0; bit < 64; bit++) {
    if (!hasFeature(mask, bit)) continue;
    const name = bit < 24 ? dev?.[bit] : commonNames[bit];
    names.push(name ?? `bit${bit}`);
  }
  return names;
}
