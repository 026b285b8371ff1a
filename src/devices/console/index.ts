/**
 * virtio-console: the device, its ports as streams, host bindings, and a Linux-like guest driver for tests.
 */
export { ConsoleDevice, MAX_TX_BUFFER, type ConsoleDeviceOptions, type ConsoleDeviceStats } from './device.js';
export { ConsolePort, PortRemovedError, type ConsolePortOptions, type PortStats } from './port.js';
export {
  ESCAPE_KEY, bindFile, bindPty, bindStdio, bindUnix, nativeOpenpty, type Binding, type PtyOpener, type PtyOptions,
  type PtyPair, type StdioOptions, type UnixOptions,
} from './bindings.js';
export { ConsoleDriver, GuestPort, type ConsoleDriverOptions, type ControlRecord, type GuestPortStats } from './driver.js';
export {
  BAD_ID, CONFIG_SIZE, CONTROL_SIZE, ConfigOffset, ControlEvent, ControlQueue, MAX_NAME_BYTES, MAX_PORTS,
  controlEventName, decodeConfig, decodeControl, decodeResize, encodeConfig, encodeControl, encodePortName, encodeResize,
  queueCount, queueRole, rxQueueOf, txQueueOf, type ConsoleConfig, type ControlMessage, type QueueRole,
} from './protocol.js';
