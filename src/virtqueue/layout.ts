/**
 * Split virtqueue memory layout (virtio 1.2, section 2.7). All fields are little-endian.
 *
 *   descriptor table: size × {addr u64, len u32, flags u16, next u16}          (16-byte aligned)
 *   available ring:   {flags u16, idx u16, ring[size] u16, used_event u16}     (2-byte aligned)
 *   used ring:        {flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16}  (4-byte aligned)
 *
 * The trailing event fields exist only with VIRTIO_F_EVENT_IDX.
 */

/** Descriptor flag: the buffer continues via `next`. */
export const VIRTQ_DESC_F_NEXT = 1;
/** Descriptor flag: the buffer is device-writable (else device-readable). */
export const VIRTQ_DESC_F_WRITE = 2;
/** Descriptor flag: the buffer holds a table of indirect descriptors. */
export const VIRTQ_DESC_F_INDIRECT = 4;

/** Available ring flag: the driver asks not to be interrupted (without EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** Used ring flag: the device asks not to be kicked (without EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;

/** Feature bit numbers that change the ring's behaviour. */
export const RingFeature = {
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
} as const;

/** Bytes per descriptor (in the table and in indirect tables). */
export const DESC_SIZE = 16;
/** Bytes per used ring element. */
export const USED_ELEM_SIZE = 8;

/** Required alignment of the descriptor table. */
export const DESC_ALIGN = 16;
/** Required alignment of the available ring. */
export const AVAIL_ALIGN = 2;
/** Required alignment of the used ring. */
export const USED_ALIGN = 4;

/** Largest split ring size. */
export const MAX_QUEUE_SIZE = 32768;

/** Byte offsets inside the available ring. */
export const AvailOffset = { FLAGS: 0, IDX: 2, RING: 4 } as const;
/** Byte offsets inside the used ring. */
export const UsedOffset = { FLAGS: 0, IDX: 2, RING: 4 } as const;

/** Is `size` a valid split ring size (a power of two in 1..32768)? */
export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/** Bytes of the descriptor table. */
export function descTableBytes(size: number): number {
  return DESC_SIZE * size;
}

/** Bytes of the available ring, with the trailing used_event field when `eventIdx`. */
export function availRingBytes(size: number, eventIdx: boolean): number {
  return 4 + 2 * size + (eventIdx ? 2 : 0);
}

/** Bytes of the used ring, with the trailing avail_event field when `eventIdx`. */
export function usedRingBytes(size: number, eventIdx: boolean): number {
  return 4 + USED_ELEM_SIZE * size + (eventIdx ? 2 : 0);
}

/** Byte offset of used_event inside the available ring. */
export function usedEventOffset(size: number): number {
  return 4 + 2 * size;
}

/** Byte offset of avail_event inside the used ring. */
export function availEventOffset(size: number): number {
  return 4 + USED_ELEM_SIZE * size;
}

/**
 * The EVENT_IDX rule: must the other side be notified when its index moved from `oldIdx` to `newIdx`, given the
 * peer asked to hear about index `eventIdx`? All u16.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
