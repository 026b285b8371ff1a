/**
 * Summarise a V8 `.cpuprofile` (from `node --cpu-prof`): self time per function and per file, biggest first.
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

/** Summarise a profile file; `root` shortens file paths. */
export function summarizeCpuProfile(file: string, root = process.cwd(), top = 25): ProfileSummary {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  // timeDeltas[i] is the time before sample i; attribute it to the sample, as DevTools does.
  for (let i = 0; i < samples.length; i++) selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + Math.max(0, deltas[i] ?? 0));
  let total = 0;
  let idle = 0;
  const fn = new Map<string, number>();
  const files = new Map<string, number>();
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
    files.set(where, (files.get(where) ?? 0) + us);
  }
  const rank = (m: Map<string, number>): ProfileEntry[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, percent: total ? (100 * us) / total : 0 }));
  return { totalMs: total / 1000, idleMs: idle / 1000, functions: rank(fn), files: rank(files) };
}

/** Render a summary as text. */
export function formatProfile(s: ProfileSummary, top = 20): string {
  const lines = [`busy ${s.totalMs.toFixed(0)} ms (idle ${s.idleMs.toFixed(0)} ms not counted); self time by function:`];
  for (const e of s.functions.slice(0, top)) lines.push(`  ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`);
  lines.push('self time by file:');
  for (const e of s.files.slice(0, 12)) lines.push(`  ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`);
  return lines.join('\n');
}
