/** Errors of the virtqueue layer. */

/** What is wrong with a descriptor chain or the available ring. */
export const ChainErrorKind = {
  /** The chain revisits a descriptor (detected by walking more descriptors than the table holds). */
  LOOP: 'LOOP',
  /** More buffers than the queue allows in one chain (`SplitQueue.maxChainLength`). */
  TOO_LONG: 'TOO_LONG',
  /** An INDIRECT descriptor inside an indirect table. */
  NESTED_INDIRECT: 'NESTED_INDIRECT',
  /** A descriptor with both INDIRECT and NEXT. */
  INDIRECT_WITH_NEXT: 'INDIRECT_WITH_NEXT',
  /** An indirect table length that is zero, not a multiple of 16, or longer than allowed. */
  INDIRECT_LENGTH: 'INDIRECT_LENGTH',
  /** An available ring entry (a chain head) >= queue size. */
  HEAD_OUT_OF_RANGE: 'HEAD_OUT_OF_RANGE',
  /** A `next` index >= the table size. */
  NEXT_OUT_OF_RANGE: 'NEXT_OUT_OF_RANGE',
  /** avail.idx is more than queue size ahead of the last index seen. */
  AVAIL_INDEX_JUMP: 'AVAIL_INDEX_JUMP',
  /** A zero-length buffer. */
  ZERO_LENGTH: 'ZERO_LENGTH',
  /** A buffer or indirect table not inside guest memory. */
  OUT_OF_MEMORY: 'OUT_OF_MEMORY',
  /** A device-readable buffer after a device-writable one. */
  READ_AFTER_WRITE: 'READ_AFTER_WRITE',
  /** An INDIRECT descriptor although VIRTIO_F_INDIRECT_DESC was not negotiated. */
  INDIRECT_NOT_NEGOTIATED: 'INDIRECT_NOT_NEGOTIATED',
  /**
   * A head made available again while the device still holds its chain (popped, not yet used): the driver
   * reused descriptors it does not own.
   */
  HEAD_IN_USE: 'HEAD_IN_USE',
} as const;

export type ChainErrorKind = (typeof ChainErrorKind)[keyof typeof ChainErrorKind];

/** A malformed chain or available ring: the driver broke the rules, the queue needs a reset. */
export class ChainError extends Error {
  readonly kind: ChainErrorKind;
  /** Head of the chain being walked, or -1 when the error is not about one chain. */
  readonly head: number;
  /** The guest-physical address involved (OUT_OF_MEMORY), else -1. */
  readonly address: number;

  constructor(kind: ChainErrorKind, message: string, head = -1, address = -1) {
    super(`${kind}: ${message}`);
    this.name = 'ChainError';
    this.kind = kind;
    this.head = head;
    this.address = address;
  }
}

/** Bad queue setup: size, ring addresses, or an inflight area that does not fit. */
export class QueueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueError';
  }
}
