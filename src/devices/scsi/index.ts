/**
 * virtio-scsi: the device (a SCSI host over the transport-independent target emulation in src/scsi) and its
 * wire format.
 */
export { ScsiDevice, type ScsiDeviceOptions, type ScsiDeviceStats } from './device.js';
export {
  ControlType, EventType, ResetReason, ScsiQueue, ScsiResponse, TaskAttribute, TmfSubtype, VirtioScsi, decodeEvent, decodeLun,
  decodeResponseHeader, encodeAn, encodeEvent, encodeLunField, encodeRequestHeader, encodeScsiConfig, encodeTmf, lunTarget,
  type ScsiConfig, type ScsiEvent, type ScsiResponseHeader,
} from './protocol.js';
