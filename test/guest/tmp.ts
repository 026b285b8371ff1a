/** Per-test scratch directories (sockets, disk images), removed when the test ends. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

/**
 * Creates a unique directory under the OS temp dir (short, so Unix socket
 * paths inside stay below the 108-byte limit) and removes it after the test.
 */
export function makeTempDir(t: TestContext, prefix = 'vhu-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
