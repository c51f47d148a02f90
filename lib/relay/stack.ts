/**
 * The stack builder: the one function that builds a volume's relay stack
 * from a description — the manager (Manager.makeHandle) and the tests
 * (test/helpers/stack.ts) both call it, so both run the same layers.
 *
 *   Volume                bytes → chunks, write-behind
 *     JournalLayer        replication's journal (issue 13): numbers changes while a pair is attached
 *     ReadAhead           optional (spec.readAhead)
 *     MigrateLayer        dirty bits while a job holds sources
 *     ThinLayer           allocation, zero detection, release    ─┐ share the
 *   VolumeMap             entries and records (restored: entries) │ volume's
 *   VolumeExtents         the ExtentOps a job / reclaim drives    ─┘ RangeLock
 *
 * Restore at start is readVolumeMaps (volume-map.ts, one scan of the map
 * records) and then this builder adopting the entries it found for the
 * volume (spec.entries), which marks their space in the free-space tables.
 *
 * Concurrency and crash order: those of each layer (their file headers);
 * building does no I/O. Failure modes: none (pure construction).
 */
import { CHUNK_SIZE } from '../layout.js'
import { MigrateLayer } from '../migration/layer.js'
import type { ChunkMover } from '../storage/chunk-mover.js'
import type { Pool } from '../storage/pool.js'
import type { ChunkLayer } from './chunk-layer.js'
import type { ExtentEntry } from './extent-entry.js'
import { VolumeExtents, type ExtentOps, type PlacementRule } from './extent-ops.js'
import type { MapStore } from './map-store.js'
import { RangeLock } from './range-lock.js'
import { ReadAhead, type ExtentMirror } from './readahead.js'
import { ThinLayer, type SpacePolicy, type ThinFailure } from './thin.js'
import { Volume, WRITE_BEHIND } from './volume.js'
import { VolumeMap } from './volume-map.js'
import { JournalLayer } from '../replication/journal-layer.js'

export interface VolumeStackSpec {
  volNo: number
  /** The volume's size in bytes. */
  size: number
  pool: Pool
  maps: MapStore
  /** The volume's map entries found at start (readVolumeMaps); their space is marked used. */
  entries?: Iterable<[number, ExtentEntry]>
  /** What a full pool does to a writer (default: fail it). */
  space?: SpacePolicy
  /** Where new allocations may go (default: the pool's policy). */
  placement?: () => PlacementRule
  /** Where background and write failures are reported. */
  onFailure?: (failure: ThinFailure) => void
  /** Copies extents for the extent operations (a migration); without one, ExtentOps.copy fails. */
  mover?: ChunkMover
  /** ReadAhead over the migrate layer (default on), publishing to `mirror` if given (the FUSE read cache). */
  readAhead?: boolean | { mirror?: ExtentMirror }
  /** Bytes of write-behind (default WRITE_BEHIND; 0 answers writes once stored). */
  writeBehind?: number
}

export interface VolumeStack {
  locks: RangeLock
  map: VolumeMap
  thin: ThinLayer
  extents: ExtentOps
  migrate: MigrateLayer
  readAhead?: ReadAhead
  /** Passes everything through until a replication pair attaches its journal. */
  journal: JournalLayer
  volume: Volume
  /** Every ChunkLayer, from just under Volume down to the thin layer. */
  layers: ChunkLayer[]
}

export function buildVolumeStack(spec: VolumeStackSpec): VolumeStack {
  const locks = new RangeLock()
  const map = new VolumeMap(spec.volNo, spec.pool, spec.maps)
  for (const [extent, entry] of spec.entries ?? []) map.adopt(extent, entry)
  const thin = new ThinLayer(map, spec.pool, spec.maps, locks, spec.space)
  if (spec.placement) thin.placement = spec.placement
  if (spec.onFailure) thin.onFailure = spec.onFailure
  const extents = new VolumeExtents(map, spec.pool, locks, thin, spec.mover)
  const migrate = new MigrateLayer(thin, spec.volNo)
  const layers: ChunkLayer[] = [thin, migrate]
  let readAhead: ReadAhead | undefined
  if (spec.readAhead !== false) {
    const mirror = typeof spec.readAhead === 'object' ? spec.readAhead.mirror : undefined
    readAhead = new ReadAhead(migrate, locks, () => Math.ceil(volume.size / CHUNK_SIZE), mirror)
    layers.push(readAhead)
  }
  const journal = new JournalLayer(layers[layers.length - 1]!, spec.volNo, locks)
  layers.push(journal)
  const volume: Volume = new Volume(layers[layers.length - 1]!, spec.size, locks, spec.writeBehind ?? WRITE_BEHIND)
  // A loss the thin layer's errseq finds reaches every open description, whoever's flush met it; a replicated
  // volume's journal applies again what it retains (the data of acknowledged writes that may be gone).
  thin.writesLost = (err) => {
    journal.dataLost()
    volume.writeBackFailed(err)
  }
  return { locks, map, thin, extents, migrate, readAhead, journal, volume, layers: layers.reverse() }
}
