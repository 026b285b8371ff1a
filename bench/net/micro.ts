#!/usr/bin/env node
/**
 * `node dist/bench/net/micro.js`: the net port's per-frame cost in-process, without sockets, kicks or a peer.
 * A driver written straight into the rings (pre-built descriptors, heads re-posted each round, no allocation on
 * its side) feeds a transmit ring of port A; the frames go through the switch and, in the forwarding cases,
 * into port B's receive ring, whose buffers are re-posted each round. Reports the best ns per frame over the
 * rounds and the heap bytes allocated per frame (from rounds without a garbage collection: deterministic, unlike
 * the time on a shared machine).
 *
 * Cases: `drop` (one port, unknown destination: flooded to nobody, what bench:net's port case does), `fwd`
 * (A to a learned B), `fwd-mrg` (the same with mergeable receive buffers), `fwd-1518` (full-size frames, MRG).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { Session } from 'node:inspector';
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import { Vring, type VringOwner } from '../../src/device/vring.js';
import { NetPort } from '../../src/devices/net/port.js';
import { NetSwitch } from '../../src/devices/net/switch.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MemoryRegion } from '../../src/memory/region.js';
import { native } from '../../src/native/index.js';
import { logger, setLogLevel } from '../../src/util/log.js';
import { CommonFeature, featureMask, NetFeature } from '../../src/virtio/constants.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import { VIRTQ_DESC_F_WRITE, availRingBytes, descTableBytes, usedRingBytes } from '../../src/virtqueue/layout.js';

const help = `usage: node dist/bench/net/micro.js [options]

  --frames N     frames per round (default: the ring size)
  --rounds N     rounds per case (default 200)
  --warmup N     unmeasured rounds first, for the JIT to settle (default 100)
  --queue N      ring size (default 1024)
  --cases LIST   drop,fwd,fwd-mrg,fwd-1518 (default all)
  --json         print JSON
  --callgrind    running under valgrind --tool=callgrind --instr-atstart=no: instrument the measured rounds only
                 (callgrind_control -i on/off), for instruction counts per frame
  --alloc-profile FILE
                 write a sampling heap profile of the measured rounds, objects already collected included
                 (a .heapprofile for DevTools), and print the biggest allocation sites
`;

const REGION = { guestPhysAddr: 0, size: 64 << 20, userAddr: 0x7f00_0000_0000, mmapOffset: 0 };
const RX_BUF = 2048;

/** A bump allocator over the one region. */
class Ram {
  readonly memory = new GuestMemory();
  readonly bytes: Uint8Array;
  #next = 0;

  constructor() {
    const sab = new SharedArrayBuffer(REGION.size);
    this.bytes = new Uint8Array(sab);
    this.memory.add(MemoryRegion.fromBuffer(REGION, sab));
  }

  alloc(size: number, align = 64): number {
    const at = Math.ceil(this.#next / align) * align;
    this.#next = at + size;
    if (this.#next > REGION.size) throw new RangeError('micro: out of guest RAM');
    return at;
  }
}

const owner: VringOwner = {
  available() {},
  broken(_v, error) {
    throw error;
  },
};

/** One ring: driver side on raw descriptors (one buffer per chain), device side a started {@link Vring}. */
class Ring {
  readonly driver: DriverQueue;
  readonly vring: Vring;
  readonly size: number;
  readonly bufs: number[] = [];
  #avail = 0;
  #used = 0;

  constructor(ram: Ram, index: number, size: number, bufLen: number, write: boolean) {
    this.size = size;
    const desc = ram.alloc(descTableBytes(size), 4096);
    const avail = ram.alloc(availRingBytes(size, true), 4096);
    const used = ram.alloc(usedRingBytes(size, true), 4096);
    this.driver = new DriverQueue(ram.memory, size, { desc, avail, used }, { eventIdx: true });
    for (let i = 0; i < size; i++) {
      const b = ram.alloc(bufLen, 64);
      this.bufs.push(b);
      this.driver.writeDescriptor(i, b, bufLen, write ? VIRTQ_DESC_F_WRITE : 0, 0);
    }
    this.vring = new Vring(index, owner, logger('micro'));
    this.vring.size = size;
    const va = (gpa: number) => gpa + REGION.userAddr;
    this.vring.addresses = { desc: va(desc), avail: va(avail), used: va(used) };
    this.vring.eventIdx = true;
    this.vring.enabled = true;
    this.vring.start(native.eventfd(0), ram.memory);
  }

  /** Post heads [0, n) again (the previous round's chains must all be used). */
  post(n: number): void {
    for (let k = 0; k < n; k++) this.driver.writeAvailEntry(this.#avail + k, k);
    this.#avail = (this.#avail + n) & 0xffff;
    this.driver.writeAvailIdx(this.#avail);
  }

  /** Used entries since the last call. */
  takeUsed(): number {
    const idx = this.driver.readUsedIdx();
    const n = (idx - this.#used) & 0xffff;
    this.#used = idx;
    return n;
  }

  /** Length the device wrote in used slot `slot`. */
  usedLen(slot: number): number {
    return this.driver.readUsedElement(slot).len;
  }
}

interface CaseSpec {
  name: string;
  ports: 1 | 2;
  frameLength: number;
  mrg: boolean;
}

const CASES: CaseSpec[] = [
  { name: 'drop', ports: 1, frameLength: 64, mrg: true },
  { name: 'fwd', ports: 2, frameLength: 64, mrg: false },
  { name: 'fwd-mrg', ports: 2, frameLength: 64, mrg: true },
  { name: 'fwd-1518', ports: 2, frameLength: 1518, mrg: true },
];

const MAC_A = '02:00:00:00:00:0a';
const MAC_B = '02:00:00:00:00:0b';

function macBytes(m: string): number[] {
  return m.split(':').map((h) => parseInt(h, 16));
}

function writeFrame(ram: Ram, at: number, hdrLen: number, len: number, dst: string, src: string, tag: number): void {
  const b = ram.bytes;
  b.fill(0, at, at + hdrLen + len);
  const f = at + hdrLen;
  b.set(macBytes(dst), f);
  b.set(macBytes(src), f + 6);
  b[f + 12] = 0x08;
  b[f + 13] = 0x00;
  for (let i = 14; i < len; i++) b[f + i] = (i + tag) & 0xff;
}

interface CaseResult {
  name: string;
  nsPerFrame: number;
  medianNsPerFrame: number;
  bytesPerFrame: number | undefined;
  cleanRounds: number;
  delivered: number;
}

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children?: HeapNode[];
}

/** A sampling heap profiler that keeps objects already collected (so it sees short-lived garbage). */
class AllocProfiler {
  readonly #session = new Session();

  #post(method: string, params?: object): Promise<unknown> {
    return new Promise((resolve, reject) => this.#session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res))));
  }

  async start(): Promise<void> {
    this.#session.connect();
    await this.#post('HeapProfiler.enable');
    await this.#post('HeapProfiler.startSampling', {
      samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true,
    });
  }

  async stop(file: string, top = 12): Promise<string> {
    const { profile } = await this.#post('HeapProfiler.stopSampling') as { profile: { head: HeapNode } };
    this.#session.disconnect();
    fs.writeFileSync(file, JSON.stringify(profile));
    const sites: [number, string][] = [];
    const walk = (n: HeapNode, stack: string[]): void => {
      const f = n.callFrame;
      const name = `${f.functionName || '(anonymous)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`;
      const st = [name, ...stack].slice(0, 4);
      if (n.selfSize > 0) sites.push([n.selfSize, st.join(' < ')]);
      for (const c of n.children ?? []) walk(c, st);
    };
    walk(profile.head, []);
    sites.sort((a, b) => b[0] - a[0]);
    return sites.slice(0, top).map(([bytes, where]) => `${String(bytes).padStart(10)} B  ${where}`).join('\n');
  }
}

/** Switch callgrind's instrumentation of this process on or off (returns once callgrind has done it). */
function callgrind(on: boolean): void {
  execFileSync('callgrind_control', ['-i', on ? 'on' : 'off', String(process.pid)], { stdio: 'ignore' });
}

async function runCase(c: CaseSpec, qsize: number, frames: number, rounds: number, warmup: number, allocProfile?: string,
  instrument = false): Promise<CaseResult> {
  const ram = new Ram();
  const sw = new NetSwitch({ autoSweep: false });
  const features = featureMask(CommonFeature.VERSION_1, CommonFeature.EVENT_IDX) |
    (c.mrg ? featureMask(NetFeature.MRG_RXBUF) : 0n);
  const hdrLen = 12;
  const a = new NetPort(sw, { name: 'a', mac: MAC_A, maxQueueSize: qsize, logger: logger('micro:a') });
  a.featuresNegotiated(features);
  const aTx = new Ring(ram, 1, qsize, hdrLen + c.frameLength, false);
  a.ringStarted(aTx.vring);
  const dst = c.ports === 2 ? MAC_B : '02:00:00:00:00:99';
  for (let i = 0; i < qsize; i++) writeFrame(ram, aTx.bufs[i]!, hdrLen, c.frameLength, dst, MAC_A, i);
  let bRx: Ring | undefined;
  let bStats: NetPort["stats"] | undefined;
  if (c.ports === 2) {
    const b = new NetPort(sw, { name: 'b', mac: MAC_B, maxQueueSize: qsize, logger: logger('micro:b') });
    b.featuresNegotiated(features);
    bStats = b.stats;
    bRx = new Ring(ram, 0, qsize, RX_BUF, true);
    b.ringStarted(bRx.vring);
    // B is learned from one frame it sends.
    const bTx = new Ring(ram, 1, 2, hdrLen + 64, false);
    b.ringStarted(bTx.vring);
    writeFrame(ram, bTx.bufs[0]!, hdrLen, 64, MAC_A, MAC_B, 0);
    bTx.post(1);
    bTx.vring.batch(() => b.onAvailable(bTx.vring));
    if (bTx.takeUsed() !== 1) throw new Error('micro: B did not transmit');
  }
  const drive = (): void => {
    aTx.post(frames);
    bRx?.post(frames);
    let got = 0;
    for (let spins = 0; got < frames; spins++) {
      if (spins > frames) throw new Error(`micro: ${c.name}: transmit ring stuck at ${got}/${frames}`);
      aTx.vring.batch(() => a.onAvailable(aTx.vring));
      got += aTx.takeUsed();
    }
    // Receive completions are published once per pass (by the port, or by the ring's own deferred flush, which a
    // synchronous loop never reaches): publish what is left.
    bRx?.vring.flush();
  };
  const want = c.frameLength + hdrLen;
  let delivered = 0;
  const check = (): void => {
    if (!bRx) return;
    const n = bRx.takeUsed();
    delivered += n;
    // Every frame fits one 2 KiB buffer: one used entry per frame with header + frame.
    if (n !== frames) throw new Error(`micro: ${c.name}: ${n} of ${frames} frames delivered ${JSON.stringify(bStats?.snapshot())} ${JSON.stringify(a.stats.snapshot())}`);
    const len = bRx.usedLen((bRx.driver.readUsedIdx() - 1) & 0xffff);
    if (len !== want) throw new Error(`micro: ${c.name}: used length ${len}, expected ${want}`);
  };
  /** Every frame of the last round arrived intact: our header (num_buffers 1), then the bytes A sent. */
  const verify = (): void => {
    if (!bRx) return;
    const end = bRx.driver.readUsedIdx();
    for (let k = 1; k <= frames; k++) {
      const { id } = bRx.driver.readUsedElement((end - k) & 0xffff);
      const got = ram.bytes.subarray(bRx.bufs[id]!, bRx.bufs[id]! + want);
      const sent = ram.bytes.subarray(aTx.bufs[id]! + hdrLen, aTx.bufs[id]! + want);
      if (got.subarray(0, hdrLen).some((b, i) => b !== (i === 10 ? 1 : 0)) || Buffer.compare(got.subarray(hdrLen), sent) !== 0) {
        throw new Error(`micro: ${c.name}: frame ${id} arrived damaged`);
      }
    }
  };
  // Warm-up: let the JIT settle.
  for (let i = 0; i < warmup; i++) {
    // Before the last one, B's buffers are scrubbed: what verify finds there was written by that round.
    if (i === warmup - 1 && bRx) for (const b of bRx.bufs) ram.bytes.fill(0xee, b, b + RX_BUF);
    drive();
    check();
    if (i % 20 === 19) await new Promise((res) => setImmediate(res));
  }
  verify();
  delivered = 0;
  const gcs: PerformanceEntry[] = [];
  const obs = new PerformanceObserver((list) => gcs.push(...list.getEntries()));
  obs.observe({ entryTypes: ['gc'] });
  const spans: { t0: number; t1: number; bytes: number }[] = [];
  const profiler = allocProfile === undefined ? undefined : new AllocProfiler();
  await profiler?.start();
  if (instrument) callgrind(true);
  for (let r = 0; r < rounds; r++) {
    const h0 = v8.getHeapStatistics().used_heap_size;
    const t0 = performance.now();
    drive();
    const t1 = performance.now();
    const h1 = v8.getHeapStatistics().used_heap_size;
    spans.push({ t0, t1, bytes: h1 - h0 });
    check();
    if (r % 20 === 19) await new Promise((res) => setImmediate(res));
  }
  if (instrument) callgrind(false);
  verify();
  await new Promise((res) => setTimeout(res, 50));
  obs.disconnect();
  if (profiler) {
    const file = `${allocProfile!.replace(/\.heapprofile$/, '')}-${c.name}.heapprofile`;
    process.stdout.write(`${c.name}: allocation sites over ${rounds * frames} frames (${file}):\n${await profiler.stop(file)}\n`);
  }
  const clean = spans.filter((s) => !gcs.some((g) => g.startTime <= s.t1 + 0.01 && g.startTime + g.duration >= s.t0 - 0.01));
  const times = spans.map((s) => ((s.t1 - s.t0) * 1e6) / frames).sort((x, y) => x - y);
  const bytes = clean.map((s) => s.bytes / frames).sort((x, y) => x - y);
  sw.close();
  return {
    name: c.name,
    nsPerFrame: times[0]!,
    medianNsPerFrame: times[times.length >> 1]!,
    bytesPerFrame: bytes.length > 0 ? bytes[bytes.length >> 1] : undefined,
    cleanRounds: clean.length,
    delivered,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string' }, rounds: { type: 'string' }, warmup: { type: 'string' }, queue: { type: 'string' }, cases: { type: 'string' },
      json: { type: 'boolean' }, 'alloc-profile': { type: 'string' }, callgrind: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(help);
    return;
  }
  setLogLevel('warn');
  const qsize = Number(values.queue ?? 1024);
  const frames = Number(values.frames ?? qsize);
  const rounds = Number(values.rounds ?? 200);
  const names = (values.cases ?? CASES.map((c) => c.name).join(',')).split(',');
  const results: CaseResult[] = [];
  for (const name of names) {
    const c = CASES.find((x) => x.name === name);
    if (!c) throw new Error(`unknown case '${name}'`);
    results.push(await runCase(c, qsize, frames, rounds, Number(values.warmup ?? 100), values['alloc-profile'],
      values.callgrind));
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    return;
  }
  process.stdout.write('case       best ns/frame  median ns/frame  heap B/frame  (clean rounds)\n');
  for (const r of results) {
    process.stdout.write(`${r.name.padEnd(10)} ${r.nsPerFrame.toFixed(1).padStart(13)}  ${r.medianNsPerFrame.toFixed(1).padStart(15)}` +
      `  ${r.bytesPerFrame === undefined ? '–'.padStart(12) : r.bytesPerFrame.toFixed(1).padStart(12)}  (${r.cleanRounds})\n`);
  }
}

await main();
process.exit(0);
