import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tty from 'node:tty';
import { once } from 'node:events';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parsePortSpec } from '../../../src/cli/console.js';
import { UsageError } from '../../../src/cli/daemon.js';
import { ConsoleDriver } from '../../../src/devices/console/driver.js';
import { tempDir } from '../../helpers/tmp.js';
import { readBytes, until, within } from './helpers.js';

const main = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/cli/main.js');

test('--port specs', () => {
  assert.deepEqual(parsePortSpec('0,stdio'), { id: 0, binding: { kind: 'stdio' } });
  assert.deepEqual(parsePortSpec('1,name=org.test.0,unix:/tmp/p1.sock'),
    { id: 1, name: 'org.test.0', binding: { kind: 'unix', path: '/tmp/p1.sock' } });
  assert.deepEqual(parsePortSpec('2,console,pty'), { id: 2, console: true, binding: { kind: 'pty' } });
  assert.deepEqual(parsePortSpec('3,file:/var/log/a,b.log'), { id: 3, binding: { kind: 'file', path: '/var/log/a,b.log' } });
  assert.deepEqual(parsePortSpec('4,pty,name=x'), { id: 4, name: 'x', binding: { kind: 'pty' } });
  for (const bad of ['', 'x,stdio', '31,stdio', '1', '1,name=,pty', '1,stdio,pty', '1,unix:', '1,bogus,pty', '1,name=a,name=b,pty',
    '-1,stdio', '1,stdio,file:/x']) {
    assert.throws(() => parsePortSpec(bad), UsageError, bad);
  }
});

test('usage errors exit with 2 and say what is wrong', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [main, 'console', ...args], { encoding: 'utf8' });
  let r = run('-s', '/tmp/none.sock', '--port', '1,stdio', '--port', '2,stdio', '--ports', '3');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /only one port can be on stdio/);
  r = run('-s', '/tmp/none.sock', '--port', '5,pty', '--ports', '2');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /needs --ports 6/);
  r = run('--port', '1,file:/tmp/x.log');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--socket-path/);
  r = run('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /ID\[,name=NAME\]\[,console\],BINDING/);
});

/** Send one monitor command, resolve with the answer line. */
async function command(sock: string, line: string): Promise<string> {
  const c = net.connect(sock);
  c.write(line + '\n');
  let text = '';
  c.setEncoding('utf8');
  for await (const chunk of c) {
    text += chunk as string;
    if (text.includes('\n')) break;
  }
  c.destroy();
  return text.trim();
}

test('the daemon end to end: unix, file and pty ports, the monitor adds, resizes and removes ports, SIGTERM cleans up', async () => {
  const { dir, cleanup } = tempDir('vhost-console-cli-');
  const sock = path.join(dir, 'vhost.sock');
  const p1 = path.join(dir, 'p1.sock');
  const p2 = path.join(dir, 'p2,with,commas.sock');
  const mon = path.join(dir, 'monitor.sock');
  const log = path.join(dir, 'console.log');
  let child: ChildProcess | undefined;
  let driver: ConsoleDriver | undefined;
  try {
    child = spawn(process.execPath, [main, 'console', '--socket-path', sock, '--ports', '4', '--cols', '100', '--rows', '30',
      '--port', `0,file:${log}`, '--port', `1,name=org.test.cli,unix:${p1}`, '--port', '3,name=org.test.pty,pty',
      '--monitor', mon, '--log-level', 'warn'],
    { stdio: ['ignore', 'inherit', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => { stderr += text; });
    await until(() => fs.existsSync(sock) && fs.existsSync(mon), 'daemon listening', 10_000);
    const ptsPath = /port 3 is (\/dev\/pts\/\d+)/.exec(stderr)?.[1];
    assert.ok(ptsPath, stderr);
    driver = await ConsoleDriver.connect({ socketPath: sock });
    assert.equal(driver.config.maxNrPorts, 4);
    const g0 = await driver.waitForPort(0);
    const g1 = await driver.waitForPort(1);
    await until(() => g1.name === 'org.test.cli' && g0.guestOpen, 'ports set up');
    assert.deepEqual(g0.size, { cols: 100, rows: 30 });

    // Port 0 goes to the log file.
    g0.write('boot message\n');
    await until(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8') === 'boot message\n', 'console log');

    // Port 1 on its socket.
    await g1.open();
    const client = net.connect(p1);
    await within(once(g1, 'host-open'), 'g1 host-open');
    client.write('hello guest');
    assert.equal((await readBytes(g1, 11)).toString(), 'hello guest');
    g1.write('hello client');
    assert.equal((await readBytes(client, 12)).toString(), 'hello client');
    client.destroy();
    await within(once(g1, 'host-close'), 'g1 host-close');

    // Port 3 on a pty.
    const g3 = await driver.waitForPort(3);
    await until(() => g3.name === 'org.test.pty' && g3.hostConnected, 'pty port set up');
    await g3.open();
    const pty = new tty.ReadStream(fs.openSync(ptsPath, fs.constants.O_RDWR | fs.constants.O_NOCTTY));
    g3.write('to the pty\n');
    assert.equal((await readBytes(pty, 11)).toString(), 'to the pty\n');
    pty.write('from the pty\r');
    assert.equal((await readBytes(g3, 13)).toString(), 'from the pty\r');
    pty.destroy();

    // The monitor: hot add, resize, list, remove.
    assert.equal(await command(mon, `add 2,name=org.test.hot,unix:${p2}`), `ok port 2 unix:${p2}`);
    const g2 = await driver.waitForPort(2);
    await until(() => g2.name === 'org.test.hot', 'hot-added port named');
    const client2 = net.connect(p2);
    await within(once(g2, 'host-open'), 'g2 host-open');
    client2.write('x');
    await g2.open();
    assert.equal((await readBytes(g2, 1)).toString(), 'x');
    const configChange = once(driver, 'config-change');
    assert.equal(await command(mon, 'resize 120 40'), 'ok 120x40');
    assert.equal((await within(configChange, 'config-change'))[0].cols, 120);
    await until(() => g0.size?.cols === 120, 'RESIZE on the console');
    const listing = await command(mon, 'ports');
    assert.match(listing, /^ok 0 - file:.* console guest:open host:open; 1 org\.test\.cli unix:.* guest:open host:closed; 2 org\.test\.hot/);
    assert.match(await command(mon, 'add 2,pty'), /^error: port 2 exists/);
    assert.match(await command(mon, 'frobnicate'), /^error: unknown command/);
    const removed = once(driver, 'port-removed');
    // Our end of the client's connection goes away with the port.
    const client2Closed = once(client2, 'close');
    client2.resume();
    assert.equal(await command(mon, 'remove 2'), 'ok port 2 removed');
    assert.equal((await within(removed, 'port-removed'))[0].id, 2);
    await within(client2Closed, 'client2 close');
    assert.equal(fs.existsSync(p2), false);

    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 0);
    for (const f of [sock, p1, mon]) assert.equal(fs.existsSync(f), false, f);
  } finally {
    driver?.close();
    if (child && child.exitCode === null) child.kill('SIGKILL');
    cleanup();
  }
});
