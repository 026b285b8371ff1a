/**
 * Serve a {@link VirtioDevice} on a vhost-user socket: an endpoint (listening or connecting out), and for each
 * frontend a fresh {@link DeviceBackend}. The device itself (its storage, its ports) persists across frontends.
 */
import { EventEmitter } from 'node:events';
import { Endpoint, type EndpointOptions } from '../protocol/endpoint.js';
import { BackendConnection } from '../protocol/backend.js';
import { logger as makeLogger, type Logger } from '../util/log.js';
import { DeviceBackend } from './backend.js';
import type { VirtioDevice } from './device.js';
import { WorkerPool } from './worker/pool.js';

/** Options for {@link DeviceServer}. */
export type DeviceServerOptions = EndpointOptions & {
  logger?: Logger;
  /**
   * Most microseconds of adaptive polling (default 0: notifications only). After a kick the rings are polled
   * with kicks suppressed until they were idle this long; the window shrinks when polling does not pay (see
   * `RingPoller`). It spends CPU to save notification round trips.
   */
  pollUs?: number;
  /**
   * Serve the device's queues on this many worker threads (default 0: on the connection's thread). The device
   * must support it (`VirtioDevice.queueWorker`); otherwise {@link DeviceServer.ready} rejects.
   */
  workers?: number;
};

/**
 * A device served on a socket. Events: `connect` (DeviceBackend), `disconnect` (reason: string | undefined).
 */
export class DeviceServer extends EventEmitter {
  readonly device: VirtioDevice;
  readonly endpoint: Endpoint;
  readonly #log: Logger;
  #backend: DeviceBackend | undefined;
  #previous: DeviceBackend | undefined;
  #idle: Promise<void> = Promise.resolve();
  #pool: WorkerPool | undefined;
  /** Resolves when the server can serve (its queue workers are up); rejects if they cannot start. */
  readonly ready: Promise<void>;

  constructor(device: VirtioDevice, options: DeviceServerOptions) {
    super();
    this.device = device;
    this.#log = options.logger ?? makeLogger('server');
    const workers = options.workers ?? 0;
    this.ready = workers > 0 ? this.#startWorkers(workers, options.pollUs ?? 0) : Promise.resolve();
    // Frontends wait for the workers; a failure is reported through `ready` (and its connection is closed).
    this.#idle = this.ready.catch(() => undefined);
    this.endpoint = new Endpoint({ ...options, logger: this.#log }, (connection) => {
      // A new frontend waits until the previous one's cleanup (ring drain, device reset) is finished.
      const previous = this.#idle;
      const pending = this.#previous?.vrings.reduce((n, v) => n + v.inflightCount, 0) ?? 0;
      if (pending > 0) this.#log.info(`new frontend waits for ${pending} request(s) of the previous one to complete`);
      let done!: () => void;
      this.#idle = new Promise((resolve) => (done = resolve));
      void previous.then(() => {
        if (workers > 0 && !this.#pool) {
          this.#log.error('frontend refused: the queue workers did not start');
          connection.close();
          done();
          return;
        }
        const backend = new DeviceBackend(device, this.#log.child(connection.name), (reason) => {
          if (this.#backend === backend) this.#backend = undefined;
          done();
          this.emit('disconnect', reason);
        }, { pollUs: options.pollUs ?? 0, workers: this.#pool });
        this.#backend = backend;
        this.#previous = backend;
        new BackendConnection(connection, backend, this.#log.child(connection.name));
        this.emit('connect', backend);
      });
    });
  }

  async #startWorkers(count: number, pollUs: number): Promise<void> {
    const spec = this.device.queueWorker?.();
    if (!spec) throw new Error('this device cannot serve its queues on worker threads');
    this.#pool = await WorkerPool.start(spec, { workers: count, pollUs, logger: this.#log });
    this.device.attachWorkers?.((data) => this.#pool?.broadcast({ t: 'update', data }));
  }

  /** The queue workers, when the server has them. */
  get workers(): WorkerPool | undefined {
    return this.#pool;
  }

  /** The backend of the connected frontend, if any. */
  get backend(): DeviceBackend | undefined {
    return this.#backend;
  }

  /** Start listening (or connecting out). */
  listen(): this {
    this.endpoint.start();
    return this;
  }

  /** Stop: close the socket and the frontend connection, wait for the device to be quiet. */
  async close(): Promise<void> {
    this.endpoint.close();
    await this.#idle;
    await this.#pool?.close();
  }
}
