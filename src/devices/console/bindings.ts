/**
 * Ways to connect a {@link ConsolePort} to the host: a terminal (stdio), a Unix socket clients attach to, a
 * pseudo-terminal, or a log file. Every binding keeps the port's back-pressure (pipes, no unbounded buffers).
 */
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import tty from 'node:tty';
import { Transform, type Readable, type Writable } from 'node:stream';
import { native, closeQuietly } from '../../native/index.js';
import type { Logger } from '../../util/log.js';
import type { ConsolePort } from './port.js';

/** A port connected to something; `close` undoes it (the port itself stays). */
export interface Binding {
  /** What it is bound to, for messages (`unix:/run/x.sock`, `pty:/dev/pts/3`). */
  readonly description: string;
  close(): Promise<void>;
}

/** Ctrl-], the escape key of `vhost-user console` on a terminal (as in telnet). */
export const ESCAPE_KEY = 0x1d;

/** Options for {@link bindStdio}. */
export interface StdioOptions {
  input?: Readable & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  output?: Writable;
  /** Byte that ends the session (default Ctrl-]); -1 for none. */
  escapeKey?: number;
  /** Called when the escape key is typed. */
  onEscape?: () => void;
}

/** Passes bytes through until the escape key, then calls back (the key and the rest are dropped). */
class EscapeFilter extends Transform {
  readonly #key: number;
  readonly #onEscape: () => void;
  #escaped = false;

  constructor(key: number, onEscape: () => void) {
    super();
    this.#key = key;
    this.#onEscape = onEscape;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null, data?: Buffer) => void): void {
    if (this.#escaped) {
      callback();
      return;
    }
    const at = this.#key < 0 ? -1 : chunk.indexOf(this.#key);
    if (at < 0) {
      callback(null, chunk);
      return;
    }
    this.#escaped = true;
    if (at > 0) this.push(chunk.subarray(0, at));
    callback();
    this.#onEscape();
  }
}

/**
 * Bind a port to this process's terminal: raw mode when stdin is a terminal, the escape key (Ctrl-]) ends the
 * session through `onEscape`.
 */
export function bindStdio(port: ConsolePort, options: StdioOptions = {}): Binding {
  const input = options.input ?? process.stdin;
  const output = options.output ?? process.stdout;
  const raw = input.isTTY === true && typeof input.setRawMode === 'function';
  if (raw) input.setRawMode!(true);
  const filter = new EscapeFilter(options.escapeKey ?? ESCAPE_KEY, () => options.onEscape?.());
  input.pipe(filter).pipe(port, { end: false });
  port.pipe(output, { end: false });
  port.setHostConnected(true);
  return {
    description: 'stdio',
    close: async () => {
      port.unpipe(output);
      input.unpipe(filter);
      filter.unpipe(port);
      if (raw) input.setRawMode!(false);
      input.pause();
    },
  };
}

/** Options for {@link bindUnix}. */
export interface UnixOptions {
  /** Permission bits of the socket file (default 0600). */
  mode?: number;
  logger?: Logger;
}

/**
 * Bind a port to a listening Unix socket (`socat - UNIX-CONNECT:PATH`). One client at a time: while one is
 * attached, further connections are closed at once. Our end of the port is open (PORT_OPEN 1) exactly while a
 * client is attached; guest output waits in the guest (not here) while none is.
 */
export async function bindUnix(port: ConsolePort, path: string, options: UnixOptions = {}): Promise<Binding> {
  removeStaleSocket(path);
  let client: net.Socket | undefined;
  const log = options.logger;
  const detach = (socket: net.Socket) => {
    if (client !== socket) return;
    client = undefined;
    port.unpipe(socket);
    socket.unpipe(port);
    port.setHostConnected(false);
    log?.info(`port ${port.id}: client left ${path}`);
  };
  const server = net.createServer((socket) => {
    if (client || port.removed) {
      log?.warn(`port ${port.id}: ${path} already has a client; refusing another`);
      socket.destroy();
      return;
    }
    client = socket;
    socket.on('error', (err) => log?.debug(`port ${port.id}: client socket: ${err.message}`));
    socket.on('close', () => detach(socket));
    // Half-close from the client (socat at end of its input) still lets guest output reach it.
    socket.on('end', () => socket.unpipe(port));
    socket.pipe(port, { end: false });
    port.pipe(socket, { end: false });
    port.setHostConnected(true);
    log?.info(`port ${port.id}: client attached to ${path}`);
  });
  port.setHostConnected(false);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(path, options.mode ?? 0o600);
  server.on('error', (err) => log?.error(`port ${port.id}: ${path}: ${err.message}`));
  return {
    description: `unix:${path}`,
    close: async () => {
      const c = client;
      if (c) {
        detach(c);
        c.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        fs.unlinkSync(path);
      } catch {
        // already gone
      }
    },
  };
}

function removeStaleSocket(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  fs.unlinkSync(path);
}

/**
 * Bind a port to a log file: what the guest writes is appended (with back-pressure from the disk). Nothing is
 * sent to the guest.
 */
export async function bindFile(port: ConsolePort, path: string): Promise<Binding> {
  const file = fs.createWriteStream(path, { flags: 'a' });
  await new Promise<void>((resolve, reject) => {
    file.once('error', reject);
    file.once('open', () => {
      file.off('error', reject);
      resolve();
    });
  });
  port.pipe(file, { end: false });
  port.setHostConnected(true);
  return {
    description: `file:${path}`,
    close: async () => {
      port.unpipe(file);
      await new Promise<void>((resolve) => file.end(() => resolve()));
    },
  };
}

/** A pseudo-terminal pair: our end (controller), the end programs open (terminal) and the terminal's path. */
export interface PtyPair {
  controller: number;
  terminal: number;
  path: string;
}

/** Something that opens a pseudo-terminal pair. */
export type PtyOpener = () => PtyPair;

/**
 * The addon's `openpty`, if this build has it. (Node cannot open a pty by itself: unlocking the terminal end and
 * learning its number take ioctls.)
 */
export function nativeOpenpty(): PtyOpener | undefined {
  const binding = native as Partial<Pick<typeof native, 'openpty'>>;
  return typeof binding.openpty === 'function' ? () => native.openpty() : undefined;
}

/** `stty raw -echo` on a terminal (fully raw, output processing off too); false when stty is not there. */
function makeRaw(path: string): boolean {
  const r = spawnSync('stty', ['-F', path, 'raw', '-echo'], { stdio: 'ignore', timeout: 5000 });
  return r.status === 0;
}

/** Options for {@link bindPty}. */
export interface PtyOptions {
  /** How to open the pair (default: the addon's openpty). */
  open?: PtyOpener;
}

/**
 * Bind a port to a new pseudo-terminal; `description` is `pty:PATH` (e.g. `screen /dev/pts/3`). The terminal end
 * stays open here as well, so programs can come and go without the controller seeing a hang-up (EIO); the line
 * is in raw mode.
 * @throws Error when no pty opener is available.
 */
export async function bindPty(port: ConsolePort, options: PtyOptions = {}): Promise<Binding> {
  const open = options.open ?? nativeOpenpty();
  if (!open) throw new Error('pty needs openpty() from the native addon, which this build does not have');
  const pair = open();
  let stream: net.Socket;
  try {
    if (tty.isatty(pair.controller)) {
      const t = new tty.ReadStream(pair.controller);
      // On Linux, terminal settings made through the controller apply to the line: no echo, no line editing,
      // no signals. libuv's raw mode keeps output \n -> \r\n, which stty turns off when it is there.
      t.setRawMode(true);
      makeRaw(pair.path);
      stream = t;
    } else {
      stream = new net.Socket({ fd: pair.controller, readable: true, writable: true });
    }
  } catch (err) {
    closeQuietly(pair.controller);
    closeQuietly(pair.terminal);
    throw err;
  }
  stream.on('error', () => { /* EIO after close; the port stays */ });
  stream.pipe(port, { end: false });
  port.pipe(stream, { end: false });
  port.setHostConnected(true);
  return {
    description: `pty:${pair.path}`,
    close: async () => {
      port.unpipe(stream);
      stream.unpipe(port);
      stream.destroy();
      closeQuietly(pair.terminal);
    },
  };
}
