#!/usr/bin/env node
/**
 * `vhost-user <command>`: the daemons and tools.
 */
import { probeMain } from './probe.js';

type Command = (argv: string[]) => Promise<number>;

const commands: Record<string, { run: () => Promise<Command>; about: string }> = {
  probe: { run: async () => probeMain, about: 'connect to a backend and print its features, queues and config' },
  console: {
    run: async () => (await import('./console.js')).consoleMain,
    about: 'virtio-console: guest consoles and channels on this terminal, sockets, ptys or files',
  },
  net: { run: async () => (await import('./net.js')).netMain, about: 'virtio-net ports joined by a MAC-learning switch (TAP uplink)' },
  blk: { run: async () => (await import('./blk.js')).blkMain, about: 'virtio-blk daemon: a raw image, memory or null disk' },
  scsi: { run: async () => (await import('./scsi.js')).scsiMain, about: 'virtio-scsi daemon: disks as LUNs of one controller, hot-plug' },
};

function usage(): string {
  const rows = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(10)} ${c.about}`);
  return `usage: vhost-user <command> [options]\n\ncommands:\n${rows.join('\n')}\n\n` +
    'Run `vhost-user <command> --help` for the options of one command.\n';
}


async function main(): Promise<void> {
  const [name, ...rest] = process.argv.slice(2);
  if (!name || name === '--help' || name === '-h') {
    process.stdout.write(usage());
    process.exitCode = name ? 0 : 2;
    return;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`vhost-user: unknown command '${name}'\n\n${usage()}`);
    process.exitCode = 2;
    return;
  }
  try {
    const code = await (await command.run())(rest);
    process.exitCode = code;
  } catch (err) {
    process.stderr.write(`vhost-user ${name}: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}

await main();
