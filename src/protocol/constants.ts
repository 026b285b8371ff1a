/**
 * vhost-user wire constants: request codes in both directions, header flags, protocol features and limits.
 */

/** Requests from the frontend (driver side, e.g. QEMU) to the backend (device). */
export const FrontendRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Requests from the backend to the frontend, on the SET_BACKEND_REQ_FD channel. */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
} as const;

function invert(table: Record<string, number>): Record<number, string> {
  const out: Record<number, string> = {};
  for (const [name, value] of Object.entries(table)) out[value] = name;
  return out;
}

const frontendNames = invert(FrontendRequest);
const backendNames = invert(BackendRequest);

/** Name of a frontend request code, for logs. */
export function frontendRequestName(code: number): string {
  return frontendNames[code] ?? `UNKNOWN(${code})`;
}

/** Name of a backend request code, for logs. */
export function backendRequestName(code: number): string {
  return backendNames[code] ?? `UNKNOWN(${code})`;
}

/** Header flag bits. */
export const HeaderFlag = {
  VERSION: 0x1,
  VERSION_MASK: 0x3,
  REPLY: 0x4,
  NEED_REPLY: 0x8,
} as const;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

const protocolFeatureNames = invert(ProtocolFeature);

/** Names of the bits set in a protocol-feature mask; unknown bits as `bit<N>`. */
export function protocolFeatureNamesOf(mask: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (((mask >> BigInt(bit)) & 1n) === 1n) names.push(protocolFeatureNames[bit] ?? `bit${bit}`);
  }
  return names;
}

/** Wire limits. Named so that the resource bounds are documented in one place. */
export const Limits = {
  /** Header size in bytes. */
  HEADER_SIZE: 12,
  /** Largest payload we accept; the spec's messages all fit (config is at most 256 bytes). */
  MAX_PAYLOAD: 4096,
  /** Largest number of fds one message may carry (SET_MEM_TABLE with 8 regions). */
  MAX_FDS: 8,
  /** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
  MAX_TABLE_REGIONS: 8,
  /** Memory slots advertised with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS). */
  MAX_MEM_SLOTS: 32,
  /** Largest config space exchanged with GET/SET_CONFIG. */
  MAX_CONFIG_SIZE: 256,
  /** Largest queue count: KICK/CALL/ERR payloads carry an 8-bit queue index. */
  MAX_QUEUES: 256,
  /** Messages queued for a peer that is not reading before we stop reading its requests. */
  MAX_QUEUED_MESSAGES: 64,
  /** Largest split-ring size (virtio: 32768). */
  MAX_QUEUE_SIZE: 32768,
} as const;

/** KICK/CALL/ERR payload: bits 0-7 queue index, bit 8 no fd. */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;
