import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parseLunSpec, placeLuns } from '../../../src/cli/scsi.js';
import { EventType, ResetReason, ScsiResponse } from '../../../src/devices/scsi/protocol.js';
import { ScsiStatus } from '../../../src/scsi/constants.js';
import { monitorCommand, runCli, withCliDaemon } from '../../helpers/cli.js';
import { tempDir } from '../../helpers/tmp.js';
import { Cdb, pattern } from '../../scsi/helpers.js';
import { ScsiClient } from './helpers.js';
import type { VhostDaemon } from '../../helpers/daemon.js';

const MiB = 1 << 20;

const cli = runCli;
const withDaemon = (args: string[], fn: (d: VhostDaemon) => Promise<void>, cwd?: string): Promise<void> =>
  withCliDaemon('scsi', args, fn, cwd);

const monitor = monitorCommand;

test('LUN specs: storage forms, options, escaped commas, and what is refused', () => {
  const a = parseLunSpec('/tmp/disk.img,serial=S1,ro,target=2,lun=7,block-size=4096,vendor=V,product=P,write-through,size=1G');
  assert.deepEqual(a, {
    storage: { kind: 'file', path: '/tmp/disk.img', size: 1 << 30, readOnly: true },
    serial: 'S1', target: 2, lun: 7, blockSize: 4096, vendor: 'V', product: 'P', writeThrough: true,
  });
  assert.deepEqual(parseLunSpec('memory:64M').storage, { kind: 'memory', size: 64 * MiB, readOnly: false });
  assert.deepEqual(parseLunSpec('null:1G,ro').storage, { kind: 'null', size: 1 << 30, readOnly: true });
  assert.equal((parseLunSpec('/a,,b.img,serial=x,,y').storage as { path: string }).path, '/a,b.img');
  assert.equal(parseLunSpec('/a,,b.img,serial=x,,y').serial, 'x,y');
  assert.equal((parseLunSpec('rel.img').storage as { path: string }).path, path.resolve('rel.img'));
  for (const [spec, message] of [
    ['', /starts with the storage/],
    [',ro', /starts with the storage/],
    ['memory:lots', /not a size/],
    ['memory:1M,size=2M', /size= goes with an image/],
    ['x.img,target=256', /target must be an integer in 0\.\.255/],
    ['x.img,lun=16384', /lun must be/],
    ['x.img,block-size=1024', /512 or 4096/],
    ['x.img,ro=1', /takes no value/],
    ['x.img,serial', /needs a value/],
    ['x.img,colour=red', /unknown option 'colour'/],
  ] as const) {
    assert.throws(() => parseLunSpec(spec), message, spec);
  }
});

test('LUN placement: explicit addresses first, the rest round-robin over the targets at the lowest free LUN', () => {
  const specs = ['memory:1M', 'memory:1M,lun=0', 'memory:1M', 'memory:1M,target=1', 'memory:1M'].map(parseLunSpec);
  assert.deepEqual(placeLuns(specs, 1), [
    { target: 0, lun: 1 }, { target: 0, lun: 0 }, { target: 0, lun: 2 }, { target: 1, lun: 0 }, { target: 0, lun: 3 },
  ]);
  assert.deepEqual(placeLuns(specs.slice(0, 3), 2).map((p) => p.target), [0, 1, 0]);
  assert.throws(() => placeLuns([parseLunSpec('memory:1M,lun=3'), parseLunSpec('memory:1M,lun=3')], 1), /0:3 is given twice/);
  assert.throws(() => placeLuns(Array.from({ length: 257 }, () => parseLunSpec('memory:1M')), 1), /more than 256/);
  assert.equal(placeLuns(Array.from({ length: 257 }, () => parseLunSpec('memory:1M')), 2).length, 257);
});

test('--print-qemu and --print-capabilities print and exit without opening anything', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const image = path.join(dir, 'not-created.img');
    const sock = path.join(dir, 'q.sock');
    const q = await cli(['scsi', '--print-qemu', '--lun', `${image},size=1G`, '--num-queues', '4', '--socket-path', sock]);
    assert.equal(q.code, 0, q.stderr);
    assert.match(q.stdout, /-object memory-backend-memfd,id=mem,size=\d+M,share=on/);
    assert.match(q.stdout, /-machine memory-backend=mem/);
    assert.ok(q.stdout.includes(`-chardev socket,id=c0,path=${sock} \\`), q.stdout);
    assert.ok(q.stdout.includes('-device vhost-user-scsi-pci,chardev=c0,num_queues=4'), q.stdout);
    assert.equal(fs.existsSync(image), false);
    assert.equal(fs.existsSync(sock), false);
    const client = await cli(['scsi', '--print-qemu', '--client', '--socket-path', sock]);
    assert.ok(client.stdout.includes(`path=${sock},server=on,wait=off`));
    const caps = await cli(['scsi', '--print-capabilities']);
    assert.deepEqual(JSON.parse(caps.stdout), { type: 'scsi', features: [] });
    const help = await cli(['scsi', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--monitor PATH/);
    assert.match(help.stdout, /memory:SIZE/);
  } finally {
    cleanup();
  }
});

test('usage errors exit non-zero with a message and leave nothing behind', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'e.sock');
    const cases: [string[], RegExp][] = [
      [['--lun', 'memory:1M,bogus'], /unknown option 'bogus'/],
      [['--lun', path.join(dir, 'missing.img')], /does not exist/],
      [['--lun', 'memory:1M,lun=1', '--lun', 'memory:1M,lun=1'], /given twice/],
      [['--num-queues', '0'], /--num-queues/],
      [['--targets', '300'], /--targets/],
      [['--lun', 'memory:1M,serial=caf\u00e9'], /serial/],
      [['--lun', 'memory:100'], /smaller than one/],
      [['--socket-fd', '3'], /exactly one of --socket-path and --socket-fd/],
      [['--bogus'], /Unknown option/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(['scsi', '--socket-path', sock, ...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
      assert.equal(fs.existsSync(sock), false, args.join(' '));
    }
  } finally {
    cleanup();
  }
});

test('the daemon serves its LUNs; the monitor adds and removes LUNs, which the driver hears of; SIGTERM cleans up', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const sock = path.join(dir, 'scsi.sock');
    const mon = path.join(dir, 'mon.sock');
    const image = path.join(dir, 'disk.img');
    const hot = path.join(dir, 'hot.img');
    await withDaemon(['--socket-path', sock, '--monitor', mon, '--num-queues', '2', '--targets', '2',
      '--lun', `${image},size=16M,serial=img`, '--lun', 'memory:8M,serial=mem', '--lun', 'null:1G,ro'], async (d) => {
      assert.match(d.stdout, /2 request queues, hot-plug events/);
      assert.match(d.stdout, /LUN 0:0 .*serial 'img'/);
      assert.match(d.stdout, /LUN 1:0 .*serial 'mem'/);
      assert.match(d.stdout, /LUN 0:1 .*read-only/);
      const probe = await cli(['probe', '--socket-path', sock, '--type', 'scsi', '--json']);
      assert.equal(probe.code, 0, probe.stderr);
      const p = JSON.parse(probe.stdout);
      assert.equal(p.deviceType, 'scsi');
      assert.equal(p.queues, 4);
      assert.equal(p.config.num_queues, 2);
      assert.ok(p.featureNames.includes('HOTPLUG'));
      const c = await ScsiClient.connect(sock);
      try {
        const data = pattern(8192, 3);
        const w = await c.command(0, 0, Cdb.write10(16, 16), { out: data, q: 1 });
        assert.equal(w.status, ScsiStatus.GOOD);
        const r = await c.command(0, 0, Cdb.read10(16, 16), { in: 8192 });
        assert.deepEqual(r.data, Buffer.from(data));
        const cap = await c.command(0, 1, Cdb.readCapacity16(), { in: 32 });
        assert.equal(cap.data.readBigUInt64BE(0), BigInt((1 << 30) / 512 - 1));
        const event = c.event();
        const added = await monitor(mon, `add ${hot},size=4M,target=1,serial=hot`);
        assert.match(added, /^ok 1:1 VHOSTUSR VIRTUAL-DISK 8192 x 512 bytes, serial 'hot'/);
        const e = await event;
        assert.deepEqual([e.event, e.target, e.lun, e.reason], [EventType.TRANSPORT_RESET, 1, 1, ResetReason.RESCAN]);
        assert.equal((await c.command(1, 1, Cdb.write10(0, 1), { out: pattern(512, 5) })).status, ScsiStatus.GOOD);
        assert.match(await monitor(mon, 'list'), /^ok 0:0 .*; 0:1 .*; 1:0 .*; 1:1 /);
        assert.match(await monitor(mon, 'add memory:1M,target=1,lun=1'), /^error: LUN 1:1 is taken/);
        assert.match(await monitor(mon, 'add memory:1M,bogus'), /^error: .*unknown option/);
        assert.match(await monitor(mon, 'remove 5:5'), /^error: no LUN 5:5/);
        assert.match(await monitor(mon, 'remove x'), /^error: usage/);
        assert.match(await monitor(mon, 'frobnicate'), /^error: unknown command/);
        const gone = c.event();
        assert.equal(await monitor(mon, 'remove 1:1'), 'ok removed 1:1');
        const g = await gone;
        assert.deepEqual([g.event, g.target, g.lun, g.reason], [EventType.TRANSPORT_RESET, 1, 1, ResetReason.REMOVED]);
        assert.deepEqual(fs.readFileSync(hot).subarray(0, 512), Buffer.from(pattern(512, 5)), 'written, flushed and closed');
        assert.equal((await c.command(1, 1, Cdb.testUnitReady())).status, ScsiStatus.CHECK_CONDITION);
        assert.equal((await c.command(7, 0, Cdb.testUnitReady())).response, ScsiResponse.BAD_TARGET);
      } finally {
        c.close();
      }
      assert.equal((await d.stop()).code, 0);
      assert.equal(fs.existsSync(sock), false);
      assert.equal(fs.existsSync(mon), false);
      assert.match(d.stderr, /per request queue \[\d+, \d+\]/);
    });
    assert.deepEqual(fs.readFileSync(image).subarray(16 * 512, 32 * 512), Buffer.from(pattern(8192, 3)));
  } finally {
    cleanup();
  }
});

test('with no options it serves a 256 MiB memory disk on ./vhost-user-scsi.sock', async () => {
  const { dir, cleanup } = tempDir();
  try {
    await withDaemon([], async (d) => {
      const sock = path.join(dir, 'vhost-user-scsi.sock');
      assert.ok(d.stdout.includes(`listening on ${sock}`), d.stdout);
      const c = await ScsiClient.connect(sock);
      try {
        const cap = await c.command(0, 0, Cdb.readCapacity10(), { in: 8 });
        assert.equal(cap.data.readUInt32BE(0), 256 * MiB / 512 - 1);
      } finally {
        c.close();
      }
      assert.equal((await d.stop('SIGINT')).code, 0);
      assert.equal(fs.existsSync(sock), false);
    }, dir);
  } finally {
    cleanup();
  }
});
