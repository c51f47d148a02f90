/**
 * An in-process relay stack — the stack builder's (lib/relay/stack.ts, the
 * one Manager.makeHandle uses) over storage systems in a temp directory,
 * without FUSE — that can be closed and reopened to check what survives.
 * Where the storage systems come from is one parameter (`systemsFrom`): the
 * LevelDB ones by default; the in-memory store slots in there.
 */
import { join } from 'node:path'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { ExtentOps } from '../../lib/relay/extent-ops.js'
import { MapStore } from '../../lib/relay/map-store.js'
import { buildVolumeStack, type VolumeStack } from '../../lib/relay/stack.js'
import type { SpacePolicy, ThinLayer } from '../../lib/relay/thin.js'
import type { Volume } from '../../lib/relay/volume.js'
import { readVolumeMaps, type VolumeMap } from '../../lib/relay/volume-map.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import { Pool } from '../../lib/storage/pool.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'

/** Opens (or creates) storage system `sid` of a test stack. */
export type SystemFactory = (opts: { sid: number; name: string; dir: string; capacity: number; create: boolean }) => Promise<StorageSystem>

/** LevelDB stores under the stack's directory (what the daemon uses). */
export const levelSystems: SystemFactory = (o) => StorageSystem.open({ sid: o.sid, name: o.name, path: join(o.dir, o.name), capacity: o.capacity, create: o.create })

export interface Stack {
  pool: Pool
  maps: MapStore
  map: VolumeMap
  thin: ThinLayer
  extents: ExtentOps
  volume: Volume
  /** Everything the builder made. */
  layers: VolumeStack
  close(): Promise<void>
}

export interface StackOptions {
  dir: string
  systems: number
  capacity: number
  size: number
  space?: SpacePolicy
  systemsFrom?: SystemFactory
  /** Build ReadAhead too (default true, as the manager does). */
  readAhead?: boolean
}

export async function openStack(opts: StackOptions, create: boolean): Promise<Stack> {
  const pool = new Pool()
  const open = opts.systemsFrom ?? levelSystems
  for (let sid = 1; sid <= opts.systems; sid++) pool.add(await open({ sid, name: `s${sid}`, dir: opts.dir, capacity: opts.capacity, create }))
  const maps = await MapStore.open(join(opts.dir, 'maps'))
  // The same restore as the manager's: records past the volume's end are not adopted.
  const { entries } = await readVolumeMaps(maps, (_volNo, extent) => extent * EXTENT_SIZE < opts.size, 1)
  const built = buildVolumeStack({
    volNo: 1,
    size: opts.size,
    pool,
    maps,
    entries: entries.get(1)?.entries(),
    space: opts.space,
    mover: new InlineChunkMover((sid) => pool.get(sid)),
    readAhead: opts.readAhead ?? true,
  })
  const { map, thin, extents, volume } = built
  return {
    pool,
    maps,
    map,
    thin,
    extents,
    volume,
    layers: built,
    async close() {
      await volume.drain()
      await thin.settle()
      thin.close()
      for (const s of pool.list()) await s.close()
      await maps.close()
    },
  }
}
