/**
 * The backend (device) side of a vhost-user connection: decodes each frontend request, checks its syntax
 * (payload size, fd count), calls the {@link BackendHandler} and frames the reply.
 *
 * Semantic checks (is that ring ours, is the state right for this request) are the handler's: it throws
 * {@link ProtocolError} to drop the connection, or {@link RequestRejected} to refuse one request and go on.
 */
import { closeQuietly } from '../native/index.js';
import type { Connection } from './connection.js';
import { FrontendRequest, HeaderFlag, ProtocolFeature, VRING_INDEX_MASK, VRING_NOFD_MASK, frontendRequestName } from './constants.js';
import {
  ProtocolError,
  decodeConfig,
  decodeInflight,
  decodeMemoryTable,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddress,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeU64,
  encodeVringState,
  type InflightDescription,
  type Message,
  type RegionDescription,
  type VringAddress,
  type VringState,
} from './message.js';
import type { Logger } from '../util/log.js';

/** A request the backend refuses without dropping the connection (answered with a non-zero ack). */
export class RequestRejected extends Error {
  override name = 'RequestRejected';
}

type MaybePromise<T> = T | Promise<T>;

/**
 * What a device backend implements. fds passed in become the handler's once the call returns normally; when it
 * throws, the connection closes them.
 */
export interface BackendHandler {
  getFeatures(): bigint;
  setFeatures(features: bigint): MaybePromise<void>;
  getProtocolFeatures(): bigint;
  setProtocolFeatures(features: bigint): void;
  setOwner(): void;
  resetOwner(): MaybePromise<void>;
  getQueueNum(): number;
  getMaxMemSlots(): number;
  setMemTable(regions: RegionDescription[], fds: number[]): MaybePromise<void>;
  addMemRegion(region: RegionDescription, fd: number): MaybePromise<void>;
  removeMemRegion(region: RegionDescription): MaybePromise<void>;
  setVringNum(state: VringState): void;
  setVringAddr(address: VringAddress): void;
  setVringBase(state: VringState): void;
  /** Stop the ring and return the next avail index to process. */
  getVringBase(index: number): MaybePromise<number>;
  /** fd undefined: the NOFD bit was set (the frontend will not kick, or no calls wanted). */
  setVringKick(index: number, fd: number | undefined): MaybePromise<void>;
  setVringCall(index: number, fd: number | undefined): void;
  setVringErr(index: number, fd: number | undefined): void;
  setVringEnable(index: number, enable: boolean): MaybePromise<void>;
  setBackendReqFd(fd: number): void;
  getConfig(offset: number, size: number, flags: number): Uint8Array;
  setConfig(offset: number, data: Uint8Array, flags: number): MaybePromise<void>;
  getInflightFd(numQueues: number, queueSize: number): MaybePromise<{ description: InflightDescription; fd: number }>;
  setInflightFd(description: InflightDescription, fd: number): MaybePromise<void>;
  resetDevice(): MaybePromise<void>;
  setStatus(status: number): MaybePromise<void>;
  getStatus(): number;
  netSetMtu?(mtu: number): void;
  sendRarp?(mac: Uint8Array): void;
  /** The connection is gone (either side closed it). */
  disconnected(reason: string | undefined): MaybePromise<void>;
}

/** Expected fd counts: a number, or a range. */
interface FdRule {
  min: number;
  max: number;
}

const NONE: FdRule = { min: 0, max: 0 };
const ONE: FdRule = { min: 1, max: 1 };

/** Serves one frontend on one connection. */
export class BackendConnection {
  readonly connection: Connection;
  readonly #handler: BackendHandler;
  readonly #log: Logger;
  #protocolFeatures = 0n;
  #refused = 0;

  constructor(connection: Connection, handler: BackendHandler, log: Logger) {
    this.connection = connection;
    this.#handler = handler;
    this.#log = log;
    connection.onClose((reason) => {
      void Promise.resolve()
        .then(() => handler.disconnected(reason))
        .catch((err: unknown) => log.error(`cleanup after disconnect failed: ${(err as Error).stack ?? String(err)}`));
    });
    connection.start((message) => this.#handle(message));
  }

  async #handle(message: Message): Promise<void> {
    const name = frontendRequestName(message.request);
    if (message.flags & HeaderFlag.REPLY) throw new ProtocolError(`${name}: request has the REPLY flag set`);
    if (this.#log.enabled('debug')) {
      this.#log.debug(`<- ${name} size=${message.payload.byteLength} fds=${message.fds.length}`);
    }
    const needReply = (message.flags & HeaderFlag.NEED_REPLY) !== 0 &&
      (this.#protocolFeatures & (1n << BigInt(ProtocolFeature.REPLY_ACK))) !== 0n;
    let body: Uint8Array | undefined;
    let replyFds: number[] = [];
    try {
      const result = await this.#dispatch(message, name);
      if (result) {
        body = result.body;
        replyFds = result.fds ?? [];
      }
    } catch (err) {
      for (const fd of replyFds) closeQuietly(fd);
      if (!(err instanceof RequestRejected)) throw err;
      this.#refused++;
      if (this.#refused <= 10 || this.#refused % 1000 === 0) this.#log.warn(`${name} refused: ${err.message} (${this.#refused} so far)`);
      if (needReply) this.#reply(message.request, encodeU64(1));
      return;
    }
    if (body) {
      this.#reply(message.request, body, replyFds);
    } else if (needReply) {
      this.#reply(message.request, encodeU64(0));
    }
  }

  #reply(request: number, body: Uint8Array, fds: number[] = []): void {
    // QEMU 7.2 rejects any reply whose flags are not exactly VERSION|REPLY.
    this.connection.send(request, HeaderFlag.VERSION | HeaderFlag.REPLY, body, fds, true);
  }

  #fds(message: Message, name: string, rule: FdRule): void {
    const n = message.fds.length;
    if (n < rule.min || n > rule.max) {
      const want = rule.min === rule.max ? `${rule.min}` : `${rule.min}..${rule.max}`;
      throw new ProtocolError(`${name}: carries ${n} file descriptors, expected ${want}`);
    }
  }

  #empty(message: Message, name: string): void {
    this.#fds(message, name, NONE);
    if (message.payload.byteLength !== 0) {
      throw new ProtocolError(`${name}: payload is ${message.payload.byteLength} bytes, expected none`);
    }
  }

  /** Take the message's fd at `i`: the connection will no longer close it. */
  #take(message: Message, i: number): number {
    const fd = message.fds[i]!;
    message.fds[i] = -1;
    return fd;
  }

  /** KICK/CALL/ERR: queue index plus NOFD bit; one fd unless NOFD. */
  #vringFd(message: Message, name: string): { index: number; fd: number | undefined } {
    const value = decodeU64(message.payload, name);
    if (value > BigInt(VRING_INDEX_MASK | VRING_NOFD_MASK)) {
      throw new ProtocolError(`${name}: reserved bits set in 0x${value.toString(16)}`);
    }
    const index = Number(value) & VRING_INDEX_MASK;
    const nofd = (Number(value) & VRING_NOFD_MASK) !== 0;
    this.#fds(message, name, nofd ? NONE : ONE);
    return { index, fd: nofd ? undefined : message.fds[0] };
  }

  async #dispatch(message: Message, name: string): Promise<{ body: Uint8Array; fds?: number[] } | undefined> {
    const h = this.#handler;
    const p = message.payload;
    switch (message.request) {
      case FrontendRequest.GET_FEATURES:
        this.#empty(message, name);
        return { body: encodeU64(h.getFeatures()) };
      case FrontendRequest.SET_FEATURES:
        this.#fds(message, name, NONE);
        await h.setFeatures(decodeU64(p, name));
        return undefined;
      case FrontendRequest.GET_PROTOCOL_FEATURES:
        this.#empty(message, name);
        return { body: encodeU64(h.getProtocolFeatures()) };
      case FrontendRequest.SET_PROTOCOL_FEATURES: {
        this.#fds(message, name, NONE);
        const features = decodeU64(p, name);
        h.setProtocolFeatures(features);
        this.#protocolFeatures = features;
        return undefined;
      }
      case FrontendRequest.SET_OWNER:
        this.#empty(message, name);
        h.setOwner();
        return undefined;
      case FrontendRequest.RESET_OWNER:
        this.#empty(message, name);
        await h.resetOwner();
        return undefined;
      case FrontendRequest.GET_QUEUE_NUM:
        this.#empty(message, name);
        return { body: encodeU64(h.getQueueNum()) };
      case FrontendRequest.GET_MAX_MEM_SLOTS:
        this.#empty(message, name);
        return { body: encodeU64(h.getMaxMemSlots()) };
      case FrontendRequest.SET_MEM_TABLE: {
        const regions = decodeMemoryTable(p);
        this.#fds(message, name, { min: regions.length, max: regions.length });
        await h.setMemTable(regions, message.fds.slice());
        message.fds.fill(-1);
        return undefined;
      }
      case FrontendRequest.ADD_MEM_REG: {
        const region = decodeSingleRegion(p);
        this.#fds(message, name, ONE);
        await h.addMemRegion(region, message.fds[0]!);
        this.#take(message, 0);
        return undefined;
      }
      case FrontendRequest.REM_MEM_REG: {
        const region = decodeSingleRegion(p);
        // Some frontends send the region's fd along; it is not needed and is closed.
        this.#fds(message, name, { min: 0, max: 1 });
        await h.removeMemRegion(region);
        return undefined;
      }
      case FrontendRequest.SET_VRING_NUM:
        this.#fds(message, name, NONE);
        h.setVringNum(decodeVringState(p));
        return undefined;
      case FrontendRequest.SET_VRING_ADDR:
        this.#fds(message, name, NONE);
        h.setVringAddr(decodeVringAddress(p));
        return undefined;
      case FrontendRequest.SET_VRING_BASE:
        this.#fds(message, name, NONE);
        h.setVringBase(decodeVringState(p));
        return undefined;
      case FrontendRequest.GET_VRING_BASE: {
        this.#fds(message, name, NONE);
        const { index } = decodeVringState(p);
        const num = await h.getVringBase(index);
        return { body: encodeVringState({ index, num }) };
      }
      case FrontendRequest.SET_VRING_KICK: {
        const { index, fd } = this.#vringFd(message, name);
        await h.setVringKick(index, fd);
        if (fd !== undefined) this.#take(message, 0);
        return undefined;
      }
      case FrontendRequest.SET_VRING_CALL: {
        const { index, fd } = this.#vringFd(message, name);
        h.setVringCall(index, fd);
        if (fd !== undefined) this.#take(message, 0);
        return undefined;
      }
      case FrontendRequest.SET_VRING_ERR: {
        const { index, fd } = this.#vringFd(message, name);
        h.setVringErr(index, fd);
        if (fd !== undefined) this.#take(message, 0);
        return undefined;
      }
      case FrontendRequest.SET_VRING_ENABLE: {
        this.#fds(message, name, NONE);
        const { index, num } = decodeVringState(p);
        if (num > 1) throw new ProtocolError(`${name}: enable value ${num} is neither 0 nor 1`);
        await h.setVringEnable(index, num === 1);
        return undefined;
      }
      case FrontendRequest.SET_BACKEND_REQ_FD:
        this.#fds(message, name, ONE);
        if (p.byteLength !== 0) throw new ProtocolError(`${name}: unexpected ${p.byteLength}-byte payload`);
        h.setBackendReqFd(message.fds[0]!);
        this.#take(message, 0);
        return undefined;
      case FrontendRequest.GET_CONFIG: {
        this.#fds(message, name, NONE);
        const c = decodeConfig(p);
        const data = h.getConfig(c.offset, c.size, c.flags);
        if (data.byteLength !== c.size) throw new Error(`device returned ${data.byteLength} config bytes for ${c.size}`);
        return { body: encodeConfig({ offset: c.offset, flags: c.flags, data }) };
      }
      case FrontendRequest.SET_CONFIG: {
        this.#fds(message, name, NONE);
        const c = decodeConfig(p);
        await h.setConfig(c.offset, c.data, c.flags);
        return undefined;
      }
      case FrontendRequest.GET_INFLIGHT_FD: {
        this.#fds(message, name, NONE);
        const asked = decodeInflight(p);
        const { description, fd } = await h.getInflightFd(asked.numQueues, asked.queueSize);
        // The fd is sent and then closed here; the handler keeps its own mapping.
        return { body: encodeInflight(description), fds: [fd] };
      }
      case FrontendRequest.SET_INFLIGHT_FD: {
        this.#fds(message, name, ONE);
        await h.setInflightFd(decodeInflight(p), message.fds[0]!);
        this.#take(message, 0);
        return undefined;
      }
      case FrontendRequest.RESET_DEVICE:
        this.#empty(message, name);
        await h.resetDevice();
        return undefined;
      case FrontendRequest.SET_STATUS: {
        this.#fds(message, name, NONE);
        const status = decodeU64(p, name);
        if (status > 0xffn) throw new ProtocolError(`${name}: status 0x${status.toString(16)} does not fit 8 bits`);
        await h.setStatus(Number(status));
        return undefined;
      }
      case FrontendRequest.GET_STATUS:
        this.#empty(message, name);
        return { body: encodeU64(h.getStatus()) };
      case FrontendRequest.NET_SET_MTU: {
        this.#fds(message, name, NONE);
        if (!h.netSetMtu) throw new ProtocolError(`${name}: not a network device`);
        const mtu = decodeU64(p, name);
        if (mtu < 68n || mtu > 65535n) throw new RequestRejected(`MTU ${mtu} out of range`);
        h.netSetMtu(Number(mtu));
        return undefined;
      }
      case FrontendRequest.SEND_RARP: {
        this.#fds(message, name, NONE);
        if (!h.sendRarp) throw new ProtocolError(`${name}: not a network device`);
        if (p.byteLength !== 8) throw new ProtocolError(`${name}: payload is ${p.byteLength} bytes, expected 8`);
        h.sendRarp(p.slice(0, 6));
        return undefined;
      }
      default:
        throw new ProtocolError(`unsupported request ${name}`);
    }
  }
}
