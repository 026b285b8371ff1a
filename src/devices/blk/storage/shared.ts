/**
 * One storage used from several threads: what a queue worker needs to reach the same bytes. A file is opened
 * again by path (its own fd and io_uring ring per thread; fdatasync on any fd covers the file); a memory disk
 * shares its SharedArrayBuffer chunks; a null disk is just its size.
 */
import { FileStorage, type FileAio } from './file.js';
import { MemoryStorage } from './memory.js';
import { NullStorage } from './null.js';
import type { BlockStorage } from './storage.js';

/** A structured-cloneable description of a storage for another thread. */
export type StorageShare =
  | { kind: 'file'; path: string; size: number; readOnly: boolean; aio: FileAio }
  | { kind: 'memory'; size: number; readOnly: boolean; chunks: Uint8Array[] }
  | { kind: 'null'; size: number; readOnly: boolean; readZeroes: boolean };

/** Describe `storage` for a worker, or undefined when it cannot be shared. */
export function shareStorage(storage: BlockStorage): StorageShare | undefined {
  if (storage instanceof FileStorage) {
    return { kind: 'file', path: storage.path, size: storage.size, readOnly: storage.readOnly, aio: storage.aio };
  }
  if (storage instanceof MemoryStorage) {
    const chunks = storage.sharedChunks();
    return chunks ? { kind: 'memory', size: storage.size, readOnly: storage.readOnly, chunks } : undefined;
  }
  if (storage instanceof NullStorage) {
    return { kind: 'null', size: storage.size, readOnly: storage.readOnly, readZeroes: storage.readZeroes };
  }
  return undefined;
}

/** This thread's handle on a shared storage. Closing it leaves the original open. */
export function openSharedStorage(share: StorageShare): BlockStorage {
  switch (share.kind) {
    case 'file': {
      const storage = FileStorage.open(share.path, { readOnly: share.readOnly, aio: share.aio });
      if (storage.size !== share.size) {
        void storage.close();
        throw new Error(`${share.path} has ${storage.size} bytes now, not ${share.size}`);
      }
      return storage;
    }
    case 'memory':
      return new MemoryStorage({ size: share.size, readOnly: share.readOnly, chunks: share.chunks });
    case 'null':
      return new NullStorage({ size: share.size, readOnly: share.readOnly, readZeroes: share.readZeroes });
  }
}
