/**
 * 200 connect / negotiate / inflight / two queues / round trip / disconnect cycles against one server (every
 * other one stopping its rings first, every 20th a malformed message): the process's fd count is flat and its
 * mapped memory does not grow. Runs in a child with --expose-gc so that mappings whose buffers are unreachable
 * are collected before measuring (the test runner does not expose gc).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Snapshot } from './cycles-child.js';

const CYCLES = 200;
/** Guest RAM per cycle in the child (4 MiB, mapped by the frontend and by the backend). */
const RAM_KB = 4 * 1024;

interface Result {
  before: Snapshot;
  after: Snapshot;
  cycles: number;
  handled: number;
  closedWithReason: number;
}

function runChild(): Promise<Result> {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cycles-child.js');
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--expose-gc', script, String(CYCLES)], { maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`stress child failed: ${err.message}\n${stderr}`));
        return;
      }
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()!) as Result);
      } catch (parseErr) {
        reject(new Error(`bad output from the stress child: ${String(parseErr)}\n${stdout}\n${stderr}`));
      }
    });
  });
}

test(`${CYCLES} connect/negotiate/round-trip/disconnect cycles: fd count flat, mapped memory not growing`, async () => {
  const r = await runChild();
  assert.equal(r.cycles, CYCLES);
  // 190 cycles with two round trips each; 10 were malformed-message cycles, each closed with a logged reason.
  assert.equal(r.handled, 2 * (CYCLES - CYCLES / 20));
  assert.equal(r.closedWithReason, CYCLES / 20);
  assert.equal(r.after.fds, r.before.fds, 'open fds before and after');
  assert.equal(r.after.memfdMappings, 0, 'no guest RAM or inflight area still mapped');
  assert.equal(r.before.memfdMappings, 0);
  // The V8 heap may add a few mappings and a few hundred KiB; a leak of any per-cycle mapping would add one line
  // per cycle, and a leak of guest RAM at least 4 MiB per cycle (800 MiB in all).
  assert.ok(r.after.mapsLines - r.before.mapsLines < CYCLES / 10,
    `maps grew from ${r.before.mapsLines} to ${r.after.mapsLines} lines`);
  assert.ok(r.after.vmSizeKb - r.before.vmSizeKb < RAM_KB,
    `VmSize grew from ${r.before.vmSizeKb} kB to ${r.after.vmSizeKb} kB (one cycle's RAM is ${RAM_KB} kB)`);
});
