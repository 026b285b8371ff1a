#!/usr/bin/env node
/**
 * `npm run bench:scsi`: the cost of the SCSI layer. The same cases as bench:blk (4 KiB random reads at queue
 * depth 1, 32 and 128 on 1 and 2 queues and 1 MiB sequential reads on null disks, then reads of an image in the
 * page cache) through our virtio-blk daemon and our virtio-scsi daemon in one run, each driven by a C driver of
 * the same design (bench/blk/driver/blk_bench.c and bench/scsi/driver/scsi_bench.c, both on bench/common/driver/).
 * Reports IOPS, backend CPU per I/O and the scsi/blk ratios; the target is scsi within 15% of blk's IOPS.
 * Writes bench/results/scsi-<time>.json and scsi-latest.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { BenchCase } from '../common/cases.js';
import { buildDriver, writePatternImage } from '../common/c-driver.js';
import { prepareImage, type CachedImage } from '../common/image.js';
import { oursUnavailable, startOurs, type OursKind, type OursVariant } from '../common/ours.js';
import { repoRoot } from '../common/paths.js';
import { hostInfo, writeResults } from '../common/results.js';
import {
  anyFailed, anyNoisy, casesJson, cleanups, commonHelp, commonOptions, errorLines, NOISY_CORES, paramsJson, parseCommon,
  resultsTable, runCase, runMain, sizeText, sideRatio, type CaseRun, type Side, type TableLayout,
} from '../common/runner.js';
import { markdownTable, si, textTable } from '../common/table.js';
import { TARGET, TARGET_PROTOCOL, settingsFor } from './target.js';

const help = `usage: npm run bench:scsi -- [options]

${commonHelp('both daemons')}
Without --repeat and --restart-every, the target's case (${TARGET.case}) runs ${TARGET_PROTOCOL.repeat} times per daemon for
${TARGET_PROTOCOL.seconds} s (or --time), each daemon started afresh every ${TARGET_PROTOCOL.restartEvery} runs: the protocol the target is judged by.
`;

async function main(): Promise<number> {
  const { values: v } = parseArgs({ options: commonOptions });
  if (v.help) {
    process.stdout.write(help);
    return 0;
  }
  const s = parseCommon(v, 'blk');
  // Each setting is measured on both daemons: blk[-x] against scsi[-x].
  const pairs = s.variants.map((blk) => ({ blk, scsi: { ...blk, label: `scsi${blk.label.slice('blk'.length)}` } }));
  for (const kind of ['blk', 'scsi'] as const) {
    const why = oursUnavailable(kind);
    if (why) throw new Error(why);
  }

  process.stderr.write('building the C drivers... ');
  const binaries: Record<OursKind, string> = { blk: buildDriver('blk'), scsi: buildDriver('scsi') };
  process.stderr.write(`${path.relative(repoRoot, binaries.blk)}, ${path.relative(repoRoot, binaries.scsi)}\n`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-scsi-'));
  cleanups.add(() => fs.rmSync(dir, { recursive: true, force: true }));
  let image: CachedImage | undefined;
  if (s.cases.some((c) => c.storage === 'file')) {
    process.stderr.write(`writing a ${sizeText(s.size)} image... `);
    image = await prepareImage({ size: s.size, ...(s.imageDir ? { dir: s.imageDir } : {}), write: (f) => writePatternImage(binaries.blk, f, s.size) });
    cleanups.add(image.remove);
    process.stderr.write(`${image.path}${image.onTmpfs ? ' (tmpfs)' : ' (read once into the page cache)'}\n`);
  }
  const side = (kind: OursKind, variant: OursVariant, c: BenchCase): Side => ({
    label: variant.label,
    binary: binaries[kind],
    start: () => startOurs(kind, {
      socketPath: path.join(dir, `${variant.label}.sock`), size: s.size, queues: c.queues,
      ...(c.storage === 'file' ? { image: image!.path } : {}),
      ...(variant.pollUs === undefined ? {} : { pollUs: variant.pollUs }), ...(variant.workers === undefined ? {} : { workers: variant.workers }),
    }),
  });

  // The target's case may run by its own protocol (bench/scsi/target.ts); every other case by the common settings.
  const targetCase = s.cases.find((c) => c.name === TARGET.case);
  const targetSettings = targetCase ? settingsFor(targetCase, s, v) : s;
  const runs: CaseRun[] = [];
  for (const c of s.cases) {
    runs.push(await runCase(c, pairs.flatMap((p) => [side('blk', p.blk, c), side('scsi', p.scsi, c)]), c === targetCase ? targetSettings : s));
  }

  const ratios = pairs.map((p) => [p.scsi.label, p.blk.label] as const);
  const layout: TableLayout = {
    ceiling: false,
    sides: pairs.flatMap((p) => [{ label: p.blk.label, title: `virtio-${p.blk.label}` }, { label: p.scsi.label, title: `virtio-${p.scsi.label}` }]),
    ratios,
    cpuRatios: ratios,
  };
  const rows = resultsTable(runs, layout);
  const out: string[] = [];
  const example = Object.values(runs[0]?.sides ?? {}).find((x) => x.best)?.best;
  const settings = pairs.map((p) => `${p.blk.label}/${p.scsi.label}: --poll-us ${p.blk.pollUs ?? 'default'}, --workers ${p.blk.workers ?? 'default'}`).join('; ');
  out.push(`reads through our virtio-blk and virtio-scsi daemons, ${s.seconds} s per run after ${s.warmup} s warm-up; ` +
    `queue depth is per queue; C drivers with ${example?.threads ?? '?'} thread(s) for 1 queue, busy-polling, ` +
    `EVENT_IDX ${example?.eventIdx ? 'on' : 'off'}; ${s.cpus} CPUs; ` +
    (image ? `file-* cases on a ${sizeText(s.size)} image in the page cache (${image.onTmpfs ? 'tmpfs' : 'read once'}), the others on null disks` : 'null disks') +
    `; ${settings}.`);
  if (targetSettings !== s) {
    out.push(`${TARGET.case}, the target's case: ${targetSettings.repeat} runs of ${targetSettings.seconds} s per daemon, each daemon started ` +
      `afresh every ${targetSettings.restartEvery} (the protocol the target is judged by; --repeat or --restart-every set your own).`);
  }
  out.push(textTable(rows));
  if (anyNoisy(runs)) out.push(`* other processes used more than ${NOISY_CORES} cores during that window: the number is disturbed`);
  const target = runs.find((r) => r.case.name === TARGET.case);
  const targets = target ? pairs.flatMap((p) => {
    const r = sideRatio(target, p.scsi.label, p.blk.label);
    if (!r) return [];
    // Judged on the adjacent pairs (see Ratio.pairedIops): best against best swings with the machine.
    const ratio = r.pairedIops ?? r.iops;
    return [{ ...TARGET, num: p.scsi.label, den: p.blk.label, ratio, bestRatio: r.iops, pairedRange: r.pairedRange, pairs: r.pairs,
      met: ratio >= TARGET.minRatio,
      protocol: { seconds: targetSettings.seconds, repeat: targetSettings.repeat, restartEvery: targetSettings.restartEvery } }];
  }) : [];
  for (const t of targets) {
    const paired = t.pairs !== undefined && t.pairedRange !== undefined
      ? `median of ${t.pairs} adjacent pair${t.pairs === 1 ? '' : 's'}, range ${t.pairedRange[0].toFixed(2)}-${t.pairedRange[1].toFixed(2)}; best run against best run ${t.bestRatio.toFixed(2)}`
      : `best run against best run`;
    out.push(`target (issues #7, #8): ${TARGET.case} ${t.num}/${t.den} = ${t.ratio.toFixed(2)} (${paired}; needs >= ${TARGET.minRatio}): ` +
      `${t.met ? 'met' : 'NOT met'}${t.pairs !== undefined && t.pairs < 5 ? ' (fewer than 5 pairs: use --repeat 5 or more to judge it)' : ''}` +
      // Each daemon start compiles the hot path anew (bench/scsi/README.md): one start of each is one sample.
      `${targetSettings.restartEvery === 0 && targetSettings.repeat >= 10 ? ' (one start of each daemon: --restart-every 5 samples several)' : ''}`);
  }
  out.push(...errorLines(runs));
  process.stdout.write(out.join('\n') + '\n');
  if (s.markdown) process.stdout.write('\n' + markdownTable(rows) + '\n');

  if (s.write) {
    const data = {
      benchmark: 'scsi',
      date: new Date().toISOString(),
      host: hostInfo(),
      params: { ...paramsJson(s), image: image ? { size: image.size, onTmpfs: image.onTmpfs, dir: path.dirname(image.path) } : undefined },
      targets: targets.length ? targets : undefined,
      cases: casesJson(runs, ratios),
      table: markdownTable(rows),
    };
    const paths = writeResults('scsi', data, s.out);
    process.stderr.write(`wrote ${path.relative(process.cwd(), paths.dated)} and ${path.relative(process.cwd(), paths.latest)}\n`);
  }
  return anyFailed(runs) ? 1 : 0;
}

await runMain('bench:scsi', main);
