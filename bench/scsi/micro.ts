/**
 * Micro-benchmark of the virtio-scsi request path, the twin of bench/micro/blk-hot-path.ts: in one process and
 * without sockets or kicks, a driver (fixed descriptors per request slot, only the CDB's LBA, the tag and the
 * avail entries rewritten, so the driver allocates nothing) feeds a real {@link Vring} over {@link GuestRam}, and
 * each round is one processing pass as the framework runs it ({@link processRing}: `onAvailable` in a batch), at a
 * fixed queue depth. The chain is laid out as Linux and bench/scsi/driver/scsi_bench.c lay it out: request header
 * (19 + 32 bytes), response header (12 + 96 bytes), data buffer.
 *
 * Cases:
 * - `scsi-null-read10`, `scsi-null-read16`, `scsi-null-write10`: ScsiDevice over a bus with one LUN (target 0,
 *   LUN 0) on a null disk, 4 KiB READ(10) / READ(16) (what bench:scsi sends) / WRITE(10);
 * - `scsi-memory-read16`: the same on a 16 MiB memory disk (data copied);
 * - `lu-null-read10`: LogicalUnit.execute alone (no virtqueue, no transport): a pooled task per slot whose CDB
 *   LBA changes, for the cost of the target emulation by itself.
 *
 *   node dist/bench/scsi/micro.js [--requests N] [--warmup N] [--qd 32] [--bs 4096] [--cases a,b] [--json]
 *
 * Prints ns/request and bytes allocated per request (exact, with `v8.GCProfiler`). For a deterministic cost,
 * count instructions with valgrind at two request counts and divide the difference (see bench/scsi/README.md).
 */
import { fileURLToPath } from 'node:url';
import { measure, microMain, type MeasureOptions, type MicroResult, type Workload } from '../micro/measure.js';
import { SlotDriver } from '../micro/slot-driver.js';
import { processRing } from '../../src/device/processing.js';
import { MemoryStorage } from '../../src/devices/blk/storage/memory.js';
import { NullStorage } from '../../src/devices/blk/storage/null.js';
import type { BlockStorage } from '../../src/devices/blk/storage/storage.js';
import { ScsiDevice } from '../../src/devices/scsi/device.js';
import { ScsiQueue, VirtioScsi, encodeLunField } from '../../src/devices/scsi/protocol.js';
import { ScsiBus } from '../../src/scsi/bus.js';
import { LogicalUnit } from '../../src/scsi/logical-unit.js';
import { ScsiTask, TaskResponse } from '../../src/scsi/task.js';
import { logger } from '../../src/util/log.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtqueue/layout.js';

/** Small enough that every 4 KiB block is read during the warm-up (the memory disk caches page views). */
const DISK = 16 << 20;
const BLOCK = 512;
const REQ_HEADER = VirtioScsi.REQUEST_HEADER_BASE + VirtioScsi.DEFAULT_CDB_SIZE;
const RESP_HEADER = VirtioScsi.RESPONSE_HEADER_BASE + VirtioScsi.DEFAULT_SENSE_SIZE;

interface Options extends MeasureOptions {
  bs: number;
}

type Command = 'read10' | 'read16' | 'write10';

/** Write `cmd` for `blocks` blocks at `lba` into a 32-byte CDB at `cdb[at]`. */
function writeCdb(cdb: Uint8Array, at: number, cmd: Command, lba: number, blocks: number): void {
  if (cmd === 'read16') {
    cdb[at] = 0x88;
    for (let i = 2; i < 6; i++) cdb[at + i] = 0;
    cdb[at + 6] = lba >>> 24; cdb[at + 7] = lba >>> 16; cdb[at + 8] = lba >>> 8; cdb[at + 9] = lba;
    cdb[at + 10] = blocks >>> 24; cdb[at + 11] = blocks >>> 16; cdb[at + 12] = blocks >>> 8; cdb[at + 13] = blocks;
  } else {
    cdb[at] = cmd === 'read10' ? 0x28 : 0x2a;
    cdb[at + 2] = lba >>> 24; cdb[at + 3] = lba >>> 16; cdb[at + 4] = lba >>> 8; cdb[at + 5] = lba;
    cdb[at + 7] = blocks >>> 8; cdb[at + 8] = blocks;
  }
}

/** Where the low 32 bits of the LBA go in the CDB (only they change per command). */
function lbaOffset(cmd: Command): number {
  return cmd === 'read16' ? 6 : 2;
}

/** Per-slot request / response / data buffers with their descriptors written once. */
class Driver extends SlotDriver {
  readonly requestViews: DataView[] = [];
  readonly responses: Uint8Array[] = [];
  readonly responseViews: DataView[] = [];
  readonly cmd: Command;
  readonly bs: number;
  /** Header offset of the LBA's low 32 bits (a number: the per-round code compares no strings). */
  readonly lbaAt: number;
  #tag = 0;

  constructor(qd: number, bs: number, cmd: Command) {
    super(qd, 3);
    this.cmd = cmd;
    this.bs = bs;
    this.lbaAt = VirtioScsi.REQUEST_HEADER_BASE + lbaOffset(cmd);
    const ram = this.ram;
    const write = cmd === 'write10';
    const lunField = encodeLunField(0, 0, true);
    for (let k = 0; k < qd; k++) {
      const head = 3 * k;
      const req = ram.alloc(REQ_HEADER, 8);
      const resp = ram.alloc(RESP_HEADER, 8);
      const data = ram.alloc(bs, 4096);
      const r = ram.bytes(req, REQ_HEADER);
      r.set(lunField, 0);
      writeCdb(r, VirtioScsi.REQUEST_HEADER_BASE, cmd, 0, bs / BLOCK);
      // Linux's order: request, data-out, response, data-in.
      if (write) {
        this.queue.writeDescriptor(head, req, REQ_HEADER, VIRTQ_DESC_F_NEXT, head + 1);
        this.queue.writeDescriptor(head + 1, data, bs, VIRTQ_DESC_F_NEXT, head + 2);
        this.queue.writeDescriptor(head + 2, resp, RESP_HEADER, VIRTQ_DESC_F_WRITE, 0);
      } else {
        this.queue.writeDescriptor(head, req, REQ_HEADER, VIRTQ_DESC_F_NEXT, head + 1);
        this.queue.writeDescriptor(head + 1, resp, RESP_HEADER, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, head + 2);
        this.queue.writeDescriptor(head + 2, data, bs, VIRTQ_DESC_F_WRITE, 0);
      }
      this.requestViews.push(new DataView(r.buffer, r.byteOffset, REQ_HEADER));
      const s = ram.bytes(resp, RESP_HEADER);
      this.responses.push(s);
      this.responseViews.push(new DataView(s.buffer, s.byteOffset, RESP_HEADER));
      this.heads.push(head);
    }
  }

  /** Offer every slot again, each with a new tag and a new random LBA among `blocks` blocks of `bs` bytes. */
  offer(blocks: number): void {
    // Through DataViews, as blk-hot-path's driver writes its headers.
    const perBlock = this.bs / BLOCK;
    const o = this.lbaAt;
    for (let k = 0; k < this.heads.length; k++) {
      const r = this.requestViews[k]!;
      r.setUint32(o, this.nextBlock(blocks) * perBlock);
      // The tag's low 32 bits (the high ones stay 0), a small integer as Linux's are not: the tag is only echoed.
      this.#tag = (this.#tag + 1) & 0x3fffffff;
      r.setUint32(8, this.#tag, true);
      // Status and response poisoned: the device must overwrite them.
      this.responseViews[k]!.setUint16(10, 0xffff);
    }
    this.publishAll();
  }

  /** Throw unless every offered request came back with response OK and status GOOD. */
  check(): void {
    this.checkUsed();
    for (let k = 0; k < this.responses.length; k++) {
      const s = this.responses[k]!;
      if (s[10] !== 0 || s[11] !== 0) throw new Error(`slot ${k}: response ${s[11]}, status ${s[10]}`);
    }
  }
}

function makeStorage(kind: 'null' | 'memory'): BlockStorage {
  return kind === 'null' ? new NullStorage({ size: DISK }) : new MemoryStorage({ size: DISK });
}

/** A ScsiDevice with one LUN behind a real Vring (request queue 0), one processing pass per round. */
function scsiWorkload(opts: Options, storageKind: 'null' | 'memory', cmd: Command): Workload {
  const driver = new Driver(opts.qd, opts.bs, cmd);
  const storage = makeStorage(storageKind);
  const bus = new ScsiBus();
  bus.add(0, 0, new LogicalUnit({ storage, logger: logger('bench') }));
  const device = new ScsiDevice({ bus, logger: logger('bench') });
  device.featuresNegotiated(device.features);
  let failure: Error | undefined;
  const vring = driver.startVring(ScsiQueue.FIRST_REQUEST, device.maxChainLength, (err) => { failure = err; });
  device.ringStarted(vring);
  const blocks = Math.floor(DISK / opts.bs);
  return {
    round() {
      driver.offer(blocks);
      processRing(device, vring);
      if (failure) throw failure;
      driver.check();
    },
    close() {
      vring.dispose();
      device.dispose();
      void storage.close();
      driver.close();
    },
  };
}

/** LogicalUnit.execute alone: `qd` pooled tasks with a data-in view each, one new LBA per command. */
function unitWorkload(opts: Options, cmd: Command): Workload {
  const storage = makeStorage('null');
  const unit = new LogicalUnit({ storage, logger: logger('bench') });
  let done = 0;
  const onComplete = (task: ScsiTask): void => {
    if (task.response !== TaskResponse.COMPLETE || task.status !== 0) throw new Error(`status ${task.status}`);
    done++;
  };
  const tasks: ScsiTask[] = [];
  const buffers: Uint8Array[][] = [];
  const blocks = Math.floor(DISK / opts.bs);
  const perBlock = opts.bs / BLOCK;
  const at = lbaOffset(cmd);
  for (let k = 0; k < opts.qd; k++) {
    const t = new ScsiTask(onComplete);
    writeCdb(t.cdb, 0, cmd, 0, perBlock);
    tasks.push(t);
    buffers.push([new Uint8Array(opts.bs)]);
  }
  // In a typed array: a closure variable past the small-integer range would be boxed anew on every write.
  const seed = Uint32Array.of(12345);
  return {
    round() {
      done = 0;
      for (let k = 0; k < tasks.length; k++) {
        const t = tasks[k]!;
        t.prepare();
        seed[0] = Math.imul(seed[0]!, 1103515245) + 12345;
        const lba = ((seed[0]! >>> 8) % blocks) * perBlock;
        const cdb = t.cdb;
        cdb[at] = lba >>> 24; cdb[at + 1] = lba >>> 16; cdb[at + 2] = lba >>> 8; cdb[at + 3] = lba;
        t.dataIn = buffers[k]!;
        t.dataInLength = opts.bs;
        unit.execute(t);
      }
      if (done !== tasks.length) throw new Error(`${done} of ${tasks.length} commands completed`);
    },
    close() {
      void storage.close();
    },
  };
}

function makeWorkload(name: string, opts: Options): Workload {
  if (name === 'lu-null-read10') return unitWorkload(opts, 'read10');
  const m = /^scsi-(null|memory)-(read10|read16|write10)$/.exec(name);
  if (!m) throw new Error(`unknown case ${name}`);
  return scsiWorkload(opts, m[1] as 'null' | 'memory', m[2] as Command);
}

/** Run one case: warm up, then measure time and allocation over `requests` requests. */
export function runCase(name: string, opts: Options): MicroResult {
  return measure(name, makeWorkload(name, opts), opts);
}

const ALL = ['scsi-null-read10', 'scsi-null-read16', 'scsi-null-write10', 'scsi-memory-read16', 'lu-null-read10'];

function main(): void {
  microMain(ALL, [], (a) => ({ requests: a.requests, warmup: a.warmup, qd: a.qd, bs: a.bs }), runCase,
    (o) => `node ${process.version}, qd ${o.qd}, bs ${o.bs}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
