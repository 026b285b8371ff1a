/**
 * io_uring may be refused here (seccomp, kernel.io_uring_disabled): tests that need it skip loudly, unless
 * VHOST_USER_REQUIRE_IO_URING=1 makes that a failure.
 */
import type { TestContext } from 'node:test';
import { native } from '../../src/native/index.js';

const uringUnavailable = ((): string | null => {
  try {
    native.ioUring(1, () => {}).close();
    return null;
  } catch (err) {
    return (err as Error).message;
  }
})();

/** True when io_uring works; otherwise skips `t` (or throws when it is required). */
export function needUring(t: TestContext): boolean {
  if (uringUnavailable === null) return true;
  const message = `io_uring is unavailable here: ${uringUnavailable}`;
  if (process.env['VHOST_USER_REQUIRE_IO_URING'] === '1') throw new Error(`${message} (VHOST_USER_REQUIRE_IO_URING=1)`);
  process.stderr.write(`\n*** ${message} ***\n`);
  t.skip(message);
  return false;
}
