/**
 * A frontend assembled by hand from {@link FrontendConnection}, {@link GuestRam} and {@link DriverQueue}, for
 * tests that need what {@link VirtioDriver} decides for them: negotiating without PROTOCOL_FEATURES, starting a
 * ring without enabling it, keeping guest RAM and rings across connections (a backend restart), error fds.
 */
import { native, closeQuietly } from '../../src/native/index.js';
import { FrontendConnection, type FrontendOptions } from '../../src/protocol/frontend.js';
import { ProtocolFeature } from '../../src/protocol/constants.js';
import { GuestRam } from '../../src/driver/guest-ram.js';
import { DriverQueue } from '../../src/virtqueue/driver-queue.js';
import { availRingBytes, descTableBytes, usedRingBytes } from '../../src/virtqueue/layout.js';
import { CommonFeature, featureMask, hasFeature } from '../../src/virtio/constants.js';
import { waitUntil } from './tmp.js';

/** What {@link negotiate} agreed. */
export interface Negotiated {
  features: bigint;
  protocolFeatures: bigint;
}

/** Options for {@link negotiate}. */
export interface NegotiateOptions {
  /** Take PROTOCOL_FEATURES (default true). */
  protocol?: boolean;
  /** Protocol features to take if offered (default: all offered). */
  protocolFeatures?: bigint;
  /** Virtio features to take if offered (default: all offered; PROTOCOL_FEATURES per `protocol`). */
  features?: bigint;
  /** Give the backend its channel (needs BACKEND_REQ; default true when offered). */
  backendChannel?: boolean;
  /** Share this RAM (ADD_MEM_REG with CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE); default: no memory yet. */
  ram?: GuestRam;
}

/** GET/SET features and protocol features, SET_OWNER, and optionally the backend channel and memory. */
export async function negotiate(f: FrontendConnection, options: NegotiateOptions = {}): Promise<Negotiated> {
  const offered = await f.getFeatures();
  const protocol = (options.protocol ?? true) && hasFeature(offered, CommonFeature.PROTOCOL_FEATURES);
  let protocolFeatures = 0n;
  if (protocol) {
    const offeredProtocol = await f.getProtocolFeatures();
    protocolFeatures = offeredProtocol & (options.protocolFeatures ?? offeredProtocol);
    await f.setProtocolFeatures(protocolFeatures);
  }
  await f.setOwner();
  if ((options.backendChannel ?? true) && hasFeature(protocolFeatures, ProtocolFeature.BACKEND_REQ)) {
    await f.openBackendChannel();
  }
  const pf = featureMask(CommonFeature.PROTOCOL_FEATURES);
  let features = offered & (options.features ?? offered) & ~pf;
  if (protocol) features |= pf;
  await f.setFeatures(features);
  if (options.ram) {
    if (hasFeature(protocolFeatures, ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      await f.addMemRegion(options.ram.description, options.ram.fd);
    } else {
      await f.setMemTable([options.ram.description], [options.ram.fd]);
    }
  }
  return { features, protocolFeatures };
}

/** Lay out a split ring in `ram` (zeroed). */
export function allocQueue(ram: GuestRam, size: number, eventIdx = false): DriverQueue<number> {
  const desc = ram.alloc(descTableBytes(size), 16);
  const avail = ram.alloc(availRingBytes(size, true), 2);
  const used = ram.alloc(usedRingBytes(size, true), 4);
  return new DriverQueue<number>(ram.memory, size, { desc, avail, used }, { eventIdx });
}

/** A ring as handed to one backend connection. */
export interface AttachedQueue {
  index: number;
  queue: DriverQueue<number>;
  kickFd: number;
  callFd: number;
  /** Signal the kick eventfd. */
  kick(): void;
  /** Close our eventfds. */
  close(): void;
}

/** Options for {@link attachQueue}. */
export interface AttachOptions {
  /** SET_VRING_BASE value (default 0). */
  base?: number;
  /** Send SET_VRING_ENABLE(1) after the kick fd (default: when PROTOCOL_FEATURES is negotiated). */
  enable?: boolean;
  /** Send SET_VRING_ERR with this eventfd (we keep it). */
  errFd?: number;
  /** Send SET_VRING_KICK (default true). */
  kick?: boolean;
  /** Frontend-virtual address of a guest-physical one (default `ram.userAddrOf`). */
  vaOf?: (gpa: number) => number;
}

/** SET_VRING_NUM/BASE/ADDR/CALL(/ERR)/KICK(/ENABLE) for an already laid-out ring. */
export async function attachQueue(f: FrontendConnection, ram: GuestRam, index: number, queue: DriverQueue<number>,
  negotiated: Negotiated, options: AttachOptions = {}): Promise<AttachedQueue> {
  const kickFd = native.eventfd(0);
  const callFd = native.eventfd(0);
  const a = queue.addresses;
  const va = options.vaOf ?? ((gpa: number) => ram.userAddrOf(gpa));
  await f.setVringNum(index, queue.size);
  await f.setVringBase(index, options.base ?? 0);
  await f.setVringAddr({
    index, flags: 0, log: 0, desc: va(a.desc), avail: va(a.avail), used: va(a.used),
  });
  await f.setVringCall(index, callFd);
  if (options.errFd !== undefined) await f.setVringErr(index, options.errFd);
  if (options.kick ?? true) await f.setVringKick(index, kickFd);
  const enable = options.enable ?? hasFeature(negotiated.features, CommonFeature.PROTOCOL_FEATURES);
  if (enable) await f.setVringEnable(index, true);
  return {
    index, queue, kickFd, callFd,
    kick: () => native.eventfdWrite(kickFd, 1),
    close: () => {
      closeQuietly(kickFd);
      closeQuietly(callFd);
    },
  };
}

/** Put `text` in RAM; returns the buffer. */
export function put(ram: GuestRam, text: string): { addr: number; len: number } {
  const data = Buffer.from(text);
  const addr = ram.alloc(Math.max(1, data.length), 8);
  ram.bytes(addr, data.length).set(data);
  return { addr, len: data.length };
}

/** An echo request: `text` readable, 64 bytes writable. Added and published, not kicked. */
export function addEcho(ram: GuestRam, queue: DriverQueue<number>, text: string, token = 0):
  { head: number; out: { addr: number; len: number } } {
  const input = put(ram, text);
  const out = { addr: ram.alloc(64, 8), len: 64 };
  const head = queue.add([input], [out], token);
  if (head < 0) throw new Error('queue full');
  queue.publish();
  return { head, out };
}

/** Wait until the device returned `n` more chains than consumed, then pop them. */
export async function takeUsed(queue: DriverQueue<number>, n = 1, timeoutMs = 5000):
  Promise<{ head: number; token: number; len: number }[]> {
  await waitUntil(() => queue.usedPending() >= n, timeoutMs, `${n} used element(s)`);
  const out = [];
  for (let i = 0; i < n; i++) out.push(queue.popUsed()!);
  return out;
}

/** Text of `len` bytes at `addr`. */
export function text(ram: GuestRam, addr: number, len: number): string {
  return Buffer.from(ram.bytes(addr, len)).toString();
}

export { FrontendConnection, GuestRam, type FrontendOptions };
