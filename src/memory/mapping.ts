/**
 * Mapping a region's fd into this process: the only part of the memory layer that loads the native addon.
 */
import { native } from '../native/index.js';
import { mapRegionWith } from './map-region.js';
import type { MemoryRegion, RegionDescriptor } from './region.js';

/**
 * Map `[0, mmapOffset + size)` of `fd` (MAP_SHARED, writable) and return the region over it; releasing the region
 * unmaps it at once. Checks with fstat that the file covers the region, so a short file is a MemoryError now
 * rather than a SIGBUS later. The fd is not closed (the caller owns it).
 *
 * A frontend could still shrink the file afterwards; QEMU's memfd backend seals it against that (seal=on).
 */
export function mapRegion(fd: number, desc: RegionDescriptor): MemoryRegion {
  return mapRegionWith(native, fd, desc);
}
