/**
 * The virtio-net packet header (virtio 1.2, 5.1.6) that precedes every frame on the rx and tx queues.
 */

/** `flags` bits. */
export const NetHdrFlag = {
  /** The checksum from `csum_start` to the end is left to the receiver, stored at `csum_start + csum_offset`. */
  NEEDS_CSUM: 1,
  /** The checksum was validated (receive side, with GUEST_CSUM). */
  DATA_VALID: 2,
} as const;

/** `gso_type` values. */
export const NetHdrGso = {
  NONE: 0,
  TCPV4: 1,
  UDP: 3,
  TCPV6: 4,
  ECN: 0x80,
} as const;

/** Header size with VERSION_1 or MRG_RXBUF: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const NET_HDR_SIZE = 12;
/** Header size of a legacy driver without MRG_RXBUF (no num_buffers). */
export const LEGACY_NET_HDR_SIZE = 10;

/** Field offsets. */
export const NetHdrOffset = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
} as const;

/** Ethernet header length (destination, source, ethertype). */
export const ETH_HLEN = 14;

/** Largest frame we move: a 65535-byte MTU plus an Ethernet header and one VLAN tag. */
export const MAX_FRAME = 65535 + ETH_HLEN + 4;
