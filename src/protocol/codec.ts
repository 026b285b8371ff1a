/**
 * Parser and serializer for vhost-user messages on a stream socket.
 *
 * The parser reads the 12-byte header first and then exactly the payload, never further: fds ride on the
 * sendmsg that carries a message's first byte, so reading no further than one message keeps each message's
 * fds with it.
 */
import { HeaderFlag, Limits } from './constants.js';
import { ProtocolError, type Message } from './message.js';

/** What a receive call returns: like the addon's recvMsg, with null for would-block. */
export interface Received {
  bytes: number;
  fds: number[];
  fdsTruncated: boolean;
}

/** Receive into `buf`, taking up to `maxFds` fds. Null when nothing is available now. */
export type Receive = (buf: Uint8Array, maxFds: number) => Received | null;

/** Returned by {@link MessageParser.next} when the peer closed the connection between messages. */
export const EOF = Symbol('EOF');

/** Options for {@link MessageParser}. */
export interface ParserOptions {
  /** Largest payload accepted (default {@link Limits.MAX_PAYLOAD}). */
  maxPayload?: number;
  /** Most fds one message may carry (default {@link Limits.MAX_FDS}). */
  maxFds?: number;
  /** Closes an fd; used for fds of a message that is rejected or never completed. */
  closeFd: (fd: number) => void;
}

/** Incremental message parser. One per connection. */
export class MessageParser {
  readonly #maxPayload: number;
  readonly #maxFds: number;
  readonly #closeFd: (fd: number) => void;
  readonly #header = new Uint8Array(Limits.HEADER_SIZE);
  readonly #headerView = new DataView(this.#header.buffer);
  #headerFilled = 0;
  #payload: Uint8Array | null = null;
  #payloadFilled = 0;
  #fds: number[] = [];

  constructor(options: ParserOptions) {
    this.#maxPayload = options.maxPayload ?? Limits.MAX_PAYLOAD;
    this.#maxFds = options.maxFds ?? Limits.MAX_FDS;
    this.#closeFd = options.closeFd;
  }

  /**
   * Read until one whole message is available.
   * @returns the message (its fds now belong to the caller), null if the socket would block, or {@link EOF}.
   * @throws ProtocolError on a malformed header, an oversized payload, too many fds or a truncated message.
   */
  next(receive: Receive): Message | null | typeof EOF {
    while (this.#headerFilled < Limits.HEADER_SIZE) {
      const got = this.#receive(receive, this.#header.subarray(this.#headerFilled));
      if (got === null) return null;
      if (got === 0) {
        if (this.#headerFilled === 0 && this.#fds.length === 0) return EOF;
        throw new ProtocolError(`connection closed inside a message header (${this.#headerFilled} of 12 bytes)`);
      }
      this.#headerFilled += got;
      if (this.#headerFilled === Limits.HEADER_SIZE) this.#checkHeader();
    }
    const size = this.#headerView.getUint32(8, true);
    const payload = this.#payload ?? new Uint8Array(size);
    this.#payload = payload;
    while (this.#payloadFilled < size) {
      const got = this.#receive(receive, payload.subarray(this.#payloadFilled));
      if (got === null) return null;
      if (got === 0) {
        throw new ProtocolError(`connection closed inside a message payload (${this.#payloadFilled} of ${size} bytes)`);
      }
      this.#payloadFilled += got;
    }
    const message: Message = {
      request: this.#headerView.getUint32(0, true),
      flags: this.#headerView.getUint32(4, true),
      payload,
      fds: this.#fds,
    };
    this.#headerFilled = 0;
    this.#payload = null;
    this.#payloadFilled = 0;
    this.#fds = [];
    return message;
  }

  /** Close any fds held for an incomplete message. Call when the connection goes away. */
  dispose(): void {
    for (const fd of this.#fds) this.#closeFd(fd);
    this.#fds = [];
  }

  #receive(receive: Receive, into: Uint8Array): number | null {
    const room = this.#maxFds - this.#fds.length;
    // Always leave room for one fd more than allowed, so that a surplus fd is seen and rejected.
    const result = receive(into, room + 1);
    if (result === null) return null;
    for (const fd of result.fds) this.#fds.push(fd);
    if (result.fdsTruncated || this.#fds.length > this.#maxFds) {
      throw new ProtocolError(`message carries more than ${this.#maxFds} file descriptors`);
    }
    return result.bytes;
  }

  #checkHeader(): void {
    const flags = this.#headerView.getUint32(4, true);
    const size = this.#headerView.getUint32(8, true);
    if ((flags & HeaderFlag.VERSION_MASK) !== HeaderFlag.VERSION) {
      throw new ProtocolError(`header version ${flags & HeaderFlag.VERSION_MASK}, expected 1 (flags 0x${flags.toString(16)})`);
    }
    if (size > this.#maxPayload) {
      throw new ProtocolError(`payload size ${size} over the ${this.#maxPayload}-byte limit`);
    }
  }
}

/** Serialize a message: header and payload in one buffer, so it leaves in one sendmsg. */
export function encodeMessage(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload?.byteLength ?? 0;
  const out = new Uint8Array(Limits.HEADER_SIZE + size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, request, true);
  dv.setUint32(4, flags, true);
  dv.setUint32(8, size, true);
  if (payload) out.set(payload, Limits.HEADER_SIZE);
  return out;
}
