/**
 * The README's library examples, run as written (through the package's public entry point), so the front door
 * stays true.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DeviceServer, VirtioDriver, ConsoleDevice, type VirtioDevice, type Vring, type DescriptorChain } from '../../src/index.js';
import { ConsoleDriver } from '../../src/devices/console/index.js';
import { tempDir, waitUntil } from '../helpers/tmp.js';

class UpperCase implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly features = 0n;
  readonly numQueues = 1;
  readonly maxQueueSize = 256;

  handleChain(vring: Vring, chain: DescriptorChain): void {
    const input = chain.readAll();
    const out = Buffer.from(input).toString().toUpperCase();
    vring.complete(chain, chain.writeFrom(Buffer.from(out)));
  }
}

test('README: a device in a dozen lines, driven by VirtioDriver', async () => {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'upper.sock');
  const server = new DeviceServer(new UpperCase(), { socketPath }).listen();
  try {
    const driver = await VirtioDriver.connect({ socketPath });
    await driver.startQueues(1, 64);
    const input = driver.ram.alloc(5);
    driver.ram.bytes(input, 5).set(Buffer.from('hello'));
    const output = driver.ram.alloc(64);
    const len = await driver.submit(0, [{ addr: input, len: 5 }], [{ addr: output, len: 64 }]);
    assert.equal(Buffer.from(driver.ram.bytes(output, len)).toString(), 'HELLO');
    driver.close();
  } finally {
    await server.close();
    cleanup();
  }
});

test('README: a console port as a stream', async () => {
  const { dir, cleanup } = tempDir();
  const socketPath = path.join(dir, 'console.sock');
  const device = new ConsoleDevice({ maxPorts: 2 });
  const agent = device.addPort({ id: 1, name: 'org.example.agent' });
  const server = new DeviceServer(device, { socketPath }).listen();
  device.attach(server);
  agent.on('guest-open', () => agent.write('hello guest\n'));
  try {
    const driver = await ConsoleDriver.connect({ socketPath });
    const port = await driver.waitForPort(1);
    port.open();
    const line = await new Promise<string>((resolve) => port.once('data', (d: Buffer) => resolve(d.toString())));
    assert.equal(line, 'hello guest\n');
    // The name travels on the control queue, the data on the port's own: either may come first.
    await waitUntil(() => port.name !== undefined, 2000, 'the port name');
    assert.equal(port.name, 'org.example.agent');
    driver.close();
  } finally {
    await server.close();
    cleanup();
  }
});
