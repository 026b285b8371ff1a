/**
 * Block storage backends and a factory choosing one from a description (what the daemons' options give).
 */
import { FileStorage, type FallocateFn, type FileAio } from './file.js';
import { MemoryStorage } from './memory.js';
import { NullStorage } from './null.js';
import type { BlockStorage } from './storage.js';

export * from './storage.js';
export { FileStorage, FallocateMode, DEFAULT_FILE_AIO, type FallocateFn, type FileAio, type FileStorageOptions } from './file.js';
export { UringQueue, type UringQueueOptions, type UringStats } from './uring.js';
export { MemoryStorage, type MemoryStorageOptions } from './memory.js';
export { NullStorage, type NullStorageOptions } from './null.js';

/** Which storage to open. */
export type StorageSpec =
  | { kind: 'file'; path: string; size?: number; readOnly?: boolean; fallocate?: FallocateFn | null; aio?: FileAio }
  | { kind: 'memory'; size: number; readOnly?: boolean }
  | { kind: 'null'; size: number; readOnly?: boolean; readZeroes?: boolean };

/** Open the storage a spec describes. Synchronous (start-up); throws on a missing or mismatched image. */
export function openStorage(spec: StorageSpec): BlockStorage {
  switch (spec.kind) {
    case 'file': return FileStorage.open(spec.path, spec);
    case 'memory': return new MemoryStorage(spec);
    case 'null': return new NullStorage(spec);
  }
}
