/**
 * The virtio-blk device: requests from any number of queues go to one {@link BlockStorage}. Data moves between
 * guest memory and the storage with no copy of ours (the storage gets views into guest memory); each request
 * completes when its I/O does, and the framework batches used-ring publication.
 *
 * Every request gets a status byte when it has one: OK, IOERR (bad layout, range, limits, I/O error, write on a
 * read-only disk) or UNSUPP (unknown type, unknown segment flags). A chain without any device-writable byte is
 * completed with length 0 and logged. The used length is the bytes written to the guest: data read + status.
 */
import type { QueueWorkerSpec, VirtioDevice } from '../../device/device.js';
import type { Vring } from '../../device/vring.js';
import { RequestRejected } from '../../protocol/backend.js';
import type { DescriptorChain } from '../../virtqueue/chain.js';
import { BlkFeature, DeviceId, featureMask, hasFeature } from '../../virtio/constants.js';
import { logger as makeLogger, type Logger } from '../../util/log.js';
import type { BlockStorage, IoCallback } from './storage/storage.js';
import { BlkConfigOffset, encodeBlkConfig } from './config.js';
import { Blk, BlkRequestType, BlkStatus, readHeader, readSegment, type BlkHeader, type BlkSegment } from './request.js';
import { refillableViewList, sliceViewsInto } from '../../util/views.js';
import { shareStorage, type StorageShare } from './storage/shared.js';

/** Options for {@link BlkDevice}. */
export interface BlkDeviceOptions {
  storage: BlockStorage;
  /** Request queues (default 1). */
  numQueues?: number;
  /** Largest ring the device accepts (default 1024, QEMU's limit). */
  maxQueueSize?: number;
  /** GET_ID answer: printable ASCII, at most 20 bytes (default empty). */
  serial?: string;
  /** Logical block size advertised in blk_size: a power of two from 512 to 65536 (default 512). */
  blockSize?: number;
  /** Start in write-back mode (default true); write-through makes every write durable before it completes. */
  writeback?: boolean;
  /** Most data buffers per request (seg_max, default 126 = QEMU's queue size 128 less header and status). */
  segMax?: number;
  /** Largest data buffer (size_max, default 1 MiB). */
  sizeMax?: number;
  /** Discard limits (defaults 32768 sectors = 16 MiB, 16 segments). */
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  /** Write-zeroes limits (defaults 32768 sectors, 16 segments). */
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
  logger?: Logger;
}

/** What the connection's thread decides and queue workers follow. */
export interface BlkWorkerState {
  /** Negotiated features (hex: bigints do not cross threads). */
  features: string;
  writeback: boolean;
}

/** What a queue worker gets to build its {@link BlkDevice} (see worker.ts). */
export interface BlkWorkerData {
  storage: StorageShare;
  options: Omit<BlkDeviceOptions, 'storage' | 'logger'>;
  state: BlkWorkerState;
}

/** Counters, for tests and statistics. */
export interface BlkStats {
  /** Chains handled, in total and per queue. */
  requests: number;
  perQueue: number[];
  reads: number;
  writes: number;
  flushes: number;
  getIds: number;
  discards: number;
  writeZeroes: number;
  /** Completed with UNSUPP. */
  unsupported: number;
  /** Completed with IOERR (bad requests and I/O errors). */
  errors: number;
  /** Completed with no status byte (no device-writable buffer at all). */
  noStatus: number;
  bytesRead: number;
  bytesWritten: number;
}

const Phase = {
  /** Waiting for the data operation. */
  IO: 0,
  /** Waiting for one discard / write-zeroes segment. */
  SEGMENT: 1,
  /** Waiting for fdatasync (FLUSH, or a write in write-through mode). */
  SYNC: 2,
} as const;

const FLUSH_MASK = featureMask(BlkFeature.FLUSH);
const NO_SEGMENTS = new Uint8Array(0);
const WCE_MASK = featureMask(BlkFeature.CONFIG_WCE);

function positiveInt(value: number | undefined, fallback: number, name: string, max = 0xffffffff): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > max) throw new RangeError(`${name} must be an integer in 1..${max}, got ${v}`);
  return v;
}

/**
 * One request in flight. Pooled: a request is reused once it completes, with its data view list and segment
 * buffer, so the hot path allocates nothing of ours (the chain and its views come pooled from the queue).
 */
class BlkRequest {
  readonly #device: BlkDevice;
  readonly #storage: BlockStorage;
  vring: Vring | null = null;
  chain: DescriptorChain | null = null;
  /** The view holding the status byte, and its index there. */
  status: Uint8Array | null = null;
  statusIndex = 0;
  type = 0;
  /** Bytes of data written to the guest on success (reads, GET_ID). */
  written = 0;
  phase: number = Phase.IO;
  /** Make the result durable before completing (write-through). */
  sync = false;
  /** The data part of the chain handed to the storage: refilled for every read and write. */
  readonly data: Uint8Array[] = refillableViewList();
  /** Discard / write-zeroes: the segments copied out of the chain (grown as needed, kept), how many, the next. */
  segments: Uint8Array = NO_SEGMENTS;
  segmentCount = 0;
  nextSegment = 0;
  readonly #segment: BlkSegment = { sector: 0, numSectors: 0, flags: 0 };
  /**
   * The completion of every storage operation, the request being its context: one function for all requests, so
   * that the storage's call of it stays specialized across connections (a closure per request was a new call
   * target for each connection's new requests, and V8 dropped the code that had inlined the previous one).
   */
  static readonly ioDone: IoCallback<BlkRequest> = (err, req) => req.#onIo(err);

  constructor(device: BlkDevice, storage: BlockStorage) {
    this.#device = device;
    this.#storage = storage;
  }

  /** Run the next segment, or move on when none is left. */
  runSegments(): void {
    if (this.nextSegment < this.segmentCount) {
      const s = readSegment(this.segments, this.nextSegment++, this.#segment);
      const pos = s.sector * Blk.SECTOR_SIZE;
      const len = s.numSectors * Blk.SECTOR_SIZE;
      this.phase = Phase.SEGMENT;
      if (this.type === BlkRequestType.DISCARD) this.#storage.discard(pos, len, BlkRequest.ioDone, this);
      else this.#storage.writeZeroes(pos, len, (s.flags & Blk.SEGMENT_F_UNMAP) !== 0, BlkRequest.ioDone, this);
      return;
    }
    this.afterWrite();
  }

  /** The data is in the storage: make it durable first in write-through mode. */
  afterWrite(): void {
    if (this.sync) {
      this.phase = Phase.SYNC;
      this.#storage.flush(BlkRequest.ioDone, this);
    } else {
      this.finish(BlkStatus.OK);
    }
  }

  #onIo(err: Error | null): void {
    // Storage callbacks run from libuv; nothing thrown here may escape and take the daemon down.
    try {
      if (err) {
        this.#device.ioFailed(this, err);
        this.finish(BlkStatus.IOERR);
        return;
      }
      switch (this.phase) {
        case Phase.IO:
          if (this.type === BlkRequestType.IN) this.finish(BlkStatus.OK);
          else this.afterWrite();
          return;
        case Phase.SEGMENT:
          this.runSegments();
          return;
        default:
          this.finish(BlkStatus.OK);
      }
    } catch (e) {
      this.#device.internalError(e as Error);
      // Still complete the chain if we can: a chain left in flight would stall the ring's stop forever.
      const vring = this.vring;
      const chain = this.chain;
      if (vring && chain) {
        this.vring = null;
        this.chain = null;
        vring.complete(chain, 0);
      }
    }
  }

  /** Write the status byte, complete the chain and go back to the pool. */
  finish(status: number): void {
    const vring = this.vring!;
    const chain = this.chain!;
    this.status![this.statusIndex] = status;
    const len = status === BlkStatus.OK ? this.written + 1 : 1;
    this.vring = null;
    this.chain = null;
    this.status = null;
    this.#device.finished(this, status);
    vring.complete(chain, len);
  }
}

/** A virtio-blk device over a {@link BlockStorage}. */
export class BlkDevice implements VirtioDevice {
  readonly deviceId = DeviceId.BLOCK;
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly inflightTracking = true;
  readonly storage: BlockStorage;
  readonly serial: string;
  readonly blockSize: number;
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  readonly segMax: number;
  /** Linux sends up to seg_max + 2 buffers per request, through an indirect table even on a smaller ring. */
  readonly maxChainLength: number;
  readonly sizeMax: number;
  readonly maxDiscardSectors: number;
  readonly maxDiscardSeg: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSeg: number;
  readonly stats: BlkStats;
  readonly #serialBytes: Uint8Array;
  readonly #defaultWriteback: boolean;
  readonly #maxData: number;
  readonly #log: Logger;
  #writeback: boolean;
  #negotiated = 0n;
  /**
   * Requests waiting for reuse. Emptied at each reset: a request that outlived a scavenge is old, and every request
   * stores pointers to the connection's rings, chains and views, which are young after a reconnection; each such
   * store took the write barrier's slow path (138-208 instructions per request in later connections). The array
   * itself is kept, so that its shape, and the inlined push and pop, stay as they were.
   */
  readonly #pool: BlkRequest[] = [];
  readonly #header: BlkHeader = { type: 0, sector: 0 };
  readonly #segment: BlkSegment = { sector: 0, numSectors: 0, flags: 0 };
  readonly #scratch = new Uint8Array(Blk.HEADER_SIZE);
  readonly #warned = new Set<string>();
  readonly #options: Omit<BlkDeviceOptions, 'storage' | 'logger'>;
  #broadcast: ((state: BlkWorkerState) => void) | undefined;

  constructor(options: BlkDeviceOptions) {
    const { storage: _storage, logger: _logger, ...rest } = options;
    this.#options = rest;
    const storage = options.storage;
    this.storage = storage;
    this.#log = options.logger ?? makeLogger('blk');
    this.numQueues = positiveInt(options.numQueues, 1, 'numQueues', 256);
    this.maxQueueSize = positiveInt(options.maxQueueSize, 1024, 'maxQueueSize', 32768);
    if ((this.maxQueueSize & (this.maxQueueSize - 1)) !== 0) throw new RangeError(`maxQueueSize ${this.maxQueueSize} is not a power of two`);
    const blockSize = options.blockSize ?? 512;
    if (!Number.isInteger(blockSize) || blockSize < 512 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) {
      throw new RangeError(`block size ${blockSize} is not a power of two from 512 to 65536`);
    }
    this.blockSize = blockSize;
    const serial = options.serial ?? '';
    if (!/^[\x20-\x7e]*$/.test(serial) || serial.length > Blk.ID_BYTES) {
      throw new RangeError(`serial '${serial}' must be at most ${Blk.ID_BYTES} printable ASCII characters`);
    }
    this.serial = serial;
    this.#serialBytes = new Uint8Array(Blk.ID_BYTES);
    this.#serialBytes.set(Buffer.from(serial, 'latin1'));
    this.capacity = Math.floor(storage.size / Blk.SECTOR_SIZE);
    if (this.capacity === 0) throw new RangeError(`storage of ${storage.size} bytes is smaller than one sector`);
    if (storage.size % blockSize !== 0) {
      this.#log.warn(`storage size ${storage.size} is not a multiple of the ${blockSize}-byte block size; the tail is unusable`);
    }
    this.segMax = positiveInt(options.segMax, 126, 'segMax');
    this.maxChainLength = this.segMax + 2;
    this.sizeMax = positiveInt(options.sizeMax, 1 << 20, 'sizeMax');
    this.maxDiscardSectors = positiveInt(options.maxDiscardSectors, 32768, 'maxDiscardSectors', 0x7fffff);
    this.maxDiscardSeg = positiveInt(options.maxDiscardSeg, 16, 'maxDiscardSeg', 4096);
    this.maxWriteZeroesSectors = positiveInt(options.maxWriteZeroesSectors, 32768, 'maxWriteZeroesSectors', 0x7fffff);
    this.maxWriteZeroesSeg = positiveInt(options.maxWriteZeroesSeg, 16, 'maxWriteZeroesSeg', 4096);
    this.#maxData = Math.min(this.segMax * this.sizeMax, 2 ** 32 - 1);
    this.#defaultWriteback = options.writeback ?? true;
    this.#writeback = this.#defaultWriteback;

    let features = featureMask(BlkFeature.SIZE_MAX, BlkFeature.SEG_MAX, BlkFeature.BLK_SIZE, BlkFeature.FLUSH,
      BlkFeature.CONFIG_WCE, BlkFeature.MQ);
    if (storage.readOnly) features |= featureMask(BlkFeature.RO);
    else features |= featureMask(BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES);
    this.features = features;
    this.stats = {
      requests: 0, perQueue: new Array<number>(this.numQueues).fill(0), reads: 0, writes: 0, flushes: 0, getIds: 0,
      discards: 0, writeZeroes: 0, unsupported: 0, errors: 0, noStatus: 0, bytesRead: 0, bytesWritten: 0,
    };
  }

  /** The writeback field as the driver sees it. */
  get writeback(): boolean {
    return this.#writeback;
  }

  /** Must writes be durable when they complete? (write-through, or a driver that can neither flush nor see WCE) */
  get writeThrough(): boolean {
    return !this.#writeback || (this.#negotiated & (FLUSH_MASK | WCE_MASK)) === 0n;
  }

  readConfig(): Uint8Array {
    return encodeBlkConfig({
      capacity: this.capacity,
      sizeMax: this.sizeMax,
      segMax: this.segMax,
      blkSize: this.blockSize,
      writeback: this.#writeback,
      numQueues: this.numQueues,
      maxDiscardSectors: this.maxDiscardSectors,
      maxDiscardSeg: this.maxDiscardSeg,
      discardSectorAlignment: this.blockSize / Blk.SECTOR_SIZE,
      maxWriteZeroesSectors: this.maxWriteZeroesSectors,
      maxWriteZeroesSeg: this.maxWriteZeroesSeg,
      writeZeroesMayUnmap: this.storage.canUnmap,
    });
  }

  /** Only `writeback` is writable (with CONFIG_WCE); switching to write-through first makes past writes durable. */
  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    const at = BlkConfigOffset.WRITEBACK;
    if (offset > at || offset + data.byteLength <= at) {
      throw new RequestRejected(`virtio-blk config: only writeback (offset ${at}) is writable, not ${offset}+${data.byteLength}`);
    }
    if (!hasFeature(this.#negotiated, BlkFeature.CONFIG_WCE)) {
      throw new RequestRejected('virtio-blk config: writeback is read-only without CONFIG_WCE');
    }
    const value = data[at - offset]!;
    if (value > 1) throw new RequestRejected(`virtio-blk config: writeback must be 0 or 1, not ${value}`);
    const was = this.#writeback;
    this.#writeback = value === 1;
    this.#syncWorkers();
    if (was !== this.#writeback) this.#log.info(`cache mode: ${this.#writeback ? 'write-back' : 'write-through'}`);
    if (was && !this.#writeback) {
      await new Promise<void>((resolve) => this.storage.flush((err) => {
        if (err) this.#log.warn(`flush on switching to write-through failed: ${err.message}`);
        resolve();
      }));
    }
  }

  featuresNegotiated(features: bigint): void {
    this.#negotiated = features;
    // virtio 1.2, 5.2.5: CONFIG_WCE without FLUSH means writeback starts at 0.
    if (hasFeature(features, BlkFeature.CONFIG_WCE) && !hasFeature(features, BlkFeature.FLUSH)) this.#writeback = false;
    this.#syncWorkers();
  }

  /** Request queues may run on workers when the storage can be shared (file, memory, null). */
  queueWorker(): QueueWorkerSpec | undefined {
    const storage = shareStorage(this.storage);
    if (!storage) return undefined;
    const data: BlkWorkerData = { storage, options: this.#options, state: this.#workerState() };
    return { module: new URL('./worker.js', import.meta.url).href, data };
  }

  attachWorkers(broadcast: (data: unknown) => void): void {
    this.#broadcast = broadcast;
  }

  /** On a queue worker: follow the connection thread's state. */
  applyWorkerState(state: BlkWorkerState): void {
    this.#negotiated = BigInt(state.features);
    this.#writeback = state.writeback;
  }

  #workerState(): BlkWorkerState {
    return { features: `0x${this.#negotiated.toString(16)}`, writeback: this.#writeback };
  }

  #syncWorkers(): void {
    this.#broadcast?.(this.#workerState());
  }

  ringStarted(): void {
    // A first request for the pool now rather than on the first request: with a disk that completes within the
    // call that one serves every request, and making it is then a path handleChain's compiled code has never
    // seen (no type feedback), which dropped that code at each new connection (the pool is emptied at reset).
    if (this.#pool.length === 0) this.#pool.push(new BlkRequest(this, this.storage));
  }

  reset(): void {
    this.#negotiated = 0n;
    this.#writeback = this.#defaultWriteback;
    this.#pool.length = 0;
    this.#syncWorkers();
  }

  handleChain(vring: Vring, chain: DescriptorChain): void {
    const stats = this.stats;
    stats.requests++;
    stats.perQueue[vring.index]!++;
    const wlen = chain.writableLength;
    if (wlen === 0) {
      stats.noStatus++;
      this.#guestError('no-status', `queue ${vring.index}: request ${chain.head} has no writable status byte; ` +
        'completed with length 0');
      vring.complete(chain, 0);
      return;
    }
    const req = this.#pool.pop() ?? new BlkRequest(this, this.storage);
    const w = chain.writable;
    const status = w[w.length - 1]!;
    req.vring = vring;
    req.chain = chain;
    req.status = status;
    req.statusIndex = chain.writableLengths[w.length - 1]! - 1;
    req.written = 0;
    req.phase = Phase.IO;
    req.sync = false;

    const h = this.#header;
    if (!readHeader(chain, h, this.#scratch)) {
      this.#reject(req, 'short-header', `request ${chain.head}: header of ${chain.readableLength} bytes`);
      return;
    }
    req.type = h.type;
    const rlen = chain.readableLength;
    switch (h.type) {
      case BlkRequestType.IN: {
        const len = wlen - 1;
        if (rlen !== Blk.HEADER_SIZE) return this.#reject(req, 'layout', `read ${chain.head} has ${rlen - Blk.HEADER_SIZE} readable data bytes`);
        if (!this.#dataOk(req, chain, h.sector, len)) return;
        stats.reads++;
        stats.bytesRead += len;
        req.written = len;
        if (len === 0) return req.finish(BlkStatus.OK);
        const data = req.data;
        if (w.length === 2 && chain.writableLengths[0] === len) {
          // The usual layout, one data buffer and the status byte: no slicing.
          data[0] = w[0]!;
          if (data.length !== 1) data.length = 1;
        } else {
          sliceViewsInto(data, w, 0, len);
        }
        this.storage.read(data, h.sector * Blk.SECTOR_SIZE, BlkRequest.ioDone, req);
        return;
      }
      case BlkRequestType.OUT: {
        const len = rlen - Blk.HEADER_SIZE;
        if (this.storage.readOnly) return this.#reject(req, 'read-only', `write ${chain.head} on a read-only disk`);
        if (wlen !== 1) return this.#reject(req, 'layout', `write ${chain.head} has ${wlen - 1} writable data bytes`);
        if (!this.#dataOk(req, chain, h.sector, len)) return;
        stats.writes++;
        stats.bytesWritten += len;
        req.sync = this.writeThrough;
        if (len === 0) return req.afterWrite();
        this.storage.write(sliceViewsInto(req.data, chain.readable, Blk.HEADER_SIZE, rlen), h.sector * Blk.SECTOR_SIZE,
          BlkRequest.ioDone, req);
        return;
      }
      case BlkRequestType.FLUSH:
        if (rlen !== Blk.HEADER_SIZE || wlen !== 1) return this.#reject(req, 'layout', `flush ${chain.head} carries data`);
        stats.flushes++;
        req.phase = Phase.SYNC;
        this.storage.flush(BlkRequest.ioDone, req);
        return;
      case BlkRequestType.GET_ID: {
        if (rlen !== Blk.HEADER_SIZE) return this.#reject(req, 'layout', `get-id ${chain.head} has readable data`);
        stats.getIds++;
        const n = Math.min(Blk.ID_BYTES, wlen - 1);
        req.written = chain.writeFrom(n === Blk.ID_BYTES ? this.#serialBytes : this.#serialBytes.subarray(0, n));
        req.finish(BlkStatus.OK);
        return;
      }
      case BlkRequestType.DISCARD:
      case BlkRequestType.WRITE_ZEROES:
        this.#zeroRequest(req, chain, h.type === BlkRequestType.DISCARD);
        return;
      default:
        this.stats.unsupported++;
        this.#guestError('unsupported-type', `request type ${h.type} is not supported`);
        req.finish(BlkStatus.UNSUPP);
    }
  }

  /** Checks shared by reads and writes; rejects the request and returns false when one fails. */
  #dataOk(req: BlkRequest, chain: DescriptorChain, sector: number, len: number): boolean {
    if (len % Blk.SECTOR_SIZE !== 0) {
      this.#reject(req, 'unaligned', `request ${chain.head}: ${len} data bytes is not a whole number of sectors`);
      return false;
    }
    if (chain.descriptorCount > this.segMax + 2 || len > this.#maxData) {
      this.#reject(req, 'limits', `request ${chain.head}: ${chain.descriptorCount} buffers / ${len} bytes exceed ` +
        `seg_max ${this.segMax} / size_max ${this.sizeMax}`);
      return false;
    }
    const sectors = len / Blk.SECTOR_SIZE;
    if (sector > this.capacity - sectors) {
      this.#reject(req, 'range', `request ${chain.head}: sectors ${sector}+${sectors} past the end (${this.capacity})`);
      return false;
    }
    return true;
  }

  #zeroRequest(req: BlkRequest, chain: DescriptorChain, discard: boolean): void {
    const name = discard ? 'discard' : 'write-zeroes';
    if (this.storage.readOnly) return this.#reject(req, 'read-only', `${name} ${chain.head} on a read-only disk`);
    if (chain.writableLength !== 1) return this.#reject(req, 'layout', `${name} ${chain.head} has writable data`);
    const payload = chain.readableLength - Blk.HEADER_SIZE;
    if (payload === 0 || payload % Blk.SEGMENT_SIZE !== 0) {
      return this.#reject(req, 'layout', `${name} ${chain.head}: ${payload} bytes of segments`);
    }
    const count = payload / Blk.SEGMENT_SIZE;
    const maxSeg = discard ? this.maxDiscardSeg : this.maxWriteZeroesSeg;
    if (count > maxSeg) return this.#reject(req, 'limits', `${name} ${chain.head}: ${count} segments (max ${maxSeg})`);
    // Copied: the segments are used over several asynchronous steps and the guest may rewrite them meanwhile.
    // The request keeps its buffer; only `payload` bytes of it are meaningful (the readable part ends there).
    if (req.segments.byteLength < payload) req.segments = new Uint8Array(Math.max(payload, 4 * Blk.SEGMENT_SIZE));
    const segments = req.segments;
    chain.readInto(segments, Blk.HEADER_SIZE);
    const maxSectors = discard ? this.maxDiscardSectors : this.maxWriteZeroesSectors;
    const s = this.#segment;
    for (let i = 0; i < count; i++) {
      readSegment(segments, i, s);
      // virtio 1.2, 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
      if ((s.flags & ~Blk.SEGMENT_F_UNMAP) !== 0 || (discard && s.flags !== 0)) {
        this.stats.unsupported++;
        this.#guestError('segment-flags', `${name} ${chain.head}: segment flags 0x${s.flags.toString(16)}`);
        req.finish(BlkStatus.UNSUPP);
        return;
      }
      if (s.numSectors > maxSectors || s.sector > this.capacity - s.numSectors) {
        return this.#reject(req, 'range', `${name} ${chain.head}: sectors ${s.sector}+${s.numSectors} ` +
          `(capacity ${this.capacity}, max ${maxSectors})`);
      }
    }
    if (discard) this.stats.discards++;
    else this.stats.writeZeroes++;
    req.segmentCount = count;
    req.nextSegment = 0;
    req.sync = this.writeThrough;
    req.runSegments();
  }

  /** Complete a bad request with IOERR. */
  #reject(req: BlkRequest, kind: string, message: string): void {
    this.#guestError(kind, message);
    req.finish(BlkStatus.IOERR);
  }

  /**
   * A guest mistake: logged at warn once per kind (a guest could flood the log), at debug after that.
   */
  #guestError(kind: string, message: string): void {
    if (this.#warned.has(kind)) {
      this.#log.debug(message);
    } else {
      this.#warned.add(kind);
      this.#log.warn(`${message} (further ones of this kind are logged at debug level)`);
    }
  }

  /** @internal A storage operation failed. */
  ioFailed(req: BlkRequest, err: Error): void {
    this.#log.warn(`I/O error on request ${req.chain?.head} (type ${req.type}): ${err.message}`);
  }

  /** @internal A bug of ours surfaced in an asynchronous callback; logged instead of crashing the daemon. */
  internalError(err: Error): void {
    this.#log.error(`internal error completing a request: ${err.stack ?? err.message}`);
  }

  /** @internal A request completed: count it and keep it for reuse. */
  finished(req: BlkRequest, status: number): void {
    if (status === BlkStatus.IOERR) this.stats.errors++;
    this.#pool.push(req);
  }
}
