/**
 * End to end with real Linux guests under QEMU: two guests on two switch ports ping each other and move 4 MiB
 * over TCP (busybox nc) with checksums compared; a guest pings the host end of a TAP uplink inside a network
 * namespace.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Network } from '../../../src/devices/net/network.js';
import { openTap, tapSupported } from '../../../src/devices/net/tap.js';
import { qemuNetArgs } from '../../../src/cli/net.js';
import { requireQemu, runGuest } from '../../guest/qemu.js';
import { makeTempDir } from '../../guest/tmp.js';
import { havePython, pythonOpenTap } from './seqpacket.js';

const MAC_A = '52:54:00:12:34:0a';
const MAC_B = '52:54:00:12:34:0b';

/** Guest-side setup: the interface up with an address; the MAC is checked so we know which device we got. */
function netUp(address: string, mac: string): string {
  return [
    'set -e',
    'test "$(cat /sys/class/net/eth0/address)" = ' + mac,
    'ip link set eth0 up',
    `ip addr add ${address}/24 dev eth0`,
  ].join('\n');
}

/** Retry `cmd` up to `n` times, a second apart. */
function retry(cmd: string, n: number, code: number): string {
  return `i=0; until ${cmd}; do i=$((i+1)); [ $i -lt ${n} ] || { echo "gave up: ${cmd.replace(/"/g, '')}"; exit ${code}; }; sleep 1; done`;
}

test('two guests on two ports: ping, then 4 MiB over TCP with matching checksums', { timeout: 600_000 }, async (t) => {
  if (!requireQemu(t)) return;
  const dir = makeTempDir(t);
  const network = new Network({
    ports: [{ socketPath: path.join(dir, 'a.sock'), name: 'a' }, { socketPath: path.join(dir, 'b.sock'), name: 'b' }],
  }).listen();
  t.after(() => network.close());
  const client = [
    netUp('10.0.0.1', MAC_A),
    retry('ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1', 90, 3),
    'ping -c 3 10.0.0.2',
    'dd if=/dev/urandom of=/tmp/data bs=1024 count=4096 2>/dev/null',
    'echo "SENT $(wc -c < /tmp/data) $(md5sum < /tmp/data | cut -d" " -f1)"',
    retry('nc 10.0.0.2 5000 < /tmp/data', 60, 4),
    'echo CLIENT-DONE',
  ].join('\n') + '\n';
  const server = [
    netUp('10.0.0.2', MAC_B),
    // nc exits when its stdin ends: keep it open (a FIFO held by fd 3) until the client is done.
    'mkfifo /tmp/in',
    'nc -l -p 5000 < /tmp/in > /tmp/got &',
    'NC=$!',
    'exec 3> /tmp/in',
    retry('ping -c 1 -W 1 10.0.0.1 >/dev/null 2>&1', 90, 3),
    'wait $NC',
    'exec 3>&-',
    'echo "RECEIVED $(wc -c < /tmp/got) $(md5sum < /tmp/got | cut -d" " -f1)"',
  ].join('\n') + '\n';
  const [a, b] = await Promise.all([
    runGuest({
      script: client, memoryMiB: 256, timeoutMs: 540_000, testContext: t,
      extraArgs: qemuNetArgs(path.join(dir, 'a.sock'), MAC_A),
    }),
    runGuest({
      script: server, memoryMiB: 256, timeoutMs: 540_000, testContext: t,
      // This guest takes no partial checksums: the switch completes them for it.
      extraArgs: qemuNetArgs(path.join(dir, 'b.sock'), MAC_B, { deviceProps: 'guest_csum=off' }),
    }),
  ]);
  for (const line of network.formatStats().split('\n')) t.diagnostic(line);
  assert.equal(a.guestExitCode, 0, a.output);
  assert.equal(b.guestExitCode, 0, b.output);
  assert.match(a.output, /3 packets transmitted, 3 packets received/);
  const sent = /^SENT (\d+) ([0-9a-f]{32})$/m.exec(a.output);
  const got = /^RECEIVED (\d+) ([0-9a-f]{32})$/m.exec(b.output);
  assert.ok(sent && got, `${a.output}\n${b.output}`);
  assert.equal(sent[1], String(4 << 20));
  assert.equal(got[1], sent[1]);
  assert.equal(got[2], sent[2]);
  const [sa, sb] = network.ports.map((p) => p.stats.snapshot());
  assert.ok(sa!.txBytes > 4 << 20, 'A sent the data through the switch');
  assert.ok(sb!.rxBytes > 4 << 20, 'B received it');
  assert.ok(sb!.csumComputed > 0, 'partial checksums from A were completed for B');
});

function sh(cmd: string[]): void {
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd.join(' ')} failed: ${r.stderr}`);
}

async function openTapFd(t: TestContext, name: string): Promise<{ fd: number; vnetHdr: boolean } | undefined> {
  if (tapSupported()) return openTap(name);
  if (havePython()) return { fd: await pythonOpenTap(name), vnetHdr: false };
  t.skip('SKIPPED: no native tapOpen and no python3 to open a TAP');
  return undefined;
}

test('a guest pings the host end of the TAP uplink in a network namespace and sends it 1 MiB over TCP', { timeout: 300_000 }, async (t) => {
  if (!requireQemu(t)) return;
  if (process.getuid?.() !== 0) {
    t.skip('SKIPPED: needs root for TAP devices and network namespaces');
    return;
  }
  const dir = makeTempDir(t);
  const ns = `vhu-ns-${process.pid}`;
  const tapName = `vhut${process.pid % 100000}`;
  const tap = await openTapFd(t, tapName);
  if (tap === undefined) return;
  const network = new Network({
    ports: [{ socketPath: path.join(dir, 'a.sock'), name: 'a' }], tapFd: tap.fd, tapVnetHdr: tap.vnetHdr,
  }).listen();
  t.after(() => network.close());
  sh(['ip', 'netns', 'add', ns]);
  t.after(() => sh(['ip', 'netns', 'del', ns]));
  // The fd stays attached to the interface when it moves to the namespace.
  sh(['ip', 'link', 'set', tapName, 'netns', ns]);
  sh(['ip', '-n', ns, 'addr', 'add', '10.0.1.1/24', 'dev', tapName]);
  sh(['ip', '-n', ns, 'link', 'set', tapName, 'up']);
  // A listener in the namespace; its stdin stays open (a pipe) so it only exits when the guest is done.
  const received = path.join(dir, 'received');
  const out = fs.openSync(received, 'w');
  const listener = spawn('ip', ['netns', 'exec', ns, 'busybox', 'nc', '-l', '-p', '5001'], { stdio: ['pipe', out, 'pipe'] });
  fs.closeSync(out);
  const listenerDone = new Promise<number | null>((resolve) => listener.on('exit', (code) => resolve(code)));
  t.after(() => {
    if (listener.exitCode === null) listener.kill('SIGKILL');
  });
  const r = await runGuest({
    script: [
      netUp('10.0.1.2', MAC_A),
      retry('ping -c 1 -W 1 10.0.1.1 >/dev/null 2>&1', 90, 3),
      'ping -c 3 10.0.1.1',
      'dd if=/dev/urandom of=/tmp/data bs=1024 count=1024 2>/dev/null',
      'echo "SENT $(md5sum < /tmp/data | cut -d" " -f1)"',
      retry('nc 10.0.1.1 5001 < /tmp/data', 30, 4),
    ].join('\n') + '\n',
    memoryMiB: 256, timeoutMs: 240_000, testContext: t,
    extraArgs: qemuNetArgs(path.join(dir, 'a.sock'), MAC_A),
  });
  for (const line of network.formatStats().split('\n')) t.diagnostic(line);
  assert.equal(r.guestExitCode, 0, r.output);
  assert.match(r.output, /3 packets transmitted, 3 packets received/);
  listener.stdin!.end();
  assert.equal(await listenerDone, 0);
  const sent = /^SENT ([0-9a-f]{32})$/m.exec(r.output)?.[1];
  const got = createHash('md5').update(fs.readFileSync(received)).digest('hex');
  assert.equal(fs.statSync(received).size, 1 << 20);
  assert.equal(got, sent);
  const up = network.uplink!.stats.snapshot();
  assert.ok(up.rxPackets >= 3 && up.txPackets >= 3, JSON.stringify(up));
  assert.ok(up.rxBytes > 1 << 20, 'the data went out through the uplink');
});
