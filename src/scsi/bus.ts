/**
 * A SCSI domain: targets 0..maxTargets-1, each present while it has at least one logical unit, with
 * notifications when units come and go (a transport turns them into hot-plug events).
 */
import { MAX_LUN } from './constants.js';
import type { LogicalUnit } from './logical-unit.js';
import { ScsiTarget } from './target.js';

/** A unit joining or leaving the bus. */
export interface BusChange {
  kind: 'added' | 'removed';
  target: number;
  lun: number;
  unit: LogicalUnit;
}

/** Where a unit sits. */
export interface UnitAddress {
  target: number;
  lun: number;
  unit: LogicalUnit;
}

/** Options for {@link ScsiBus}. */
export interface ScsiBusOptions {
  /** Targets 0..maxTargets-1 may exist (default 256, the most virtio-scsi can address). */
  maxTargets?: number;
}

/** Targets and their units. */
export class ScsiBus {
  readonly maxTargets: number;
  readonly #targets = new Map<number, ScsiTarget>();
  /** The same targets by index: every command looks its target up. */
  readonly #byId: (ScsiTarget | undefined)[] = [];
  readonly #listeners = new Set<(change: BusChange) => void>();

  constructor(options: ScsiBusOptions = {}) {
    const max = options.maxTargets ?? 256;
    if (!Number.isInteger(max) || max < 1 || max > 256) throw new RangeError(`maxTargets ${max} is not in 1..256`);
    this.maxTargets = max;
    // Filled by push: a packed array (not a holey one) keeps the lookup on the fast path.
    for (let i = 0; i < max; i++) this.#byId.push(undefined);
  }

  /** The target with this id, if it has any unit. */
  target(id: number): ScsiTarget | undefined {
    return id >= 0 && id < this.maxTargets ? this.#byId[id] : undefined;
  }

  /** Present targets, by id. */
  get targets(): ScsiTarget[] {
    return [...this.#targets.values()].sort((a, b) => a.id - b.id);
  }

  /** Every unit with its address, in target then LUN order. */
  units(): UnitAddress[] {
    const out: UnitAddress[] = [];
    for (const t of this.targets) for (const lun of t.luns()) out.push({ target: t.id, lun, unit: t.unit(lun)! });
    return out;
  }

  /** The unit at target:lun. */
  unit(target: number, lun: number): LogicalUnit | undefined {
    return this.#targets.get(target)?.unit(lun);
  }

  /** The lowest LUN of `target` without a unit. */
  freeLun(target: number): number {
    const t = this.#targets.get(target);
    let lun = 0;
    while (t?.unit(lun) && lun <= MAX_LUN) lun++;
    return lun;
  }

  /**
   * Put `unit` at target:lun and tell the listeners.
   * @throws RangeError for an address out of range or taken.
   */
  add(target: number, lun: number, unit: LogicalUnit): void {
    if (!Number.isInteger(target) || target < 0 || target >= this.maxTargets) {
      throw new RangeError(`target ${target} is not in 0..${this.maxTargets - 1}`);
    }
    for (const t of this.#targets.values()) {
      for (const u of t.units.values()) if (u === unit) throw new RangeError(`the unit is already at ${u.address}`);
    }
    let t = this.#targets.get(target);
    const created = t === undefined;
    t ??= new ScsiTarget(target);
    t.attach(lun, unit);
    if (created) {
      this.#targets.set(target, t);
      this.#byId[target] = t;
    }
    this.#emit({ kind: 'added', target, lun, unit });
  }

  /**
   * Take the unit at target:lun off the bus and tell the listeners. Its running tasks go on: wait for
   * `unit.whenIdle()` before closing its storage. Returns undefined when there is no such unit.
   */
  remove(target: number, lun: number): LogicalUnit | undefined {
    const t = this.#targets.get(target);
    const unit = t?.detach(lun);
    if (!t || !unit) return undefined;
    if (t.units.size === 0) {
      this.#targets.delete(target);
      this.#byId[target] = undefined;
    }
    this.#emit({ kind: 'removed', target, lun, unit });
    return unit;
  }

  /** Listen to units being added and removed; returns the function that stops listening. */
  subscribe(listener: (change: BusChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(change: BusChange): void {
    for (const l of [...this.#listeners]) l(change);
  }
}
