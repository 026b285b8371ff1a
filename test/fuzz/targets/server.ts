/**
 * Fuzz target "server": the request handler (src/protocol/backend.ts, connection.ts, endpoint.ts and the
 * framework in src/device) of live DeviceServers in this process, an echo device and a virtio-blk device on a
 * memory disk, fed random but plausible sessions over real Unix sockets: the setup a frontend does (features,
 * protocol features, owner, backend channel, memory by ADD_MEM_REG or SET_MEM_TABLE, inflight areas, rings with
 * kick/call/err eventfds, enable, status), then guest work (requests or garbage written to the rings in the
 * shared memfd, and kicks), then anything (GET_VRING_BASE, RESET_DEVICE, REM_MEM_REG, a second table, config,
 * unknown requests). Each message may be mutated: payload bytes, request code, flags (NEED_REPLY, REPLY,
 * version), a header size that lies, fds dropped, added, duplicated or replaced by fds of other kinds (eventfd,
 * memfds of random sizes including 0, socket, /dev/null, a read-only file, a directory).
 *
 * Checked: the daemon either answers a final ping (GET_QUEUE_NUM, never sent otherwise) or closes the
 * connection, never hangs; the reasons it closes connections for are typed (a ProtocolError's message or a
 * system error with an errno code, never a TypeError/RangeError or an "internal error"); the server goes back
 * to idle and serves the next case; and (the runner's audit) every fd it received was closed or kept and
 * released, and every guest mapping is gone, after each batch of cases.
 */
import fs from 'node:fs';
import path from 'node:path';
import { native, closeQuietly, isSystemError } from '../../../src/native/index.js';
import { DeviceServer } from '../../../src/device/server.js';
import { offeredFeatures, offeredProtocolFeatures } from '../../../src/device/backend.js';
import type { VirtioDevice } from '../../../src/device/device.js';
import { BlkDevice } from '../../../src/devices/blk/device.js';
import { MemoryStorage } from '../../../src/devices/blk/storage/memory.js';
import { encodeHeader } from '../../../src/devices/blk/request.js';
import { FrontendRequest as R, ProtocolFeature } from '../../../src/protocol/constants.js';
import { CommonFeature, hasFeature } from '../../../src/virtio/constants.js';
import { inflightQueueSize } from '../../../src/virtqueue/inflight.js';
import { EchoDevice } from '../../helpers/echo-device.js';
import { WorkerEchoDevice } from '../../helpers/worker-echo.js';
import { tempDir, waitUntil } from '../../helpers/tmp.js';
import {
  RawPeer, configPayload, inflightPayload, memTable, singleRegion, u64, vringAddr, vringState, type WireMessage,
  type WireRegion,
} from '../../helpers/wire.js';
import { DriverRing, ringBytes, type GuestBytes, type RingPlacement } from '../driver-side.js';
import { CapturingLogger, check, PropertyViolation, Stats, UNEXPECTED_LOG, type FuzzTarget } from '../harness.js';
import { mutate, type Rng } from '../rng.js';

const stats = new Stats();
const PING = R.GET_QUEUE_NUM;
const V1 = 1;
const NEED_REPLY = 8;

interface Served {
  kind: 'echo' | 'blk';
  /** For messages: the kind, and "on a worker" when its queues run on a queue worker. */
  label: string;
  device: VirtioDevice;
  server: DeviceServer;
  socketPath: string;
}

let dir = '';
let cleanupDir: () => void = () => {};
let served: Served[] = [];
const log = new CapturingLogger('server', 'warn');

/** Guest RAM shared with the daemon: a memfd we map too. */
class Ram implements GuestBytes {
  readonly fd: number;
  readonly size: number;
  readonly gpa: number;
  readonly uaddr: number;
  readonly bytes: Uint8Array;
  readonly #buffer: SharedArrayBuffer;
  #next = 0;

  constructor(size: number, gpa: number, uaddr: number) {
    this.size = size;
    this.gpa = gpa;
    this.uaddr = uaddr;
    this.fd = native.memfdCreate('fuzz-ram', size);
    this.#buffer = native.mmap(this.fd, size, true);
    this.bytes = new Uint8Array(this.#buffer);
  }

  get region(): WireRegion {
    return { gpa: this.gpa, size: this.size, uaddr: this.uaddr, offset: 0 };
  }

  alloc(length: number, align = 8): number | undefined {
    const start = Math.ceil(this.#next / align) * align;
    if (start + length > this.size) return undefined;
    this.#next = start + length;
    return this.gpa + start;
  }

  write(gpa: number, data: Uint8Array): void {
    const o = gpa - this.gpa;
    if (o < 0 || o + data.length > this.size) throw new RangeError(`ram write at 0x${gpa.toString(16)} out of range`);
    this.bytes.set(data, o);
  }

  read(gpa: number, length: number): Uint8Array {
    const o = gpa - this.gpa;
    if (o < 0 || o + length > this.size) throw new RangeError(`ram read at 0x${gpa.toString(16)} out of range`);
    return this.bytes.slice(o, o + length);
  }

  va(gpa: number): number {
    return gpa - this.gpa + this.uaddr;
  }

  close(): void {
    native.unmapNow(this.#buffer);
    closeQuietly(this.fd);
  }
}

/** Everything a case creates; all of it is closed at the end of the case. */
class CaseFds {
  readonly fds: number[] = [];

  keep(fd: number): number {
    this.fds.push(fd);
    return fd;
  }

  eventfd(): number {
    return this.keep(native.eventfd(0));
  }

  random(rng: Rng): number {
    switch (rng.int(7)) {
      case 0: return this.eventfd();
      case 1: return this.keep(native.memfdCreate('fuzz-fd', rng.pick([0, 1, 4096, 65536, 1 << 20, rng.int(1 << 20)])));
      case 2: {
        const [a, b] = native.socketPair();
        this.keep(b);
        return this.keep(a);
      }
      case 3: return this.keep(fs.openSync('/dev/null', 'r'));
      case 4: {
        const file = path.join(dir, `ro-${rng.u32()}`);
        fs.writeFileSync(file, new Uint8Array(rng.pick([0, 4096, 65536])));
        const fd = fs.openSync(file, 'r');
        fs.unlinkSync(file);
        return this.keep(fd);
      }
      case 5: return this.keep(fs.openSync(dir, 'r'));
      default: return this.keep(native.memfdCreate('fuzz-fd', 1 << 20));
    }
  }

  closeAll(): void {
    for (const fd of this.fds.splice(0)) closeQuietly(fd);
  }
}

/** One step of a session: a message to send, or guest work on a ring. */
type Step = { message: WireMessage; intact: boolean } | { guest: () => void };

interface Session {
  steps: Step[];
  rams: Ram[];
}

/** A plausible session for `s`'s device, message by message, with mutations at rate `pm`. */
function session(rng: Rng, s: Served, fds: CaseFds, pm: number): Session {
  const steps: Step[] = [];
  const rams: Ram[] = [];
  const device = s.device;
  const send = (m: WireMessage): void => {
    steps.push({ message: m, intact: true });
  };
  const offered = offeredFeatures(device);
  const offeredProtocol = offeredProtocolFeatures(device);
  const features = rng.subsetOf(offered) | (rng.chance(0.05) ? 1n << BigInt(rng.int(64)) : 0n);
  const protocol = rng.chance(0.8) ? rng.subsetOf(offeredProtocol) : 0n;
  const withProtocol = hasFeature(features, CommonFeature.PROTOCOL_FEATURES);

  if (rng.chance(0.8)) send({ request: R.GET_FEATURES });
  if (rng.chance(0.7)) send({ request: R.GET_PROTOCOL_FEATURES });
  if (rng.chance(0.8)) send({ request: R.SET_PROTOCOL_FEATURES, payload: u64(protocol) });
  if (rng.chance(0.8)) send({ request: R.SET_OWNER });
  if (rng.chance(0.3)) send({ request: R.GET_MAX_MEM_SLOTS });
  if (hasFeature(protocol, ProtocolFeature.BACKEND_REQ) && rng.chance(0.5)) {
    const [ours, theirs] = native.socketPair();
    fds.keep(ours);
    send({ request: R.SET_BACKEND_REQ_FD, fds: [fds.keep(theirs)] });
  }
  if (rng.chance(0.9)) send({ request: R.SET_FEATURES, payload: u64(features) });
  if (rng.chance(0.4)) send({ request: R.GET_CONFIG, payload: configPayload(rng.pick([0, 0, 8, 32]), new Uint8Array(rng.pick([8, 12, 57, 60]))) });

  // Memory.
  const ram = new Ram(rng.pick([65536, 262144, 1 << 20]), rng.pick([0, 0, 0x100000, 2 ** 32]), 0x7f00_0000_0000 + rng.int(256) * 4096);
  fds.keep(ram.fd);
  rams.push(ram);
  const useSlots = hasFeature(protocol, ProtocolFeature.CONFIGURE_MEM_SLOTS) && rng.chance(0.7);
  if (rng.chance(0.9)) {
    send(useSlots
      ? { request: R.ADD_MEM_REG, flags: V1 | NEED_REPLY, payload: singleRegion(ram.region), fds: [ram.fd] }
      : { request: R.SET_MEM_TABLE, flags: V1 | NEED_REPLY, payload: memTable([ram.region]), fds: [ram.fd] });
  }
  const numQueues = device.numQueues;
  if (hasFeature(protocol, ProtocolFeature.INFLIGHT_SHMFD) && rng.chance(0.5)) {
    const qs = rng.pick([16, 64, 256]);
    if (rng.chance(0.5)) send({ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, numQueues, qs) });
    else {
      const size = inflightQueueSize(qs) * numQueues;
      const fd = fds.keep(native.memfdCreate('fuzz-inflight', size + rng.pick([0, 0, 4096])));
      send({ request: R.SET_INFLIGHT_FD, payload: inflightPayload(size, 0, numQueues, qs), fds: [fd] });
    }
  }

  // Rings.
  const rings: { index: number; ring: DriverRing; kick: number }[] = [];
  for (let index = 0; index < numQueues; index++) {
    if (!rng.chance(0.8)) continue;
    const size = rng.pick([4, 16, 64, 256]);
    const b = ringBytes(size);
    const desc = ram.alloc(b.desc, 16);
    const avail = ram.alloc(b.avail, 2);
    const used = ram.alloc(b.used, 4);
    if (desc === undefined || avail === undefined || used === undefined) break;
    const at: RingPlacement = { desc, avail, used };
    const ring = new DriverRing(ram, size, at, 0);
    const kick = fds.eventfd();
    send({ request: R.SET_VRING_NUM, payload: vringState(index, size) });
    send({ request: R.SET_VRING_BASE, payload: vringState(index, 0) });
    send({ request: R.SET_VRING_ADDR, payload: vringAddr(index, ram.va(desc), ram.va(used), ram.va(avail)) });
    send({ request: R.SET_VRING_CALL, payload: u64(index), fds: [fds.eventfd()] });
    if (rng.chance(0.5)) send({ request: R.SET_VRING_ERR, payload: u64(index), fds: [fds.eventfd()] });
    send({ request: R.SET_VRING_KICK, payload: u64(index), fds: [kick] });
    if (withProtocol) send({ request: R.SET_VRING_ENABLE, payload: vringState(index, 1) });
    rings.push({ index, ring, kick });
  }
  if (rng.chance(0.5)) send({ request: R.SET_STATUS, payload: u64(0xf) });

  // Guest work and anything else, interleaved.
  const extras = rng.range(0, 12);
  for (let k = 0; k < extras; k++) {
    const r = rings.length > 0 ? rng.pick(rings) : undefined;
    const action = rng.weighted<string>([[10, 'guest'], [1, 'get-base'], [1, 'disable'], [0.5, 'reset'], [0.5, 'rem-reg'],
      [1, 'table'], [1, 'add-reg'], [1, 'config'], [1, 'status'], [0.5, 'inflight'], [0.3, 'random'], [0.3, 'unknown']]);
    stats.count(`step-${action}`);
    switch (action) {
      case 'guest':
        if (r) steps.push({ guest: () => guestWork(rng, s.kind, ram, r.ring, r.kick) });
        break;
      case 'get-base':
        if (r) send({ request: R.GET_VRING_BASE, payload: vringState(r.index, 0) });
        break;
      case 'disable':
        if (r) send({ request: R.SET_VRING_ENABLE, payload: vringState(r.index, rng.int(2)) });
        break;
      case 'reset':
        send({ request: rng.pick([R.RESET_DEVICE, R.RESET_OWNER]) });
        break;
      case 'rem-reg':
        send({ request: R.REM_MEM_REG, payload: singleRegion(ram.region), fds: rng.chance(0.5) ? [ram.fd] : [] });
        break;
      case 'table': {
        const other = new Ram(65536, ram.gpa + ram.size + rng.pick([0, 4096]), ram.uaddr + ram.size + rng.pick([0, 4096, -4096]));
        fds.keep(other.fd);
        rams.push(other);
        send({ request: R.SET_MEM_TABLE, payload: memTable([ram.region, other.region]), fds: [ram.fd, other.fd] });
        break;
      }
      case 'add-reg': {
        const other = new Ram(rng.pick([4096, 65536]), ram.gpa + ram.size + 4096 * rng.int(4), ram.uaddr + ram.size + 4096 * rng.int(4));
        fds.keep(other.fd);
        rams.push(other);
        send({ request: R.ADD_MEM_REG, payload: singleRegion(other.region), fds: [other.fd] });
        break;
      }
      case 'config':
        send(rng.chance(0.5)
          ? { request: R.SET_CONFIG, flags: V1 | NEED_REPLY, payload: configPayload(rng.pick([0, 8, 32]), rng.bytes(rng.pick([1, 4]))) }
          : { request: R.GET_CONFIG, payload: configPayload(rng.int(64), new Uint8Array(rng.int(64))) });
        break;
      case 'status':
        send(rng.chance(0.5) ? { request: R.GET_STATUS } : { request: R.SET_STATUS, payload: u64(rng.pick([0, 1, 3, 0xb, 0xf, 0x40])) });
        break;
      case 'inflight':
        send({ request: R.GET_INFLIGHT_FD, payload: inflightPayload(0, 0, rng.range(0, numQueues + 1), rng.pick([0, 64, 100, 1024, 32768])) });
        break;
      case 'random':
        send({ request: rng.range(0, 45), flags: V1 | (rng.chance(0.5) ? NEED_REPLY : 0), payload: rng.bytes(rng.pick([0, 8, 16, 24, 40, rng.int(300)])),
          fds: Array.from({ length: rng.pick([0, 0, 1, 2, 9]) }, () => fds.random(rng)) });
        break;
      default:
        send({ request: rng.pick([R.SET_LOG_BASE, R.SET_LOG_FD, R.IOTLB_MSG, R.SET_VRING_ENDIAN, R.VRING_KICK, R.NET_SET_MTU,
          R.SEND_RARP, R.POSTCOPY_ADVISE, 41, 42, 43, 1000]), payload: u64(rng.u64()), fds: rng.chance(0.3) ? [fds.random(rng)] : [] });
    }
  }

  // Mutations.
  for (const step of steps) {
    if (!('message' in step) || !rng.chance(pm)) continue;
    const m = step.message;
    const kind = rng.int(6);
    stats.count(`mutation-${kind}`);
    if (kind === 0) m.payload = mutate(rng, m.payload ?? new Uint8Array(0));
    else if (kind === 1) m.request = rng.weighted<number>([[4, rng.range(0, 45)], [1, rng.interesting32()]]);
    else if (kind === 2) m.flags = rng.pick([V1 | 4, V1 | NEED_REPLY, 0, 2, 3, rng.u32()]);
    else if (kind === 3) {
      m.size = Math.max(0, (m.payload?.length ?? 0) + rng.pick([-8, -1, 1, 8, 100]));
      step.intact = false;
    } else if (kind === 4) {
      const have = m.fds ?? [];
      m.fds = rng.weighted<number[]>([[2, []], [2, [...have, fds.random(rng)]], [1, [...have, ...have]],
        [2, have.map(() => fds.random(rng))], [1, Array.from({ length: rng.pick([8, 9, 30]) }, () => fds.eventfd())]]);
    } else {
      steps.push({ message: { request: rng.range(0, 45), payload: rng.bytes(rng.int(64)), fds: rng.chance(0.3) ? [fds.random(rng)] : [] }, intact: true });
    }
    if (m.request === PING) m.request = R.SET_VRING_ENABLE;
  }
  return { steps, rams };
}

/** Put requests (or garbage) on a ring in the shared RAM and kick. */
function guestWork(rng: Rng, kind: Served['kind'], ram: Ram, ring: DriverRing, kick: number): void {
  ring.reap();
  const n = rng.range(1, 4);
  for (let k = 0; k < n && ring.freeCount >= 3; k++) {
    const garbage = rng.chance(0.15);
    if (garbage) {
      ring.writeDescriptor(rng.int(ring.size), { addr: rng.chance(0.5) ? BigInt(ram.gpa + rng.int(ram.size)) : rng.interesting64(),
        len: rng.interesting32(), flags: rng.int(8), next: rng.int(ring.size + 1) });
      ring.publish(rng.int(ring.size + 2));
      stats.count('guest-garbage');
      continue;
    }
    const buf = (len: number, data?: Uint8Array): number | undefined => {
      const gpa = ram.alloc(len);
      if (gpa !== undefined && data) ram.write(gpa, data);
      return gpa;
    };
    if (kind === 'echo') {
      const text = rng.bytes(rng.range(1, 64));
      const a = buf(text.length, text);
      const b = buf(64);
      if (a === undefined || b === undefined) return;
      ring.post([{ addr: BigInt(a), len: text.length, write: false }, { addr: BigInt(b), len: 64, write: true }]);
    } else {
      const type = rng.pick([0, 1, 4, 8]);
      const sectors = rng.range(0, 8);
      const h = buf(16, encodeHeader(type, rng.chance(0.9) ? rng.int(2048 - sectors) : rng.u64()));
      const d = sectors > 0 && (type === 0 || type === 1) ? buf(512 * sectors, rng.bytes(512 * sectors)) : type === 8 ? buf(20) : undefined;
      const st = buf(1);
      if (h === undefined || st === undefined) return;
      const bufs = [{ addr: BigInt(h), len: 16, write: false }];
      if (d !== undefined) bufs.push({ addr: BigInt(d), len: type === 8 ? 20 : 512 * sectors, write: type !== 1 });
      bufs.push({ addr: BigInt(st), len: 1, write: true });
      ring.post(bufs);
    }
    stats.count('guest-request');
  }
  native.eventfdWrite(kick, 1);
}

async function idle(s: Served): Promise<void> {
  await waitUntil(() => s.server.endpoint.active === undefined && s.server.backend === undefined, 10_000,
    `the ${s.label} server to be idle again`).catch((err: Error) => {
    throw new PropertyViolation(err.message);
  });
}

async function runServerCase(rng: Rng): Promise<void> {
  const s = rng.pick(served);
  const pm = rng.pick([0, 0.02, 0.1, 0.3]);
  const fds = new CaseFds();
  const mark = log.lines.length;
  let peer: RawPeer | undefined;
  let rams: Ram[] = [];
  try {
    const plan = session(rng, s, fds, pm);
    rams = plan.rams;
    peer = RawPeer.connect(s.socketPath);
    let intact = true;
    let open = true;
    for (const step of plan.steps) {
      if ('guest' in step) {
        step.guest();
        continue;
      }
      intact &&= step.intact;
      try {
        await peer.sendMessage(step.message);
      } catch (err) {
        if (!isSystemError(err)) throw err;
        open = false; // the daemon closed the connection: that is allowed
        break;
      }
    }
    if (open && intact) {
      // The ping: the daemon answers it (replies are in order, so everything before was handled) or has closed.
      let answered = false;
      try {
        await peer.sendMessage({ request: PING });
        for (;;) {
          const m = await peer.readMessage(10_000);
          // Replies may carry fds (GET_INFLIGHT_FD): they are ours now.
          for (const fd of m.fds) closeQuietly(fd);
          if (m.request === PING) {
            answered = true;
            break;
          }
        }
      } catch (err) {
        const msg = (err as Error).message;
        check(/closed the connection|EPIPE|ECONNRESET/.test(msg) || isSystemError(err),
          () => `the daemon neither answered the ping nor closed the connection: ${msg}`);
      }
      stats.count(answered ? 'ping-answered' : 'closed-by-daemon');
    } else {
      stats.count(intact ? 'closed-by-daemon' : 'framing-broken');
    }
  } finally {
    peer?.close();
    fds.closeAll();
    for (const r of rams) r.close();
  }
  await idle(s);
  const lines = log.lines.slice(mark);
  log.lines.length = 0;
  const unexpected = lines.find((l) => UNEXPECTED_LOG.test(l));
  check(unexpected === undefined, () => `unexpected log line: ${unexpected}`);
  for (const l of lines) {
    const sys = /closing connection: handler failed: Error: (\w+) failed: (E[A-Z0-9]+)/.exec(l);
    const m = /closing connection: ([A-Z_]+|[a-z ]+)/.exec(l);
    if (sys) stats.count(`close-handler-failed-${sys[1]}-${sys[2]}`);
    else if (m) stats.count(`close-${m[1]!.slice(0, 24).trim().replace(/ /g, '-')}`);
  }
}

export const serverTarget: FuzzTarget = {
  name: 'server',
  description: 'live DeviceServers (echo, blk; each also on a queue worker) over real sockets with plausible, mutated sessions and guest work; ' +
    'ping answered or connection closed, typed close reasons, server idle again, no fd or mapping leaks',
  batch: 20,
  stats,
  setup() {
    ({ dir, cleanup: cleanupDir } = tempDir('vhost-fuzz-'));
    const blk = (): BlkDevice => new BlkDevice({ storage: new MemoryStorage({ size: 1 << 20 }), numQueues: 2, logger: log });
    // Each device also with its queues on a queue worker: rings, fds and memory tables then travel by message.
    const devices = [
      ['echo', new EchoDevice(2), 0], ['blk', blk(), 0], ['echo', new WorkerEchoDevice(2), 1], ['blk', blk(), 1],
    ] as const;
    served = devices.map(([kind, device, workers]) => {
      const label = workers > 0 ? `${kind} on a worker` : kind;
      const socketPath = path.join(dir, `${kind}${workers > 0 ? '-w' : ''}.sock`);
      const server = new DeviceServer(device, { socketPath, logger: log, workers }).listen();
      return { kind, label, device, server, socketPath };
    });
  },
  async settle() {
    for (const s of served) await idle(s);
  },
  async teardown() {
    for (const s of served) await s.server.close();
    served = [];
    cleanupDir();
  },
  runCase: runServerCase,
};
