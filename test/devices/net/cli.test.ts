import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expandSocketPaths, macForPath, qemuNetArgs } from '../../../src/cli/net.js';
import { decodeNetConfig } from '../../../src/virtio/config.js';
import { tempDir, waitUntil } from '../../helpers/tmp.js';
import { NetGuest, tagOf, testFrame } from './net-guest.js';

const main = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/cli/main.js');

test('socket path expansion and stable MACs', () => {
  assert.deepEqual(expandSocketPaths('/run/n.sock', 1), ['/run/n.sock']);
  assert.deepEqual(expandSocketPaths('/run/n.sock', 2), ['/run/n.sock.0', '/run/n.sock.1']);
  assert.deepEqual(expandSocketPaths('/run/n%d.sock', 2), ['/run/n0.sock', '/run/n1.sock']);
  assert.equal(macForPath('/a'), macForPath('/a'));
  assert.notEqual(macForPath('/a'), macForPath('/b'));
  assert.match(macForPath('/a'), /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/);
  assert.deepEqual(qemuNetArgs('/s', '02:00:00:00:00:01', { queuePairs: 2, mtu: 9000 }), [
    '-chardev', 'socket,id=c0,path=/s', '-netdev', 'vhost-user,id=n0,chardev=c0,queues=2',
    '-device', 'virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01,vectors=0,mq=on,host_mtu=9000',
  ]);
});

test('--print-qemu prints one guest per port with vectors=0 and shared memory; bad usage exits 2', () => {
  const r = spawnSync(process.execPath, [main, 'net', '--print-qemu', '--port', '/tmp/x.sock', '--port', '/tmp/y.sock',
    '--mac', '02:11:22:33:44:55'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /path=\/tmp\/x\.sock/);
  assert.match(r.stdout, /mac=02:11:22:33:44:55,vectors=0/);
  assert.match(r.stdout, new RegExp(`mac=${macForPath('/tmp/y.sock')},vectors=0`));
  assert.match(r.stdout, /memory-backend-memfd,id=mem,size=\d+M,share=on/);
  for (const bad of [['--port', '/tmp/x', '--mac', 'zz'], ['--port', '/tmp/x', '--mac', '01:00:00:00:00:01'],
    ['--port', '/tmp/x', '--mtu', '10'], [], ['--ports', '2', '--port', '/tmp/x'], ['--port', '/tmp/x', '--bogus']]) {
    const e = spawnSync(process.execPath, [main, 'net', ...bad], { encoding: 'utf8' });
    assert.equal(e.status, 2, `${bad.join(' ')}: ${e.stderr}`);
    assert.match(e.stderr, /usage: vhost-user net/);
  }
});

test('the daemon switches frames between two ports and prints counters on SIGUSR1', async () => {
  const { dir, cleanup } = tempDir('vhost-net-cli-');
  const base = path.join(dir, 'n.sock');
  const child = spawn(process.execPath, [main, 'net', '--socket-path', base, '--ports', '2', '--mtu', '9000',
    '--mac', '02:00:00:00:00:0a', '--mac', '02:00:00:00:00:0b', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const guests: NetGuest[] = [];
  try {
    await waitUntil(() => fs.existsSync(`${base}.1`) || child.exitCode !== null, 10_000, 'the sockets');
    assert.equal(child.exitCode, null, err);
    const a = await NetGuest.connect(`${base}.0`);
    guests.push(a);
    const b = await NetGuest.connect(`${base}.1`);
    guests.push(b);
    assert.deepEqual(decodeNetConfig(await b.driver.getConfig(0, 12)), { mac: '02:00:00:00:00:0b', status: 1, max_virtqueue_pairs: 1, mtu: 9000 });
    await a.send(testFrame('02:00:00:00:00:0b', '02:00:00:00:00:0a', 42));
    await b.waitFrames(1);
    assert.equal(tagOf(b.received[0]!.frame), 42);
    child.kill('SIGUSR1');
    await waitUntil(() => /port1 +1 +60 /.test(out), 5000, 'the counters on stdout');
    assert.match(out, /port0 +0 +0 +0 +0 +0 +1 +60 /);
  } finally {
    for (const g of guests) g.close();
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    cleanup();
  }
  assert.equal(child.exitCode, 0, err);
  assert.equal(fs.existsSync(`${base}.0`), false, 'socket files removed');
});
