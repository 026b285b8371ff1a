/**
 * The cases bench:blk and bench:scsi share: block size, pattern, queue depth per queue, queues, and what the disk
 * is (a null disk, or an image file whose blocks are in the page cache).
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** What the backends read from. */
export type CaseStorage = 'null' | 'file';

/** One benchmark case. Queue depth is per queue. */
export interface BenchCase {
  name: string;
  bs: number;
  pattern: 'rand' | 'seq';
  qd: number;
  queues: number;
  storage: CaseStorage;
}

export const CASES: readonly BenchCase[] = [
  { name: 'rand4k-qd1-q1', bs: 4 * KiB, pattern: 'rand', qd: 1, queues: 1, storage: 'null' },
  { name: 'rand4k-qd32-q1', bs: 4 * KiB, pattern: 'rand', qd: 32, queues: 1, storage: 'null' },
  { name: 'rand4k-qd128-q1', bs: 4 * KiB, pattern: 'rand', qd: 128, queues: 1, storage: 'null' },
  { name: 'rand4k-qd1-q2', bs: 4 * KiB, pattern: 'rand', qd: 1, queues: 2, storage: 'null' },
  // The 2-queue case for `--workers 2` (a worker per queue), next to its driver ceiling.
  { name: 'rand4k-qd32-q2', bs: 4 * KiB, pattern: 'rand', qd: 32, queues: 2, storage: 'null' },
  { name: 'rand4k-qd128-q2', bs: 4 * KiB, pattern: 'rand', qd: 128, queues: 2, storage: 'null' },
  { name: 'seq1m-qd8-q1', bs: 1 * MiB, pattern: 'seq', qd: 8, queues: 1, storage: 'null' },
  { name: 'file-rand4k-qd32-q1', bs: 4 * KiB, pattern: 'rand', qd: 32, queues: 1, storage: 'file' },
  { name: 'file-seq1m-qd8-q1', bs: 1 * MiB, pattern: 'seq', qd: 8, queues: 1, storage: 'file' },
];

/** The cases named in a comma-separated list, in table order (all when `list` is undefined). */
export function selectCases(list: string | undefined): BenchCase[] {
  if (list === undefined) return [...CASES];
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) if (!CASES.some((c) => c.name === n)) throw new Error(`unknown case '${n}' (${CASES.map((c) => c.name).join(', ')})`);
  return CASES.filter((c) => names.includes(c.name));
}
