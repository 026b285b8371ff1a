/**
 * End to end (issue #6): the daemon dies (SIGKILL) in the middle of a guest's continuous write-and-verify
 * workload and is started again on the same image. The guest's I/O resumes by itself (QEMU reconnects, or the
 * daemon does in --client mode; requests left in flight are resubmitted from the INFLIGHT_SHMFD area), every
 * write the guest acknowledged before the kill is in the image file at the moment of the kill, and at the end
 * every block holds its last write: nothing lost, nothing stale, nothing corrupt. Also: QEMU dies, and the
 * daemon cleans up and serves the next QEMU.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildInitramfs } from '../guest/initramfs.js';
import { bootGuest, requireQemu, type Guest } from '../guest/qemu.js';
import { makeTempDir } from '../guest/tmp.js';
import { BlkDaemon, type BlkDaemonOptions } from './daemon.js';
import { countInflight, killWhenInflight, readInflightArea } from './inflight.js';
import { MiB, sha256, taggedLines } from './image.js';
import { BLOCK, acknowledged, checkImage, finalRegion, regionStart, workloadScript, type Workload } from './workload.js';

const DISK = '64M';
/** Kills aimed at an in-flight request, at most, until one leads to a resubmission. */
const MAX_INFLIGHT_KILLS = 6;

/** Two writers of 24 blocks each (every block rewritten), a reader elsewhere. */
const LOAD: Workload = {
  writers: 2,
  blocksPerWriter: 24,
  writesPerWriter: 100,
  firstBlock: MiB / BLOCK,
  regionStride: (4 * MiB) / BLOCK,
  readerFirstBlock: (32 * MiB) / BLOCK,
  readerBlocks: (8 * MiB) / BLOCK,
};

/** Console, QEMU stderr and the daemons' logs, for assertion messages. */
function context(guest: Guest, daemons: readonly BlkDaemon[]): string {
  const tail = guest.output.split('\n').slice(-60).join('\n');
  return `--- guest console (tail) ---\n${tail}\n--- QEMU stderr ---\n${guest.stderr}\n` +
    daemons.map((d, i) => `[daemon ${i}] ${d.describe()}`).join('\n');
}

/** Resolves once writer 0 has acknowledged step `step`. */
function waitForAck(guest: Guest, step: number, daemons: readonly BlkDaemon[], timeoutMs = 90_000): Promise<unknown> {
  return guest.waitFor(new RegExp(`^ACK 0 ${step}$`, 'm'), timeoutMs).catch((err: Error) => {
    throw new Error(`the guest's I/O did not reach writer 0 step ${step}: ${err.message.split('\n')[0]}\n${context(guest, daemons)}`);
  });
}

/**
 * Call while the daemon is dead: checks the image file against what the guest has acknowledged so far (those
 * writes must already be in the file). Returns the acknowledgements seen.
 */
function checkAtKill(t: TestContext, guest: Guest, image: string, daemons: BlkDaemon[], what: string): number[] {
  const acks = acknowledged(LOAD, guest.output);
  const problems = checkImage(LOAD, readFileSync(image), acks);
  assert.deepEqual(problems, [], `${what}: acknowledged writes missing from the image at the kill (acks ${acks})\n${context(guest, daemons)}`);
  t.diagnostic(`${what}: daemon killed after acknowledged steps ${acks.join(', ')}`);
  return acks;
}

/** After the guest finished: its exit, the final hashes, the image exactly as the last writes left it. */
async function checkFinished(guest: Guest, image: string, daemons: BlkDaemon[]): Promise<void> {
  const result = await guest.exited;
  assert.equal(result.guestExitCode, 0, `the guest workload failed\n${context(guest, daemons)}`);
  assert.deepEqual(acknowledged(LOAD, result.output), new Array(LOAD.writers).fill(LOAD.writesPerWriter - 1));
  const hashes = taggedLines(result.output, 'HASH');
  for (let w = 0; w < LOAD.writers; w++) {
    assert.equal(hashes.get(`region-${w}`), sha256(finalRegion(LOAD, w)), `writer ${w}'s region as the guest reads it at the end`);
  }
  const final = acknowledged(LOAD, result.output);
  const problems = checkImage(LOAD, readFileSync(image), final);
  assert.deepEqual(problems, [], `the image at the end\n${context(guest, daemons)}`);
}

/** Requests resubmitted from the inflight area, as the restarted daemons logged them. */
function resubmitted(daemons: readonly BlkDaemon[]): number {
  let n = 0;
  for (const d of daemons) for (const m of d.output.matchAll(/resubmitting (\d+) request/g)) n += Number(m[1]);
  return n;
}

async function reconnectScenario(t: TestContext, client: boolean): Promise<void> {
  const dir = makeTempDir(t);
  const image = join(dir, 'disk.img');
  const socketPath = join(dir, 'blk.sock');
  // Write-through: each write waits for fdatasync, so requests stay in flight a little longer.
  const options: BlkDaemonOptions = { socketPath, image, size: DISK, client, reconnectMs: 200, writeThrough: true };
  const initramfs = await buildInitramfs({ script: workloadScript(LOAD) });
  const chardev = client
    ? `socket,id=c0,path=${socketPath},server=on,wait=off` // QEMU listens; the daemon connects (and reconnects)
    : `socket,id=c0,path=${socketPath},reconnect=1`; // the daemon listens; QEMU reconnects every second
  const daemons: BlkDaemon[] = [];
  const start = async (): Promise<BlkDaemon> => {
    const d = await BlkDaemon.start(t, options);
    daemons.push(d);
    return d;
  };
  // Server mode: the daemon must listen before QEMU connects. Client mode: QEMU creates the socket and waits.
  if (!client) await start();
  const guest = await bootGuest({
    initramfs,
    extraArgs: ['-chardev', chardev, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1'],
    timeoutMs: 240_000,
    testContext: t,
  });
  if (client) await start();

  // Kill 1 at a random moment (writer 0 at step 10), restart at once.
  await waitForAck(guest, 10, daemons);
  await daemons.at(-1)!.kill();
  checkAtKill(t, guest, image, daemons, 'kill 1 (random moment)');
  await start();

  // Then kill the moment a request is in flight (the inflight area says so), restart (after 1.5 s the first
  // time, so that requests pile up), let the guest make progress, until a restarted daemon has resubmitted
  // requests from the inflight area. SIGKILL can lose the race against a completion, hence the attempts.
  const attempts: string[] = [];
  let resubmissions = 0;
  for (let attempt = 1; attempt <= MAX_INFLIGHT_KILLS && resubmissions === 0; attempt++) {
    const before = acknowledged(LOAD, guest.output)[0]!;
    await waitForAck(guest, before + 3, daemons);
    const victim = daemons.at(-1)!;
    const killed = await killWhenInflight(guest.pid, victim.pid, 60_000);
    assert.ok(killed, `no request was in flight in 60 s of polling the inflight area\n${context(guest, daemons)}`);
    await victim.exited;
    const area = readInflightArea(guest.pid); // QEMU keeps the area for the next backend
    assert.ok(area !== null, 'QEMU holds the inflight area');
    const marked = countInflight(area);
    const acks = checkAtKill(t, guest, image, daemons, `in-flight kill ${attempt}`);
    if (attempt === 1) await sleep(1500);
    const restarted = await start();
    await waitForAck(guest, acks[0]! + 3, daemons);
    resubmissions = resubmitted([restarted]);
    attempts.push(`attempt ${attempt}: ${marked} entr${marked === 1 ? 'y' : 'ies'} marked in flight at the kill, ${resubmissions} resubmitted`);
  }
  t.diagnostic(attempts.join('; '));
  assert.ok(resubmissions > 0,
    `no restarted daemon resubmitted a request from the inflight area (${attempts.join('; ')})\n${context(guest, daemons)}`);
  await checkFinished(guest, image, daemons);
  const last = daemons.at(-1)!;
  assert.deepEqual(await last.stop(), { code: 0, signal: null }, last.describe());
}

test('daemon as server, QEMU reconnect=1: SIGKILL mid-workload (also with requests in flight), restart; I/O resumes, nothing lost', async (t) => {
  if (!requireQemu(t)) return;
  await reconnectScenario(t, false);
});

test('daemon in --client mode, QEMU as server: SIGKILL mid-workload (also with requests in flight), restart; I/O resumes, nothing lost', async (t) => {
  if (!requireQemu(t)) return;
  await reconnectScenario(t, true);
});

test('QEMU killed with requests in flight: the daemon cleans up and serves the next QEMU', async (t) => {
  if (!requireQemu(t)) return;
  const dir = makeTempDir(t);
  const image = join(dir, 'disk.img');
  const socketPath = join(dir, 'blk.sock');
  const daemon = await BlkDaemon.start(t, { socketPath, image, size: DISK });
  const baseFds = daemon.fdCount();
  const baseMemfds = daemon.memfdMappings();
  const devArgs = ['-chardev', `socket,id=c0,path=${socketPath}`, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1'];

  // QEMU 1 runs an endless workload and is SIGKILLed in the middle of it.
  const endless: Workload = { ...LOAD, writesPerWriter: 1_000_000 };
  const first = await bootGuest({ initramfs: await buildInitramfs({ script: workloadScript(endless) }), extraArgs: devArgs, testContext: t });
  await first.waitFor(/^ACK 0 20$/m, 90_000).catch((err: Error) => {
    throw new Error(`${err.message.split('\n')[0]}\n${context(first, [daemon])}`);
  });
  assert.ok(daemon.fdCount() > baseFds, 'the daemon holds the frontend connection, memory and ring fds');
  // Killed while a request is in flight: the daemon finishes or drops it without touching unmapped memory.
  const killed = await killWhenInflight(first.pid, first.pid, 60_000);
  assert.ok(killed, `no request was in flight in 60 s of polling the inflight area\n${context(first, [daemon])}`);
  const gone = await first.exited;
  assert.equal(gone.qemuSignal, 'SIGKILL');
  const acks = acknowledged(endless, gone.output);
  assert.deepEqual(checkImage(endless, readFileSync(image), acks), [], `acknowledged writes are in the image (acks ${acks})`);

  // The daemon notices, drains, unmaps the guest's memory and closes every fd it got from QEMU 1.
  const deadline = Date.now() + 20_000;
  while ((daemon.fdCount() !== baseFds || daemon.memfdMappings().length !== baseMemfds.length) && Date.now() < deadline) {
    await sleep(100);
  }
  assert.ok(daemon.running, `the daemon survived QEMU's death\n${daemon.describe()}`);
  assert.equal(daemon.fdCount(), baseFds, `fds back to the count before QEMU 1 connected\n${daemon.describe()}`);
  assert.deepEqual(daemon.memfdMappings(), baseMemfds, 'no mapping of QEMU 1\'s memory or inflight area is left');

  // QEMU 2 on the same daemon: a complete workload in other blocks.
  const next: Workload = { ...LOAD, writers: 1, writesPerWriter: 30, firstBlock: (48 * MiB) / BLOCK };
  const second = await bootGuest({ initramfs: await buildInitramfs({ script: workloadScript(next) }), extraArgs: devArgs, testContext: t });
  const result = await second.exited;
  assert.equal(result.guestExitCode, 0, `the second QEMU's workload\n${context(second, [daemon])}`);
  assert.equal(taggedLines(result.output, 'HASH').get('region-0'), sha256(finalRegion(next, 0)));
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.describe());

  // Both workloads' blocks, checked together: QEMU 1's acknowledged writes and QEMU 2's final ones.
  const data = readFileSync(image);
  const firstRegions = Buffer.from(data);
  const secondStart = regionStart(next, 0) * BLOCK;
  firstRegions.fill(0, secondStart, secondStart + next.blocksPerWriter * BLOCK);
  assert.deepEqual(checkImage(endless, firstRegions, acks), [], 'QEMU 1\'s acknowledged writes survived');
  assert.ok(data.subarray(secondStart, secondStart + next.blocksPerWriter * BLOCK).equals(finalRegion(next, 0)),
    'QEMU 2\'s writes are in the image');
});
