/**
 * Where a backend meets its frontend: a listening socket (created at a path, or adopted from an inherited fd
 * for socket activation), or an outgoing connection that is re-made whenever it drops (client mode).
 *
 * One frontend at a time: while one is connected, another that connects is refused (accepted, logged, closed)
 * unless the first goes away within {@link WAITING_GRACE_MS}, as it does when a frontend reconnects.
 */
import fs from 'node:fs';
import { native, closeQuietly, isSystemError, Readiness, type FdWatcher } from '../native/index.js';
import { logger, type Logger } from '../util/log.js';
import { Connection } from './connection.js';

/** How to reach the frontend. Exactly one of `socketPath`, `socketFd` must be given. */
export interface EndpointOptions {
  /** Listen on this path (server mode) or connect to it (client mode). */
  socketPath?: string;
  /** An inherited, already-listening socket (systemd socket activation). */
  socketFd?: number;
  /** Connect out to `socketPath` instead of listening, and reconnect when the connection drops. */
  client?: boolean;
  /** Delay between connection attempts in client mode (ms, default 1000). */
  reconnectDelayMs?: number;
  /** Permission bits of a socket file we create (default 0o600). */
  socketMode?: number;
  logger?: Logger;
}

/** How long a frontend that connects while another is active waits for that one to go before being refused. */
export const WAITING_GRACE_MS = 500;

/** Called for each frontend that connects; the callee starts the connection. */
export type ConnectionCallback = (connection: Connection) => void;

/** A listening or connecting endpoint serving one frontend at a time. */
export class Endpoint {
  readonly #options: EndpointOptions;
  readonly #onConnection: ConnectionCallback;
  readonly #log: Logger;
  #listenFd = -1;
  #createdPath: { path: string; ino: number } | undefined;
  #watcher: FdWatcher | undefined;
  #active: Connection | undefined;
  #closed = false;
  #retry: NodeJS.Timeout | undefined;
  #connections = 0;
  #refusals = 0;
  #waiting: { fd: number; timer: NodeJS.Timeout } | undefined;

  constructor(options: EndpointOptions, onConnection: ConnectionCallback) {
    const given = Number(options.socketPath !== undefined) + Number(options.socketFd !== undefined);
    if (given !== 1) throw new TypeError('exactly one of socketPath and socketFd must be given');
    if (options.client && options.socketPath === undefined) throw new TypeError('client mode needs socketPath');
    this.#options = options;
    this.#onConnection = onConnection;
    this.#log = options.logger ?? logger('endpoint');
  }

  /** The connected frontend, if any. */
  get active(): Connection | undefined {
    return this.#active;
  }

  /** Connections made so far (for tests and stats). */
  get connectionCount(): number {
    return this.#connections;
  }

  /** Start listening (or connecting). Throws if the socket cannot be set up. */
  start(): void {
    if (this.#options.client) {
      this.#connectOut();
      return;
    }
    if (this.#options.socketFd !== undefined) {
      const fd = this.#options.socketFd;
      if (!native.isListeningUnixSocket(fd)) throw new Error(`fd ${fd} is not a listening Unix stream socket`);
      native.setNonBlocking(fd, true);
      this.#listenFd = fd;
    } else {
      this.#listenFd = this.#listenAt(this.#options.socketPath!);
    }
    this.#watcher = native.watch(this.#listenFd, () => this.#acceptAll());
    this.#watcher.start(Readiness.READABLE);
  }

  /** Stop listening, drop the frontend, remove the socket file we created. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
    if (this.#waiting) {
      clearTimeout(this.#waiting.timer);
      closeQuietly(this.#waiting.fd);
      this.#waiting = undefined;
    }
    this.#watcher?.close();
    if (this.#listenFd >= 0) closeQuietly(this.#listenFd);
    this.#listenFd = -1;
    this.#active?.close();
    const created = this.#createdPath;
    if (created) {
      try {
        // Remove only the socket we made, not one somebody put there since.
        if (fs.lstatSync(created.path).ino === created.ino) fs.unlinkSync(created.path);
      } catch {
        // already gone
      }
    }
  }

  #listenAt(path: string): number {
    this.#clearStale(path);
    const mode = this.#options.socketMode ?? 0o600;
    // bind() creates the file with the umask applied; narrow it so the socket is never wider than asked.
    const oldMask = process.umask(0o777 & ~mode);
    let fd: number;
    try {
      fd = native.unixListen(path, 16);
    } finally {
      process.umask(oldMask);
    }
    try {
      fs.chmodSync(path, mode);
      this.#createdPath = { path, ino: fs.lstatSync(path).ino };
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    this.#log.info(`listening on ${path}`);
    return fd;
  }

  /** A leftover socket file from a dead daemon is removed; anything else at the path is an error. */
  #clearStale(path: string): void {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (!st.isSocket()) {
      throw new Error(`${path} exists and is not a socket (${st.isSymbolicLink() ? 'a symlink' : 'not removed'}); refusing to start`);
    }
    let fd = -1;
    try {
      fd = native.unixConnect(path);
    } catch (err) {
      if (isSystemError(err, 'ECONNREFUSED')) {
        this.#log.info(`removing stale socket ${path}`);
        fs.unlinkSync(path);
        return;
      }
      throw err;
    } finally {
      closeQuietly(fd);
    }
    throw new Error(`${path} is in use by another process; refusing to start`);
  }

  #acceptAll(): void {
    for (;;) {
      let fd: number;
      try {
        fd = native.unixAccept(this.#listenFd);
      } catch (err) {
        // EMFILE and friends: log and keep listening; the pending connection stays queued.
        this.#log.error(`accept failed: ${(err as Error).message}`);
        return;
      }
      if (fd < 0) return;
      if (!this.#active) {
        this.#adopt(fd);
        continue;
      }
      if (this.#waiting === undefined) {
        // The active frontend may be going away (a reconnect races its hang-up): give it a moment before refusing.
        const waiting = { fd, timer: setTimeout(() => this.#refuseWaiting(), WAITING_GRACE_MS) };
        this.#waiting = waiting;
        continue;
      }
      this.#refuse(fd);
    }
  }

  #refuse(fd: number): void {
    this.#refusals++;
    // The first few are logged, then every 100th: a connection flood must not flood the log.
    if (this.#refusals <= 5 || this.#refusals % 100 === 0) {
      this.#log.warn(`refusing a second frontend: one is already connected to this socket (${this.#refusals} so far)`);
    }
    closeQuietly(fd);
  }

  #refuseWaiting(): void {
    const waiting = this.#waiting;
    this.#waiting = undefined;
    if (waiting) this.#refuse(waiting.fd);
  }

  #adopt(fd: number): void {
    this.#connections++;
    const connection = new Connection(fd, { name: `frontend#${this.#connections}`, logger: this.#log });
    this.#active = connection;
    connection.onClose(() => {
      if (this.#active === connection) this.#active = undefined;
      const waiting = this.#waiting;
      if (waiting && !this.#closed) {
        this.#waiting = undefined;
        clearTimeout(waiting.timer);
        this.#adopt(waiting.fd);
        return;
      }
      if (this.#options.client && !this.#closed) this.#scheduleConnect();
    });
    this.#log.info(`frontend connected (${connection.name})`);
    this.#onConnection(connection);
  }

  #connectOut(): void {
    if (this.#closed) return;
    const path = this.#options.socketPath!;
    try {
      const fd = native.unixConnect(path);
      this.#adopt(fd);
    } catch (err) {
      this.#log.debug(`connect to ${path} failed: ${(err as Error).message}; retrying`);
      this.#scheduleConnect();
    }
  }

  #scheduleConnect(): void {
    if (this.#closed || this.#retry) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#connectOut();
    }, this.#options.reconnectDelayMs ?? 1000);
  }
}
