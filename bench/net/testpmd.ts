/**
 * DPDK `dpdk-testpmd` as a benchmark peer: a virtio-user frontend (`net_virtio_user`) that sends (txonly) or
 * sinks (rxonly) frames on a vhost-user socket, or DPDK's own vhost-user backend (`net_vhost`). Runs without
 * hugepages; its per-port counters are read from the `--stats-period 1` output.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/** Is dpdk-testpmd installed? */
export function testpmdUnavailable(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v dpdk-testpmd'], { stdio: 'ignore' });
  return r.status === 0 ? undefined
    : 'dpdk-testpmd is not installed (apt-get install dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)';
}

/** One testpmd process. */
export interface TestpmdSpec {
  /** Unique per concurrent process (`--file-prefix`). */
  name: string;
  /** `--vdev` arguments, one per port. */
  vdevs: string[];
  /** Forwarding mode: txonly, rxonly, io... */
  mode: string;
  /** The core that only prints stats; the other of 0,1 forwards. */
  mainCore: 0 | 1;
  /** Frame length for txonly. */
  frameLength?: number;
  /** `--eth-peer` destination MAC for txonly on port 0. */
  peer?: string;
}

/** Cumulative counters of one port at one moment. */
export interface PortSample {
  t: number;
  rx: number;
  tx: number;
}

/** A running testpmd. */
export class Testpmd {
  readonly name: string;
  readonly child: ChildProcess;
  output = '';
  /** Samples per port index, in arrival order. */
  readonly samples: PortSample[][] = [];
  #buffer = '';

  private constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.child = child;
    child.stdout!.on('data', (d: Buffer) => this.#onData(d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.output = (this.output + d.toString()).slice(-16_384)));
  }

  static start(spec: TestpmdSpec): Testpmd {
    const args = [
      '-l', '0,1', '--main-lcore', String(spec.mainCore), '--no-huge', '-m', '1024', '--no-pci', '--no-shconf',
      '--file-prefix', spec.name, '--log-level', 'lib.eal:error',
      ...spec.vdevs.flatMap((v) => ['--vdev', v]),
      '--', `--forward-mode=${spec.mode}`, '--stats-period', '1', '--nb-cores=1', '--auto-start',
      ...(spec.frameLength !== undefined ? [`--txpkts=${spec.frameLength}`] : []),
      ...(spec.peer !== undefined ? [`--eth-peer=0,${spec.peer}`] : []),
    ];
    const child = spawn('dpdk-testpmd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    return new Testpmd(spec.name, child);
  }

  #onData(text: string): void {
    this.output = (this.output + text).slice(-16_384);
    this.#buffer += text;
    // A stats block: "NIC statistics for port N" ... "RX-packets: a ..." ... "TX-packets: b ...".
    const re = /NIC statistics for port (\d+)[^]*?RX-packets:\s+(\d+)[^]*?TX-packets:\s+(\d+)/g;
    let last = 0;
    for (let m = re.exec(this.#buffer); m; m = re.exec(this.#buffer)) {
      const port = Number(m[1]);
      (this.samples[port] ??= []).push({ t: performance.now(), rx: Number(m[2]), tx: Number(m[3]) });
      last = re.lastIndex;
    }
    this.#buffer = this.#buffer.slice(last).slice(-4096);
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** Packets per second of `which` counter on `port` between `from` and `to` (performance.now() times). */
  rate(port: number, which: 'rx' | 'tx', from: number, to: number): number | undefined {
    const s = (this.samples[port] ?? []).filter((x) => x.t >= from && x.t <= to);
    if (s.length < 2) return undefined;
    const a = s[0]!;
    const b = s[s.length - 1]!;
    return ((b[which] - a[which]) * 1000) / (b.t - a.t);
  }

  /** SIGINT (testpmd cleans up its vhost socket), SIGKILL if it hangs. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
}

/** Wait until `path` exists (a vhost-user socket), or throw. */
export async function waitForSocket(path: string, timeoutMs: number, alive: () => boolean, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(path)) {
    if (!alive()) throw new Error(`${what} exited before creating ${path}`);
    if (Date.now() > end) throw new Error(`${what} did not create ${path} in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
