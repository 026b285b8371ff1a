/**
 * Reproducers for the resource bounds found missing (and one test-helper bug) while fuzzing. They are kept out of
 * CI because they fail until src/ is fixed; run them with `node dist/test/fuzz/known-issues.js [name...]`.
 * Each prints what it measured and REPRODUCES or FIXED; the exit code is the number that still reproduce, so once
 * all are fixed they can move into limits.test.ts as assertions.
 */
import path from 'node:path';
import { native, closeQuietly } from '../../src/native/index.js';
import { BlkDevice } from '../../src/devices/blk/device.js';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { ConsoleDevice } from '../../src/devices/console/device.js';
import { ControlEvent, ControlQueue } from '../../src/devices/console/protocol.js';
import { FrontendRequest as R } from '../../src/protocol/constants.js';
import { CommonFeature, ConsoleFeature, featureMask } from '../../src/virtio/constants.js';
import { EchoDevice } from '../helpers/echo-device.js';
import { sleep, tempDir } from '../helpers/tmp.js';
import { RawPeer, inflightPayload, u64, type WireMessage } from '../helpers/wire.js';
import { DaemonProcess } from './daemon-process.js';
import { DeviceRig } from './device-rig.js';
import { GuardedMemory } from './guarded-memory.js';
import { CapturingLogger } from './harness.js';
import { Rng } from './rng.js';

interface Issue {
  name: string;
  summary: string;
  /** Returns [still reproduces?, what was measured]. */
  run(dir: string): Promise<[boolean, string]>;
}

function frame(m: WireMessage): Buffer {
  const payload = m.payload ?? new Uint8Array(0);
  const out = Buffer.alloc(12 + payload.length);
  out.writeUInt32LE(m.request, 0);
  out.writeUInt32LE(m.flags ?? 1, 4);
  out.writeUInt32LE(payload.length, 8);
  out.set(payload, 12);
  return out;
}

const issues: Issue[] = [
  {
    name: 'reply-backlog',
    summary: 'A frontend that sends requests and never reads the replies makes the daemon queue the replies in ' +
      'memory without bound (src/protocol/connection.ts keeps reading while its outgoing queue grows).',
    async run(dir) {
      const d = await DaemonProcess.start(path.join(dir, 'backlog.sock'));
      try {
        const p = RawPeer.connect(d.socketPath);
        const before = d.statusKb('VmRSS');
        const batch = Buffer.concat(Array.from({ length: 1000 }, () => frame({ request: R.GET_FEATURES })));
        for (let i = 0; i < 400; i++) await p.send(batch);
        await sleep(500);
        const after = d.statusKb('VmRSS');
        p.close();
        return [after - before > 64 * 1024, `400 000 GET_FEATURES, no reply read: daemon VmRSS ${before} kB -> ${after} kB`];
      } finally {
        await d.stop();
      }
    },
  },
  {
    name: 'inflight-mapping',
    summary: 'SET_INFLIGHT_FD maps mmap_offset + mmap_size bytes of whatever file the frontend passes, with no upper ' +
      'bound (src/device/backend.ts setInflightFd): 1 TiB (or 64 TiB) of address space per message.',
    async run(dir) {
      const d = await DaemonProcess.start(path.join(dir, 'inflight.sock'));
      try {
        const before = d.statusKb('VmSize');
        const size = 2 ** 40;
        const fd = native.memfdCreate('huge-inflight', size);
        const p = RawPeer.connect(d.socketPath);
        await p.sendMessage({ request: R.SET_INFLIGHT_FD, payload: inflightPayload(size, 0, 1, 64), fds: [fd] });
        closeQuietly(fd);
        await p.sendMessage({ request: R.GET_QUEUE_NUM });
        const reply = await p.readMessage();
        const after = d.statusKb('VmSize');
        p.close();
        return [reply.request === R.GET_QUEUE_NUM && after - before >= 2 ** 29,
          `SET_INFLIGHT_FD of a 1 TiB file accepted (connection still up); daemon VmSize ${before} kB -> ${after} kB`];
      } finally {
        await d.stop();
      }
    },
  },
  {
    name: 'blk-unknown-types',
    summary: 'virtio-blk logs a warning (and remembers a key) for every distinct unknown request type: a guest ' +
      'sending requests with type 100, 101, 102... floods the log and grows a Set without bound ' +
      '(src/devices/blk/device.ts, `type-${h.type}` in handleChain).',
    async run() {
      const rng = new Rng(1);
      const log = new CapturingLogger('blk', 'warn');
      const device = new BlkDevice({ storage: new MemoryStorage({ size: 1 << 20 }), logger: log });
      const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [65536], minRegions: 1, maxRegions: 1 });
      const rig = DeviceRig.create(rng, device, mem, log, { queues: [0], ringSize: 64, features: featureMask(CommonFeature.VERSION_1) });
      const ring = rig.rings.get(0)!;
      let type = 100;
      for (let round = 0; round < 100; round++) {
        for (let k = 0; k < 20; k++) {
          const h = rig.alloc.alloc(rng, 16, 8)!;
          const s = rig.alloc.alloc(rng, 1, 1)!;
          const header = Buffer.alloc(16);
          header.writeUInt32LE(type++, 0);
          mem.write(h, header);
          ring.post([{ addr: BigInt(h), len: 16, write: false }, { addr: BigInt(s), len: 1, write: true }]);
        }
        rig.kick(0);
        ring.reap();
        rig.freeBuffers();
      }
      await rig.close();
      const warnings = log.lines.filter((l) => l.startsWith('warn')).length;
      return [warnings > 100, `2000 requests with distinct unknown types: ${warnings} warnings logged`];
    },
  },
  {
    name: 'console-truncation-warnings',
    summary: 'virtio-console logs a warning each time a control message does not fit the driver\'s buffer; a guest ' +
      'that posts 8-byte control buffers and repeats PORT_READY gets one PORT_NAME (and RESIZE) warning per ' +
      'PORT_READY, without bound (src/devices/console/device.ts #flushControl).',
    async run() {
      const rng = new Rng(2);
      const log = new CapturingLogger('console', 'warn');
      const device = new ConsoleDevice({ maxPorts: 2, cols: 80, rows: 24, logger: log });
      device.addPort({ id: 0, name: 'a-long-port-name' });
      const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [131072], minRegions: 1, maxRegions: 1 });
      const features = featureMask(CommonFeature.VERSION_1, ConsoleFeature.MULTIPORT, ConsoleFeature.SIZE);
      const rig = DeviceRig.create(rng, device, mem, log, { queues: [ControlQueue.RX, ControlQueue.TX], ringSize: 16, features });
      const rx = rig.rings.get(ControlQueue.RX)!;
      const tx = rig.rings.get(ControlQueue.TX)!;
      const send = (event: number): void => {
        const m = Buffer.alloc(8);
        m.writeUInt32LE(event === ControlEvent.DEVICE_READY ? 0xffffffff : 0, 0);
        m.writeUInt16LE(event, 4);
        m.writeUInt16LE(1, 6);
        const at = rig.alloc.alloc(rng, 8, 8)!;
        mem.write(at, m);
        tx.post([{ addr: BigInt(at), len: 8, write: false }]);
        rig.kick(ControlQueue.TX);
      };
      for (let i = 0; i < 200; i++) {
        for (let k = 0; k < 6 && rx.freeCount > 0; k++) rx.post([{ addr: BigInt(rig.alloc.alloc(rng, 8, 8)!), len: 8, write: true }]);
        rig.kick(ControlQueue.RX);
        send(i === 0 ? ControlEvent.DEVICE_READY : ControlEvent.PORT_READY);
        rx.reap();
        tx.reap();
        rig.freeBuffers();
      }
      await rig.close();
      const warnings = log.lines.filter((l) => /truncated/.test(l)).length;
      return [warnings > 100, `199 PORT_READY with 8-byte control buffers: ${warnings} "truncated" warnings`];
    },
  },
  {
    name: 'refusal-log',
    summary: 'Every refused second frontend is logged at warn level: a local process that can reach the socket ' +
      'floods the log at the rate it can connect (src/protocol/endpoint.ts #refuse).',
    async run(dir) {
      const d = await DaemonProcess.start(path.join(dir, 'refuse.sock'));
      try {
        const active = RawPeer.connect(d.socketPath);
        await active.sendMessage({ request: R.GET_FEATURES });
        await active.readMessage();
        // Opened together: one waits for the active frontend to go (500 ms), the others are refused at once.
        for (let b = 0; b < 5; b++) {
          const batch = Array.from({ length: 100 }, () => RawPeer.connect(d.socketPath));
          for (const p of batch) {
            await p.closedByPeer();
            p.close();
          }
        }
        await d.waitForLines(/refusing a second frontend/, 500, 0, 5000);
        active.close();
        const lines = d.lines.filter((l) => /refusing a second frontend/.test(l)).length;
        return [lines > 100, `500 refused connections: ${lines} warning lines`];
      } finally {
        await d.stop();
      }
    },
  },
  {
    name: 'refused-request-log',
    summary: 'Every request refused with a non-zero ack (REPLY_ACK) is logged at warn level and the connection ' +
      'stays, so one connection can flood the log (src/protocol/backend.ts, `${name} refused` in #handle).',
    async run(dir) {
      const d = await DaemonProcess.start(path.join(dir, 'refused.sock'));
      try {
        const p = RawPeer.connect(d.socketPath);
        await p.sendMessage({ request: R.SET_PROTOCOL_FEATURES, payload: u64(1n << 3n) });
        const config = Buffer.alloc(13);
        config.writeUInt32LE(0, 0);
        config.writeUInt32LE(1, 4);
        await p.send(Buffer.concat(Array.from({ length: 1000 }, () => frame({ request: R.SET_CONFIG, flags: 1 | 8, payload: config }))));
        for (let i = 0; i < 1000; i++) await p.readMessage();
        await d.waitForLines(/SET_CONFIG refused/, 1000, 0, 5000);
        p.close();
        const lines = d.lines.filter((l) => /SET_CONFIG refused/.test(l)).length;
        return [lines > 100, `1000 refused SET_CONFIG on one connection: ${lines} warning lines`];
      } finally {
        await d.stop();
      }
    },
  },
  {
    name: 'echo-device-config',
    summary: 'test/helpers/echo-device.ts writeConfig throws a RangeError for an offset past its 8 config bytes ' +
      '(SET_CONFIG allows offsets up to 256); the framework closes the connection with "handler failed: RangeError".',
    async run() {
      try {
        new EchoDevice().writeConfig(9, Uint8Array.of(1));
        return [false, 'writeConfig(9, [1]) returned'];
      } catch (err) {
        return [err instanceof RangeError, `writeConfig(9, [1]) threw ${String(err)}`];
      }
    },
  },
];

async function main(): Promise<number> {
  const wanted = process.argv.slice(2);
  const { dir, cleanup } = tempDir('vhost-issues-');
  let open = 0;
  try {
    for (const issue of issues) {
      if (wanted.length > 0 && !wanted.includes(issue.name)) continue;
      const [reproduces, measured] = await issue.run(dir);
      if (reproduces) open++;
      process.stdout.write(`${reproduces ? 'REPRODUCES' : 'FIXED     '} ${issue.name}: ${measured}\n    ${issue.summary}\n`);
    }
  } finally {
    cleanup();
  }
  return open;
}

main().then((n) => {
  process.exitCode = n;
}, (err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 100;
});
