/** Errors of the guest-memory layer. */

/** An address range that is not (entirely) backed by guest memory, or a bad region description. */
export class MemoryError extends Error {
  /** First address of the offending range (guest-physical or frontend-virtual, as the message says). */
  readonly address: number;
  /** Length of the offending range in bytes. */
  readonly length: number;

  constructor(message: string, address: number, length: number) {
    super(message);
    this.name = 'MemoryError';
    this.address = address;
    this.length = length;
  }
}

/** Hex form of an address for messages. */
export function hex(n: number): string {
  return Number.isFinite(n) ? `0x${n.toString(16)}` : String(n);
}
