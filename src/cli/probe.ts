/**
 * `vhost-user probe`: connect as a frontend to any backend and report what it offers.
 */
import { parseArgs } from 'node:util';
import { FrontendConnection } from '../protocol/frontend.js';
import { ProtocolFeature, protocolFeatureNamesOf } from '../protocol/constants.js';
import { CommonFeature, DeviceId, deviceNames, featureMask, featureNames, hasFeature, BlkFeature, NetFeature, ConsoleFeature } from '../virtio/constants.js';
import { configSizes, decodeConfig } from '../virtio/config.js';

/** What a probe finds. */
export interface ProbeResult {
  deviceType: string;
  deviceTypeGuessed: boolean;
  features: string;
  featureNames: string[];
  protocolFeatures: string | null;
  protocolFeatureNames: string[];
  queues: number | null;
  maxMemSlots: number | null;
  config: Record<string, number | string | boolean> | null;
  configHex: string | null;
}

const typeIds: Record<string, number> = { blk: DeviceId.BLOCK, net: DeviceId.NET, console: DeviceId.CONSOLE, scsi: DeviceId.SCSI };

/** Guess the device type from feature bits only it uses; vhost-user itself does not say. */
function guessType(features: bigint): number | undefined {
  const has = (bit: number) => hasFeature(features, bit);
  if (has(BlkFeature.SEG_MAX) || has(BlkFeature.BLK_SIZE) || has(BlkFeature.FLUSH) || has(BlkFeature.DISCARD)) return DeviceId.BLOCK;
  if (has(NetFeature.MRG_RXBUF) || has(NetFeature.MAC) || has(NetFeature.STATUS) || has(NetFeature.CTRL_VQ)) return DeviceId.NET;
  if (has(ConsoleFeature.MULTIPORT) && !has(BlkFeature.SIZE_MAX)) return DeviceId.CONSOLE;
  return undefined;
}

/** Probe the backend at `socketPath`. `type` names the device type when known (blk, net, console, scsi). */
export async function probe(socketPath: string, type?: string): Promise<ProbeResult> {
  const f = FrontendConnection.connect(socketPath);
  try {
    const features = await f.getFeatures();
    let protocol: bigint | null = null;
    let queues: number | null = null;
    let slots: number | null = null;
    if (hasFeature(features, CommonFeature.PROTOCOL_FEATURES)) {
      protocol = await f.getProtocolFeatures();
      // Take only what we can honour without setting up anything else.
      const take = protocol & featureMask(ProtocolFeature.MQ, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS);
      await f.setProtocolFeatures(take);
      if (hasFeature(protocol, ProtocolFeature.MQ)) queues = await f.getQueueNum();
      if (hasFeature(protocol, ProtocolFeature.CONFIGURE_MEM_SLOTS)) slots = await f.getMaxMemSlots();
    }
    let id = type === undefined ? guessType(features) : typeIds[type];
    if (type !== undefined && id === undefined) throw new Error(`unknown device type ${type} (blk, net, console, scsi)`);
    let config: ProbeResult['config'] = null;
    let configHex: string | null = null;
    if (protocol !== null && hasFeature(protocol, ProtocolFeature.CONFIG) && id !== undefined) {
      const bytes = await f.getConfig(0, configSizes[id]!);
      configHex = Buffer.from(bytes).toString('hex');
      config = decodeConfig(id, bytes) ?? null;
    }
    return {
      deviceType: id === undefined ? 'unknown' : deviceNames[id]!,
      deviceTypeGuessed: type === undefined && id !== undefined,
      features: `0x${features.toString(16)}`,
      featureNames: featureNames(features, id),
      protocolFeatures: protocol === null ? null : `0x${protocol.toString(16)}`,
      protocolFeatureNames: protocol === null ? [] : protocolFeatureNamesOf(protocol),
      queues,
      maxMemSlots: slots,
      config,
      configHex,
    };
  } finally {
    f.close();
  }
}

/** Render a probe result as text. */
export function formatProbe(r: ProbeResult): string {
  const lines = [
    `device type:       ${r.deviceType}${r.deviceTypeGuessed ? ' (guessed from features; use --type)' : ''}`,
    `features:          ${r.features}`,
    `  ${r.featureNames.join(' ')}`,
    `protocol features: ${r.protocolFeatures ?? 'none (no VHOST_USER_F_PROTOCOL_FEATURES)'}`,
  ];
  if (r.protocolFeatureNames.length) lines.push(`  ${r.protocolFeatureNames.join(' ')}`);
  lines.push(`queues:            ${r.queues ?? 'not reported (no MQ)'}`);
  if (r.maxMemSlots !== null) lines.push(`memory slots:      ${r.maxMemSlots}`);
  if (r.config) {
    lines.push('config:');
    for (const [k, v] of Object.entries(r.config)) lines.push(`  ${k.padEnd(26)} ${v}`);
  } else if (r.configHex) {
    lines.push(`config: ${r.configHex}`);
  }
  return lines.join('\n');
}

/** CLI entry: `vhost-user probe --socket-path S [--type T] [--json]`. */
export async function probeMain(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'socket-path': { type: 'string', short: 's' },
      type: { type: 'string', short: 't' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help || !values['socket-path']) {
    process.stdout.write('usage: vhost-user probe --socket-path PATH [--type blk|net|console|scsi] [--json]\n');
    return values.help ? 0 : 2;
  }
  const result = await probe(values['socket-path'], values.type);
  process.stdout.write((values.json ? JSON.stringify(result, null, 2) : formatProbe(result)) + '\n');
  return 0;
}
