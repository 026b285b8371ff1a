/**
 * A continuous write-and-verify workload for a guest's /dev/vda, and its host-side checks.
 *
 * Writer `w` writes 4 KiB blocks with O_DIRECT in sequence s = 0, 1, 2, ... to block
 * `base(w) + s % blocksPerWriter` (so every block is rewritten, and a stale write replayed later would show),
 * reads the block back with O_DIRECT, compares, and prints `ACK w s`. A block written at step s holds 256
 * lines `W<w>S<s, 12 digits>\n`. Writers run in parallel, with a reader in the background that keeps more
 * requests in flight. The host reads the image file to check that every acknowledged write is there.
 */
import { KiB } from './image.js';

export const BLOCK = 4 * KiB;

/** Shape of the workload. */
export interface Workload {
  /** Parallel writer loops. */
  readonly writers: number;
  /** Blocks in each writer's region (s % blocksPerWriter picks the block). */
  readonly blocksPerWriter: number;
  /** Writes per writer; the script ends after them. */
  readonly writesPerWriter: number;
  /** First block of writer 0's region; writer w's starts `w * regionStride` blocks later. */
  readonly firstBlock: number;
  readonly regionStride: number;
  /** The background reader's range, in blocks (it reads 256 KiB at a time, cycling). */
  readonly readerFirstBlock: number;
  readonly readerBlocks: number;
}

/** First block of writer `w`. */
export function regionStart(load: Workload, w: number): number {
  return load.firstBlock + w * load.regionStride;
}

/** The 4 KiB that writer `w` writes at step `s`. */
export function blockContent(w: number, s: number): Buffer {
  const line = `W${w}S${String(s).padStart(12, '0')}\n`;
  if (line.length !== 16) throw new RangeError(`writer ${w} / step ${s} do not fit the 16-byte line`);
  return Buffer.from(line.repeat(BLOCK / 16), 'latin1');
}

/**
 * The guest script: start the reader and the writers, wait for the writers, stop the reader, then print
 * `HASH region-<w> <sha256>` of each writer's whole region (read with O_DIRECT). Any I/O error or mismatch
 * prints a line saying so and makes the script exit non-zero.
 */
export function workloadScript(load: Workload): string {
  const lines = [
    'set -e',
    // writer W BASE NBLOCKS COUNT
    'writer() {',
    '  w=$1; base=$2; n=$3; count=$4; s=0',
    '  while [ $s -lt $count ]; do',
    '    b=$((base + s % n))',
    '    yes "W${w}S$(printf %012d $s)" | head -c 4096 > /tmp/w$w',
    '    dd if=/tmp/w$w of=/dev/vda bs=4096 count=1 seek=$b oflag=direct conv=notrunc 2>/tmp/e$w ||',
    '      { echo "WRITE-ERROR $w $s $(cat /tmp/e$w)"; return 1; }',
    '    dd if=/dev/vda of=/tmp/r$w bs=4096 count=1 skip=$b iflag=direct 2>/tmp/e$w ||',
    '      { echo "READ-ERROR $w $s $(cat /tmp/e$w)"; return 1; }',
    '    cmp -s /tmp/w$w /tmp/r$w || { echo "VERIFY-FAIL $w $s block $b"; return 1; }',
    '    echo "ACK $w $s"',
    '    s=$((s + 1))',
    '  done',
    '  echo "WRITER-DONE $w"',
    '}',
    'reader() {',
    '  i=0',
    '  while [ ! -e /tmp/stop ]; do',
    `    dd if=/dev/vda of=/dev/null bs=262144 count=1 skip=$((${load.readerFirstBlock * BLOCK} + i * 262144)) ` +
      'iflag=direct,skip_bytes 2>/tmp/er || { echo "READER-ERROR $(cat /tmp/er)"; return 1; }',
    `    i=$(( (i + 1) % ${Math.max(1, Math.floor((load.readerBlocks * BLOCK) / 262144))} ))`,
    '  done',
    '  echo "READER-DONE"',
    '}',
    'reader & reader_pid=$!',
  ];
  for (let w = 0; w < load.writers; w++) {
    lines.push(`writer ${w} ${regionStart(load, w)} ${load.blocksPerWriter} ${load.writesPerWriter} & pid${w}=$!`);
  }
  lines.push('rc=0');
  for (let w = 0; w < load.writers; w++) lines.push(`wait $pid${w} || rc=1`);
  lines.push('touch /tmp/stop', 'wait $reader_pid || rc=1', '[ $rc = 0 ] || exit 1');
  for (let w = 0; w < load.writers; w++) {
    lines.push(
      `echo "HASH region-${w} $(dd if=/dev/vda bs=4096 count=${load.blocksPerWriter} skip=${regionStart(load, w)} ` +
        'iflag=direct 2>/dev/null | sha256sum | cut -c1-64)"',
    );
  }
  return lines.join('\n') + '\n';
}

/** Highest acknowledged step per writer in `output` (-1: none yet). */
export function acknowledged(load: Workload, output: string): number[] {
  const acks = new Array<number>(load.writers).fill(-1);
  for (const m of output.matchAll(/^ACK (\d+) (\d+)$/gm)) {
    const w = Number(m[1]);
    const s = Number(m[2]);
    if (w < load.writers && s > acks[w]!) acks[w] = s;
  }
  return acks;
}

/** Writer w's region as it must be once every write is done. */
export function finalRegion(load: Workload, w: number): Buffer {
  const region = Buffer.alloc(load.blocksPerWriter * BLOCK);
  const first = Math.max(0, load.writesPerWriter - load.blocksPerWriter);
  for (let s = first; s < load.writesPerWriter; s++) blockContent(w, s).copy(region, (s % load.blocksPerWriter) * BLOCK);
  return region;
}

/**
 * Checks an image against the acknowledgements seen: every block holds the last acknowledged write to it, or
 * (for the one block a writer may have had in flight) the next write; blocks never acknowledged hold zeros or
 * that next write; everything outside the writers' regions is zero. Returns the problems found (empty: all
 * good), each naming the block and what it holds.
 */
export function checkImage(load: Workload, image: Buffer, acks: readonly number[]): string[] {
  const problems: string[] = [];
  const zero = Buffer.alloc(BLOCK);
  const owner = new Map<number, { w: number; j: number }>();
  for (let w = 0; w < load.writers; w++) {
    for (let j = 0; j < load.blocksPerWriter; j++) owner.set(regionStart(load, w) + j, { w, j });
  }
  const blocks = Math.floor(image.length / BLOCK);
  for (let b = 0; b < blocks; b++) {
    const got = image.subarray(b * BLOCK, (b + 1) * BLOCK);
    const o = owner.get(b);
    if (o === undefined) {
      if (!got.equals(zero)) problems.push(`block ${b} (outside the workload) holds ${describeBlock(got)}`);
      continue;
    }
    const { w, j } = o;
    const acked = acks[w]!;
    const n = load.blocksPerWriter;
    const allowed: { what: string; data: Buffer }[] = [];
    if (acked >= j) {
      const s = acked - ((acked - j) % n);
      allowed.push({ what: `step ${s} (acknowledged)`, data: blockContent(w, s) });
    } else {
      allowed.push({ what: 'zeros (never acknowledged)', data: zero });
    }
    const next = acked + 1;
    if (next < load.writesPerWriter && next % n === j) {
      allowed.push({ what: `step ${next} (possibly in flight)`, data: blockContent(w, next) });
    }
    if (!allowed.some((a) => got.equals(a.data))) {
      problems.push(
        `block ${b} (writer ${w}, slot ${j}) holds ${describeBlock(got)}; expected ${allowed.map((a) => a.what).join(' or ')}`,
      );
    }
  }
  return problems;
}

/** What a block holds, in words: zeros, one workload step, or something else (corrupt). */
export function describeBlock(data: Buffer): string {
  if (data.every((x) => x === 0)) return 'zeros';
  const first = data.subarray(0, 16).toString('latin1');
  const m = /^W(\d)S(\d{12})\n$/.exec(first);
  if (m !== null && data.equals(blockContent(Number(m[1]), Number(m[2])))) return `writer ${m[1]} step ${Number(m[2])}`;
  return `corrupt data (${JSON.stringify(first)}...)`;
}
