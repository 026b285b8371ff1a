/**
 * The logic of mapping a region's fd, over an injected binding so it can be tested without the native addon.
 * {@link mapRegion} in mapping.ts binds it to the addon.
 */
import type { NativeBinding } from '../native/index.js';
import { MemoryError, hex } from './errors.js';
import { MemoryRegion, validateRegionDescriptor, type RegionDescriptor } from './region.js';

/** The addon calls mapping needs. */
export type MappingBinding = Pick<NativeBinding, 'mmap' | 'unmapNow' | 'fstat'>;

/**
 * Map `[0, mmapOffset + size)` of `fd` shared and writable through `binding`, and return the region over it.
 * Releasing the region drops the mapping at once. The fd is not closed (the caller owns it).
 * @throws MemoryError if the description is malformed or the file is smaller than the region (mapping it anyway
 *   would fault with SIGBUS on first touch); whatever the binding throws if fstat or mmap fails.
 */
export function mapRegionWith(binding: MappingBinding, fd: number, desc: RegionDescriptor): MemoryRegion {
  validateRegionDescriptor(desc);
  const length = desc.mmapOffset + desc.size;
  if (length > Number.MAX_SAFE_INTEGER) {
    throw new MemoryError(`memory region at ${hex(desc.guestPhysAddr)}: mapping length overflows`,
      desc.guestPhysAddr, desc.size);
  }
  const { size: fileSize } = binding.fstat(fd);
  if (!(fileSize >= length)) {
    throw new MemoryError(`memory region at ${hex(desc.guestPhysAddr)}: file has ${hex(fileSize)} bytes, ` +
      `region needs ${hex(length)}`, desc.guestPhysAddr, desc.size);
  }
  const buffer = binding.mmap(fd, length, true);
  try {
    return MemoryRegion.fromBuffer(desc, buffer, () => binding.unmapNow(buffer));
  } catch (err) {
    binding.unmapNow(buffer);
    throw err;
  }
}
