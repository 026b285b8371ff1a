/**
 * Shared set-up for console tests: a ConsoleDevice served on a temporary socket, and our Linux-like driver.
 */
import path from 'node:path';
import type { Readable } from 'node:stream';
import { DeviceServer } from '../../../src/device/server.js';
import { ConsoleDevice, type ConsoleDeviceOptions } from '../../../src/devices/console/device.js';
import { ConsoleDriver, type ConsoleDriverOptions } from '../../../src/devices/console/driver.js';
import { tempDir, waitUntil } from '../../helpers/tmp.js';

export interface Rig {
  device: ConsoleDevice;
  server: DeviceServer;
  socketPath: string;
  dir: string;
  /** Connect a driver (closed automatically at the end). */
  connect(options?: Omit<ConsoleDriverOptions, 'socketPath'>): Promise<ConsoleDriver>;
}

/** Run `fn` with a console device served on a fresh socket; `setup` adds ports before any driver connects. */
export async function withConsole(options: ConsoleDeviceOptions, setup: (device: ConsoleDevice) => void,
  fn: (rig: Rig) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir('vhost-console-');
  const socketPath = path.join(dir, 'console.sock');
  const device = new ConsoleDevice(options);
  setup(device);
  const server = new DeviceServer(device, { socketPath }).listen();
  device.attach(server);
  const drivers: ConsoleDriver[] = [];
  try {
    await fn({
      device, server, socketPath, dir,
      connect: async (o = {}) => {
        const d = await ConsoleDriver.connect({ socketPath, ...o });
        drivers.push(d);
        return d;
      },
    });
  } finally {
    for (const d of drivers) d.close();
    await server.close();
    cleanup();
  }
}

/** Read exactly `n` bytes from a stream (paused mode: nothing past them is consumed). */
export async function readBytes(stream: Readable, n: number, timeoutMs = 5000): Promise<Buffer> {
  const parts: Buffer[] = [];
  let have = 0;
  const deadline = Date.now() + timeoutMs;
  while (have < n) {
    const chunk = stream.read(Math.min(n - have, Math.max(stream.readableLength, 1))) as Buffer | null;
    if (chunk !== null) {
      parts.push(chunk);
      have += chunk.byteLength;
      continue;
    }
    if (stream.readableEnded || stream.destroyed) throw new Error(`stream ended after ${have} of ${n} bytes`);
    if (Date.now() > deadline) throw new Error(`timed out after ${have} of ${n} bytes`);
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        stream.off('readable', done);
        stream.off('end', done);
        stream.off('close', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(1, deadline - Date.now()));
      stream.on('readable', done);
      stream.on('end', done);
      stream.on('close', done);
    });
  }
  return Buffer.concat(parts);
}

/** Wait until the condition holds (shorter default than the shared helper, with a message). */
export function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  return waitUntil(cond, timeoutMs, what);
}

/** Await a promise, failing after `ms` with a message instead of hanging the run. */
export async function within<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
