/**
 * The body of the stress test, run in its own process with --expose-gc: connect/negotiate/set up
 * queues/round trip/disconnect cycles against one in-process server, and resource snapshots before and after.
 * Prints one JSON line: { before, after, cycles, handled, closedWithReason }.
 *
 * Usage: node --expose-gc cycles-child.js [cycles]
 */
import fs from 'node:fs';
import path from 'node:path';
import { closeQuietly } from '../../src/native/index.js';
import { DeviceServer } from '../../src/device/server.js';
import { VirtioDriver } from '../../src/driver/driver.js';
import { setLogSink } from '../../src/util/log.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { openFdCount, sleep, tempDir, waitUntil } from '../helpers/tmp.js';
import { RawPeer } from '../helpers/wire.js';

/** Resource use of this process. */
export interface Snapshot {
  fds: number;
  mapsLines: number;
  /** Mappings of guest RAM and inflight memfds (ours and the backend's). */
  memfdMappings: number;
  vmSizeKb: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
if (typeof gc !== 'function') {
  process.stderr.write('run with --expose-gc\n');
  process.exit(2);
}

function statusKb(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/self/status`);
  return Number(m[1]);
}

async function snapshot(): Promise<Snapshot> {
  // Collect twice with pauses so that unreferenced mappings are released by their finalizers.
  for (let i = 0; i < 3; i++) {
    gc!();
    await sleep(20);
  }
  const maps = fs.readFileSync('/proc/self/maps', 'utf8').trim().split('\n');
  return {
    fds: openFdCount(),
    mapsLines: maps.length,
    memfdMappings: maps.filter((l) => /memfd:vhost-user/.test(l)).length,
    vmSizeKb: statusKb('VmSize'),
  };
}

const cycles = Number(process.argv[2] ?? 200);
const warmup = 10;
let closedWithReason = 0;
setLogSink((line) => {
  if (/closing connection/.test(line)) closedWithReason++;
});

const { dir, cleanup } = tempDir('vhost-user-stress-');
const socketPath = path.join(dir, 'stress.sock');
const device = new EchoDevice(2);
const server = new DeviceServer(device, { socketPath }).listen();

async function idle(): Promise<void> {
  await waitUntil(() => server.endpoint.active === undefined && server.backend === undefined, 10000, 'server idle');
}

function put(driver: VirtioDriver, text: string): { addr: number; len: number } {
  const data = Buffer.from(text);
  const addr = driver.ram.alloc(data.length, 8);
  driver.ram.bytes(addr, data.length).set(data);
  return { addr, len: data.length };
}

/** One cycle. Variants: orderly stop, abrupt close with rings running, and every 20th a malformed message. */
async function cycle(i: number): Promise<void> {
  if (i % 20 === 19) {
    const peer = RawPeer.connect(socketPath);
    try {
      await peer.sendMessage({ request: 1, flags: 2 });
      await peer.closedByPeer();
    } finally {
      peer.close();
    }
    await idle();
    return;
  }
  const driver = await VirtioDriver.connect({ socketPath, ramSize: 4 << 20 });
  try {
    const area = await driver.frontend.getInflightFd(2, 64);
    try {
      await driver.frontend.setInflightFd(area.description, area.fd);
    } finally {
      closeQuietly(area.fd);
    }
    await driver.startQueues(2, 64);
    const results = await Promise.all([0, 1].map(async (q) => {
      const input = put(driver, `cycle ${i} queue ${q}`);
      const out = driver.ram.alloc(64, 8);
      const len = await driver.submit(q, [input], [{ addr: out, len: 64 }]);
      return Buffer.from(driver.ram.bytes(out, len)).toString();
    }));
    if (results[0] !== `CYCLE ${i} QUEUE 0` || results[1] !== `CYCLE ${i} QUEUE 1`) {
      throw new Error(`cycle ${i}: wrong echo ${JSON.stringify(results)}`);
    }
    if (i % 2 === 0) {
      const bases = await driver.stopQueues();
      if (bases[0] !== 1 || bases[1] !== 1) throw new Error(`cycle ${i}: bases ${bases.join(',')}`);
    }
  } finally {
    driver.close();
  }
  await idle();
}

try {
  for (let i = 0; i < warmup; i++) await cycle(i);
  const before = await snapshot();
  const handledBefore = device.handled;
  for (let i = 0; i < cycles; i++) await cycle(i);
  const after = await snapshot();
  process.stdout.write(JSON.stringify({ before, after, cycles, handled: device.handled - handledBefore, closedWithReason }) + '\n');
} finally {
  await server.close();
  cleanup();
}
