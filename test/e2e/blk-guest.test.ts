/**
 * End to end (issue #3): a real Linux guest under QEMU (TCG) uses our `vhost-user blk` daemon as a
 * vhost-user-blk-pci disk backed by a sparse image file. The guest prints what it sees on the serial console
 * (`INFO`, `HASH`, `QUEUE`, `RESULT` lines); the test decides from those lines and from the image file.
 *
 * Three boots: (1) two queues on two vCPUs: size, serial, cache-mode switch, O_DIRECT writes at many offsets,
 * discard, write-zeroes, per-queue completions; (2) after the daemon was stopped and started again on the same
 * image, a second guest reads everything back; (3) a read-only disk (4 KiB blocks) refuses writes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildInitramfs, type InitramfsFile } from '../guest/initramfs.js';
import { bootGuest, requireQemu, type GuestExit } from '../guest/qemu.js';
import { makeTempDir } from '../guest/tmp.js';
import { BlkDaemon } from './daemon.js';
import { KiB, MiB, describeImageDifference, sha256, taggedLines, testData } from './image.js';

const DISK_SIZE = 64 * MiB;
const SERIAL = 'e2e-vhost-blk-0042';

/** A byte range of the disk. */
interface Extent {
  readonly offset: number;
  readonly length: number;
}

/**
 * Where boot 1 writes its chunks: the first and the last block, sector-aligned but not 4 KiB-aligned offsets,
 * a single sector, ranges across MiB boundaries, and large writes the guest splits into several requests.
 */
const CHUNKS: readonly Extent[] = [
  { offset: 0, length: 4 * KiB },
  { offset: 12 * KiB + 512, length: 1536 },
  { offset: MiB - 512, length: 8 * KiB },
  { offset: 2 * MiB, length: 64 * KiB },
  { offset: 3 * MiB + 4 * KiB, length: 132 * KiB },
  { offset: 5 * MiB + 1536, length: 512 },
  { offset: 6 * MiB, length: MiB },
  { offset: 9 * MiB + 20 * KiB, length: 12 * KiB },
  { offset: 11 * MiB + 3584, length: 40 * KiB },
  { offset: 13 * MiB, length: 256 * KiB },
  { offset: 30 * MiB + 3584, length: 4 * KiB },
  { offset: 33 * MiB, length: 512 * KiB },
  { offset: 40 * MiB + 8 * KiB, length: 16 * KiB },
  { offset: 47 * MiB - 4 * KiB, length: 8 * KiB },
  { offset: 52 * MiB + 1024, length: 2 * KiB },
  { offset: 57 * MiB, length: 192 * KiB },
  { offset: 63 * MiB, length: 4 * KiB },
  { offset: DISK_SIZE - 4 * KiB, length: 4 * KiB },
];
/** Written, then the middle MiB discarded (blkdiscard). */
const DISCARD_REGION: Extent = { offset: 15 * MiB - 256 * KiB, length: 1536 * KiB };
const DISCARDED: Extent = { offset: 15 * MiB, length: MiB };
/** Written, then a sector-aligned, odd-sized range zeroed (BLKZEROOUT). */
const ZERO_REGION: Extent = { offset: 20 * MiB, length: 512 * KiB };
const ZEROED: Extent = { offset: 20 * MiB + 3584, length: 196 * KiB };
/** Written by a process pinned to the CPU of queue q, at QUEUE_BLOCKS[q]. */
const QUEUE_BLOCKS: readonly Extent[] = [
  { offset: 24 * MiB, length: 32 * KiB },
  { offset: 25 * MiB, length: 32 * KiB },
];
/** Reads per queue in the per-queue phase (each waits for its completion interrupt). */
const QUEUE_READS = 64;

const chunkData = CHUNKS.map((c, i) => testData(`blk-guest chunk ${i}`, c.length));
const discardData = testData('blk-guest discard region', DISCARD_REGION.length);
const zeroData = testData('blk-guest zero region', ZERO_REGION.length);
const queueData = QUEUE_BLOCKS.map((q, i) => testData(`blk-guest queue ${i}`, q.length));

/** The image as it must be after boot 1. */
function expectedImage(): Buffer {
  const image = Buffer.alloc(DISK_SIZE);
  CHUNKS.forEach((c, i) => chunkData[i]!.copy(image, c.offset));
  discardData.copy(image, DISCARD_REGION.offset);
  image.fill(0, DISCARDED.offset, DISCARDED.offset + DISCARDED.length);
  zeroData.copy(image, ZERO_REGION.offset);
  image.fill(0, ZEROED.offset, ZEROED.offset + ZEROED.length);
  QUEUE_BLOCKS.forEach((q, i) => queueData[i]!.copy(image, q.offset));
  return image;
}

/** The ranges boot 1 and boot 2 checksum, by name, with the extent. */
function hashedRanges(): Map<string, Extent> {
  const ranges = new Map<string, Extent>();
  CHUNKS.forEach((c, i) => ranges.set(`c${i}`, c));
  ranges.set('discard', DISCARD_REGION);
  ranges.set('zero', ZERO_REGION);
  QUEUE_BLOCKS.forEach((q, i) => ranges.set(`q${i}`, q));
  ranges.set('disk', { offset: 0, length: DISK_SIZE });
  return ranges;
}

/** Shell functions shared by the guest scripts. */
const SHELL_PRELUDE = String.raw`set -e
fail() { echo "FAIL $*"; exit 1; }
# w FILE OFFSET LENGTH CPU [CONV]: one O_DIRECT write of the whole file at OFFSET (bytes), from CPU.
w() {
  taskset -c "$4" dd if="$1" of=/dev/vda bs="$3" count=1 seek="$2" oflag=direct,seek_bytes conv=notrunc$5 2>/tmp/dd.err ||
    { cat /tmp/dd.err; fail "write of $1 at $2"; }
}
# h NAME OFFSET LENGTH: SHA-256 of the range, read with O_DIRECT (LENGTH bytes in one read, or 1 MiB reads).
h() {
  if [ "$3" -le 2097152 ]; then set -- "$1" "$2" "$3" "$3" 1; else set -- "$1" "$2" "$3" 1048576 $(($3 / 1048576)); fi
  echo "HASH $1 $(dd if=/dev/vda bs="$4" count="$5" skip="$2" iflag=direct,skip_bytes 2>/dev/null | sha256sum | cut -c1-64)"
}
# irqs Q: completion interrupts of request queue Q so far (all CPUs).
irqs() {
  awk -v name="virtio[0-9]+-req[.]$1\$" '$NF ~ name { s = 0; for (i = 2; i <= NF - 3; i++) s += $i; print s }' /proc/interrupts
}
info() {
  echo "INFO size $(cat /sys/block/vda/size)"
  echo "INFO serial $(cat /sys/block/vda/serial)"
  echo "INFO ro $(cat /sys/block/vda/ro)"
  echo "INFO lbs $(cat /sys/block/vda/queue/logical_block_size)"
  echo "INFO queues $(ls /sys/block/vda/mq | wc -l)"
  echo "INFO cache $(cat /sys/block/vda/cache_type)"
}
`;

function hashLines(ranges: Map<string, Extent>): string[] {
  return [...ranges].map(([name, e]) => `h ${name} ${e.offset} ${e.length}`);
}

/** Boot 1: two vCPUs, two queues. */
function writeScript(): string {
  const lines = [SHELL_PRELUDE, 'info', `echo "INFO discard_max $(cat /sys/block/vda/queue/discard_max_bytes)"`,
    `echo "INFO write_zeroes_max $(cat /sys/block/vda/queue/write_zeroes_max_bytes)"`];
  const half = Math.ceil(CHUNKS.length / 2);
  // The first half of the chunks in write-through mode (the guest writes the config's writeback field).
  lines.push('echo "write through" > /sys/block/vda/cache_type', 'echo "INFO cache_wt $(cat /sys/block/vda/cache_type)"');
  CHUNKS.forEach((c, i) => {
    if (i === half) {
      lines.push('echo "write back" > /sys/block/vda/cache_type', 'echo "INFO cache_wb $(cat /sys/block/vda/cache_type)"');
    }
    // Alternate vCPUs (hence queues); every third write also fsyncs (a FLUSH in write-back mode).
    lines.push(`w /data/c${i} ${c.offset} ${c.length} ${i % 2}${i % 3 === 2 ? ' ,fsync' : ''}`);
  });
  lines.push(
    `w /data/discard ${DISCARD_REGION.offset} ${DISCARD_REGION.length} 0`,
    `blkdiscard -o ${DISCARDED.offset} -l ${DISCARDED.length} /dev/vda || fail blkdiscard`,
    `w /data/zero ${ZERO_REGION.offset} ${ZERO_REGION.length} 1`,
    `blkzeroout /dev/vda ${ZEROED.offset} ${ZEROED.length} || fail blkzeroout`,
    // Per queue: from a CPU mapped to it, one write and QUEUE_READS reads, each waiting for its interrupt.
    'for q in $(ls /sys/block/vda/mq); do',
    '  cpu=$(sed "s/[^0-9].*//" /sys/block/vda/mq/$q/cpu_list)',
    '  before=$(irqs $q)',
    `  case $q in 0) off=${QUEUE_BLOCKS[0]!.offset};; 1) off=${QUEUE_BLOCKS[1]!.offset};; *) fail "unexpected queue $q";; esac`,
    `  w /data/q$q $off ${QUEUE_BLOCKS[0]!.length} $cpu`,
    `  taskset -c $cpu dd if=/dev/vda of=/dev/null bs=4096 count=${QUEUE_READS} skip=$q iflag=direct 2>/dev/null || fail "reads on queue $q"`,
    '  after=$(irqs $q)',
    '  echo "QUEUE $q cpu=$cpu completions=$((after - before))"',
    'done',
    ...hashLines(hashedRanges()),
  );
  return lines.join('\n') + '\n';
}

/** Boot 2: one vCPU, one queue, read everything back. */
function readScript(): string {
  return [SHELL_PRELUDE, 'info', ...hashLines(hashedRanges())].join('\n') + '\n';
}

function dataFiles(): InitramfsFile[] {
  return [
    ...CHUNKS.map((_, i) => ({ path: `/data/c${i}`, data: chunkData[i]! })),
    { path: '/data/discard', data: discardData },
    { path: '/data/zero', data: zeroData },
    ...QUEUE_BLOCKS.map((_, i) => ({ path: `/data/q${i}`, data: queueData[i]! })),
  ];
}

function vhostUserBlkArgs(socketPath: string, numQueues: number): string[] {
  return ['-chardev', `socket,id=c0,path=${socketPath}`, '-device', `vhost-user-blk-pci,chardev=c0,num-queues=${numQueues}`];
}

/** Boots a guest and waits for it; the result plus a message with the console tail and the daemon's log. */
async function boot(
  t: Parameters<typeof requireQemu>[0],
  daemon: BlkDaemon,
  initramfs: string,
  smp: number,
  numQueues: number,
): Promise<{ result: GuestExit; context: string }> {
  const guest = await bootGuest({
    initramfs,
    smp,
    extraArgs: vhostUserBlkArgs(daemon.options.socketPath, numQueues),
    timeoutMs: 180_000,
    testContext: t,
  });
  const result = await guest.exited;
  t.diagnostic(`guest with ${smp} vCPU(s), ${numQueues} queue(s): QEMU ran ${result.elapsedMs} ms`);
  const tail = result.output.split('\n').slice(-80).join('\n');
  const context = `--- guest console (tail) ---\n${tail}\n--- QEMU stderr ---\n${result.stderr}\n${daemon.describe()}`;
  return { result, context };
}

/** Every range's checksum printed by the guest equals the expected image's. */
function assertHashes(output: string, image: Buffer, context: string, boot: string): void {
  const hashes = taggedLines(output, 'HASH');
  for (const [name, e] of hashedRanges()) {
    const expected = sha256(image.subarray(e.offset, e.offset + e.length));
    assert.equal(hashes.get(name), expected,
      `${boot}: range ${name} (${e.length} bytes at ${e.offset}) read back by the guest differs from what was written\n${context}`);
  }
}

test('a Linux guest writes with O_DIRECT at many offsets, discards, zeroes and uses both queues; ' +
  'after a daemon restart a second boot reads it all back', async (t) => {
  if (!requireQemu(t)) return;
  const dir = makeTempDir(t);
  const image = join(dir, 'disk.img');
  const socketPath = join(dir, 'blk.sock');
  const daemonOptions = { socketPath, image, size: '64M', serial: SERIAL, numQueues: 2 } as const;
  const expected = expectedImage();
  const [writeInitramfs, readInitramfs] = await Promise.all([
    buildInitramfs({ script: writeScript(), extraFiles: dataFiles(), helpers: ['blkzeroout'] }),
    buildInitramfs({ script: readScript() }),
  ]);

  // Boot 1 against a fresh, sparse image the daemon creates.
  const first = await BlkDaemon.start(t, daemonOptions);
  const created = statSync(image);
  assert.equal(created.size, DISK_SIZE, 'the daemon created the image with --size');
  assert.equal(created.blocks, 0, 'the new image is sparse');
  const one = await boot(t, first, writeInitramfs, 2, 2);
  assert.equal(one.result.guestExitCode, 0, `boot 1: the guest script failed\n${one.context}`);
  const info = taggedLines(one.result.output, 'INFO');
  assert.equal(info.get('size'), String(DISK_SIZE / 512), `capacity in sectors\n${one.context}`);
  assert.equal(info.get('serial'), SERIAL, `serial (GET_ID)\n${one.context}`);
  assert.equal(info.get('ro'), '0');
  assert.equal(info.get('lbs'), '512');
  assert.equal(info.get('queues'), '2', `the guest sees two request queues\n${one.context}`);
  assert.notEqual(info.get('discard_max'), '0', 'discard is offered');
  assert.notEqual(info.get('write_zeroes_max'), '0', 'write-zeroes is offered (BLKZEROOUT reaches the device)');
  assert.equal(info.get('cache'), 'write back', 'the disk starts write-back');
  assert.equal(info.get('cache_wt'), 'write through', `the driver switched the cache to write-through (SET_CONFIG)\n${one.context}`);
  assert.equal(info.get('cache_wb'), 'write back', 'and back to write-back');
  const queues = [...one.result.output.matchAll(/^QUEUE (\d+) cpu=(\d+) completions=(-?\d+)$/gm)];
  assert.deepEqual(queues.map((m) => m[1]), ['0', '1'], `per-queue lines for queues 0 and 1\n${one.context}`);
  assert.notEqual(queues[0]![2], queues[1]![2], 'the two queues are served from different CPUs');
  for (const m of queues) {
    assert.ok(Number(m[3]) >= QUEUE_READS,
      `queue ${m[1]}: ${m[3]} completion interrupts for ${QUEUE_READS + 1} requests submitted on it\n${one.context}`);
  }
  assertHashes(one.result.output, expected, one.context, 'boot 1');

  // SIGTERM: a clean exit that removes the socket; everything the guest wrote is in the file.
  const stopped = await first.stop();
  assert.deepEqual(stopped, { code: 0, signal: null }, `the daemon exits 0 on SIGTERM\n${first.describe()}`);
  assert.equal(existsSync(socketPath), false, 'the daemon removed its socket file');
  const diff = describeImageDifference(readFileSync(image), expected);
  assert.equal(diff, null, `the image file after boot 1:\n${diff}`);

  // Boot 2: a new daemon on the same image, a new guest (one vCPU, one queue) reads everything back.
  const second = await BlkDaemon.start(t, daemonOptions);
  const two = await boot(t, second, readInitramfs, 1, 1);
  assert.equal(two.result.guestExitCode, 0, `boot 2: the guest script failed\n${two.context}`);
  const info2 = taggedLines(two.result.output, 'INFO');
  assert.equal(info2.get('size'), String(DISK_SIZE / 512));
  assert.equal(info2.get('serial'), SERIAL);
  assert.equal(info2.get('queues'), '1');
  assertHashes(two.result.output, expected, two.context, 'boot 2 (after the daemon restart)');
  assert.deepEqual(await second.stop(), { code: 0, signal: null }, second.describe());
  assert.equal(describeImageDifference(readFileSync(image), expected), null, 'reading changed nothing');

  // Discard punches holes (checked last, so that the checks above report first): the file holds the non-zero
  // 4 KiB blocks, the zeroed range (which may be allocated) and a little metadata, not the discarded MiB.
  let nonZeroBlocks = 0;
  for (let off = 0; off < DISK_SIZE; off += 4 * KiB) {
    if (!expected.subarray(off, off + 4 * KiB).every((b) => b === 0)) nonZeroBlocks++;
  }
  const allocated = statSync(image).blocks * 512;
  const bound = nonZeroBlocks * 4 * KiB + ZEROED.length + 8 * KiB + 64 * KiB;
  assert.ok(allocated <= bound,
    `the image has ${allocated} bytes allocated, more than ${bound}: the discarded MiB was not punched out`);
});

test('a read-only disk (4 KiB blocks) is marked read-only in the guest and refuses writes', async (t) => {
  if (!requireQemu(t)) return;
  const dir = makeTempDir(t);
  const image = join(dir, 'ro.img');
  const socketPath = join(dir, 'blk.sock');
  const size = 16 * MiB;
  const content = testData('blk-guest read-only image', size);
  writeFileSync(image, content);
  const before = statSync(image);
  const block = testData('blk-guest read-only write attempt', 4 * KiB);
  const script = [
    SHELL_PRELUDE,
    'info',
    `h disk 0 ${size}`,
    // Each attempt reports how it failed; none may succeed.
    'try() { name=$1; shift; if "$@" 2>/tmp/err; then echo "RESULT $name succeeded"; else echo "RESULT $name failed: $(cat /tmp/err)"; fi; }',
    'try direct-write dd if=/data/block of=/dev/vda bs=4096 count=1 seek=1 oflag=direct conv=notrunc',
    'try buffered-write dd if=/data/block of=/dev/vda bs=4096 count=1 seek=2 conv=notrunc,fsync',
    'try discard blkdiscard -o 0 -l 1048576 /dev/vda',
    'try zeroout blkzeroout /dev/vda 0 65536',
    'echo 3 > /proc/sys/vm/drop_caches',
    `h after 0 ${size}`,
  ].join('\n') + '\n';
  const initramfs = await buildInitramfs({ script, extraFiles: [{ path: '/data/block', data: block }], helpers: ['blkzeroout'] });

  const daemon = await BlkDaemon.start(t, { socketPath, image, readOnly: true, blockSize: 4096, serial: 'ro-disk' });
  const { result, context } = await boot(t, daemon, initramfs, 1, 1);
  assert.equal(result.guestExitCode, 0, `the guest script failed\n${context}`);
  const info = taggedLines(result.output, 'INFO');
  assert.equal(info.get('ro'), '1', `the kernel marks the disk read-only (VIRTIO_BLK_F_RO)\n${context}`);
  assert.equal(info.get('lbs'), '4096', `logical block size from --block-size\n${context}`);
  assert.equal(info.get('size'), String(size / 512));
  assert.equal(info.get('serial'), 'ro-disk');
  const results = taggedLines(result.output, 'RESULT');
  for (const name of ['direct-write', 'buffered-write', 'discard', 'zeroout']) {
    assert.match(results.get(name) ?? '(no RESULT line)', /^failed: /, `${name} on the read-only disk\n${context}`);
  }
  assert.match(results.get('direct-write')!, /Operation not permitted|Read-only file system|I\/O error/,
    'an O_DIRECT write fails with EPERM, EROFS or EIO');
  const hashes = taggedLines(result.output, 'HASH');
  assert.equal(hashes.get('disk'), sha256(content), `the guest reads the image\n${context}`);
  assert.equal(hashes.get('after'), sha256(content), `and still reads it unchanged after the attempts\n${context}`);

  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.describe());
  assert.ok(readFileSync(image).equals(content), 'the image file is unchanged');
  assert.equal(statSync(image).mtimeMs, before.mtimeMs, 'the image file was never written');
});
