import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import tty from 'node:tty';
import { native } from '../../../src/native/index.js';
import { bindFile, bindPty, bindStdio, bindUnix, nativeOpenpty } from '../../../src/devices/console/bindings.js';
import { readBytes, until, withConsole } from './helpers.js';

test('unix binding: one client at a time, the guest sees it come and go, data both ways', async () => {
  await withConsole({ maxPorts: 2 }, (d) => {
    d.addPort({ id: 0 });
    d.addPort({ id: 1, name: 'org.test.sock' });
  }, async ({ device, connect, dir }) => {
    const sockPath = path.join(dir, 'p1.sock');
    const binding = await bindUnix(device.port(1)!, sockPath);
    assert.equal(binding.description, `unix:${sockPath}`);
    assert.equal((fs.statSync(sockPath).mode & 0o777), 0o600);
    const driver = await connect();
    const g1 = await driver.waitForPort(1);
    await g1.open();
    await until(() => device.port(1)!.guestOpen, 'guest open');
    assert.equal(g1.hostConnected, false);

    const client = net.connect(sockPath);
    await once(g1, 'host-open');
    client.write('from client');
    assert.equal((await readBytes(g1, 11)).toString(), 'from client');
    g1.write('from guest');
    assert.equal((await readBytes(client, 10)).toString(), 'from guest');

    // A second client is turned away while the first stays.
    const second = net.connect(sockPath);
    await once(second, 'close');
    assert.equal(g1.hostConnected, true);

    // The client leaves: the guest sees our end close; its writes wait (Linux) until the next client.
    client.destroy();
    await once(g1, 'host-close');
    g1.write('for the next one');
    const next = net.connect(sockPath);
    assert.equal((await readBytes(next, 16)).toString(), 'for the next one');
    next.write('hi');
    assert.equal((await readBytes(g1, 2)).toString(), 'hi');
    next.destroy();
    await binding.close();
    assert.equal(fs.existsSync(sockPath), false);
  });
});

test('file binding: guest output is appended to the file', async () => {
  await withConsole({ maxPorts: 1 }, (d) => d.addPort({ id: 0 }), async ({ device, connect, dir }) => {
    const logPath = path.join(dir, 'console.log');
    fs.writeFileSync(logPath, 'earlier\n');
    const binding = await bindFile(device.port(0)!, logPath);
    const driver = await connect();
    const g0 = await driver.waitForPort(0);
    await until(() => g0.guestOpen, 'console up');
    g0.write('[    0.000000] Linux version 6.1\n');
    await until(() => fs.readFileSync(logPath, 'utf8').includes('Linux version'), 'log written');
    await binding.close();
    assert.equal(fs.readFileSync(logPath, 'utf8'), 'earlier\n[    0.000000] Linux version 6.1\n');
  });
});

test('stdio binding: raw mode while bound, the escape key ends the session and is not sent', async () => {
  await withConsole({ maxPorts: 1 }, (d) => d.addPort({ id: 0 }), async ({ device, connect }) => {
    const modes: boolean[] = [];
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: (m: boolean) => modes.push(m) });
    const output = new PassThrough();
    let escaped = 0;
    const binding = bindStdio(device.port(0)!, { input, output, onEscape: () => escaped++ });
    assert.deepEqual(modes, [true]);
    const driver = await connect();
    const g0 = await driver.waitForPort(0);
    await until(() => g0.guestOpen, 'console up');
    g0.write('login: ');
    assert.equal((await readBytes(output, 7)).toString(), 'login: ');
    input.write('root\r');
    assert.equal((await readBytes(g0, 5)).toString(), 'root\r');
    input.write('ab\x1dcd');
    assert.equal((await readBytes(g0, 2)).toString(), 'ab');
    await until(() => escaped === 1, 'escape seen');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(g0.readableLength, 0);
    await binding.close();
    assert.deepEqual(modes, [true, false]);
  });
});

test('pty binding relays between the port and the pty controller (a socket pair stands in for the pty)', async () => {
  await withConsole({ maxPorts: 1 }, (d) => d.addPort({ id: 0 }), async ({ device, connect }) => {
    const [controller, terminal] = native.socketPair();
    const binding = await bindPty(device.port(0)!, { open: () => ({ controller, terminal, path: '/dev/pts/test' }) });
    assert.equal(binding.description, 'pty:/dev/pts/test');
    const other = new net.Socket({ fd: terminal, readable: true, writable: true });
    const driver = await connect();
    const g0 = await driver.waitForPort(0);
    await until(() => g0.guestOpen, 'console up');
    g0.write('guest says');
    assert.equal((await readBytes(other, 10)).toString(), 'guest says');
    other.write('user types');
    assert.equal((await readBytes(g0, 10)).toString(), 'user types');
    other.destroy();
    await binding.close();
  });
});

test('pty binding: a real pseudo-terminal in raw mode, data both ways', async () => {
  await withConsole({ maxPorts: 1 }, (d) => d.addPort({ id: 0 }), async ({ device, connect }) => {
    assert.ok(nativeOpenpty(), 'the addon has openpty');
    const binding = await bindPty(device.port(0)!);
    const ptsPath = binding.description.slice('pty:'.length);
    assert.match(ptsPath, /^\/dev\/pts\/\d+$/);
    // A program on the terminal end (a tty.ReadStream is a full duplex socket on the terminal).
    const fd = fs.openSync(ptsPath, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    const user = new tty.ReadStream(fd);
    const driver = await connect();
    const g0 = await driver.waitForPort(0);
    await until(() => g0.guestOpen, 'console up');
    // Raw both ways: no \r or \n translation, no echo, no line buffering, ^C is a byte.
    g0.write('raw\n\r');
    assert.equal((await readBytes(user, 5)).toString(), 'raw\n\r');
    user.write('x\r\n\x03');
    assert.equal((await readBytes(g0, 4)).toString(), 'x\r\n\x03');
    // Nothing echoed back towards the guest.
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(g0.readableLength, 0);
    assert.equal(user.readableLength, 0);
    user.destroy();
    await binding.close();
  });
});
