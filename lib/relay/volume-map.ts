/**
 * VolumeMap: the volume map of one volume — extent index → ExtentEntry, held
 * in memory and mirrored in the MapStore one record per extent — and the one
 * restore of every volume map at start (readVolumeMaps). An extent with no
 * entry reads as zeros and holds no space.
 *
 * Owns: the entries, the volume's allocated-byte count (kept equal to the
 * sum of entryBytes), and each extent's record (record(), persist()). It
 * does not decide anything: the thin layer (thin.ts) and the extent
 * operations (extent-ops.ts) change entries; this keeps count and writes.
 *
 * Records (key-space.ts): written with the change sequence number the
 * MapStore hands out, read when the batch is built, so a record carries the
 * newest entry, not the one at the time of the call. A release is written as
 * a record with no entry (not a deletion): a standby relay sees it. Every
 * record names the storage systems its entry points at (dependsOn), so the
 * MapStore makes their logged writes durable before it (power-loss order).
 *
 * Concurrency: synchronous changes on the event loop; callers hold the
 * extent's lock where DESIGN.md says so. Failure modes: persist() rejects
 * with the MapStore's error; the caller puts the map back as it was.
 */
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../layout.js'
import type { Pool } from '../storage/pool.js'
import type { StorageSystem } from '../storage/storage-system.js'
import { entryBytes, entrySystems, forEachSpace, markSpace, type ExtentEntry, type Fragment, type FragmentedExtent } from './extent-entry.js'
import { decodeExtentRecord, encodeExtentRecord, extentKey, extentPrefix, parseExtentKey } from './key-space.js'
import type { MapPut, MapStore } from './map-store.js'

export interface ChunkLocation {
  extent: number
  kind: 'unallocated' | 'whole' | 'fragment'
  sid?: number
  slot?: number
  pca?: number
  /** For an unallocated chunk of a fragmented extent: how many fragments the extent has. */
  fragments?: number
}

export interface MapRun {
  firstExtent: number
  extents: number
  /** Storage system id, or 'fragments'. */
  where: number | 'fragments'
}

export class VolumeMap {
  private readonly extents = new Map<number, ExtentEntry>()
  private allocated = 0

  constructor(
    readonly volNo: number,
    private readonly pool: Pool,
    private readonly maps: MapStore,
  ) {}

  /** Takes an entry found in the MapStore at start and marks its space used. */
  adopt(extent: number, entry: ExtentEntry): void {
    markSpace(this.pool, entry)
    this.extents.set(extent, entry)
    this.allocated += entryBytes(entry)
  }

  get allocatedBytes(): number {
    return this.allocated
  }

  get(extent: number): ExtentEntry | undefined {
    return this.extents.get(extent)
  }

  has(extent: number): boolean {
    return this.extents.has(extent)
  }

  /** Points `extent` at `entry` (in memory; persist() writes it). */
  set(extent: number, entry: ExtentEntry): void {
    const old = this.extents.get(extent)
    this.allocated += entryBytes(entry) - (old ? entryBytes(old) : 0)
    this.extents.set(extent, entry)
  }

  delete(extent: number): void {
    const old = this.extents.get(extent)
    if (!old) return
    this.allocated -= entryBytes(old)
    this.extents.delete(extent)
  }

  /** Adds a fragment to a fragmented entry of this map. */
  addFragment(entry: FragmentedExtent, chunk: number, frag: Fragment): void {
    entry.frags.set(chunk, frag)
    this.allocated += CHUNK_SIZE
  }

  /** Takes fragment `chunk` out of extent `extent` if it is still `frag`; an extent left empty goes. */
  removeFragment(extent: number, chunk: number, frag: Fragment): boolean {
    const entry = this.extents.get(extent)
    if (entry?.kind !== 'fragments' || entry.frags.get(chunk) !== frag) return false
    entry.frags.delete(chunk)
    this.allocated -= CHUNK_SIZE
    if (entry.frags.size === 0) this.extents.delete(extent)
    return true
  }

  /** Every allocated extent index, ascending. */
  extentIndexes(): number[] {
    return [...this.extents.keys()].sort((a, b) => a - b)
  }

  extentCount(): number {
    return this.extents.size
  }

  /** The volume map, extent number → entry (read-only; lib/manager/extent-runs.ts reads it as runs). */
  extentMap(): ReadonlyMap<number, ExtentEntry> {
    return this.extents
  }

  /** Allocated bytes per storage system id. */
  allocationBySystem(): Map<number, number> {
    const out = new Map<number, number>()
    const add = (sid: number, bytes: number) => out.set(sid, (out.get(sid) ?? 0) + bytes)
    for (const entry of this.extents.values()) forEachSpace(entry, add)
    return out
  }

  /** Consecutive extents on one storage system (or of fragments) as runs, in offset order (the web view's tiles). */
  runs(): MapRun[] {
    const runs: MapRun[] = []
    for (const extent of this.extentIndexes()) {
      const entry = this.extents.get(extent)!
      const where = entry.kind === 'whole' ? entry.sid : 'fragments'
      const last = runs[runs.length - 1]
      if (last && last.where === where && last.firstExtent + last.extents === extent) last.extents++
      else runs.push({ firstExtent: extent, extents: 1, where })
    }
    return runs
  }

  /** Where one chunk of the volume lives. */
  locate(chunk: number): ChunkLocation {
    const extent = Math.floor(chunk / EXTENT_CHUNKS)
    const inExtent = chunk - extent * EXTENT_CHUNKS
    const entry = this.extents.get(extent)
    if (!entry) return { extent, kind: 'unallocated' }
    if (entry.kind === 'whole') return { extent, kind: 'whole', sid: entry.sid, slot: entry.slot, pca: entry.slot * EXTENT_CHUNKS + inExtent }
    const frag = entry.frags.get(inExtent)
    return frag ? { extent, kind: 'fragment', sid: frag.sid, pca: frag.pca } : { extent, kind: 'unallocated', fragments: entry.frags.size }
  }

  /** Whether the chunk at `pca` of system `sid` holds data (map-of, after locate()). */
  isStored(sid: number, pca: number): Promise<boolean> {
    return this.pool.get(sid).hasData(pca, 1)
  }

  /** Writes the extent's record (alone in its batch, or sharing one with puts of the same tick). */
  persist(extent: number, extra: MapPut[] = []): Promise<void> {
    return this.maps.putMany([this.record(extent), ...extra])
  }

  /**
   * The extent's record as the MapStore writes it: its value and the storage
   * systems it points at, read when the batch is built; the MapStore makes
   * their logged writes durable first (the power-loss order).
   */
  record(extent: number): MapPut {
    return { key: extentKey(this.volNo, extent), produce: () => encodeExtentRecord(this.maps.nextSeq(), this.extents.get(extent) ?? null), dependsOn: () => this.systemsOf(extent) }
  }

  private systemsOf(extent: number): StorageSystem[] {
    const entry = this.extents.get(extent)
    return entry ? [...entrySystems(entry)].map((sid) => this.pool.get(sid)) : []
  }
}

/** What the MapStore holds of volume maps at start. */
export interface FoundMaps {
  /** volNo → extent → entry, for the extents `live` keeps. */
  entries: Map<number, Map<number, ExtentEntry>>
  /** Records `live` does not keep (a deleted volume's, past a volume's end): to clean. */
  stray: { key: Buffer; entry: ExtentEntry | null }[]
}

/**
 * The one restore of volume maps: reads every record (or one volume's),
 * notes its version, and sorts it into the entries of live extents and the
 * stray rest. The stack builder adopts the entries (marking their space in
 * the free-space tables); the manager cleans the stray records.
 */
export async function readVolumeMaps(maps: MapStore, live: (volNo: number, extent: number) => boolean, volNo?: number): Promise<FoundMaps> {
  const found: FoundMaps = { entries: new Map(), stray: [] }
  for await (const [key, value] of maps.scan(extentPrefix(volNo))) {
    const { volNo: v, extent } = parseExtentKey(key)
    const { seq, entry } = decodeExtentRecord(value)
    maps.noteSeq(seq)
    if (!live(v, extent)) found.stray.push({ key, entry })
    else if (entry) {
      let m = found.entries.get(v)
      if (!m) found.entries.set(v, (m = new Map()))
      m.set(extent, entry)
    }
  }
  return found
}
