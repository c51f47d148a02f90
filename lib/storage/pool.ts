/**
 * Pool: the storage systems thin volumes allocate from, and the placement
 * policy. Placement takes a whole slot from the storage system with the most
 * free bytes (ties: lowest id), so a growing volume spreads over every system
 * and no system fills while another is empty — unless the volume has a home
 * (the system a migration put it on), which is tried first; fragments come
 * first from a slot that is already split, so small allocations do not
 * scatter.
 *
 * Owns: the set of open StorageSystems. Never: knows volumes or writes data.
 */
import { VvfsError } from '../errors.js'
import { StorageSystem } from './storage-system.js'

export interface PoolTotals {
  capacity: number
  allocated: number
  free: number
}

export interface PlacementOptions {
  /** Only this system (also a reserve or draining one: a migration asks by name). */
  only?: number
  exclude?: ReadonlySet<number>
  /** This system first if it has room (a volume's home), then by the policy. */
  prefer?: number
}

export interface Placement {
  system: StorageSystem
  /** Slot index (whole) or chunk address (fragment). */
  address: number
}

export class Pool {
  private readonly systems = new Map<number, StorageSystem>()
  /** Called after every allocation or release, for thresholds and waiters. */
  onChange: () => void = () => {}

  add(system: StorageSystem): void {
    this.systems.set(system.sid, system)
    this.onChange()
  }

  delete(sid: number): void {
    this.systems.delete(sid)
    this.onChange()
  }

  get(sid: number): StorageSystem {
    const system = this.systems.get(sid)
    if (!system) throw new VvfsError('STATE_CORRUPT', `storage system id ${sid} is referenced but not in the pool`)
    return system
  }

  has(sid: number): boolean {
    return this.systems.has(sid)
  }

  list(): StorageSystem[] {
    return [...this.systems.values()]
  }

  /**
   * A whole slot, from `only` if given, else from the system with the most
   * free bytes among those not excluded.
   */
  allocateSlot(opts: PlacementOptions = {}): Placement | undefined {
    const candidates = this.candidates(opts).filter((s) => s.table.freeSlots > 0)
    for (const system of candidates) {
      const slot = system.table.allocateSlot()
      if (slot !== undefined) {
        this.onChange()
        return { system, address: slot }
      }
    }
    return undefined
  }

  allocateFragment(opts: PlacementOptions = {}): Placement | undefined {
    const candidates = this.candidates(opts)
    const preferred = candidates.filter((s) => s.sid === opts.prefer)
    const rest = candidates.filter((s) => s.sid !== opts.prefer)
    const ordered = [...preferred, ...rest.filter((s) => s.table.hasPartialSlot), ...rest.filter((s) => !s.table.hasPartialSlot)]
    for (const system of ordered) {
      const pca = system.table.allocateFragment()
      if (pca !== undefined) {
        this.onChange()
        return { system, address: pca }
      }
    }
    return undefined
  }

  releaseSlot(sid: number, slot: number): void {
    this.get(sid).table.releaseSlot(slot)
    this.onChange()
  }

  releaseFragment(sid: number, pca: number): void {
    this.get(sid).table.releaseFragment(pca)
    this.onChange()
  }

  /** Capacity and allocation of the systems that take allocations (not reserve or draining). */
  totals(): PoolTotals {
    let capacity = 0
    let allocated = 0
    for (const s of this.systems.values()) {
      if (!s.allocatable) continue
      capacity += s.table.capacity
      allocated += s.table.allocated
    }
    return { capacity, allocated, free: capacity - allocated }
  }

  async syncAll(): Promise<void> {
    await Promise.all([...this.systems.values()].map((s) => s.sync()))
  }

  private candidates(opts: PlacementOptions): StorageSystem[] {
    if (opts.only !== undefined) {
      const system = this.systems.get(opts.only)
      return system ? [system] : []
    }
    return [...this.systems.values()]
      .filter((s) => s.allocatable && !opts.exclude?.has(s.sid))
      .sort((a, b) => Number(b.sid === opts.prefer) - Number(a.sid === opts.prefer) || b.table.free - a.table.free || a.sid - b.sid)
  }
}
