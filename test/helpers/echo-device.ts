/**
 * A small test device: every chain's readable bytes come back in its writable buffers, upper-cased for ASCII
 * letters, on the same queue. Optional delay to keep chains in flight (async completion).
 */
import type { VirtioDevice } from '../../src/device/device.js';
import type { Vring } from '../../src/device/vring.js';
import type { DescriptorChain } from '../../src/virtqueue/chain.js';
import { RequestRejected } from '../../src/protocol/backend.js';
import { featureMask } from '../../src/virtio/constants.js';

export class EchoDevice implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly features = featureMask(0, 3);
  readonly numQueues: number;
  readonly maxQueueSize = 256;
  readonly inflightTracking = true;
  config = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  handled = 0;
  resets = 0;
  delayMs: number | undefined;

  constructor(numQueues = 2) {
    this.numQueues = numQueues;
  }

  readConfig(): Uint8Array {
    return this.config;
  }

  /** SET_CONFIG may name any offset up to 256: one past the config bytes is refused, as a device should. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset >= this.config.length) throw new RequestRejected(`config offset ${offset} is past the ${this.config.length} bytes`);
    this.config.set(data.subarray(0, this.config.length - offset), offset);
  }

  handleChain(vring: Vring, chain: DescriptorChain): void {
    this.handled++;
    const input = chain.readAll();
    for (let i = 0; i < input.length; i++) {
      const c = input[i]!;
      if (c >= 0x61 && c <= 0x7a) input[i] = c - 0x20;
    }
    const finish = () => vring.complete(chain, chain.writeFrom(input));
    if (this.delayMs === undefined) finish();
    else setTimeout(finish, this.delayMs);
  }

  reset(): void {
    this.resets++;
  }
}
