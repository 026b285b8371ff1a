/**
 * Fuzz target "chain": the split-ring device side (src/virtqueue/split-queue.ts and the descriptor-chain walker
 * in chain.ts) on random rings in guarded guest memory: 1-4 regions carved out of one SharedArrayBuffer with
 * canary guards around them, GPAs adjacent or apart, VAs in another order; rings placed well or (sometimes)
 * misplaced; descriptor tables holding well-formed chains (direct, indirect, crossing regions, unaligned
 * indirect tables) and their mutations, garbage heads, avail-index jumps, random inflight areas.
 *
 * A reference implementation written here from the virtio spec (plus the queue's documented limits) says, for
 * every pop, whether a chain or an error must come out, and which guest-physical pieces the chain's views must
 * cover. Checked: configure() throws QueueError exactly when a ring area is misplaced; pop() returns the
 * expected chain (views byte-for-byte at the expected places, lengths, descriptor count) or throws a ChainError
 * of the expected kind and the queue stays broken; every view lies inside a region; the device's writes
 * (writable views, used ring, avail_event, inflight) leave every guard byte intact; nothing else is thrown.
 */
import { ChainError, QueueError } from '../../../src/virtqueue/errors.js';
import { InflightQueue, inflightQueueSize } from '../../../src/virtqueue/inflight.js';
import { SplitQueue, type RingAddresses } from '../../../src/virtqueue/split-queue.js';
import { SingleBuffer, type DescriptorChain } from '../../../src/virtqueue/chain.js';
import { DriverRing, F_INDIRECT, F_NEXT, F_WRITE, placeRing, type BufferSpec, type RingPlacement } from '../driver-side.js';
import { GuardedMemory, GuestAllocator, type GuardedRegion, type Piece } from '../guarded-memory.js';
import { check, PropertyViolation, Stats, type FuzzTarget } from '../harness.js';

const stats = new Stats();
import type { Rng } from '../rng.js';

// ---- reference ----

/** What a pop must give: a chain's segments, or an error kind, or nothing. */
export type ExpectedPop =
  | { kind: 'none' }
  | { kind: 'error'; error: string }
  | { kind: 'chain'; head: number; segments: { addr: bigint; len: number; write: boolean }[]; count: number };

interface RawDesc { addr: bigint; len: number; flags: number; next: number }

function parseDesc(b: Uint8Array, at: number): RawDesc {
  const dv = new DataView(b.buffer, b.byteOffset + at, 16);
  return { addr: dv.getBigUint64(0, true), len: dv.getUint32(8, true), flags: dv.getUint16(12, true), next: dv.getUint16(14, true) };
}

/** The spec's chain walk with the queue's limits, over guarded memory. */
export function referenceWalk(mem: GuardedMemory, descGpa: number, size: number, head: number, indirect: boolean,
  maxChainLength: number): ExpectedPop {
  let table = mem.read(descGpa, 16 * size);
  let entries = size;
  let inIndirect = false;
  let steps = 0;
  let count = 0;
  let sawWrite = false;
  let i = head;
  const segments: { addr: bigint; len: number; write: boolean }[] = [];
  const fail = (error: string): ExpectedPop => ({ kind: 'error', error });
  for (;;) {
    if (++steps > entries) return fail('LOOP');
    const d = parseDesc(table, 16 * i);
    if (d.flags & F_INDIRECT) {
      if (inIndirect) return fail('NESTED_INDIRECT');
      if (!indirect) return fail('INDIRECT_NOT_NEGOTIATED');
      if (d.flags & F_NEXT) return fail('INDIRECT_WITH_NEXT');
      if (d.len === 0 || d.len % 16 !== 0 || d.len / 16 > maxChainLength) return fail('INDIRECT_LENGTH');
      const pieces = mem.pieces(d.addr, d.len);
      if (pieces === null) return fail('OUT_OF_MEMORY');
      table = new Uint8Array(d.len);
      let at = 0;
      for (const p of pieces) {
        table.set(mem.bytes.subarray(p.offset, p.offset + p.length), at);
        at += p.length;
      }
      entries = d.len / 16;
      inIndirect = true;
      steps = 0;
      i = 0;
      continue;
    }
    if (d.len === 0) return fail('ZERO_LENGTH');
    if (++count > maxChainLength) return fail('TOO_LONG');
    const write = (d.flags & F_WRITE) !== 0;
    if (!write && sawWrite) return fail('READ_AFTER_WRITE');
    if (mem.pieces(d.addr, d.len) === null) return fail('OUT_OF_MEMORY');
    if (write) sawWrite = true;
    segments.push({ addr: d.addr, len: d.len, write });
    if (!(d.flags & F_NEXT)) break;
    if (d.next >= entries) return fail('NEXT_OUT_OF_RANGE');
    i = d.next;
  }
  return { kind: 'chain', head, segments, count };
}

function u16At(mem: GuardedMemory, gpa: number): number {
  const b = mem.read(gpa, 2);
  return b[0]! | (b[1]! << 8);
}

/** What the next pop must give, from the rings as they are in memory now. */
/** avail.idx as the device last read it: it takes every chain up to there before reading the index again. */
export interface AvailSnapshot {
  idx: number;
}

export function referencePop(mem: GuardedMemory, at: RingPlacement, size: number, lastAvail: number, indirect: boolean,
  maxChainLength: number, seen?: AvailSnapshot): ExpectedPop {
  let idx: number;
  if (seen !== undefined && seen.idx !== lastAvail) {
    // A snapshot is enough: those entries were made available when it was read (the guest moving the index
    // since, even wildly, shows at the next read).
    idx = seen.idx;
  } else {
    idx = u16At(mem, at.avail + 2);
    if (((idx - lastAvail) & 0xffff) > size) return { kind: 'error', error: 'AVAIL_INDEX_JUMP' };
    if (seen !== undefined) seen.idx = idx;
  }
  const n = (idx - lastAvail) & 0xffff;
  if (n === 0) return { kind: 'none' };
  const head = u16At(mem, at.avail + 4 + 2 * (lastAvail & (size - 1)));
  if (head >= size) return { kind: 'error', error: 'HEAD_OUT_OF_RANGE' };
  return referenceWalk(mem, at.desc, size, head, indirect, maxChainLength);
}

function regionAtVa(mem: GuardedMemory, va: number): GuardedRegion | undefined {
  return mem.regions.find((r) => va >= r.va && va < r.va + r.size);
}

/** Where the device will find each ring area (GPA), or the reason configure() must refuse. */
export function referencePlacement(mem: GuardedMemory, vas: RingAddresses, size: number, eventIdx: boolean):
  RingPlacement | string {
  const areas = [
    ['desc', vas.desc, 16 * size, 16, 4],
    ['avail', vas.avail, 4 + 2 * size + (eventIdx ? 2 : 0), 2, 2],
    ['used', vas.used, 4 + 8 * size + (eventIdx ? 2 : 0), 4, 4],
  ] as const;
  const out: Record<string, number> = {};
  for (const [name, va, bytes, align, bufferAlign] of areas) {
    if (!Number.isSafeInteger(va) || va < 0) return `${name}: not an address`;
    if (va % align !== 0) return `${name}: misaligned`;
    const r = regionAtVa(mem, va);
    if (r === undefined || va + bytes > r.va + r.size) return `${name}: not inside one region`;
    if ((r.offset + (va - r.va)) % bufferAlign !== 0) return `${name}: misaligned in the mapping`;
    out[name] = r.gpa + (va - r.va);
  }
  return { desc: out['desc']!, avail: out['avail']!, used: out['used']! };
}

/** The descriptors a chain walk would visit (for failure messages). */
export function describeChain(mem: GuardedMemory, descGpa: number, size: number, head: number): string {
  const out: string[] = [];
  const regions = mem.regions.map((r) => `[0x${r.gpa.toString(16)}+0x${r.size.toString(16)}]`).join(' ');
  let i = head;
  for (let k = 0; k < 24 && i < size; k++) {
    const d = parseDesc(mem.read(descGpa + 16 * i, 16), 0);
    out.push(`#${i} 0x${d.addr.toString(16)}+${d.len} f${d.flags} n${d.next}`);
    if (d.flags & F_INDIRECT) {
      const pieces = mem.pieces(d.addr, Math.min(d.len, 16 * 8));
      if (pieces !== null) {
        const t = mem.read(Number(d.addr), Math.min(d.len, 16 * 8));
        for (let j = 0; j + 16 <= t.length; j += 16) {
          const e = parseDesc(t, j);
          out.push(`  ind${j / 16} 0x${e.addr.toString(16)}+${e.len} f${e.flags} n${e.next}`);
        }
      }
      break;
    }
    if (!(d.flags & F_NEXT)) break;
    i = d.next;
  }
  return `regions ${regions}; chain: ${out.join('; ')}`;
}

// ---- checks on a chain ----

/** The buffer pieces the views of `segments` must be (one per region a segment crosses). */
function expectedPieces(mem: GuardedMemory, segments: { addr: bigint; len: number }[]): Piece[] {
  return segments.flatMap((s) => mem.pieces(s.addr, s.len) ?? []);
}

/** Check a chain against what the reference expects, and that each view lies inside a region. */
export function checkChain(mem: GuardedMemory, chain: DescriptorChain, want: ExpectedPop, describe?: () => string): void {
  check(want.kind === 'chain', () => `pop gave chain ${chain.head}, the reference expects ` +
    `${want.kind === 'error' ? want.error : 'nothing'}${describe ? ` (${describe()})` : ''}`);
  check(chain.head === want.head, () => `chain head ${chain.head}, expected ${want.head}`);
  check(chain.descriptorCount === want.count, () => `chain ${chain.head}: descriptorCount ${chain.descriptorCount}, expected ${want.count}`);
  for (const [views, write, length] of [[chain.readable, false, chain.readableLength], [chain.writable, true, chain.writableLength]] as const) {
    const segs = want.segments.filter((s) => s.write === write);
    const pieces = expectedPieces(mem, segs);
    const total = segs.reduce((n, s) => n + s.len, 0);
    check(length === total, () => `chain ${chain.head}: ${write ? 'writable' : 'readable'} length ${length}, expected ${total}`);
    check(views.length === pieces.length, () => `chain ${chain.head}: ${views.length} ${write ? 'writable' : 'readable'} views, expected ${pieces.length}`);
    views.forEach((v, k) => {
      check(mem.contains(v), () => `chain ${chain.head}: view at buffer offset ${v.byteOffset}+${v.byteLength} is outside every region`);
      const p = pieces[k]!;
      check(v.byteOffset === p.offset && v.byteLength === p.length,
        () => `chain ${chain.head}: view ${k} is ${v.byteOffset}+${v.byteLength}, expected ${p.offset}+${p.length}`);
    });
  }
}

/** Is the reference's chain one device-readable buffer inside one region? Its piece, if so. */
function singlePiece(mem: GuardedMemory, want: ExpectedPop): Piece | undefined {
  if (want.kind !== 'chain' || want.count !== 1 || want.segments.length !== 1 || want.segments[0]!.write) return undefined;
  const pieces = expectedPieces(mem, want.segments);
  return pieces.length === 1 ? pieces[0] : undefined;
}

const single = new SingleBuffer();

/** Is the expected chain's head descriptor an indirect one? */
function headIndirect(mem: GuardedMemory, descGpa: number, want: ExpectedPop): boolean {
  return want.kind === 'chain' && (parseDesc(mem.read(descGpa + 16 * want.head, 16), 0).flags & F_INDIRECT) !== 0;
}

/**
 * `q.popSingle` against the reference: 'taken' (and pushed back) when it took a chain, 'stop' when the ring is
 * empty or broken, 'left' when it left the chain to pop. A chain in an indirect table is left (the reference
 * counts its entries, not the table descriptor, so `count` 1 may be an indirect chain: those are left too).
 */
function trySingle(mem: GuardedMemory, descGpa: number, q: SplitQueue, want: ExpectedPop): 'taken' | 'stop' | 'left' {
  let h: number;
  try {
    h = q.popSingle(single);
  } catch (err) {
    check(err instanceof ChainError && want.kind === 'error' && err.kind === want.error,
      () => `popSingle threw ${String(err)}; the reference expects ${want.kind === 'error' ? want.error : want.kind}`);
    stats.count('single-errors');
    return 'stop';
  }
  if (h === -1) {
    check(want.kind === 'none', () => `popSingle gave nothing; the reference expects ${want.kind === 'error' ? want.error : 'a chain'}`);
    return 'stop';
  }
  const piece = singlePiece(mem, want);
  if (h === -2) {
    // Left to pop: it must not be a plain single buffer (an indirect table of one entry is fine to leave).
    check(piece === undefined || headIndirect(mem, descGpa, want), () => `popSingle left chain ${want.kind === 'chain' ? want.head : ''}, a single buffer`);
    stats.count('single-left');
    return 'left';
  }
  check(piece !== undefined && want.kind === 'chain' && want.head === h && !headIndirect(mem, descGpa, want),
    () => `popSingle took head ${h}; the reference expects ${want.kind === 'chain' ? `chain ${want.head} of ${want.count}` : want.kind}`);
  check(single.region !== null && single.region.buffer === mem.sab && single.offset === piece!.offset &&
    single.length === piece!.length, () => `popSingle gave ${single.offset}+${single.length}, expected ${piece!.offset}+${piece!.length}`);
  stats.count('single-taken');
  q.push(h, 0);
  return 'taken';
}

// ---- generation ----

/**
 * A buffer address: fresh memory, existing memory, a region's edge, across regions, or (more often the more
 * `hostile` the case is) a hole or far away.
 */
function bufferAddress(rng: Rng, mem: GuardedMemory, alloc: GuestAllocator, len: number, hostile: number): bigint {
  const r = rng.pick(mem.regions);
  const h = 40 * hostile;
  return rng.weighted<() => bigint>([
    [10, () => BigInt(alloc.alloc(rng, len, rng.pick([1, 2, 8, 512])) ?? r.gpa)],
    [3, () => BigInt(r.gpa + rng.int(r.size))],
    [1, () => BigInt(r.gpa + r.size - rng.range(1, Math.min(len, r.size)))],
    [h, () => BigInt(r.gpa + r.size + rng.range(0, 64))],
    [h, () => BigInt(r.gpa) - BigInt(rng.range(1, 64))],
    [h, () => rng.interesting64()],
  ])();
}

function bufferLength(rng: Rng, hostile: number): number {
  return rng.weighted<number>([[6, rng.range(1, 64)], [3, rng.range(1, 4096)],
    [10 * hostile, rng.pick([0, 512, 4096, 65536, 0xffffffff])]]);
}

/** Post one chain, well-formed or not. */
function postChain(rng: Rng, mem: GuardedMemory, alloc: GuestAllocator, ring: DriverRing, indirect: boolean,
  hostile: number): void {
  const h = 10 * hostile;
  const action = rng.weighted<string>([[10, 'chain'], [2 * h, 'mutated'], [h, 'garbage-head'], [h, 'garbage-desc'], [h / 4, 'jump']]);
  if (action === 'garbage-head') {
    ring.publish(rng.weighted<number>([[2, rng.int(ring.size)], [1, rng.range(ring.size, 0xffff)]]));
    return;
  }
  if (action === 'garbage-desc') {
    ring.writeDescriptor(rng.int(ring.size), { addr: bufferAddress(rng, mem, alloc, 64, hostile), len: bufferLength(rng, hostile), flags: rng.int(8), next: rng.int(ring.size + 2) });
    return;
  }
  if (action === 'jump') {
    ring.setAvailIdx(ring.availIdx + rng.pick([ring.size + 1, 0x8000, 0xffff, rng.int(0x10000)]));
    return;
  }
  const count = rng.weighted<number>([[6, rng.range(1, 4)], [2, rng.range(1, 16)], [1, rng.range(1, 64)]]);
  const reads = rng.int(count + 1);
  const buffers: BufferSpec[] = [];
  for (let k = 0; k < count; k++) {
    const len = bufferLength(rng, hostile);
    buffers.push({ addr: bufferAddress(rng, mem, alloc, Math.min(len, 65536), hostile), len, write: k >= reads });
  }
  const viaIndirect = rng.chance(indirect ? 0.4 : hostile / 2);
  let table: number | undefined;
  if (viaIndirect) {
    table = alloc.alloc(rng, 16 * count, rng.pick([16, 16, 4, 1]));
    if (table === undefined) return;
  }
  const head = ring.post(buffers, table);
  if (head === undefined || action !== 'mutated') return;
  // Corrupt one descriptor of the chain (or of its indirect table).
  const target = table !== undefined && rng.chance(0.7) ? table + 16 * rng.int(count) : ring.at.desc + 16 * head;
  const field = rng.int(4);
  const b = mem.read(target, 16);
  const dv = new DataView(b.buffer);
  if (field === 0) dv.setBigUint64(0, rng.interesting64(), true);
  else if (field === 1) dv.setUint32(8, rng.interesting32(), true);
  else if (field === 2) dv.setUint16(12, dv.getUint16(12, true) ^ (1 << rng.int(3)), true);
  else dv.setUint16(14, rng.weighted<number>([[2, rng.int(ring.size)], [1, rng.int(0x10000)], [1, head]]), true);
  mem.write(target, b);
}

/** Use a chain as a device would: read it, write it, return it. */
function useChain(rng: Rng, chain: DescriptorChain, q: SplitQueue): void {
  const all = chain.readAll();
  check(all.length === chain.readableLength, 'readAll length');
  const offset = rng.int(chain.readableLength + 2);
  const got = chain.readInto(new Uint8Array(rng.range(0, 64)), offset);
  check(got <= Math.max(0, chain.readableLength - offset), `readInto copied ${got} bytes from offset ${offset} of ${chain.readableLength}`);
  const data = rng.bytes(Math.min(chain.writableLength + rng.range(0, 8), 1 << 17));
  const woff = rng.int(chain.writableLength + 2);
  const wrote = chain.writeFrom(data, woff);
  check(wrote <= Math.max(0, chain.writableLength - woff), `writeFrom wrote ${wrote} bytes at offset ${woff} of ${chain.writableLength}`);
  q.push(chain.head, rng.int(chain.writableLength + 1));
}

// ---- the case ----

function randomPlacement(rng: Rng, mem: GuardedMemory, at: RingPlacement): RingAddresses {
  const vas = { desc: mem.vaOf(at.desc), avail: mem.vaOf(at.avail), used: mem.vaOf(at.used) };
  if (rng.chance(0.9)) return vas;
  const key = rng.pick(['desc', 'avail', 'used'] as const);
  const r = rng.pick(mem.regions);
  vas[key] = rng.weighted<number>([
    [3, vas[key] + rng.pick([-16, -4, -2, -1, 1, 2, 4, 8, 16])],
    [2, r.va + r.size - rng.range(0, 64)],
    [1, r.va + rng.int(r.size)],
    [1, r.va - rng.range(1, 64)],
    [1, rng.pick([0, 2 ** 53 - 2, Number.MAX_SAFE_INTEGER])],
  ]);
  return vas;
}

function runChainCase(rng: Rng): void {
  const mem = GuardedMemory.random(rng, { alignedOnly: rng.chance(0.6) });
  for (const r of mem.regions) rng.fill(mem.bytes.subarray(r.offset, r.offset + r.size));
  const alloc = new GuestAllocator(mem);
  let size = rng.pick([1, 2, 4, 8, 8, 16, 16, 32, 64, 128, 256]);
  let at: RingPlacement | undefined;
  while ((at = placeRing(rng, alloc, size)) === undefined && size > 1) size >>= 1;
  if (at === undefined) return;
  const availStart = rng.chance(0.5) ? 0 : rng.int(0x10000);
  const ring = new DriverRing(mem, size, at, availStart);
  const q = new SplitQueue(0, size);
  q.eventIdx = rng.chance(0.5);
  q.indirect = rng.chance(0.7);
  if (rng.chance(0.3)) q.maxChainLength = rng.pick([1, 2, size + 1, 4 * size, 1024]);
  const vas = randomPlacement(rng, mem, at);
  const placement = referencePlacement(mem, vas, size, q.eventIdx);
  try {
    q.configure(mem.memory, vas);
  } catch (err) {
    check(err instanceof QueueError, () => `configure threw ${String(err)}`);
    stats.count('configure-refused');
    check(typeof placement === 'string', () => `configure refused a valid placement: ${(err as Error).message}`);
    check(mem.firstDamagedGuard() < 0, 'guard damaged by configure');
    return;
  }
  check(typeof placement !== 'string', () => `configure accepted a misplaced ring (${String(placement)})`);
  const dev = placement as RingPlacement;
  q.lastAvailIdx = availStart;

  const hostile = rng.pick([0, 0.02, 0.1, 0.3]);
  const sameRings = dev.desc === at.desc && dev.avail === at.avail && dev.used === at.used;
  // Sometimes an inflight area: fresh, garbage claiming to be initialised, or what a previous backend left when it
  // died with the first chains of the ring popped (their heads marked in some order).
  if (rng.chance(0.25)) {
    const buffer = new SharedArrayBuffer(inflightQueueSize(size) + 64);
    const offset = rng.pick([0, 64]);
    const area = new InflightQueue(buffer, offset, size);
    const variant = rng.int(3);
    let marked: number[] | undefined;
    if (variant === 1) {
      const posted: number[] = [];
      for (let k = rng.range(1, size); k > 0; k--) {
        const addr = alloc.alloc(rng, 64, 8);
        if (addr === undefined) break;
        const head = ring.post([{ addr: BigInt(addr), len: 64, write: rng.chance(0.5) }]);
        if (head !== undefined) posted.push(head);
      }
      marked = posted.slice(0, rng.int(posted.length + 1));
      area.init(availStart);
      const order = [...marked];
      for (let i = order.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      for (const head of order) area.markInflight(head);
      marked = order;
    } else if (variant === 2) {
      rng.fill(new Uint8Array(buffer));
      const dv = new DataView(buffer, offset);
      dv.setUint16(8, 1, true);
      dv.setUint16(10, size, true);
    }
    try {
      const n = q.attachInflight(area);
      check(n <= size, `attachInflight found ${n} heads on a ring of ${size}`);
      // Exact expectations only when the device found the rings where the driver put them.
      if (!sameRings) marked = undefined;
      if (marked) check(n === marked.length, () => `attachInflight found ${n} heads, ${marked!.length} were marked ([${marked!.join()}] on a ring of ${size}, used idx ${availStart}, area used idx ${area.usedIdx}, last batch head ${area.lastBatchHead}, inflight now [${Array.from({ length: size }, (_, h) => h).filter((h) => area.isInflight(h)).join()}])`);
      const chains = q.resubmitInflight();
      stats.count('inflight-resubmitted', chains.length);
      if (marked) {
        check(chains.map((c) => c.head).join() === marked.join(),
          () => `resubmitted heads [${chains.map((c) => c.head).join()}], marked in the order [${marked!.join()}]`);
        check(q.lastAvailIdx === ((availStart + marked.length) & 0xffff), 'lastAvailIdx after recovery');
      }
      const heads = new Set(chains.map((c) => c.head));
      check(heads.size === chains.length, 'resubmitted heads repeat');
      // All checked before any is used: a device write through one chain may land on another's descriptors.
      for (const c of chains) {
        check(c.head < size, `resubmitted head ${c.head} >= ${size}`);
        checkChain(mem, c, referenceWalk(mem, dev.desc, size, c.head, q.indirect, q.maxChainLength),
          () => describeChain(mem, dev.desc, size, c.head));
      }
      for (const c of chains) useChain(rng, c, q);
    } catch (err) {
      if (err instanceof PropertyViolation) throw err;
      check(err instanceof ChainError || err instanceof QueueError, () => `inflight recovery threw ${String(err)}`);
      check(variant === 2 || !sameRings, () => `inflight recovery of a well-formed area failed: ${String(err)}`);
    }
    q.flush();
  }

  const rounds = rng.range(1, 4);
  // Nothing read avail.idx since the base was set (or recovered): the first pop reads it.
  const seen: AvailSnapshot = { idx: q.lastAvailIdx };
  for (let round = 0; round < rounds && !q.broken; round++) {
    const posts = rng.range(1, size + 2);
    for (let k = 0; k < posts; k++) postChain(rng, mem, alloc, ring, q.indirect, hostile);
    if (rng.chance(0.3)) ring.setAvailFlags(rng.int(2), rng.int(0x10000));
    for (let k = 0; k < 2 * size + 4; k++) {
      const want = referencePop(mem, dev, size, q.lastAvailIdx, q.indirect, q.maxChainLength, seen);
      if (rng.chance(0.5)) {
        // The single-buffer pop first: it takes exactly the one-readable-buffer-in-one-region chains, and
        // leaves everything else, untouched, to pop.
        const r = trySingle(mem, dev.desc, q, want);
        if (r === 'stop') break;
        if (r === 'taken') {
          if (rng.chance(0.3)) q.flush();
          continue;
        }
      }
      let chain: DescriptorChain | null;
      try {
        chain = q.pop();
      } catch (err) {
        check(err instanceof ChainError, () => `pop threw ${String(err)}`);
        check(want.kind === 'error', () => `pop threw ${(err as Error).message}; the reference expects ${want.kind === 'chain' ? `chain ${want.head}` : 'nothing'}`);
        check(err.kind === want.error, () => `pop threw ${err.kind}, the reference expects ${want.kind === 'error' ? want.error : ''}`);
        stats.count(`error-${err.kind}`);
        check(q.broken && q.pop() === null && q.pending() === 0, 'a queue that threw is not broken');
        break;
      }
      if (chain === null) {
        check(want.kind === 'none', () => `pop gave nothing; the reference expects ${want.kind === 'error' ? want.error : 'a chain'}`);
        break;
      }
      checkChain(mem, chain, want, () => describeChain(mem, dev.desc, size, chain!.head));
      stats.count('chains');
      if (chain.readable.length + chain.writable.length > chain.descriptorCount) stats.count('chains-crossing-regions');
      useChain(rng, chain, q);
      if (rng.chance(0.3)) q.flush();
      if (rng.chance(0.1)) q.setNotification(rng.chance(0.5));
    }
    q.flush();
    ring.reap();
  }
  const bad = mem.firstDamagedGuard();
  check(bad < 0, () => `guard byte at buffer offset ${bad} was overwritten`);
}

export const chainTarget: FuzzTarget = {
  name: 'chain',
  description: 'SplitQueue and the chain walker on random rings in guarded memory, against a reference walker; ' +
    'views inside regions, guards intact, only ChainError/QueueError',
  batch: 100,
  stats,
  runCase(rng) {
    runChainCase(rng);
  },
};
