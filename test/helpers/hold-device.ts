/**
 * A test device that pops chains and keeps them in flight until the test says otherwise: the part of a real
 * device whose I/O is still running when its frontend goes away. Completing echoes the readable bytes,
 * upper-cased, like {@link EchoDevice}.
 */
import type { VirtioDevice } from '../../src/device/device.js';
import type { Vring } from '../../src/device/vring.js';
import type { DescriptorChain } from '../../src/virtqueue/chain.js';
import { featureMask } from '../../src/virtio/constants.js';

export class HoldDevice implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly features = featureMask(0, 3);
  readonly numQueues: number;
  readonly maxQueueSize = 256;
  readonly inflightTracking = true;
  config = new Uint8Array(8);
  /** Chains popped and not completed. */
  readonly held: { vring: Vring; chain: DescriptorChain; input: Uint8Array }[] = [];
  popped = 0;
  resets = 0;

  constructor(numQueues = 1) {
    this.numQueues = numQueues;
  }

  readConfig(): Uint8Array {
    return this.config;
  }

  handleChain(vring: Vring, chain: DescriptorChain): void {
    this.popped++;
    this.held.push({ vring, chain, input: chain.readAll() });
  }

  /** Complete every held chain (on whatever its ring is now). */
  release(): void {
    for (const { vring, chain, input } of this.held.splice(0)) {
      const upper = input.map((c) => (c >= 0x61 && c <= 0x7a ? c - 0x20 : c));
      vring.complete(chain, chain.writeFrom(upper));
    }
  }

  reset(): void {
    this.resets++;
  }
}
