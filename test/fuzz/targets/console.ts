/**
 * Fuzz target "console": the virtio-console device's control-message parser and queues
 * (src/devices/console/device.ts, protocol.ts, control-queue.ts, port.ts) on the real framework (device-rig.ts)
 * over guarded memory. The driver side sends random control messages (every event, known and unknown port ids,
 * odd values, wrong sizes, split over buffers), posts control and data receive buffers of random sizes, sends
 * data on ports that exist or not; the host side adds and removes ports, resizes, opens and closes its ends,
 * writes to ports; the frontend writes config space (emergency write) and flips features (MULTIPORT or not).
 *
 * Checked: no exception escapes or stops a ring; every chain the device pops is completed exactly once, at
 * once (the device holds none), with a used length within the chain's writable part; every control message the
 * device sends is well-formed (a device-to-driver event for a port id below max_nr_ports, a port's real name);
 * the bytes a port's reader gets are exactly the bytes the guest sent on that port's transmit queue while the
 * port existed; the guest only ever receives (a prefix of) what the host wrote to that port, and with
 * MULTIPORT only once it opened the port; the outgoing control queue stays bounded; guards stay intact; and the
 * warnings stay bounded however much nonsense the driver sends.
 */
import { ConsoleDevice, MAX_TX_BUFFER } from '../../../src/devices/console/device.js';
import type { ConsolePort } from '../../../src/devices/console/port.js';
import { ControlEvent, ControlQueue, CONTROL_SIZE, rxQueueOf, txQueueOf, queueRole } from '../../../src/devices/console/protocol.js';
import type { DescriptorChain } from '../../../src/virtqueue/chain.js';
import { RequestRejected } from '../../../src/protocol/backend.js';
import { DeviceRig } from '../device-rig.js';
import type { BufferSpec } from '../driver-side.js';
import { GuardedMemory } from '../guarded-memory.js';
import { CapturingLogger, check, Stats, UNEXPECTED_LOG, type FuzzTarget } from '../harness.js';
import type { Rng } from '../rng.js';

const stats = new Stats();
const DEVICE_EVENTS = new Set<number>([ControlEvent.DEVICE_ADD, ControlEvent.DEVICE_REMOVE, ControlEvent.CONSOLE_PORT,
  ControlEvent.RESIZE, ControlEvent.PORT_OPEN, ControlEvent.PORT_NAME]);

interface PortLog {
  /** Bytes the port's reader got. */
  received: Buffer[];
  /** Bytes the guest sent on the port's transmit queue (popped while the port existed). */
  sent: Buffer[];
  /** Bytes the host wrote to the port. */
  written: Buffer[];
  /** Bytes the guest got in its receive buffers for this port. */
  delivered: Buffer[];
}

function randomName(rng: Rng): string | undefined {
  if (rng.chance(0.4)) return undefined;
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789.-_é';
  return Array.from({ length: rng.range(1, 40) }, () => rng.pick([...chars])).join('');
}

async function runConsoleCase(rng: Rng): Promise<void> {
  const hostile = rng.pick([0, 0.05, 0.2]);
  const multiport = rng.chance(0.8);
  const maxPorts = multiport ? rng.range(1, 4) : 1;
  const log = new CapturingLogger('console', 'info');
  const device = new ConsoleDevice({
    maxPorts, multiport, emergencyWrite: rng.chance(0.7), cols: rng.pick([0, 80]), rows: rng.pick([0, 24]),
    maxQueueSize: 256, logger: log,
  });
  const logs = new Map<ConsolePort, PortLog>();
  const track = (port: ConsolePort): void => {
    const l: PortLog = { received: [], sent: [], written: [], delivered: [] };
    logs.set(port, l);
    port.on('data', (chunk: Buffer) => l.received.push(chunk));
    port.on('error', () => undefined); // writes to a removed port fail; that is expected here
  };
  const usedNames = new Set<string>();
  const addPort = (id?: number): void => {
    let name = randomName(rng);
    if (name !== undefined && usedNames.has(name)) name = undefined;
    try {
      const port = device.addPort({ id, name, console: rng.chance(0.5), hostConnected: rng.chance(0.7) });
      if (name !== undefined) usedNames.add(name);
      track(port);
    } catch (err) {
      // Ids in use or out of range, duplicate names (RangeError) and names like '.' (TypeError) are refused.
      check(err instanceof RangeError || err instanceof TypeError, () => `addPort threw ${String(err)}`);
    }
  };
  for (let id = 0; id < maxPorts; id++) if (rng.chance(0.6)) addPort(id);

  const mem = GuardedMemory.random(rng, { alignedOnly: true, sizes: [65536, 131072], minRegions: 1, maxRegions: 2 });
  const queues = Array.from({ length: device.numQueues }, (_, i) => i).filter(() => rng.chance(0.9));
  const rig = DeviceRig.create(rng, device, mem, log, { queues, maxRingSize: 32 });
  device.attach({ backend: rig.backend });

  const violations: unknown[] = [];
  const popped = new Set<DescriptorChain>();
  for (const index of rig.rings.keys()) {
    const v = rig.vring(index);
    const pop = v.pop.bind(v);
    const complete = v.complete.bind(v);
    const role = queueRole(index);
    v.pop = () => {
      const chain = pop();
      if (chain !== null) {
        popped.add(chain);
        if (role.kind === 'tx') {
          const port = device.port(role.port);
          const n = chain.readableLength;
          if (port && (device.multiport !== false || role.port === 0) && n > 0 && n <= MAX_TX_BUFFER) {
            logs.get(port)?.sent.push(Buffer.from(Buffer.concat(chain.readable)));
          }
        }
      }
      return chain;
    };
    v.complete = (chain, len) => {
      try {
        check(popped.delete(chain), `queue ${index}: chain ${chain.head} completed twice or never popped`);
        check(Number.isInteger(len) && len >= 0 && len <= chain.writableLength,
          `queue ${index}: used length ${len} for a chain with ${chain.writableLength} writable bytes`);
        const data = Buffer.concat(chain.writable).subarray(0, len);
        if (role.kind === 'control-rx') checkControl(data, chain.writableLength);
        if (role.kind === 'rx' && len > 0) {
          const port = device.port(role.port);
          check(port !== undefined, `queue ${index}: data delivered for port ${role.port}, which does not exist`);
          check(device.multiport === false || port.guestOpen, `port ${role.port}: data delivered before the guest opened it`);
          logs.get(port)?.delivered.push(Buffer.from(data));
        }
      } catch (err) {
        violations.push(err);
      }
      complete(chain, len);
    };
  }

  const checkControl = (data: Buffer, room: number): void => {
    stats.count('control-sent');
    if (data.length < CONTROL_SIZE) {
      check(data.length === 0 && room < CONTROL_SIZE, `control message of ${data.length} bytes in a ${room}-byte buffer`);
      return;
    }
    const id = data.readUInt32LE(0);
    const event = data.readUInt16LE(4);
    check(DEVICE_EVENTS.has(event), `the device sent control event ${event}, which only drivers send`);
    check(id < maxPorts, `the device sent ${event} for port ${id} (max_nr_ports ${maxPorts})`);
    if (event === ControlEvent.PORT_NAME) {
      const name = data.subarray(CONTROL_SIZE);
      check([...usedNames].some((n) => Buffer.from(n).subarray(0, name.length).equals(name)), 'PORT_NAME with a name no port has');
    }
  };

  const afterKick = (): void => {
    if (violations.length > 0) throw violations[0];
    for (const index of rig.rings.keys()) {
      check(rig.vring(index).inflightCount === 0, `queue ${index}: the device kept ${rig.vring(index).inflightCount} chain(s)`);
    }
    check(device.pendingControl <= 1024, `${device.pendingControl} control messages queued`);
  };

  const postOn = (index: number, buffers: { write: boolean; data: Uint8Array }[]): boolean => {
    const ring = rig.rings.get(index);
    if (!ring) return false;
    const specs: BufferSpec[] = [];
    for (const b of buffers) {
      if (b.data.length === 0) continue;
      const gpa = rig.alloc.alloc(rng, b.data.length, rng.pick([1, 8]));
      if (gpa === undefined) return false;
      rig.mem.write(gpa, b.data);
      specs.push({ addr: BigInt(gpa), len: b.data.length, write: b.write });
    }
    if (specs.length === 0) return false;
    const head = ring.post(specs);
    if (head !== undefined && rng.chance(hostile / 4)) {
      const d = ring.readDescriptor(head);
      d.len = rng.pick([0, 0xffffffff, d.len + 1]);
      ring.writeDescriptor(head, d);
    }
    return head !== undefined;
  };

  const portIds = (): number[] => [...device.ports.keys()];
  const someId = (): number => rng.weighted<number>([[6, portIds().length > 0 ? rng.pick(portIds()) : 0],
    [1, rng.range(0, maxPorts)], [0.5, 0xffffffff], [hostile * 5, rng.u32()]]);

  try {
    // Usually a driver that starts the way Linux does: control buffers posted, then DEVICE_READY.
    if (rng.chance(0.7)) {
      for (let k = 0; k < 4; k++) postOn(ControlQueue.RX, [{ write: true, data: new Uint8Array(rng.pick([64, 4096])) }]);
      const ready = Buffer.alloc(CONTROL_SIZE);
      ready.writeUInt32LE(0xffffffff, 0);
      ready.writeUInt16LE(ControlEvent.DEVICE_READY, 4);
      ready.writeUInt16LE(1, 6);
      postOn(ControlQueue.TX, [{ write: false, data: ready }]);
      rig.kick(ControlQueue.TX);
      afterKick();
    }
    const steps = rng.range(5, 40);
    for (let step = 0; step < steps; step++) {
      const action = rng.weighted<string>([[6, 'control'], [4, 'control-rx'], [3, 'rx'], [3, 'tx'], [2, 'write'],
        [1, 'add'], [1, 'remove'], [1, 'resize'], [1, 'open'], [1, 'config'], [1, 'kick']]);
      stats.count(`action-${action}`);
      switch (action) {
        case 'control': {
          const msg = Buffer.alloc(rng.weighted<number>([[10, CONTROL_SIZE], [hostile * 10, rng.range(0, 20)]]));
          const head = Buffer.alloc(CONTROL_SIZE);
          head.writeUInt32LE(someId() >>> 0, 0);
          head.writeUInt16LE(rng.weighted<number>([[3, ControlEvent.DEVICE_READY], [4, ControlEvent.PORT_READY],
            [4, ControlEvent.PORT_OPEN], [1, rng.range(0, 8)], [hostile * 5, rng.int(0x10000)]]), 4);
          head.writeUInt16LE(rng.weighted<number>([[8, 1], [3, 0], [1, 2], [hostile * 5, rng.int(0x10000)]]), 6);
          head.copy(msg);
          const cut = rng.chance(0.2) ? rng.range(1, Math.max(1, msg.length - 1)) : msg.length;
          postOn(ControlQueue.TX, [{ write: false, data: msg.subarray(0, cut) }, { write: false, data: msg.subarray(cut) }]);
          rig.kick(ControlQueue.TX);
          break;
        }
        case 'control-rx':
          for (let k = rng.range(1, 4); k > 0; k--) {
            postOn(ControlQueue.RX, [{ write: true, data: new Uint8Array(rng.pick([8, 12, 16, 64, 300, 4096, rng.range(1, 7)])) }]);
          }
          rig.kick(ControlQueue.RX);
          break;
        case 'rx': {
          const id = rng.range(0, maxPorts - 1);
          postOn(rxQueueOf(id), [{ write: true, data: new Uint8Array(rng.pick([1, 16, 512, 4096])) }]);
          rig.kick(rxQueueOf(id));
          break;
        }
        case 'tx': {
          const id = rng.range(0, maxPorts - 1);
          const data = rng.bytes(rng.pick([1, 10, 100, 2000]));
          const cut = rng.int(data.length);
          postOn(txQueueOf(id), [{ write: false, data: data.subarray(0, cut) }, { write: false, data: data.subarray(cut) }]);
          rig.kick(txQueueOf(id));
          break;
        }
        case 'write': {
          const port = device.port(someId());
          if (port && !port.removed) {
            const data = Buffer.from(rng.bytes(rng.pick([1, 50, 3000])));
            logs.get(port)?.written.push(data);
            port.write(data);
          }
          break;
        }
        case 'add':
          addPort(rng.chance(0.5) ? undefined : rng.range(0, maxPorts));
          break;
        case 'remove':
          device.removePort(someId());
          break;
        case 'resize':
          if (rng.chance(0.5)) device.resize(rng.int(300), rng.int(100));
          else device.port(someId())?.resize(rng.int(300), rng.int(100));
          break;
        case 'open':
          device.port(someId())?.setHostConnected(rng.chance(0.5));
          break;
        case 'config':
          try {
            const offset = rng.pick([8, 8, 0, 9, 4]);
            const data = rng.bytes(rng.pick([1, 4]));
            // An emergency write goes to the console port (port 0 if it is one, else the lowest console port).
            const consoles = [...device.ports.values()].filter((p) => p.console).sort((a, b) => a.id - b.id);
            const target = device.port(0)?.console ? device.port(0) : consoles[0];
            await rig.backend.setConfig(offset, data);
            if (offset === 8 && target) logs.get(target)?.sent.push(Buffer.of(data[0]!));
          } catch (err) {
            check(err instanceof RequestRejected, () => `SET_CONFIG threw ${String(err)}`);
          }
          break;
        default:
          for (const index of rig.rings.keys()) rig.kick(index);
      }
      afterKick();
      // Stream events ('data', write callbacks) run on later ticks.
      if (rng.chance(0.3)) await new Promise((resolve) => setImmediate(resolve));
    }
    for (const index of rig.rings.keys()) rig.kick(index);
    afterKick();
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    for (const [port, l] of logs) {
      const received = Buffer.concat(l.received);
      const sent = Buffer.concat(l.sent);
      check(received.equals(sent), () => `port ${port.id}: the reader got ${received.length} bytes, the guest sent ${sent.length}` +
        `${received.equals(sent.subarray(0, received.length)) ? ' (a prefix)' : ' (different bytes)'}`);
      const delivered = Buffer.concat(l.delivered);
      const written = Buffer.concat(l.written);
      check(delivered.equals(written.subarray(0, delivered.length)),
        () => `port ${port.id}: the guest got ${delivered.length} bytes that are not a prefix of the ${written.length} the host wrote`);
      stats.count('bytes-to-host', received.length);
      stats.count('bytes-to-guest', delivered.length);
    }
    rig.checkGuards();
  } finally {
    await rig.close();
  }
  const unexpected = log.lines.find((l) => UNEXPECTED_LOG.test(l));
  check(unexpected === undefined, () => `unexpected log line: ${unexpected}`);
  const warnings = log.lines.filter((l) => l.startsWith('warn')).length;
  stats.count('warnings', warnings);
  check(warnings <= 60, () => `${warnings} warnings for one guest (log flooding):\n${log.lines.slice(-10).join('\n')}`);
}

export const consoleTarget: FuzzTarget = {
  name: 'console',
  description: 'virtio-console device on the real framework: random control messages, buffers, port data and ' +
    'host operations; well-formed replies, data integrity both ways, nothing held, bounded queue and warnings',
  batch: 25,
  stats,
  runCase: runConsoleCase,
};
