/**
 * The driver side the in-process micro benchmarks share (blk-hot-path, bench/scsi/micro): guest RAM, rings of
 * {@link QUEUE_SIZE} with EVENT_IDX, request slots whose descriptors are written once, the same pseudo-random
 * block sequence, and a {@link Vring} over the rings started as the daemon starts one. Each benchmark's driver adds
 * its own slot layout and the few bytes it rewrites per request, so that the driver's share of a count stays small
 * and alike in every benchmark.
 */
import { GuestRam } from '../../src/driver/guest-ram.js';
import { Vring } from '../../src/device/vring.js';
import { native } from '../../src/native/index.js';
import { logger } from '../../src/util/log.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import type { InflightQueue } from '../../src/virtqueue/inflight.js';
import { availRingBytes, descTableBytes, usedRingBytes } from '../../src/virtqueue/layout.js';

/** Ring size of every micro benchmark. */
export const QUEUE_SIZE = 128;

/** Guest RAM and rings, with one head per request slot ({@link heads}); subclasses lay the slots out. */
export class SlotDriver {
  readonly ram: GuestRam;
  readonly queue: DriverQueue<number>;
  readonly rings: { desc: number; avail: number; used: number };
  /** Each slot's head descriptor, in slot order (subclasses push them). */
  readonly heads: number[] = [];
  #avail = 0;
  #seed = 12345;

  /** Room for `qd` slots of `descriptors` descriptors each. */
  constructor(qd: number, descriptors: number) {
    if (descriptors * qd > QUEUE_SIZE) throw new RangeError(`qd ${qd}: at most ${Math.floor(QUEUE_SIZE / descriptors)}`);
    this.ram = new GuestRam({ size: 8 << 20 });
    const ram = this.ram;
    this.rings = {
      desc: ram.alloc(descTableBytes(QUEUE_SIZE), 4096),
      avail: ram.alloc(availRingBytes(QUEUE_SIZE, true), 4096),
      used: ram.alloc(usedRingBytes(QUEUE_SIZE, true), 4096),
    };
    this.queue = new DriverQueue<number>(ram.memory, QUEUE_SIZE, this.rings, { eventIdx: true });
  }

  /** The rings as the frontend gives them to the device (its virtual addresses). */
  get addresses(): { desc: number; avail: number; used: number } {
    const ram = this.ram;
    return { desc: ram.userAddrOf(this.rings.desc), avail: ram.userAddrOf(this.rings.avail), used: ram.userAddrOf(this.rings.used) };
  }

  /** The next block of the shared pseudo-random sequence, in `[0, blocks)`. */
  nextBlock(blocks: number): number {
    this.#seed = (Math.imul(this.#seed, 1103515245) + 12345) >>> 0;
    return (this.#seed >>> 8) % blocks;
  }

  /** Make every slot available again, with one avail.idx update. */
  publishAll(): void {
    const q = this.queue;
    for (let k = 0; k < this.heads.length; k++) q.writeAvailEntry(this.#avail + k, this.heads[k]!);
    this.#avail = (this.#avail + this.heads.length) & 0xffff;
    q.writeAvailIdx(this.#avail);
  }

  /** Throw unless the device used every chain offered. */
  checkUsed(): void {
    if (this.queue.readUsedIdx() !== this.#avail) {
      throw new Error(`used.idx ${this.queue.readUsedIdx()} != avail.idx ${this.#avail}`);
    }
  }

  /**
   * A started {@link Vring} (queue `index`) over these rings, processed by the benchmark's rounds (its kick watcher
   * is stopped). `broken` receives the error of a ring that breaks.
   */
  startVring(index: number, maxChainLength: number, broken: (err: Error) => void,
    inflight?: InflightQueue): Vring {
    const vring = new Vring(index, { available() {}, broken(_v, err) { broken(err); } }, logger('bench'));
    vring.size = QUEUE_SIZE;
    vring.addresses = this.addresses;
    vring.enabled = true;
    vring.eventIdx = true;
    vring.indirect = true;
    vring.inflight = inflight;
    vring.start(native.eventfd(0), this.ram.memory, maxChainLength);
    vring.stopWatching();
    return vring;
  }

  close(): void {
    this.ram.close();
  }
}
