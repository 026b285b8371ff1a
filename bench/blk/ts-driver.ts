/**
 * How fast our TypeScript frontend (VirtioDriver + BlkClient, a promise per request) drives a backend: a side
 * note of the benchmark, since the C driver is what measures the backends.
 */
import { VirtioDriver } from '../../src/driver/driver.js';
import { BlkClient, BlkRequest, BlkStatus } from '../../test/helpers/blk-client.js';
import { processCpuSeconds } from '../common/daemon.js';
import { cpuTicks } from '../common/system.js';

/** Result of one TypeScript-driver run. */
export interface TsDriverReport {
  qd: number;
  bs: number;
  seconds: number;
  ios: number;
  iops: number;
  errors: number;
  /** CPU of this Node process (the driver) over the window. */
  driverCpuSec: number;
  backendCpuSec: number;
  backendCpuUsPerIo: number;
  /** CPU other processes used during the window (a disturbed run when large). */
  foreignCpuSec: number;
  /** The run ended early because the bump-allocated guest RAM ran low. */
  ranOutOfRam: boolean;
}

/** Keep `qd` random 4 KiB reads in flight on queue 0 for `seconds` (after `warmup`). */
export async function runTsDriver(options: {
  socketPath: string;
  backendPid: number;
  size: number;
  qd: number;
  seconds: number;
  warmup: number;
}): Promise<TsDriverReport> {
  const bs = 4096;
  // BlkClient allocates a header and a status byte per request from a bump allocator: give it room.
  const driver = await VirtioDriver.connect({ socketPath: options.socketPath, ramSize: 512 * 2 ** 20 });
  try {
    await driver.startQueues(1, 256);
    const blk = new BlkClient(driver);
    const blocks = Math.floor(options.size / bs);
    let phase: 'warmup' | 'measure' | 'stop' = 'warmup';
    let ios = 0;
    let errors = 0;
    let ranOutOfRam = false;
    const worker = async (): Promise<void> => {
      const buf = { addr: driver.ram.alloc(bs, 4096), len: bs };
      while (phase !== 'stop') {
        if (driver.ram.free < 2 ** 20) {
          ranOutOfRam = true;
          return;
        }
        const sector = Math.floor(Math.random() * blocks) * (bs / 512);
        const { status } = await blk.request(0, BlkRequest.IN, sector, [buf], true);
        if (phase === 'measure') {
          ios++;
          if (status !== BlkStatus.OK) errors++;
        }
      }
    };
    const workers = Array.from({ length: options.qd }, () => worker());
    await new Promise((r) => setTimeout(r, options.warmup * 1000));
    phase = 'measure';
    const cpu0 = process.cpuUsage();
    const be0 = processCpuSeconds(options.backendPid);
    const sys0 = cpuTicks().busy;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, options.seconds * 1000));
    const seconds = (performance.now() - t0) / 1000;
    const measured = ios;
    const cpu = process.cpuUsage(cpu0);
    const driverCpuSec = (cpu.user + cpu.system) / 1e6;
    const backendCpuSec = processCpuSeconds(options.backendPid) - be0;
    const systemBusy = (cpuTicks().busy - sys0) / 100;
    phase = 'stop';
    await Promise.all(workers);
    return {
      qd: options.qd, bs, seconds, ios: measured, iops: measured / seconds, errors,
      driverCpuSec,
      backendCpuSec, backendCpuUsPerIo: measured ? (backendCpuSec * 1e6) / measured : -1,
      foreignCpuSec: Math.max(0, systemBusy - driverCpuSec - backendCpuSec),
      ranOutOfRam,
    };
  } finally {
    driver.close();
  }
}
