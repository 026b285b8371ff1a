/**
 * End to end (issue #7): a real Linux guest under QEMU (TCG) uses our `vhost-user scsi` daemon through
 * vhost-user-scsi-pci (modules virtio_scsi, sd_mod, scsi_mod). One boot, two vCPUs, two request queues:
 *
 * - three LUNs at start: 0:0 a sparse image the daemon creates, 0:3 a read-only image with known content, and
 *   1:0 (a second target) a memory disk with 4 KiB blocks and its own vendor and product. The guest reports
 *   each disk's size, vendor, model, VPD 80h serial, read-only flag and block size (`INFO`, `VENDOR`, `MODEL`,
 *   `SERIAL` lines), writes with O_DIRECT from both vCPUs, discards, and hashes what it reads back (`HASH`);
 *   on the read-only disk blkdiscard and writes fail (`RESULT`).
 * - hot-plug: once the guest says `HOTPLUG-READY`, the test adds LUN 0:5 through the daemon's monitor socket;
 *   the guest waits for the disk to appear by itself (no rescan), uses it, says `HOTPLUG-REMOVE-READY`, and
 *   after the test removed it waits for it to go.
 *
 * Then the daemon is stopped (SIGTERM) and the image files are compared with what they must hold.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildInitramfs, type InitramfsFile } from '../guest/initramfs.js';
import { bootGuest, requireQemu } from '../guest/qemu.js';
import { makeTempDir } from '../guest/tmp.js';
import { monitorCommand } from '../helpers/cli.js';
import { VhostDaemon } from './daemon.js';
import { KiB, MiB, describeImageDifference, sha256, taggedLines, testData } from './image.js';

const DISK0_SIZE = 64 * MiB;
const RO_SIZE = 16 * MiB;
const MEM_SIZE = 32 * MiB;
const HOT_SIZE = 8 * MiB;

/** The LUNs, by host-independent address `channel:target:lun`. */
const LUNS = {
  disk0: { addr: '0:0:0', serial: 'e2e-scsi-disk0', size: DISK0_SIZE, lbs: 512, vendor: 'VHOSTUSR', model: 'VIRTUAL-DISK', ro: false },
  ro: { addr: '0:0:3', serial: 'e2e-scsi-ro', size: RO_SIZE, lbs: 512, vendor: 'VHOSTUSR', model: 'VIRTUAL-DISK', ro: true },
  mem4k: { addr: '0:1:0', serial: 'e2e-scsi-4k', size: MEM_SIZE, lbs: 4096, vendor: 'ACME', model: 'SCSI-E2E-4K', ro: false },
  hot: { addr: '0:0:5', serial: 'e2e-scsi-hot', size: HOT_SIZE, lbs: 512, vendor: 'VHOSTUSR', model: 'VIRTUAL-DISK', ro: false },
} as const;

interface Extent {
  readonly offset: number;
  readonly length: number;
}

/** Chunks written to disk 0: first and last block, unaligned to 4 KiB, across MiB boundaries, a large one. */
const CHUNKS: readonly Extent[] = [
  { offset: 0, length: 4 * KiB },
  { offset: 12 * KiB + 512, length: 1536 },
  { offset: MiB - 512, length: 8 * KiB },
  { offset: 3 * MiB + 4 * KiB, length: 132 * KiB },
  { offset: 6 * MiB, length: MiB },
  { offset: 30 * MiB + 3584, length: 4 * KiB },
  { offset: 47 * MiB - 4 * KiB, length: 8 * KiB },
  { offset: DISK0_SIZE - 4 * KiB, length: 4 * KiB },
];
/** Written, then its middle MiB discarded. */
const DISCARD_REGION: Extent = { offset: 15 * MiB - 256 * KiB, length: 1536 * KiB };
const DISCARDED: Extent = { offset: 15 * MiB, length: MiB };
/** On the 4 KiB-block memory disk, and on the hot-added disk. */
const MEM_CHUNK: Extent = { offset: 4 * KiB, length: 64 * KiB };
const HOT_CHUNK: Extent = { offset: 512 * KiB, length: 32 * KiB };

const chunkData = CHUNKS.map((c, i) => testData(`scsi-guest chunk ${i}`, c.length));
const discardData = testData('scsi-guest discard region', DISCARD_REGION.length);
const roContent = testData('scsi-guest read-only image', RO_SIZE);
const memData = testData('scsi-guest memory disk', MEM_CHUNK.length);
const hotData = testData('scsi-guest hot disk', HOT_CHUNK.length);

/** Disk 0 as it must be after the boot. */
function expectedDisk0(): Buffer {
  const image = Buffer.alloc(DISK0_SIZE);
  CHUNKS.forEach((c, i) => chunkData[i]!.copy(image, c.offset));
  discardData.copy(image, DISCARD_REGION.offset);
  image.fill(0, DISCARDED.offset, DISCARDED.offset + DISCARDED.length);
  return image;
}

function expectedHot(): Buffer {
  const image = Buffer.alloc(HOT_SIZE);
  hotData.copy(image, HOT_CHUNK.offset);
  return image;
}

const SHELL_PRELUDE = String.raw`set -e
fail() { echo "FAIL $*"; exit 1; }
# disk C:T:L -> sdX (whatever the host number is)
disk() {
  for b in /sys/block/sd*; do
    [ -e "$b/device" ] || continue
    a=$(basename "$(readlink -f "$b/device")")
    [ "${'$'}{a#*:}" = "$1" ] && { basename "$b"; return 0; }
  done
  return 1
}
info() {
  d=$(disk "$1") || fail "no disk at $1"
  s=/sys/block/$d
  echo "INFO $1 dev=$d size=$(cat $s/size) ro=$(cat $s/ro) lbs=$(cat $s/queue/logical_block_size) discard=$(cat $s/queue/discard_max_bytes)"
  echo "VENDOR $1 $(cat $s/device/vendor)"
  echo "MODEL $1 $(cat $s/device/model)"
  echo "SERIAL $1 $(dd if=$s/device/vpd_pg80 bs=1 skip=4 2>/dev/null)"
}
# w DEV FILE OFFSET LENGTH CPU [CONV]: one O_DIRECT write of FILE at OFFSET, from CPU.
w() {
  taskset -c "$5" dd if="$2" of=/dev/$1 bs="$4" count=1 seek="$3" oflag=direct,seek_bytes conv=notrunc$6 2>/tmp/dd.err ||
    { cat /tmp/dd.err; fail "write of $2 at $3 on $1"; }
}
# h NAME DEV OFFSET LENGTH [CPU]: SHA-256 of the range, read with O_DIRECT.
h() {
  if [ "$4" -le 2097152 ]; then bs=$4; n=1; else bs=1048576; n=$(($4 / 1048576)); fi
  echo "HASH $1 $(taskset -c "${'$'}{5:-0}" dd if=/dev/$2 bs=$bs count=$n skip=$3 iflag=direct,skip_bytes 2>/dev/null | sha256sum | cut -c1-64)"
}
`;

function guestScript(): string {
  const lines = [
    SHELL_PRELUDE,
    'echo "DISKS $(ls -d /sys/block/sd* | wc -l)"',
    `info ${LUNS.disk0.addr}`, `info ${LUNS.ro.addr}`, `info ${LUNS.mem4k.addr}`,
    `d0=$(disk ${LUNS.disk0.addr}); ro=$(disk ${LUNS.ro.addr}); m=$(disk ${LUNS.mem4k.addr})`,
  ];
  // Disk 0: chunks from alternating vCPUs (so both request queues carry requests), some with fsync.
  CHUNKS.forEach((c, i) => lines.push(`w $d0 /data/c${i} ${c.offset} ${c.length} ${i % 2}${i % 3 === 2 ? ' ,fsync' : ''}`));
  lines.push(
    `w $d0 /data/discard ${DISCARD_REGION.offset} ${DISCARD_REGION.length} 1`,
    `blkdiscard -o ${DISCARDED.offset} -l ${DISCARDED.length} /dev/$d0 || fail "blkdiscard on $d0"`,
    `w $m /data/mem ${MEM_CHUNK.offset} ${MEM_CHUNK.length} 1 ,fsync`,
    ...CHUNKS.map((c, i) => `h c${i} $d0 ${c.offset} ${c.length} ${(i + 1) % 2}`),
    `h discard $d0 ${DISCARD_REGION.offset} ${DISCARD_REGION.length}`,
    `h mem $m ${MEM_CHUNK.offset} ${MEM_CHUNK.length} 1`,
    `h ro $ro 0 ${RO_SIZE}`,
    // The read-only disk refuses writes and discards.
    'if blkdiscard -o 0 -l 1048576 /dev/$ro 2>/tmp/e; then echo "RESULT ro-discard succeeded"; else echo "RESULT ro-discard failed $(cat /tmp/e)"; fi',
    'if dd if=/data/c0 of=/dev/$ro bs=4096 count=1 oflag=direct conv=notrunc 2>/tmp/e; then echo "RESULT ro-write succeeded"; ' +
      'else echo "RESULT ro-write failed $(tail -1 /tmp/e)"; fi',
    // Hot-plug: the test adds 0:5 now; the guest must find it without a rescan.
    'echo HOTPLUG-READY',
    'i=0',
    `until hd=$(disk ${LUNS.hot.addr}); do i=$((i + 1)); [ $i -lt 90 ] || fail "hot-added LUN did not appear"; sleep 1; done`,
    'echo "HOT-FOUND after ${i}s"',
    `info ${LUNS.hot.addr}`,
    `w $hd /data/hot ${HOT_CHUNK.offset} ${HOT_CHUNK.length} 0 ,fsync`,
    `h hot $hd ${HOT_CHUNK.offset} ${HOT_CHUNK.length}`,
    'echo HOTPLUG-REMOVE-READY',
    'i=0',
    'while [ -e /sys/block/$hd ]; do i=$((i + 1)); [ $i -lt 90 ] || fail "removed LUN is still there"; sleep 1; done',
    'echo "HOT-GONE after ${i}s"',
    // The other disks still work after the inventory changed (they report REPORTED LUNS DATA HAS CHANGED once).
    `h c0-after $d0 ${CHUNKS[0]!.offset} ${CHUNKS[0]!.length}`,
    `h ro-after $ro 0 ${MiB}`,
    'echo "DISKS-AFTER $(ls -d /sys/block/sd* | wc -l)"',
    'dmesg | grep -iE "scsi|sd[a-z]" | sed "s/^/KLOG /"',
  );
  return lines.join('\n') + '\n';
}

function dataFiles(): InitramfsFile[] {
  return [
    ...CHUNKS.map((_, i) => ({ path: `/data/c${i}`, data: chunkData[i]! })),
    { path: '/data/discard', data: discardData },
    { path: '/data/mem', data: memData },
    { path: '/data/hot', data: hotData },
  ];
}

const monitor = monitorCommand;

test('a Linux guest sees every LUN with its size, vendor, model and serial, reads back what it wrote, ' +
  'discards on a writable LUN only, and finds a hot-added LUN by itself', async (t) => {
  if (!requireQemu(t)) return;
  const dir = makeTempDir(t);
  const socketPath = join(dir, 'scsi.sock');
  const monitorPath = join(dir, 'monitor.sock');
  const disk0 = join(dir, 'disk0.img');
  const roImage = join(dir, 'ro.img');
  const hotImage = join(dir, 'hot.img');
  writeFileSync(roImage, roContent);
  const roBefore = statSync(roImage).mtimeMs;
  const initramfs = await buildInitramfs({ script: guestScript(), extraFiles: dataFiles() });

  const daemon = await VhostDaemon.start(t, ['scsi',
    '--socket-path', socketPath, '--monitor', monitorPath, '--num-queues', '2',
    '--lun', `${disk0},size=64M,serial=${LUNS.disk0.serial}`,
    '--lun', `${roImage},ro,lun=3,serial=${LUNS.ro.serial}`,
    '--lun', `memory:32M,target=1,block-size=4096,vendor=${LUNS.mem4k.vendor},product=${LUNS.mem4k.model},serial=${LUNS.mem4k.serial}`,
  ], { options: undefined, ready: /Attach QEMU with:/ });
  assert.equal(statSync(disk0).size, DISK0_SIZE);
  assert.equal(statSync(disk0).blocks, 0, 'a new sparse image');

  const guest = await bootGuest({
    initramfs, smp: 2, timeoutMs: 300_000, testContext: t,
    extraArgs: ['-chardev', `socket,id=c0,path=${socketPath}`, '-device', 'vhost-user-scsi-pci,chardev=c0,num_queues=2'],
  });
  const context = () => `--- guest console (tail) ---\n${guest.output.split('\n').slice(-60).join('\n')}\n` +
    `--- QEMU stderr ---\n${guest.stderr}\n${daemon.describe()}`;
  try {
    await guest.waitFor(/^HOTPLUG-READY$/m, 240_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${context()}`);
  }
  const added = await monitor(monitorPath, `add ${hotImage},size=8M,lun=5,serial=${LUNS.hot.serial}`);
  assert.match(added, /^ok 0:5 /, `monitor add: ${added}`);
  try {
    await guest.waitFor(/^HOTPLUG-REMOVE-READY$/m, 120_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${context()}`);
  }
  const removed = await monitor(monitorPath, 'remove 0:5');
  assert.equal(removed, 'ok removed 0:5');
  const result = await guest.exited;
  t.diagnostic(`QEMU ran ${result.elapsedMs} ms`);
  assert.equal(result.guestExitCode, 0, `the guest script failed\n${context()}`);
  const out = result.output;

  // What the guest saw of each LUN.
  assert.match(out, /^DISKS 3$/m, `three disks at boot\n${context()}`);
  const info = taggedLines(out, 'INFO');
  const vendor = taggedLines(out, 'VENDOR');
  const model = taggedLines(out, 'MODEL');
  const serial = taggedLines(out, 'SERIAL');
  for (const [name, l] of Object.entries(LUNS)) {
    const line = info.get(l.addr);
    assert.ok(line, `no INFO line for ${name} (${l.addr})\n${context()}`);
    assert.match(line, new RegExp(`size=${l.size / 512} `), `${name}: size in 512-byte sectors`);
    assert.match(line, new RegExp(`ro=${l.ro ? 1 : 0} `), `${name}: read-only flag`);
    assert.match(line, new RegExp(`lbs=${l.lbs} `), `${name}: logical block size`);
    if (l.ro) assert.match(line, /discard=0$/, `${name}: no discard on a read-only LUN`);
    else assert.doesNotMatch(line, /discard=0$/, `${name}: discard offered`);
    assert.equal(vendor.get(l.addr)?.trim(), l.vendor, `${name}: vendor`);
    assert.equal(model.get(l.addr)?.trim(), l.model, `${name}: model`);
    assert.equal(serial.get(l.addr), l.serial, `${name}: VPD page 80h serial`);
  }

  // Data read back.
  const hashes = taggedLines(out, 'HASH');
  const image0 = expectedDisk0();
  CHUNKS.forEach((c, i) => assert.equal(hashes.get(`c${i}`), sha256(chunkData[i]!), `chunk ${i} read back`));
  assert.equal(hashes.get('discard'), sha256(image0.subarray(DISCARD_REGION.offset, DISCARD_REGION.offset + DISCARD_REGION.length)),
    'the discarded MiB reads back as zeros');
  assert.equal(hashes.get('mem'), sha256(memData), '4 KiB-block memory disk');
  assert.equal(hashes.get('ro'), sha256(roContent), 'the read-only image');
  assert.equal(hashes.get('hot'), sha256(hotData), 'the hot-added disk');
  assert.equal(hashes.get('c0-after'), sha256(chunkData[0]!), 'disk 0 still reads after the hot-plug events');
  assert.equal(hashes.get('ro-after'), sha256(roContent.subarray(0, MiB)));

  // The read-only LUN refused writes.
  const results = taggedLines(out, 'RESULT');
  assert.match(results.get('ro-discard') ?? '', /^failed/, 'blkdiscard on the read-only LUN fails');
  assert.match(results.get('ro-write') ?? '', /^failed/, 'writes to the read-only LUN fail');

  // Hot-plug found by the guest on its own, and gone after removal.
  assert.match(out, /^HOT-FOUND after \d+s$/m);
  assert.match(out, /^HOT-GONE after \d+s$/m);
  assert.match(out, /^DISKS-AFTER 3$/m);
  // Linux scanned 256 targets and the LUNs without a complaint.
  const klog = out.split('\n').filter((l) => l.startsWith('KLOG '));
  const bad = klog.filter((l) => /unknown response|scan aborted|unexpected response|timing out|abort|i\/o error|critical/i.test(l));
  assert.deepEqual(bad, [], `kernel complaints:\n${klog.join('\n')}`);

  // A clean stop, with both request queues used and the images holding what the guest wrote.
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.describe());
  assert.equal(existsSync(socketPath), false, 'the socket file is removed');
  assert.equal(existsSync(monitorPath), false, 'the monitor socket is removed');
  const perQueue = /per request queue \[(\d+), (\d+)\]/.exec(daemon.output);
  assert.ok(perQueue, daemon.describe());
  assert.ok(Number(perQueue[1]) > 0 && Number(perQueue[2]) > 0, `both request queues carried requests: ${perQueue[0]}`);
  const diff0 = describeImageDifference(readFileSync(disk0), image0);
  assert.equal(diff0, null, `disk 0 image:\n${diff0}`);
  const diffHot = describeImageDifference(readFileSync(hotImage), expectedHot());
  assert.equal(diffHot, null, `hot-added image (flushed and closed on removal):\n${diffHot}`);
  assert.deepEqual(readFileSync(roImage), roContent, 'the read-only image is untouched');
  assert.equal(statSync(roImage).mtimeMs, roBefore);
  // Discard punched a hole: the file holds the written 4 KiB blocks and little else.
  let nonZero = 0;
  for (let off = 0; off < DISK0_SIZE; off += 4 * KiB) if (!image0.subarray(off, off + 4 * KiB).every((b) => b === 0)) nonZero++;
  const allocated = statSync(disk0).blocks * 512;
  const bound = nonZero * 4 * KiB + 64 * KiB;
  assert.ok(allocated <= bound, `disk 0 has ${allocated} bytes allocated, more than ${bound}: the discarded MiB was not punched out`);
});
