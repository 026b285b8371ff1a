/**
 * A vhost-user connection: one AF_UNIX stream socket carrying messages with fds, in either direction.
 *
 * Messages are handled one at a time: while a handler's promise is pending the socket is not read, so a slow
 * handler pushes back on the peer and replies go out in request order.
 */
import { native, closeQuietly, Readiness, type FdWatcher } from '../native/index.js';
import { logger, type Logger } from '../util/log.js';
import { EOF, MessageParser, encodeMessage } from './codec.js';
import { Limits } from './constants.js';
import { ProtocolError, type Message } from './message.js';

/**
 * Handles one message. To keep an fd, the handler sets its slot in `message.fds` to -1; every fd still listed
 * when the handler finishes (or throws) is closed by the connection, so no path leaks one.
 */
export type MessageHandler = (message: Message) => void | Promise<void>;

/** Options for {@link Connection}. */
export interface ConnectionOptions {
  /** Name used in log lines. */
  name?: string;
  /** Largest payload accepted. */
  maxPayload?: number;
  /** Most fds one message may carry. */
  maxFds?: number;
  logger?: Logger;
}

interface Outgoing {
  data: Uint8Array;
  fds: number[];
  /** Close the fds once sent (or dropped). */
  owned: boolean;
}

/** A message-oriented socket. Owns its fd. */
export class Connection {
  readonly name: string;
  readonly #fd: number;
  readonly #parser: MessageParser;
  readonly #watcher: FdWatcher;
  readonly #log: Logger;
  readonly #outgoing: Outgoing[] = [];
  #handler: MessageHandler | null = null;
  #busy = false;
  #closed = false;
  #closeReason: string | undefined;
  #closeListeners: ((reason: string | undefined) => void)[] = [];

  /** Wrap a connected, non-blocking socket fd. Reading starts on {@link start}. */
  constructor(fd: number, options: ConnectionOptions = {}) {
    this.#fd = fd;
    this.name = options.name ?? `fd${fd}`;
    this.#log = options.logger ?? logger('connection');
    this.#parser = new MessageParser({
      maxPayload: options.maxPayload ?? Limits.MAX_PAYLOAD,
      maxFds: options.maxFds ?? Limits.MAX_FDS,
      closeFd: closeQuietly,
    });
    this.#watcher = native.watch(fd, (events, errno) => this.#onReady(events, errno));
  }

  /** The socket fd (for diagnostics). */
  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Why the connection closed: undefined for a clean close by either side. */
  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  /** Start reading; each message goes to `handler`, one at a time. */
  start(handler: MessageHandler): void {
    this.#handler = handler;
    this.#updateWatch();
  }

  /** Called once when the connection closes, with the reason (undefined when clean). */
  onClose(listener: (reason: string | undefined) => void): void {
    if (this.#closed) listener(this.#closeReason);
    else this.#closeListeners.push(listener);
  }

  /**
   * Send a message. With `giveFds` false (default) the caller keeps its fds; with true the connection closes
   * them once they are sent or dropped. Sending on a closed connection only releases given fds.
   */
  send(request: number, flags: number, payload?: Uint8Array, fds: number[] = [], giveFds = false): void {
    if (this.#closed) {
      if (giveFds) for (const fd of fds) closeQuietly(fd);
      return;
    }
    this.#outgoing.push({ data: encodeMessage(request, flags, payload), fds, owned: giveFds });
    this.#flush();
  }

  /** Close the socket, stop reading, close held fds. `reason` is logged when given (an error). */
  close(reason?: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = reason;
    if (reason !== undefined) this.#log.warn(`${this.name}: closing connection: ${reason}`);
    else this.#log.debug(`${this.name}: closed`);
    this.#watcher.close();
    this.#parser.dispose();
    closeQuietly(this.#fd);
    for (const out of this.#outgoing) if (out.owned) for (const fd of out.fds) closeQuietly(fd);
    this.#outgoing.length = 0;
    const listeners = this.#closeListeners;
    this.#closeListeners = [];
    for (const listener of listeners) listener(reason);
  }

  #updateWatch(): void {
    if (this.#closed) return;
    let events = 0;
    // A peer that does not read our replies stops being read: its requests wait in its own socket buffer.
    if (this.#handler && !this.#busy && this.#outgoing.length < Limits.MAX_QUEUED_MESSAGES) events |= Readiness.READABLE;
    if (this.#outgoing.length > 0) events |= Readiness.WRITABLE;
    if (events === 0) this.#watcher.stop();
    else this.#watcher.start(events);
  }

  #onReady(events: number, errno?: number): void {
    if (this.#closed) return;
    if (errno !== undefined) {
      this.close(`socket error or reset by the peer (errno ${errno})`);
      return;
    }
    if (events & Readiness.WRITABLE) this.#flush();
    if (events & Readiness.READABLE) this.#readMessages();
  }

  #flush(): void {
    try {
      while (this.#outgoing.length > 0) {
        const head = this.#outgoing[0]!;
        const sent = native.sendMsg(this.#fd, head.data, head.fds);
        if (sent < 0) break;
        // fds go with the first byte; the rest of a partly sent message follows without them.
        if (head.owned) for (const fd of head.fds) closeQuietly(fd);
        head.fds = [];
        if (sent < head.data.byteLength) {
          head.data = head.data.subarray(sent);
          continue;
        }
        this.#outgoing.shift();
      }
    } catch (err) {
      this.close(`send failed: ${(err as Error).message}`);
      return;
    }
    this.#updateWatch();
  }

  #readMessages(): void {
    const receive = (buf: Uint8Array, maxFds: number) => native.recvMsg(this.#fd, buf, maxFds);
    while (!this.#closed && !this.#busy && this.#handler && this.#outgoing.length < Limits.MAX_QUEUED_MESSAGES) {
      let message;
      try {
        message = this.#parser.next(receive);
      } catch (err) {
        this.close(err instanceof ProtocolError ? err.message : `receive failed: ${(err as Error).message}`);
        return;
      }
      if (message === null) return;
      if (message === EOF) {
        this.close();
        return;
      }
      this.#dispatch(message);
    }
  }

  #dispatch(message: Message): void {
    const handler = this.#handler!;
    let result: void | Promise<void>;
    try {
      result = handler(message);
    } catch (err) {
      this.#finish(message, err);
      return;
    }
    if (result && typeof (result as Promise<void>).then === 'function') {
      this.#busy = true;
      this.#updateWatch();
      (result as Promise<void>).then(
        () => this.#finish(message, undefined),
        (err: unknown) => this.#finish(message, err),
      );
    } else {
      this.#finish(message, undefined);
    }
  }

  #finish(message: Message, err: unknown): void {
    for (const fd of message.fds) if (fd >= 0) closeQuietly(fd);
    message.fds.length = 0;
    const wasBusy = this.#busy;
    this.#busy = false;
    if (err !== undefined) {
      this.close(err instanceof ProtocolError ? err.message : `handler failed: ${(err as Error)?.stack ?? String(err)}`);
      return;
    }
    if (wasBusy) {
      this.#updateWatch();
      // Data may have arrived while we were not watching; level-triggered poll reports it, but read now too.
      this.#readMessages();
    }
  }
}
