/**
 * MemoryBudget: the daemon-wide budget for what LevelDB keeps in memory for
 * the local storage systems — memtables and block caches (issue 17, target
 * 6) — divided among the stores open at the moment, so that memory does not
 * grow with the number of storage systems (`vvfs daemon --memory SIZE`).
 *
 * Before it, every store was opened with a 64 MiB write buffer and a 16 MiB
 * block cache: up to 2 × 64 + 16 = 144 MiB per store (LevelDB keeps the full
 * memtable while it writes it out and fills a new one meanwhile), and the
 * daemon's peak RSS in `make bench` with three stores was 566 MiB.
 *
 * Division: MEMTABLE_PART of the budget for memtables — each store's write
 * buffer is that part / (2 × stores), as a store can hold two memtables at
 * once — and the rest for block caches, split evenly; each capped at the
 * sizes measured best for one store (STORE_OPTIONS), and floored at
 * MIN_WRITE_BUFFER / MIN_CACHE (with more stores than the floors allow the
 * budget is exceeded: `shareOf` says so, the manager logs it).
 *
 * Owns: the set of stores sharing the budget. Concurrency: JS thread only;
 * join/leave re-divide at once (LevelDB takes a new write buffer size at the
 * next write, a cache evicts down to its new capacity at once: patches/,
 * classic-level setMemory). Failure modes: none of its own — a store that
 * cannot take its share (closed meanwhile) is skipped.
 * Crash order: changes nothing durable (a smaller write buffer only makes
 * LevelDB write its memtable to a table sooner).
 */
import { VvfsError } from '../errors.js'
import { formatSize } from '../units.js'

const MiB = 1024 * 1024

/**
 * Default budget: 192 MiB. With three stores: 24 MiB write buffers and
 * 16 MiB caches, for a bench peak RSS under the 384 MiB target (the daemon's
 * own heap, FUSE and read-ahead buffers were ~130 MiB of the 566 measured);
 * with 16 stores, 4.5 MiB write buffers and 3 MiB caches.
 */
export const DEFAULT_MEMORY_BUDGET = 192 * MiB
/** Three quarters of the budget for memtables: writes fill them, reads mostly come from the page cache. */
export const MEMTABLE_PART = 0.75
/** Per store at most: the write buffer and cache measured best for one store (level-store.ts STORE_OPTIONS). */
export const MAX_WRITE_BUFFER = 64 * MiB
export const MAX_CACHE = 16 * MiB
/** Per store at least: below 1 MiB LevelDB writes a level-0 table per few hundred 4 KiB chunks. */
export const MIN_WRITE_BUFFER = 1 * MiB
export const MIN_CACHE = 1 * MiB
/** The smallest budget `--memory` accepts: one store at the floors, twice. */
export const MIN_MEMORY_BUDGET = 2 * (2 * MIN_WRITE_BUFFER + MIN_CACHE)

/** One store's part of the budget. */
export interface MemoryShare {
  /** The memtable size at which LevelDB switches to a new one (up to two are held). */
  writeBufferSize: number
  /** The store's block cache capacity. */
  cacheSize: number
}

/** What a store sharing the budget must do: take a new share, and say what it holds. */
export interface BudgetedStore {
  setMemory(share: MemoryShare): void
  /** The bytes its memtables and cache hold now (LevelDB's own estimate); 0 once closed. */
  heldMemory(): number
}

/** The share of each of `stores` stores in `budget` bytes, and whether the floors put them over it. */
export function shareOf(budget: number, stores: number): MemoryShare & { overBudget: boolean } {
  const n = Math.max(1, stores)
  const rawWrite = Math.floor((budget * MEMTABLE_PART) / (2 * n))
  const rawCache = Math.floor((budget * (1 - MEMTABLE_PART)) / n)
  return {
    writeBufferSize: Math.min(MAX_WRITE_BUFFER, Math.max(MIN_WRITE_BUFFER, rawWrite)),
    cacheSize: Math.min(MAX_CACHE, Math.max(MIN_CACHE, rawCache)),
    overBudget: rawWrite < MIN_WRITE_BUFFER || rawCache < MIN_CACHE,
  }
}

/** The most a store holds under `share`: two memtables and its cache. */
export function storeMemory(share: MemoryShare): number {
  return 2 * share.writeBufferSize + share.cacheSize
}

export class MemoryBudget {
  private readonly stores = new Set<BudgetedStore>()

  constructor(readonly bytes: number) {
    if (!Number.isSafeInteger(bytes) || bytes < MIN_MEMORY_BUDGET) {
      throw new VvfsError('INVALID_ARGUMENT', `the storage systems' memory budget (daemon --memory) must be at least ${formatSize(MIN_MEMORY_BUDGET)}, not ${formatSize(bytes)}`)
    }
  }

  /** How many stores share it now. */
  get size(): number {
    return this.stores.size
  }

  /** The bytes all the stores' memtables and caches hold now. */
  held(): number {
    let sum = 0
    for (const s of this.stores) sum += s.heldMemory()
    return sum
  }

  /** The share a store opened now would get (one more than today's). */
  nextShare(): MemoryShare {
    return shareOf(this.bytes, this.stores.size + 1)
  }

  /** The share of each store today. */
  currentShare(): MemoryShare & { overBudget: boolean } {
    return shareOf(this.bytes, this.stores.size)
  }

  /** Adds an open store and re-divides the budget among all of them. */
  join(store: BudgetedStore): void {
    this.stores.add(store)
    this.divide()
  }

  /** Removes a store (closed) and gives its part to the others. */
  leave(store: BudgetedStore): void {
    if (this.stores.delete(store)) this.divide()
  }

  private divide(): void {
    const share = this.currentShare()
    for (const s of this.stores) s.setMemory(share)
  }
}
