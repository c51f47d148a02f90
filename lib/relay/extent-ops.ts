/**
 * ExtentOps: the extent operations that work on a volume map one whole
 * extent at a time — what a migration (lib/migration/runner.ts), reclaim
 * (lib/manager/reclaim.ts) and, later, replication drive step by step. They
 * see entries, never the thin layer's internals or a storage system's type.
 *
 * A step (the runner's moveExtent):
 *   const unlock = await ops.lock(e)           // host I/O to e waits from here
 *   const cur = ops.entry(e)
 *   const next = ops.allocateLike(cur, rule)   // in memory only
 *   await ops.copy(cur, next, style)           // durable at the target
 *   await ops.switchExtent(e, cur, next, extra) // map record + extras, one batch
 *   ... once that switch is durable: await ops.discardEntry(cur)
 *   unlock()
 *
 * Crash order: allocateLike changes nothing on disk (space a crash catches
 * allocated-but-unswitched is free again at start, its data cleared before
 * reuse); copy syncs its target before returning, so a switch record never
 * points at data a power cut can take; switchExtent writes the new record
 * and the caller's extras atomically; discardEntry drops data before it
 * frees space — callers call it only once the MapStore has synced the switch
 * away from it (maps.sync()).
 *
 * Concurrency: every call but the queries and settle() is made under the
 * extent's lock (lock()). The whole-slot-vs-fragments branch is in
 * extent-entry.ts (entryChunks, releaseSpace, markSpace), not here.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE, forEachExtent } from '../layout.js'
import type { ChunkMover } from '../storage/chunk-mover.js'
import type { CopyStyle } from '../storage/chunk-copy.js'
import type { Pool } from '../storage/pool.js'
import { writeDurably, type StorageSystem } from '../storage/storage-system.js'
import { entryChunks, entrySystems, markSpace, releaseSpace, type ExtentEntry, type Fragment } from './extent-entry.js'
import type { MapPut } from './map-store.js'
import type { RangeLock } from './range-lock.js'
import type { VolumeMap } from './volume-map.js'

/** Where new allocations of this volume may go (a migration pins them to its destination). */
export interface PlacementRule {
  only?: number
  exclude?: ReadonlySet<number>
  /** Tried first (a volume's home system after a migration), then the usual policy. */
  prefer?: number
}

export interface ExtentOps {
  readonly volNo: number
  /**
   * Locks the extent exclusively once a write's preparation of it (clear,
   * first record) has settled; returns the unlock. With `count`, extents
   * [extent, extent + count) under one lock (a migration's group of copies:
   * one range, never several locks held at once).
   */
  lock(extent: number, count?: number): Promise<() => void>
  entry(extent: number): ExtentEntry | undefined
  /** Every allocated extent index, ascending. */
  extentIndexes(): number[]
  /** Allocated bytes per storage system id. */
  allocationBySystem(): Map<number, number>
  /** Space shaped like `entry` (a whole slot, or one fragment per fragment) placed by `rule`; undefined if the pool cannot hold it. */
  allocateLike(entry: ExtentEntry, rule: PlacementRule): ExtentEntry | undefined
  /**
   * Copies `from`'s data onto `to` (same shape, or fragments into a whole
   * slot) and makes it durable there; resolves to the bytes copied. With
   * `unsynced`, it is NOT made durable: the caller syncs the destination
   * systems (StorageSystem.syncLogged: copies are logged) before any record
   * points at it — one sync for a group of copies (MigrationRunner).
   */
  copy(from: ExtentEntry, to: ExtentEntry, style: CopyStyle, opts?: { unsynced?: boolean }): Promise<number>
  /** Points the extent at `next` if it still points at `expected`, writing its record with `extra` in one batch. `expected`'s space is the caller's now. */
  switchExtent(extent: number, expected: ExtentEntry, next: ExtentEntry, extra?: MapPut[]): Promise<void>
  /** Frees space from allocateLike that was never switched in (its data is dropped on reuse). */
  forget(entry: ExtentEntry): void
  /** Drops the data of an entry no map references any more, then frees its space. */
  discardEntry(entry: ExtentEntry): Promise<void>
  /** Marks the space of an entry held outside the map (a retained source) used, at start. */
  holdSpace(entry: ExtentEntry): void
  /** What discarding chunks [first, first + count) would free: allocation (whole extents left empty, fragments) and stored chunks. */
  wouldRelease(first: number, count: number): Promise<{ allocation: number; chunks: number }>
  /** Waits for the volume's scheduled background work (releases, promotions). */
  settle(): Promise<void>
}

/** What the extent operations need of the layer that prepares new slots (ThinLayer). */
export interface SlotPreparation {
  settled(extent: number): Promise<void>
  settle(): Promise<void>
  /** Runs a write on `system`, noted as written (at issue and once settled): the volume's next flush syncs it. */
  writing<T>(system: StorageSystem, op: (system: StorageSystem) => Promise<T>): Promise<T>
}

/** ExtentOps over a VolumeMap, its pool and its thin layer's preparations. */
export class VolumeExtents implements ExtentOps {
  constructor(
    private readonly map: VolumeMap,
    private readonly pool: Pool,
    private readonly locks: RangeLock,
    private readonly preparation: SlotPreparation,
    private readonly mover?: ChunkMover,
  ) {}

  get volNo(): number {
    return this.map.volNo
  }

  async lock(extent: number, count = 1): Promise<() => void> {
    const release = await this.locks.acquire(extent * EXTENT_CHUNKS, (extent + count) * EXTENT_CHUNKS, 'exclusive')
    try {
      for (let e = extent; e < extent + count; e++) await this.preparation.settled(e)
    } catch (err) {
      release()
      throw err
    }
    return release
  }

  entry(extent: number): ExtentEntry | undefined {
    return this.map.get(extent)
  }

  extentIndexes(): number[] {
    return this.map.extentIndexes()
  }

  allocationBySystem(): Map<number, number> {
    return this.map.allocationBySystem()
  }

  allocateLike(entry: ExtentEntry, rule: PlacementRule): ExtentEntry | undefined {
    if (entry.kind === 'whole') {
      const p = this.pool.allocateSlot(rule)
      return p && { kind: 'whole', sid: p.system.sid, slot: p.address }
    }
    const frags = new Map<number, Fragment>()
    for (const chunk of entry.frags.keys()) {
      const p = this.pool.allocateFragment(rule)
      if (!p) {
        for (const f of frags.values()) this.pool.releaseFragment(f.sid, f.pca)
        return undefined
      }
      frags.set(chunk, { sid: p.system.sid, pca: p.address })
    }
    return { kind: 'fragments', frags }
  }

  /**
   * Copies and syncs the copy on its storage systems: a switch record may
   * point at it only once it is durable there (issue 11: a 32 MiB migration
   * and a host fsync left the destination's log unsynced, every extent zeros
   * after a power cut). Copies are logged, so a log sync does it, without
   * flushing the hosts' unlogged writes.
   */
  async copy(from: ExtentEntry, to: ExtentEntry, style: CopyStyle, opts: { unsynced?: boolean } = {}): Promise<number> {
    const mover = this.mover
    if (!mover) throw new VvfsError('INTERNAL', `volume ${this.volNo} was built without a chunk mover`)
    const copy = async () => {
      let bytes = 0
      for (const g of copyPairs(from, to)) bytes += await mover.copy({ ...g, style })
      return bytes
    }
    if (opts.unsynced) return copy()
    return writeDurably([...entrySystems(to)].map((sid) => this.pool.get(sid)), 'the copy of extent data', copy)
  }

  async switchExtent(extent: number, expected: ExtentEntry, next: ExtentEntry, extra: MapPut[] = []): Promise<void> {
    if (this.map.get(extent) !== expected) throw new VvfsError('INTERNAL', `extent ${extent} changed during its switch`)
    this.map.set(extent, next)
    await this.map.persist(extent, extra)
  }

  forget(entry: ExtentEntry): void {
    releaseSpace(this.pool, entry)
  }

  async discardEntry(entry: ExtentEntry): Promise<void> {
    if (entry.kind === 'whole') {
      await this.preparation.writing(this.pool.get(entry.sid), (s) => s.clearRange(entry.slot * EXTENT_CHUNKS, EXTENT_CHUNKS))
    } else {
      await Promise.all([...entryChunks(entry)].map(([sid, pcas]) => this.preparation.writing(this.pool.get(sid), (s) => s.write(pcas.map((pca) => ({ pca, data: null }))))))
    }
    releaseSpace(this.pool, entry)
  }

  holdSpace(entry: ExtentEntry): void {
    markSpace(this.pool, entry)
  }

  async wouldRelease(first: number, count: number): Promise<{ allocation: number; chunks: number }> {
    const out = { allocation: 0, chunks: 0 }
    const pieces: [number, number, number][] = []
    forEachExtent(first, count, (extent, inExtent, n) => pieces.push([extent, inExtent, n]))
    for (const [extent, inExtent, n] of pieces) {
      const entry = this.map.get(extent)
      if (!entry) continue
      if (entry.kind === 'fragments') {
        for (const c of entry.frags.keys()) {
          if (c >= inExtent && c < inExtent + n) {
            out.allocation += CHUNK_SIZE
            out.chunks++
          }
        }
        continue
      }
      const base = entry.slot * EXTENT_CHUNKS
      const stored = await this.pool.get(entry.sid).storedChunks(base, EXTENT_CHUNKS)
      const inside = stored.filter((p) => p >= base + inExtent && p < base + inExtent + n).length
      out.chunks += inside
      if (inside === stored.length) out.allocation += EXTENT_SIZE
    }
    return out
  }

  settle(): Promise<void> {
    return this.preparation.settle()
  }
}

/** The copies that put `from`'s chunks where `to` has them, one per pair of storage systems. */
function copyPairs(from: ExtentEntry, to: ExtentEntry): { fromSid: number; toSid: number; fromPcas: number[]; toPcas: number[] }[] {
  if (from.kind === 'whole' && to.kind === 'whole') return [{ fromSid: from.sid, toSid: to.sid, fromPcas: entryChunks(from).get(from.sid)!, toPcas: entryChunks(to).get(to.sid)! }]
  if (from.kind === 'whole') throw new VvfsError('INTERNAL', `cannot copy a whole extent into a ${to.kind} one`)
  const groups = new Map<string, { fromSid: number; toSid: number; fromPcas: number[]; toPcas: number[] }>()
  for (const [chunk, f] of from.frags) {
    const t = to.kind === 'whole' ? { sid: to.sid, pca: to.slot * EXTENT_CHUNKS + chunk } : to.frags.get(chunk)
    if (!t) throw new VvfsError('INTERNAL', 'fragment shapes differ')
    const k = `${f.sid}>${t.sid}`
    let g = groups.get(k)
    if (!g) groups.set(k, (g = { fromSid: f.sid, toSid: t.sid, fromPcas: [], toPcas: [] }))
    g.fromPcas.push(f.pca)
    g.toPcas.push(t.pca)
  }
  return [...groups.values()]
}
