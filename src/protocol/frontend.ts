/**
 * The frontend (driver) side of a vhost-user connection: one typed method per request, replies awaited in
 * order. With REPLY_ACK negotiated every request without a reply body asks for an ack, so errors surface at
 * the request that caused them.
 */
import { native, closeQuietly } from '../native/index.js';
import { Connection } from './connection.js';
import { BackendRequest, FrontendRequest, HeaderFlag, ProtocolFeature, frontendRequestName } from './constants.js';
import {
  ProtocolError,
  decodeConfig,
  decodeInflight,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringState,
  type InflightDescription,
  type Message,
  type RegionDescription,
  type VringAddress,
} from './message.js';
import { logger, type Logger } from '../util/log.js';

interface Pending {
  request: number;
  resolve: (message: Message) => void;
  reject: (err: Error) => void;
}

/** A request the backend answered with a non-zero ack. */
export class RequestFailed extends Error {
  override name = 'RequestFailed';
  readonly code: bigint;
  constructor(request: number, code: bigint) {
    super(`${frontendRequestName(request)} failed: the backend answered ${code}`);
    this.code = code;
  }
}

/** Options for {@link FrontendConnection.connect}. */
export interface FrontendOptions {
  logger?: Logger;
  /** Called for requests the backend sends on the backend channel (after {@link FrontendConnection.openBackendChannel}). */
  onBackendRequest?: (request: number, payload: Uint8Array) => void;
}

/** The driver side of one vhost-user connection. */
export class FrontendConnection {
  readonly connection: Connection;
  readonly #pending: Pending[] = [];
  readonly #log: Logger;
  readonly #onBackendRequest: ((request: number, payload: Uint8Array) => void) | undefined;
  #protocolFeatures = 0n;
  #backendChannel: Connection | undefined;

  constructor(connection: Connection, options: FrontendOptions = {}) {
    this.connection = connection;
    this.#log = options.logger ?? logger('frontend');
    this.#onBackendRequest = options.onBackendRequest;
    connection.onClose((reason) => {
      const err = new Error(`vhost-user connection closed${reason ? `: ${reason}` : ''}`);
      for (const p of this.#pending.splice(0)) p.reject(err);
      this.#backendChannel?.close();
    });
    connection.start((message) => this.#onMessage(message));
  }

  /** Connect to a backend listening at `path`. */
  static connect(path: string, options: FrontendOptions = {}): FrontendConnection {
    const fd = native.unixConnect(path);
    return new FrontendConnection(new Connection(fd, { name: `backend@${path}`, logger: options.logger }), options);
  }

  /** Accept a backend that connected to us (QEMU-as-server style, for client-mode backends). */
  static adopt(fd: number, options: FrontendOptions = {}): FrontendConnection {
    return new FrontendConnection(new Connection(fd, { name: 'backend', logger: options.logger }), options);
  }

  get closed(): boolean {
    return this.connection.closed;
  }

  /** Close the connection (and the backend channel). */
  close(): void {
    this.connection.close();
  }

  #onMessage(message: Message): void {
    if (!(message.flags & HeaderFlag.REPLY)) {
      throw new ProtocolError(`backend sent request ${message.request} on the main channel`);
    }
    if ((message.flags & ~HeaderFlag.VERSION_MASK) !== HeaderFlag.REPLY) {
      throw new ProtocolError(`reply flags 0x${message.flags.toString(16)} are not VERSION|REPLY`);
    }
    const pending = this.#pending.shift();
    if (!pending) throw new ProtocolError(`unsolicited reply to ${frontendRequestName(message.request)}`);
    if (pending.request !== message.request) {
      const err = new ProtocolError(`reply to ${frontendRequestName(message.request)} while waiting for ` +
        `${frontendRequestName(pending.request)}`);
      pending.reject(err);
      throw err;
    }
    // The caller takes the fds (e.g. GET_INFLIGHT_FD); mark them so the connection does not close them.
    const fds = message.fds.slice();
    message.fds.fill(-1);
    pending.resolve({ ...message, fds });
  }

  /** Send a request; resolve with the reply when `expectReply`. */
  request(request: number, payload?: Uint8Array, fds: number[] = [], expectReply = false): Promise<Message | undefined> {
    if (this.connection.closed) return Promise.reject(new Error('vhost-user connection is closed'));
    const ack = !expectReply && (this.#protocolFeatures & (1n << BigInt(ProtocolFeature.REPLY_ACK))) !== 0n;
    const flags = HeaderFlag.VERSION | (ack ? HeaderFlag.NEED_REPLY : 0);
    let result: Promise<Message | undefined> = Promise.resolve(undefined);
    if (expectReply || ack) {
      result = new Promise<Message>((resolve, reject) => this.#pending.push({ request, resolve, reject }));
    }
    this.connection.send(request, flags, payload, fds);
    if (!ack) return result;
    return result.then((reply) => {
      const code = decodeU64(reply!.payload, 'ack');
      if (code !== 0n) throw new RequestFailed(request, code);
      return undefined;
    });
  }

  async #get(request: number, payload?: Uint8Array): Promise<Message> {
    return (await this.request(request, payload, [], true))!;
  }

  async #getU64(request: number): Promise<bigint> {
    const reply = await this.#get(request);
    return decodeU64(reply.payload, frontendRequestName(request));
  }

  getFeatures(): Promise<bigint> {
    return this.#getU64(FrontendRequest.GET_FEATURES);
  }

  async setFeatures(features: bigint): Promise<void> {
    await this.request(FrontendRequest.SET_FEATURES, encodeU64(features));
  }

  getProtocolFeatures(): Promise<bigint> {
    return this.#getU64(FrontendRequest.GET_PROTOCOL_FEATURES);
  }

  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.request(FrontendRequest.SET_PROTOCOL_FEATURES, encodeU64(features));
    // Acks apply from the next request on.
    this.#protocolFeatures = features;
  }

  /** Negotiated protocol features. */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  async setOwner(): Promise<void> {
    await this.request(FrontendRequest.SET_OWNER);
  }

  async getQueueNum(): Promise<number> {
    return Number(await this.#getU64(FrontendRequest.GET_QUEUE_NUM));
  }

  async getMaxMemSlots(): Promise<number> {
    return Number(await this.#getU64(FrontendRequest.GET_MAX_MEM_SLOTS));
  }

  async setMemTable(regions: RegionDescription[], fds: number[]): Promise<void> {
    await this.request(FrontendRequest.SET_MEM_TABLE, encodeMemoryTable(regions), fds);
  }

  async addMemRegion(region: RegionDescription, fd: number): Promise<void> {
    await this.request(FrontendRequest.ADD_MEM_REG, encodeSingleRegion(region), [fd]);
  }

  async removeMemRegion(region: RegionDescription): Promise<void> {
    await this.request(FrontendRequest.REM_MEM_REG, encodeSingleRegion(region));
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.request(FrontendRequest.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  async setVringAddr(address: VringAddress): Promise<void> {
    await this.request(FrontendRequest.SET_VRING_ADDR, encodeVringAddress(address));
  }

  async setVringBase(index: number, num: number): Promise<void> {
    await this.request(FrontendRequest.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  async getVringBase(index: number): Promise<number> {
    const reply = await this.#get(FrontendRequest.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
    return decodeVringState(reply.payload).num;
  }

  async #vringFd(request: number, index: number, fd: number | undefined): Promise<void> {
    const value = BigInt(index) | (fd === undefined ? 0x100n : 0n);
    await this.request(request, encodeU64(value), fd === undefined ? [] : [fd]);
  }

  setVringKick(index: number, fd: number | undefined): Promise<void> {
    return this.#vringFd(FrontendRequest.SET_VRING_KICK, index, fd);
  }

  setVringCall(index: number, fd: number | undefined): Promise<void> {
    return this.#vringFd(FrontendRequest.SET_VRING_CALL, index, fd);
  }

  setVringErr(index: number, fd: number | undefined): Promise<void> {
    return this.#vringFd(FrontendRequest.SET_VRING_ERR, index, fd);
  }

  async setVringEnable(index: number, enable: boolean): Promise<void> {
    await this.request(FrontendRequest.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const reply = await this.#get(FrontendRequest.GET_CONFIG, encodeConfig({ offset, data: new Uint8Array(size) }));
    const config = decodeConfig(reply.payload);
    if (config.size !== size) throw new ProtocolError(`GET_CONFIG: ${config.size} bytes returned, ${size} asked`);
    return config.data.slice();
  }

  async setConfig(offset: number, data: Uint8Array): Promise<void> {
    await this.request(FrontendRequest.SET_CONFIG, encodeConfig({ offset, data }));
  }

  /** Ask the backend for an inflight area; the returned fd is the caller's. */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{ description: InflightDescription; fd: number }> {
    const reply = await this.#get(FrontendRequest.GET_INFLIGHT_FD,
      encodeInflight({ mmapSize: 0, mmapOffset: 0, numQueues, queueSize }));
    if (reply.fds.length !== 1) {
      for (const fd of reply.fds) closeQuietly(fd);
      throw new ProtocolError(`GET_INFLIGHT_FD: reply carries ${reply.fds.length} fds`);
    }
    return { description: decodeInflight(reply.payload), fd: reply.fds[0]! };
  }

  async setInflightFd(description: InflightDescription, fd: number): Promise<void> {
    await this.request(FrontendRequest.SET_INFLIGHT_FD, encodeInflight(description), [fd]);
  }

  async setStatus(status: number): Promise<void> {
    await this.request(FrontendRequest.SET_STATUS, encodeU64(status));
  }

  async getStatus(): Promise<number> {
    return Number(await this.#getU64(FrontendRequest.GET_STATUS));
  }

  async resetDevice(): Promise<void> {
    await this.request(FrontendRequest.RESET_DEVICE);
  }

  /**
   * Give the backend a channel for its own requests (CONFIG_CHANGE_MSG and others). Requests arrive at
   * `onBackendRequest`; those asking for a reply get an ack of 0.
   */
  async openBackendChannel(): Promise<void> {
    const [ours, theirs] = native.socketPair();
    const channel = new Connection(ours, { name: 'backend-channel', logger: this.#log });
    channel.start((message) => {
      this.#onBackendRequest?.(message.request, message.payload);
      if (message.flags & HeaderFlag.NEED_REPLY) {
        channel.send(message.request, HeaderFlag.VERSION | HeaderFlag.REPLY, encodeU64(0));
      }
    });
    this.#backendChannel = channel;
    try {
      await this.request(FrontendRequest.SET_BACKEND_REQ_FD, undefined, [theirs]);
    } finally {
      closeQuietly(theirs);
    }
  }
}

export { BackendRequest };
