/**
 * An in-process relay stack over real LevelDB stores in a temp directory —
 * the volume, thin and storage layers without FUSE — that can be closed and
 * reopened from disk to check what survives.
 */
import { join } from 'node:path'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { decodeExtentRecord } from '../../lib/relay/extent-entry.js'
import { MapStore } from '../../lib/relay/map-store.js'
import { RangeLock } from '../../lib/relay/range-lock.js'
import { extentPrefix, parseExtentKey, ThinVolume, type SpacePolicy } from '../../lib/relay/thin.js'
import { Volume } from '../../lib/relay/volume.js'
import { Pool } from '../../lib/storage/pool.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'

export interface Stack {
  pool: Pool
  maps: MapStore
  thin: ThinVolume
  volume: Volume
  close(): Promise<void>
}

export interface StackOptions {
  dir: string
  systems: number
  capacity: number
  size: number
  space?: SpacePolicy
}

export async function openStack(opts: StackOptions, create: boolean): Promise<Stack> {
  const pool = new Pool()
  for (let sid = 1; sid <= opts.systems; sid++) {
    pool.add(await StorageSystem.open({ sid, name: `s${sid}`, path: join(opts.dir, `s${sid}`), capacity: opts.capacity, create }))
  }
  const maps = await MapStore.open(join(opts.dir, 'maps'))
  const locks = new RangeLock()
  const thin = new ThinVolume(1, pool, maps, locks, opts.space)
  for await (const [key, value] of maps.scan(extentPrefix(1))) {
    const { extent } = parseExtentKey(key)
    const { seq, entry } = decodeExtentRecord(value)
    maps.noteSeq(seq)
    if (entry && extent * EXTENT_SIZE < opts.size) thin.adopt(extent, entry)
  }
  const volume = new Volume(thin, opts.size, locks)
  return {
    pool,
    maps,
    thin,
    volume,
    async close() {
      await volume.drain()
      await thin.settle()
      thin.close()
      for (const s of pool.list()) await s.close()
      await maps.close()
    },
  }
}
