/**
 * How busy the machine is, from /proc/stat: benchmarks of busy-polling pairs are only meaningful when nothing
 * else competes for the cores, so runs wait for a quiet moment and flag disturbed windows.
 */
import fs from 'node:fs';

/** Busy and total CPU time of all CPUs so far, in clock ticks. */
export function cpuTicks(): { busy: number; total: number } {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** Average number of busy cores over `ms`. */
export async function busyCores(ms: number, clockTicks = 100): Promise<number> {
  const a = cpuTicks();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTicks();
  return (b.busy - a.busy) / clockTicks / (ms / 1000);
}

/**
 * Wait until fewer than `maxBusyCores` cores are busy (sampled over 300 ms), for at most `timeoutMs`.
 * Returns the last sample and whether it was quiet.
 */
export async function waitForQuiet(maxBusyCores: number, timeoutMs: number): Promise<{ quiet: boolean; busy: number }> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const busy = await busyCores(300);
    if (busy < maxBusyCores) return { quiet: true, busy };
    if (Date.now() >= end) return { quiet: false, busy };
  }
}
