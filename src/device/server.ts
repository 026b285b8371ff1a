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

/** Options for {@link DeviceServer}. */
export type DeviceServerOptions = EndpointOptions & {
  logger?: Logger;
  /**
   * Adaptive polling window in microseconds (default 0: notifications only). After a kick the rings are polled
   * with kicks suppressed until they were idle this long. It spends CPU to save notification round trips.
   */
  pollUs?: number;
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

  constructor(device: VirtioDevice, options: DeviceServerOptions) {
    super();
    this.device = device;
    this.#log = options.logger ?? makeLogger('server');
    this.endpoint = new Endpoint({ ...options, logger: this.#log }, (connection) => {
      // A new frontend waits until the previous one's cleanup (ring drain, device reset) is finished.
      const previous = this.#idle;
      const pending = this.#previous?.vrings.reduce((n, v) => n + v.inflightCount, 0) ?? 0;
      if (pending > 0) this.#log.info(`new frontend waits for ${pending} request(s) of the previous one to complete`);
      let done!: () => void;
      this.#idle = new Promise((resolve) => (done = resolve));
      const backend = new DeviceBackend(device, this.#log.child(connection.name), (reason) => {
        if (this.#backend === backend) this.#backend = undefined;
        done();
        this.emit('disconnect', reason);
      }, options.pollUs ?? 0);
      this.#backend = backend;
      this.#previous = backend;
      void previous.then(() => {
        new BackendConnection(connection, backend, this.#log.child(connection.name));
        this.emit('connect', backend);
      });
    });
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
  }
}
