/**
 * virtio-blk: the device, its request format and config space, and the storage backends.
 */
export { BlkDevice, type BlkDeviceOptions, type BlkStats } from './device.js';
export { Blk, BlkRequestType, BlkStatus, encodeHeader, encodeSegments, type BlkSegment } from './request.js';
export { BLK_CONFIG_SIZE, BlkConfigOffset, encodeBlkConfig, type BlkConfig } from './config.js';
export * from './storage/index.js';
