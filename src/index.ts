/**
 * vhost-user: user-space virtio devices over the vhost-user protocol.
 *
 * The public API: the device framework (serve a {@link VirtioDevice}), the frontend side ({@link VirtioDriver},
 * {@link FrontendConnection}), and the layers below for those who build their own.
 */
export { DeviceServer, type DeviceServerOptions } from './device/server.js';
export { DeviceBackend, offeredFeatures, offeredProtocolFeatures, type DeviceBackendOptions } from './device/backend.js';
export type {
  VirtioDevice, ConfigChangeNotifier, QueueHandler, QueueWorkerSpec, CreateQueueHandler,
} from './device/device.js';
export { Vring } from './device/vring.js';
export { RingPoller, type PollerStats } from './device/poller.js';
export { PASS_BUDGET, PassResult, processRing, type RingHandler } from './device/processing.js';
export { WorkerPool, type WorkerPoolOptions } from './device/worker/pool.js';
export { VirtioDriver, type DriverOptions, type BufferRef } from './driver/driver.js';
export { GuestRam } from './driver/guest-ram.js';
export { FrontendConnection, RequestFailed } from './protocol/frontend.js';
export { BackendConnection, RequestRejected, type BackendHandler } from './protocol/backend.js';
export { Connection } from './protocol/connection.js';
export { Endpoint, type EndpointOptions } from './protocol/endpoint.js';
export { ProtocolError } from './protocol/message.js';
export * from './protocol/constants.js';
export { GuestMemory } from './memory/guest-memory.js';
export { MemoryRegion } from './memory/region.js';
export { DescriptorChain, SingleBuffer } from './virtqueue/chain.js';
export { SplitQueue } from './virtqueue/split-queue.js';
export { DriverQueue } from './virtqueue/driver-queue.js';
export { ChainError, ChainErrorKind, QueueError } from './virtqueue/errors.js';
export * from './virtio/constants.js';
export { setLogLevel, setLogSink, logger } from './util/log.js';

// Devices
export { BlkDevice, type BlkDeviceOptions, type BlkStats, BlkRequestType, BlkStatus } from './devices/blk/index.js';
export {
  FileStorage, MemoryStorage, NullStorage, openStorage, type BlockStorage, type StorageSpec,
} from './devices/blk/storage/index.js';
export { ConsoleDevice, ConsolePort, ConsoleDriver, GuestPort, type ConsoleDeviceOptions } from './devices/console/index.js';
export {
  NetSwitch, NetPort, TapUplink, Network, openTap, type NetPortOptions, type NetworkOptions, type PortCounters,
} from './devices/net/index.js';
export { ScsiDevice, type ScsiDeviceOptions, type ScsiDeviceStats } from './devices/scsi/index.js';
export { LogicalUnit, ScsiBus, ScsiTarget, ScsiTask, TaskResponse, type LogicalUnitOptions } from './scsi/index.js';
