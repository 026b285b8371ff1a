/**
 * A device served by the real framework (src/device: DeviceBackend and Vring) in this process, on guarded guest
 * memory, without a socket: the rig plays the frontend by calling the backend's handlers directly (features,
 * memory, ring set-up with a real kick eventfd) and the driver by writing rings with {@link DriverRing}. A kick
 * is a direct call of the backend's `available`. This puts each device's request parser on random chains with
 * everything between the ring and the device exactly as in the daemon.
 */
import { native, closeQuietly } from '../../src/native/index.js';
import { DeviceBackend, offeredFeatures, offeredProtocolFeatures } from '../../src/device/backend.js';
import type { VirtioDevice } from '../../src/device/device.js';
import type { Vring } from '../../src/device/vring.js';
import type { DescriptorChain } from '../../src/virtqueue/chain.js';
import { ChainError, QueueError } from '../../src/virtqueue/errors.js';
import { CommonFeature, featureMask, hasFeature } from '../../src/virtio/constants.js';
import { DriverRing, placeRing } from './driver-side.js';
import { GuardedMemory, GuestAllocator } from './guarded-memory.js';
import { CapturingLogger, check } from './harness.js';
import type { Rng } from './rng.js';

/** Options for {@link DeviceRig.create}. */
export interface RigOptions {
  /** Queue indexes to set up (the rest stay unstarted). */
  queues: readonly number[];
  /** Largest ring size to pick (a power of two; capped by the device's maxQueueSize). */
  maxRingSize?: number;
  /** Use exactly this ring size (else a random one up to maxRingSize). */
  ringSize?: number;
  /** Virtio features to accept (default: a random subset of the offered ones, always VERSION_1). */
  features?: bigint;
}

/** A device on the real framework with driver-side rings in guarded memory. */
export class DeviceRig {
  readonly device: VirtioDevice;
  readonly backend: DeviceBackend;
  readonly mem: GuardedMemory;
  readonly alloc: GuestAllocator;
  readonly log: CapturingLogger;
  /** The driver side of each set-up queue. */
  readonly rings = new Map<number, DriverRing>();
  /** Allocation state after the rings: buffers allocated later can be freed with {@link freeBuffers}. */
  #afterRings: readonly number[] = [];

  private constructor(device: VirtioDevice, mem: GuardedMemory, log: CapturingLogger) {
    this.device = device;
    this.mem = mem;
    this.alloc = new GuestAllocator(mem);
    this.log = log;
    this.backend = new DeviceBackend(device, log);
  }

  /** Negotiate, give the memory, set up and start the rings. */
  static create(rng: Rng, device: VirtioDevice, mem: GuardedMemory, log: CapturingLogger, options: RigOptions): DeviceRig {
    const rig = new DeviceRig(device, mem, log);
    const b = rig.backend;
    b.setProtocolFeatures(rng.subsetOf(offeredProtocolFeatures(device)));
    const offered = offeredFeatures(device);
    const features = options.features ?? (rng.subsetOf(offered) | featureMask(CommonFeature.VERSION_1));
    b.setFeatures(features & offered);
    for (const r of mem.memoryRegions()) b.memory.add(r);
    const maxSize = Math.min(options.maxRingSize ?? 64, device.maxQueueSize);
    for (const index of options.queues) {
      let size = options.ringSize ?? 2 ** rng.int(Math.log2(maxSize) + 1);
      let at = placeRing(rng, rig.alloc, size);
      while (at === undefined && size > 1) at = placeRing(rng, rig.alloc, (size >>= 1));
      if (at === undefined) continue;
      const base = rng.chance(0.5) ? 0 : rng.int(0x10000);
      rig.rings.set(index, new DriverRing(mem, size, at, base));
      b.setVringNum({ index, num: size });
      b.setVringBase({ index, num: base });
      b.setVringAddr({ index, flags: 0, desc: mem.vaOf(at.desc), avail: mem.vaOf(at.avail), used: mem.vaOf(at.used), log: 0 });
      b.setVringCall(index, undefined);
      const kick = native.eventfd(0);
      try {
        b.setVringKick(index, kick);
      } catch (err) {
        closeQuietly(kick);
        throw err;
      }
      if (hasFeature(b.features, CommonFeature.PROTOCOL_FEATURES)) b.setVringEnable(index, true);
      check(b.vrings[index]!.started && !b.vrings[index]!.error, () => `queue ${index} did not start: ${b.vrings[index]!.error?.message}`);
    }
    rig.#afterRings = rig.alloc.checkpoint();
    return rig;
  }

  /** Make every buffer allocation since the rings (or since {@link keepBuffers}) free again (once the chains using them are done). */
  freeBuffers(): void {
    this.alloc.rewind(this.#afterRings);
  }

  /**
   * Keep every buffer allocated so far out of {@link freeBuffers}' reach: for buffers a device holds across rounds
   * (an event queue's), which must not be handed out again while it may still write into them.
   */
  keepBuffers(): void {
    this.#afterRings = this.alloc.checkpoint();
  }

  vring(index: number): Vring {
    return this.backend.vrings[index]!;
  }

  /**
   * The driver kicked queue `index`. A ring the device broke must have been broken by the guest (a ChainError or
   * QueueError), not by an exception of the device's own.
   */
  kick(index: number): void {
    if (!this.rings.has(index)) return; // the driver has no such ring to kick
    const v = this.vring(index);
    this.backend.available(v);
    const err = v.error;
    check(err === undefined || err instanceof ChainError || err instanceof QueueError,
      () => `queue ${index} was stopped by a device exception: ${err?.stack ?? String(err)}`);
  }

  /**
   * Reap every ring's used entries: each must be a chain the driver posted, used with the length the device
   * completed it with (`completed`, keyed by index * 0x10000 + head). A ring that is not broken must have
   * processed all that was posted, unless `mayHold(index)` (a device keeps an event queue's buffers). Rings whose
   * descriptors the driver corrupted are only drained. Returns how many rings are broken.
   */
  checkUsed(completed: ReadonlyMap<number, number>, mayHold: (index: number) => boolean = () => false): number {
    let brokenRings = 0;
    for (const [index, ring] of this.rings) {
      const broken = this.vring(index).error !== undefined;
      if (broken) brokenRings++;
      const used = ring.reap();
      // A buffer the driver pointed at its own used ring may have overwritten the entries: nothing to hold the
      // device to there.
      if (ring.corrupted) continue;
      for (const u of used) {
        check(u.known, `queue ${index}: used id ${u.id} is not a chain the driver posted`);
        const len = completed.get(index * 0x10000 + u.id);
        check(len === u.len, `queue ${index}: used length ${u.len} for head ${u.id}, the device completed it with ${len}`);
      }
      check(broken || mayHold(index) || ring.inFlight === 0, () => `queue ${index}: ${ring.inFlight} posted chain(s) were not processed`);
    }
    return brokenRings;
  }

  /** Guards intact? */
  checkGuards(): void {
    const bad = this.mem.firstDamagedGuard();
    check(bad < 0, () => `guard byte at buffer offset ${bad} was overwritten`);
  }

  /** The frontend goes away: the framework stops every ring (waiting for requests in flight) and resets the device. */
  async close(timeoutMs = 5000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
    const result = await Promise.race([this.backend.disconnected(undefined).then(() => 'done' as const), timeout]);
    clearTimeout(timer);
    const pending = this.backend.vrings.map((v) => v.inflightCount).join(',');
    check(result === 'done', () => `the rings did not go idle on disconnect (chains in flight per queue: ${pending})`);
    this.checkGuards();
  }
}

/** Do the chain's buffers overlap each other (then a device's own writes may change what it reads)? */
export function viewsOverlap(chain: DescriptorChain): boolean {
  const ranges = [...chain.readable, ...chain.writable].map((v) => [v.byteOffset, v.byteOffset + v.byteLength] as const)
    .sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) if (ranges[i]![0] < ranges[i - 1]![1]) return true;
  return false;
}
