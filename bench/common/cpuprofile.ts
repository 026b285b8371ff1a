/**
 * Summarise V8 `.cpuprofile`s (from `node --cpu-prof`, one per thread: the main thread and any workers): self time
 * per function and per file, biggest first, as text or as a Markdown table to paste into a note.
 */
import fs from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  /** Microseconds on the monotonic clock (CLOCK_MONOTONIC on Linux, as `process.hrtime`). */
  startTime?: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** One line of a summary. */
export interface ProfileEntry {
  name: string;
  /** Self time in milliseconds. */
  selfMs: number;
  /** Share of all sampled time, 0..100. */
  percent: number;
}

/** Self time by function and by file; percentages are of busy time (idle excluded). */
export interface ProfileSummary {
  /** Profiles merged (threads). */
  threads: number;
  /** The span the samples were taken from, when limited. */
  window?: ProfileWindow;
  /** Sampled time, idle excluded. */
  totalMs: number;
  /** Time the thread was idle (waiting in the event loop). */
  idleMs: number;
  functions: ProfileEntry[];
  files: ProfileEntry[];
}

function shortUrl(url: string, root: string): string {
  const p = url.startsWith('file://') ? url.slice(7) : url;
  return p.startsWith(root) ? path.relative(root, p) : p || '(native)';
}

/** A span of the monotonic clock, in microseconds (`process.hrtime.bigint() / 1000n`). */
export interface ProfileWindow {
  fromUs: number;
  toUs: number;
}

/**
 * Summarise profile files (merged: one per thread of a process); `root` shortens file paths. With `window`, only
 * samples taken in it count (leaving out start-up and idle time around a measurement).
 */
export function summarizeCpuProfiles(files: readonly string[], root = process.cwd(), top = 25, window?: ProfileWindow): ProfileSummary {
  let total = 0;
  let idle = 0;
  const fn = new Map<string, number>();
  const byFile = new Map<string, number>();
  for (const file of files) {
    const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const selfUs = new Map<number, number>();
    const samples = profile.samples ?? [];
    const deltas = profile.timeDeltas ?? [];
    // timeDeltas[i] is the time before sample i; attribute it to the sample, as DevTools does.
    let t = profile.startTime ?? 0;
    for (let i = 0; i < samples.length; i++) {
      const dt = deltas[i] ?? 0;
      t += dt;
      if (window && (t < window.fromUs || t > window.toUs)) continue;
      selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + Math.max(0, dt));
    }
    for (const [id, us] of selfUs) {
      const node = byId.get(id);
      if (!node) continue;
      if (node.callFrame.functionName === '(idle)') {
        idle += us;
        continue;
      }
      total += us;
      const { functionName, url, lineNumber } = node.callFrame;
      const where = shortUrl(url, root);
      const key = `${functionName || '(anonymous)'} ${url ? `${where}:${lineNumber + 1}` : ''}`.trim();
      fn.set(key, (fn.get(key) ?? 0) + us);
      byFile.set(where, (byFile.get(where) ?? 0) + us);
    }
  }
  const rank = (m: Map<string, number>): ProfileEntry[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, percent: total ? (100 * us) / total : 0 }));
  return { threads: files.length, ...(window ? { window } : {}), totalMs: total / 1000, idleMs: idle / 1000, functions: rank(fn), files: rank(byFile) };
}

/** Render a summary as text. */
export function formatProfile(s: ProfileSummary, top = 20): string {
  const threads = s.threads > 1 ? ` over ${s.threads} threads` : '';
  const span = s.window ? ` in a ${((s.window.toUs - s.window.fromUs) / 1000).toFixed(0)} ms window` : '';
  const lines = [`busy ${s.totalMs.toFixed(0)} ms${threads}${span} (idle ${s.idleMs.toFixed(0)} ms not counted); self time by function:`];
  for (const e of s.functions.slice(0, top)) lines.push(`  ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`);
  lines.push('self time by file:');
  for (const e of s.files.slice(0, 12)) lines.push(`  ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`);
  return lines.join('\n');
}

/** Render the top functions as a Markdown table (self %, self ms, function). */
export function profileMarkdown(s: ProfileSummary, top = 15): string {
  const esc = (c: string): string => c.replace(/\|/g, '\\|');
  return [
    '| self % | self ms | function |',
    '| ---: | ---: | --- |',
    ...s.functions.slice(0, top).map((e) => `| ${e.percent.toFixed(1)} | ${e.selfMs.toFixed(0)} | \`${esc(e.name)}\` |`),
  ].join('\n');
}
