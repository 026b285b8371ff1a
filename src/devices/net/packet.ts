/**
 * A frame in flight through the switch: one reusable buffer per sender (no allocation per packet), the frame's
 * length, and the checksum offload state the sender left it in.
 */
import { completeChecksum } from './checksum.js';
import { MAX_FRAME } from './header.js';

/** A frame and its offload state. Receivers read it; the only change they make is {@link completeChecksum}. */
export class Packet {
  /** Backing store, {@link MAX_FRAME} bytes. */
  readonly buffer: Uint8Array;
  /** Frame length. */
  length = 0;
  /** The checksum still has to be completed (virtio NEEDS_CSUM). */
  needsCsum = false;
  /** Where the checksummed range starts (with {@link needsCsum}). */
  csumStart = 0;
  /** Where the checksum goes, relative to {@link csumStart}. */
  csumOffset = 0;
  #view: Uint8Array;

  constructor(capacity = MAX_FRAME) {
    this.buffer = new Uint8Array(capacity);
    this.#view = this.buffer.subarray(0, 0);
  }

  /** Set the frame length (and clear the offload state); the frame goes in {@link buffer} from offset 0. */
  reset(length: number): void {
    if (length > this.buffer.length) throw new RangeError(`frame of ${length} bytes over ${this.buffer.length}`);
    this.length = length;
    this.needsCsum = false;
    this.csumStart = 0;
    this.csumOffset = 0;
  }

  /** The frame bytes (a view made on demand: the hot paths use {@link buffer} and {@link length}). */
  get frame(): Uint8Array {
    if (this.#view.length !== this.length) this.#view = this.buffer.subarray(0, this.length);
    return this.#view;
  }

  /**
   * Complete a pending checksum in software (for receivers that cannot take a partial one). Returns true when
   * one was computed.
   */
  completeChecksum(): boolean {
    if (!this.needsCsum) return false;
    this.needsCsum = false;
    return completeChecksum(this.buffer, this.length, this.csumStart, this.csumOffset);
  }
}
