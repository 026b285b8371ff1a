/**
 * virtio-console wire facts (virtio 1.2, section 5.3): queue layout, config space, control messages.
 * Pure data and codecs, shared by the device and the driver model.
 */

/** Control message events (`virtio_console_control.event`). */
export const ControlEvent = {
  /** driver -> device: the driver is ready for control messages (value 1 ok, 0 failed). */
  DEVICE_READY: 0,
  /** device -> driver: a port exists (hot-plug too). */
  DEVICE_ADD: 1,
  /** device -> driver: a port is gone (hot-unplug). */
  DEVICE_REMOVE: 2,
  /** driver -> device: the port announced by DEVICE_ADD is set up (value 1 ok, 0 failed). */
  PORT_READY: 3,
  /** device -> driver: the port is a console (hvc). */
  CONSOLE_PORT: 4,
  /** device -> driver: console size; a {rows, cols} u16 pair follows the header (see {@link encodeResize}). */
  RESIZE: 5,
  /** both ways: the sender's end of the port is open (1) or closed (0). */
  PORT_OPEN: 6,
  /** device -> driver: the port's name (UTF-8, no NUL) follows the header. */
  PORT_NAME: 7,
} as const;

/** Names of control events, for logs. */
export const controlEventNames: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(ControlEvent).map(([name, value]) => [value, name]));

/** Name of an event number for messages (`event 9` when unknown). */
export function controlEventName(event: number): string {
  return controlEventNames[event] ?? `event ${event}`;
}

/** Port id used where no port is meant (DEVICE_READY). */
export const BAD_ID = 0xffff_ffff;

/** Bytes of a control message header: `{id u32, event u16, value u16}`. */
export const CONTROL_SIZE = 8;

/** Bytes of the RESIZE payload: two u16. */
export const RESIZE_SIZE = 4;

/** Most ports the device offers (max_nr_ports); QEMU's virtio-serial has the same limit. */
export const MAX_PORTS = 31;

/** Longest port name we send, in UTF-8 bytes (the Linux driver's control buffers are a page). */
export const MAX_NAME_BYTES = 255;

/** Config space layout. */
export const ConfigOffset = {
  COLS: 0,
  ROWS: 2,
  MAX_NR_PORTS: 4,
  EMERG_WR: 8,
} as const;

/** Bytes of config space. */
export const CONFIG_SIZE = 12;

/** Queue indexes: port 0 owns 0/1, the control queues are 2/3, port n >= 1 owns 2n+2 / 2n+3. */
export const ControlQueue = {
  /** Device -> driver control messages (the driver's c_ivq). */
  RX: 2,
  /** Driver -> device control messages (the driver's c_ovq). */
  TX: 3,
} as const;

/** Receive queue (device -> driver data) of a port. */
export function rxQueueOf(port: number): number {
  return port === 0 ? 0 : 2 * port + 2;
}

/** Transmit queue (driver -> device data) of a port. */
export function txQueueOf(port: number): number {
  return rxQueueOf(port) + 1;
}

/** Queues a device with `maxPorts` ports has: 2 without MULTIPORT, else two per port plus the control pair. */
export function queueCount(maxPorts: number, multiport: boolean): number {
  return multiport ? 2 * (maxPorts + 1) : 2;
}

/** What a queue index is: a port's rx/tx queue, or a control queue. */
export type QueueRole =
  | { kind: 'rx' | 'tx'; port: number }
  | { kind: 'control-rx' | 'control-tx' };

/** The role of queue `index`. */
export function queueRole(index: number): QueueRole {
  if (index === ControlQueue.RX) return { kind: 'control-rx' };
  if (index === ControlQueue.TX) return { kind: 'control-tx' };
  const port = index < 2 ? 0 : (index >> 1) - 1;
  return { kind: (index & 1) === 0 ? 'rx' : 'tx', port };
}

/** A decoded control message. */
export interface ControlMessage {
  id: number;
  event: number;
  value: number;
  /** Bytes after the header (RESIZE size, PORT_NAME name). */
  payload: Uint8Array;
}

/** Encode a control message with an optional payload. */
export function encodeControl(id: number, event: number, value: number, payload?: Uint8Array): Uint8Array {
  const out = new Uint8Array(CONTROL_SIZE + (payload?.byteLength ?? 0));
  const v = new DataView(out.buffer);
  v.setUint32(0, id >>> 0, true);
  v.setUint16(4, event & 0xffff, true);
  v.setUint16(6, value & 0xffff, true);
  if (payload) out.set(payload, CONTROL_SIZE);
  return out;
}

/** Decode a control message; null when shorter than the header. */
export function decodeControl(bytes: Uint8Array): ControlMessage | null {
  if (bytes.byteLength < CONTROL_SIZE) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    id: v.getUint32(0, true),
    event: v.getUint16(4, true),
    value: v.getUint16(6, true),
    payload: bytes.subarray(CONTROL_SIZE),
  };
}

/**
 * The RESIZE payload: rows first, then cols. The virtio spec (1.0-1.3) says cols first, but Linux has read rows
 * first since 2010; a 2025 kernel change to follow the spec was reverted because 15 years of guests (Debian
 * stable's among them) use this order, and QEMU follows Linux. (Config space is cols then rows everywhere.)
 */
export function encodeResize(cols: number, rows: number): Uint8Array {
  const out = new Uint8Array(RESIZE_SIZE);
  const v = new DataView(out.buffer);
  v.setUint16(0, rows, true);
  v.setUint16(2, cols, true);
  return out;
}

/** Decode a RESIZE payload (rows, then cols: see {@link encodeResize}); null when short. */
export function decodeResize(payload: Uint8Array): { cols: number; rows: number } | null {
  if (payload.byteLength < RESIZE_SIZE) return null;
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return { rows: v.getUint16(0, true), cols: v.getUint16(2, true) };
}

/** Console config space as a driver reads it. */
export interface ConsoleConfig {
  cols: number;
  rows: number;
  maxNrPorts: number;
  emergWr: number;
}

/** Encode config space. */
export function encodeConfig(config: ConsoleConfig): Uint8Array {
  const out = new Uint8Array(CONFIG_SIZE);
  const v = new DataView(out.buffer);
  v.setUint16(ConfigOffset.COLS, config.cols, true);
  v.setUint16(ConfigOffset.ROWS, config.rows, true);
  v.setUint32(ConfigOffset.MAX_NR_PORTS, config.maxNrPorts, true);
  v.setUint32(ConfigOffset.EMERG_WR, config.emergWr, true);
  return out;
}

/** Decode config space (at least {@link CONFIG_SIZE} bytes). */
export function decodeConfig(bytes: Uint8Array): ConsoleConfig {
  if (bytes.byteLength < CONFIG_SIZE) throw new RangeError(`console config is ${CONFIG_SIZE} bytes, got ${bytes.byteLength}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    cols: v.getUint16(ConfigOffset.COLS, true),
    rows: v.getUint16(ConfigOffset.ROWS, true),
    maxNrPorts: v.getUint32(ConfigOffset.MAX_NR_PORTS, true),
    emergWr: v.getUint32(ConfigOffset.EMERG_WR, true),
  };
}

/**
 * Check a port name: non-empty UTF-8 of at most {@link MAX_NAME_BYTES} bytes, no NUL, no `/` (it becomes a
 * file name under /dev/virtio-ports/), no control characters. Returns the encoded bytes.
 * @throws TypeError for a name the guest could not use.
 */
export function encodePortName(name: string): Uint8Array {
  if (name.length === 0) throw new TypeError('a port name cannot be empty');
  if (/[\u0000-\u001f\u007f/]/.test(name)) throw new TypeError(`port name '${name}' has '/' or control characters`);
  if (name === '.' || name === '..') throw new TypeError(`port name '${name}' is not a file name`);
  const bytes = new TextEncoder().encode(name);
  if (bytes.byteLength > MAX_NAME_BYTES) throw new TypeError(`port name is ${bytes.byteLength} bytes (at most ${MAX_NAME_BYTES})`);
  return bytes;
}
