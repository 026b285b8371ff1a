/**
 * Config-space layouts of the device types we know, decoded into plain objects (for tools and tests).
 */
import { DeviceId } from './constants.js';

/** Bytes of config space to read for a device type (the fields we decode). */
export const configSizes: Readonly<Record<number, number>> = {
  [DeviceId.BLOCK]: 60,
  [DeviceId.NET]: 12,
  [DeviceId.CONSOLE]: 12,
  [DeviceId.SCSI]: 36,
};

type Decoded = Record<string, number | string | boolean>;

function dv(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** virtio-blk config (virtio 1.2, 5.2.4). */
export function decodeBlkConfig(bytes: Uint8Array): Decoded {
  const v = dv(bytes);
  const out: Decoded = {
    capacity: Number(v.getBigUint64(0, true)),
    size_max: v.getUint32(8, true),
    seg_max: v.getUint32(12, true),
    cylinders: v.getUint16(16, true),
    heads: v.getUint8(18),
    sectors: v.getUint8(19),
    blk_size: v.getUint32(20, true),
    physical_block_exp: v.getUint8(24),
    alignment_offset: v.getUint8(25),
    min_io_size: v.getUint16(26, true),
    opt_io_size: v.getUint32(28, true),
    writeback: v.getUint8(32),
    num_queues: v.getUint16(34, true),
    max_discard_sectors: v.getUint32(36, true),
    max_discard_seg: v.getUint32(40, true),
    discard_sector_alignment: v.getUint32(44, true),
    max_write_zeroes_sectors: v.getUint32(48, true),
    max_write_zeroes_seg: v.getUint32(52, true),
    write_zeroes_may_unmap: v.getUint8(56),
  };
  return out;
}

/** virtio-net config (virtio 1.2, 5.1.4). */
export function decodeNetConfig(bytes: Uint8Array): Decoded {
  const v = dv(bytes);
  const mac = Array.from(bytes.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
  return { mac, status: v.getUint16(6, true), max_virtqueue_pairs: v.getUint16(8, true), mtu: v.getUint16(10, true) };
}

/** virtio-console config (virtio 1.2, 5.3.4). */
export function decodeConsoleConfig(bytes: Uint8Array): Decoded {
  const v = dv(bytes);
  return { cols: v.getUint16(0, true), rows: v.getUint16(2, true), max_nr_ports: v.getUint32(4, true), emerg_wr: v.getUint32(8, true) };
}

/** virtio-scsi config (virtio 1.2, 5.6.4). */
export function decodeScsiConfig(bytes: Uint8Array): Decoded {
  const v = dv(bytes);
  return {
    num_queues: v.getUint32(0, true),
    seg_max: v.getUint32(4, true),
    max_sectors: v.getUint32(8, true),
    cmd_per_lun: v.getUint32(12, true),
    event_info_size: v.getUint32(16, true),
    sense_size: v.getUint32(20, true),
    cdb_size: v.getUint32(24, true),
    max_channel: v.getUint16(28, true),
    max_target: v.getUint16(30, true),
    max_lun: v.getUint32(32, true),
  };
}

/** Decode config space for a device id; undefined for types we do not know. */
export function decodeConfig(deviceId: number, bytes: Uint8Array): Decoded | undefined {
  switch (deviceId) {
    case DeviceId.BLOCK: return decodeBlkConfig(bytes);
    case DeviceId.NET: return decodeNetConfig(bytes);
    case DeviceId.CONSOLE: return decodeConsoleConfig(bytes);
    case DeviceId.SCSI: return decodeScsiConfig(bytes);
    default: return undefined;
  }
}
