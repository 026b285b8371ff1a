import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { normalizeArchivePath, parentDirs, writeCpio } from './cpio.js';
import { findExecutable } from './host.js';
import { makeTempDir } from './tmp.js';

const entries = [
  { kind: 'dir', path: '/etc' },
  { kind: 'file', path: 'etc/hello.txt', data: Buffer.from('hello, guest\n'), mode: 0o640 },
  { kind: 'file', path: 'etc/empty', data: new Uint8Array(0) },
  { kind: 'file', path: 'etc/odd', data: Buffer.from('12345') },
  { kind: 'symlink', path: 'etc/link', target: 'hello.txt' },
] as const;

test('newc archive layout: aligned headers and data, trailer last', () => {
  const archive = writeCpio(entries, 7);
  const names: string[] = [];
  const inodes: number[] = [];
  let at = 0;
  for (;;) {
    assert.equal(at % 4, 0, `header at ${at} is 4-byte aligned`);
    assert.equal(archive.toString('ascii', at, at + 6), '070701');
    const field = (i: number): number => parseInt(archive.toString('ascii', at + 6 + i * 8, at + 14 + i * 8), 16);
    const fileSize = field(6);
    const nameSize = field(11);
    const name = archive.toString('utf8', at + 110, at + 110 + nameSize - 1);
    assert.equal(archive[at + 110 + nameSize - 1], 0, 'name is NUL-terminated');
    names.push(name);
    inodes.push(field(0));
    const dataAt = Math.ceil((at + 110 + nameSize) / 4) * 4;
    at = Math.ceil((dataAt + fileSize) / 4) * 4;
    if (name === 'TRAILER!!!') break;
  }
  assert.equal(at, archive.length, 'nothing after the trailer');
  assert.deepEqual(names, ['etc', 'etc/hello.txt', 'etc/empty', 'etc/odd', 'etc/link', 'TRAILER!!!']);
  assert.deepEqual(inodes.slice(0, -1), [7, 8, 9, 10, 11], 'inode numbers start at firstIno');
});

test('GNU cpio reads the archive back', (t) => {
  if (findExecutable('cpio') === null) {
    t.skip('cpio binary not installed (only this cross-check needs it)');
    return;
  }
  const dir = makeTempDir(t);
  const listing = execFileSync('cpio', ['-itv', '--quiet'], {
    input: writeCpio([...entries, { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 }]),
    encoding: 'utf8',
  });
  assert.match(listing, /^crw------- .* 5, +1 .* dev\/console$/m);
  assert.match(listing, /^-rw-r----- .* 13 .* etc\/hello\.txt$/m);
  assert.match(listing, /etc\/link -> hello\.txt$/m);

  execFileSync('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { cwd: dir, input: writeCpio(entries) });
  assert.equal(readFileSync(join(dir, 'etc/hello.txt'), 'utf8'), 'hello, guest\n');
  assert.equal(lstatSync(join(dir, 'etc/hello.txt')).mode & 0o7777, 0o640);
  assert.equal(readFileSync(join(dir, 'etc/odd'), 'utf8'), '12345');
  assert.equal(readFileSync(join(dir, 'etc/empty')).length, 0);
  assert.equal(readlinkSync(join(dir, 'etc/link')), 'hello.txt');
});

test('archive paths are normalised and unsafe ones rejected', () => {
  assert.equal(normalizeArchivePath('/bin/x'), 'bin/x');
  assert.equal(normalizeArchivePath('./a/b/'), 'a/b');
  for (const bad of ['', '/', '../x', 'a/../b', 'a//b']) {
    assert.throws(() => normalizeArchivePath(bad), /invalid archive path/, bad);
  }
  assert.throws(() => writeCpio([{ kind: 'file', path: 'x', data: new Uint8Array(1), mode: 0o10000 }]), RangeError);
});

test('parentDirs adds each missing parent once, outermost first', () => {
  const known = new Set(['etc']);
  const dirs = parentDirs(['/etc/a/b/c.txt', 'etc/a/d.txt', 'opt/x'], known);
  assert.deepEqual(
    dirs.map((d) => d.path),
    ['etc/a', 'etc/a/b', 'opt'],
  );
});
