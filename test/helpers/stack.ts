/**
 * An in-process relay stack — the stack builder's (lib/relay/stack.ts, the
 * one Manager.makeHandle uses) over storage systems in a temp directory,
 * without FUSE — that can be closed and reopened to check what survives.
 * Where the storage systems come from is one parameter (`systemsFrom`): the
 * LevelDB stores by default, or the in-memory ones (memorySystems).
 */
import { join } from 'node:path'
import { afterEach } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { ExtentOps } from '../../lib/relay/extent-ops.js'
import { MapStore } from '../../lib/relay/map-store.js'
import { buildVolumeStack, type VolumeStack } from '../../lib/relay/stack.js'
import type { SpacePolicy, ThinLayer } from '../../lib/relay/thin.js'
import type { Volume } from '../../lib/relay/volume.js'
import { readVolumeMaps, type VolumeMap } from '../../lib/relay/volume-map.js'
import { VvfsError } from '../../lib/errors.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { Pool } from '../../lib/storage/pool.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from './daemon.js'

/** Opens (or creates) storage system `sid` of a test stack. */
export type SystemFactory = (opts: { sid: number; name: string; dir: string; capacity: number; create: boolean }) => Promise<StorageSystem>

/** LevelDB stores under the stack's directory (what the daemon uses). */
export const levelSystems: SystemFactory = (o) => StorageSystem.open({ sid: o.sid, name: o.name, path: join(o.dir, o.name), capacity: o.capacity, create: o.create })

/** What each in-memory store held when its stack closed, by directory and name (what a reopen finds). */
const memoryMedia = new Map<string, MemoryChunkStore>()

/** In-memory stores (lib/storage/memory-store.ts); a reopen finds what the last handle left, as with LevelDB. */
export const memorySystems: SystemFactory = async (o) => {
  const key = join(o.dir, o.name)
  const earlier = memoryMedia.get(key)
  if (!o.create && !earlier) throw new VvfsError('STATE_CORRUPT', `no memory store ${o.name} under ${o.dir}`)
  const store = o.create || !earlier ? MemoryChunkStore.create({ sid: o.sid, name: o.name }) : earlier.reopen()
  memoryMedia.set(key, store)
  return StorageSystem.over(store, { capacity: o.capacity })
}

/** Every kind of storage system the stacks are built over (tests that run over each). */
export const STORES: [string, SystemFactory][] = [
  ['LevelDB', levelSystems],
  ['in-memory', memorySystems],
]

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

/**
 * Opens new stacks in fresh temporary directories (`stack.dir`); each is
 * closed and its directory removed after the test that opened it.
 */
export function stacksPerTest(prefix: string): (opts: Omit<StackOptions, 'dir'>) => Promise<Stack & { dir: string }> {
  const opened: { stack: Stack; dir: string }[] = []
  afterEach(async () => {
    for (const o of opened.splice(0)) {
      await o.stack.close()
      removeDir(o.dir)
    }
  })
  return async (opts) => {
    const dir = tempDir(prefix)
    const stack = await openStack({ ...opts, dir }, true)
    opened.push({ stack, dir })
    return Object.assign(stack, { dir })
  }
}
