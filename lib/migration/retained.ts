/**
 * RetainedSources: the source extents a migration job still holds after
 * switching the volume map away from them — until the job concludes, or its
 * retention window (--keep) ends — so that cancel and rollback can return the
 * volume to its source. One versioned, checksummed record per extent in the
 * MapStore, written in the same batch as the switch that makes it needed.
 * Their space stays allocated (not free) while they are held.
 */
import type { ExtentEntry } from '../relay/extent-entry.js'
import { decodeExtentRecord, encodeExtentRecord, parseRetainedKey, retainedKey as key, retainedPrefix } from '../relay/key-space.js'
import type { MapPut, MapStore } from '../relay/map-store.js'

export class RetainedSources {
  private readonly byVolume = new Map<number, Map<number, ExtentEntry>>()

  constructor(
    private readonly maps: MapStore,
    readonly jobNo: number,
  ) {}

  /** Reads the records of a job (at start). */
  static async load(maps: MapStore, jobNo: number): Promise<RetainedSources> {
    const r = new RetainedSources(maps, jobNo)
    for await (const [k, v] of maps.scan(retainedPrefix(jobNo))) {
      const { seq, entry } = decodeExtentRecord(v)
      maps.noteSeq(seq)
      const { volNo, extent } = parseRetainedKey(k)
      if (entry) r.remember(volNo, extent, entry)
    }
    return r
  }

  get(volNo: number, extent: number): ExtentEntry | undefined {
    return this.byVolume.get(volNo)?.get(extent)
  }

  has(volNo: number, extent: number): boolean {
    return this.byVolume.get(volNo)?.has(extent) ?? false
  }

  volume(volNo: number): Map<number, ExtentEntry> {
    return this.byVolume.get(volNo) ?? new Map()
  }

  get size(): number {
    let n = 0
    for (const m of this.byVolume.values()) n += m.size
    return n
  }

  *all(): Generator<[number, number, ExtentEntry]> {
    for (const [volNo, m] of this.byVolume) for (const [extent, entry] of m) yield [volNo, extent, entry]
  }

  /** Holds `entry` and returns its record write, for the switch's batch. */
  hold(volNo: number, extent: number, entry: ExtentEntry): MapPut {
    this.remember(volNo, extent, entry)
    return { key: key(this.jobNo, volNo, extent), produce: () => (this.has(volNo, extent) ? encodeExtentRecord(this.maps.nextSeq(), this.get(volNo, extent)!) : null) }
  }

  /** Lets go of an extent and returns the record's deletion, for a batch. */
  drop(volNo: number, extent: number): MapPut {
    this.byVolume.get(volNo)?.delete(extent)
    return { key: key(this.jobNo, volNo, extent), produce: () => null }
  }

  private remember(volNo: number, extent: number, entry: ExtentEntry): void {
    let m = this.byVolume.get(volNo)
    if (!m) this.byVolume.set(volNo, (m = new Map()))
    m.set(extent, entry)
  }
}
