/**
 * Issue 17: StorageSystem.compact over a LevelDB store gives back the space
 * of overwritten and deleted chunks and changes no chunk; a store without
 * the capability refuses with NOT_SUPPORTED; diskUsage counts allocated
 * blocks, as du does.
 */
import { writeFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { diskUsage } from '../../lib/storage/disk-usage.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'

const CHUNKS = 4096 // 16 MiB of live data
const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d)
})

/** Chunks [0, CHUNKS) in version `v`: one buffer, so the store writes them as one run. */
function version(v: number): Buffer {
  const data = Buffer.alloc(CHUNKS * CHUNK_SIZE, v)
  for (let i = 0; i < CHUNKS; i++) data.writeUInt32LE(i, i * CHUNK_SIZE)
  return data
}

async function writeVersion(system: StorageSystem, v: number): Promise<void> {
  const data = version(v)
  for (let first = 0; first < CHUNKS; first += 256) {
    await system.write(Array.from({ length: 256 }, (_, k) => ({ pca: first + k, data: data.subarray((first + k) * CHUNK_SIZE, (first + k + 1) * CHUNK_SIZE) })))
  }
  await system.sync()
}

describe('StorageSystem.compact', () => {
  it('over a LevelDB store drops overwritten versions and deleted chunks, and every chunk reads as before', async () => {
    const dir = tempDir('vvfs-compact-')
    dirs.push(dir)
    const system = await StorageSystem.open({ sid: 1, name: 's1', path: join(dir, 's1'), capacity: 1 << 30, create: true })
    try {
      for (const v of [1, 2, 3, 4, 5, 6]) await writeVersion(system, v)
      await system.clearRange(CHUNKS / 2, CHUNKS / 2)
      await system.sync()
      const live = (CHUNKS / 2) * CHUNK_SIZE
      const before = (await system.diskBytes())!
      await system.compact()
      const after = (await system.diskBytes())!
      console.log(`bytes on disk per live byte: ${(before / live).toFixed(2)} before, ${(after / live).toFixed(2)} after compaction`)
      expect(before).toBeGreaterThan(1.2 * live)
      expect(after).toBeLessThanOrEqual(1.2 * live)
      const back = Buffer.alloc(CHUNKS * CHUNK_SIZE)
      await system.readRun(0, CHUNKS, back)
      const want = version(6).fill(0, live)
      expect(back.equals(want)).toBe(true)
    } finally {
      await system.close()
    }
  })

  it('refuses with NOT_SUPPORTED over a store without the capability (memory)', async () => {
    const system = StorageSystem.over(MemoryChunkStore.create({ sid: 2, name: 'm' }), { capacity: 1 << 30 })
    expect(system.compactable).toBe(false)
    expect(await system.diskBytes()).toBeNull()
    expect(await codeOf(system.compact())).toBe('NOT_SUPPORTED')
    await system.close()
  })
})

describe('diskUsage', () => {
  it('counts allocated blocks, not apparent sizes: a sparse file costs what it holds', async () => {
    const dir = tempDir('vvfs-du-')
    dirs.push(dir)
    const empty = await diskUsage(dir)
    writeFileSync(join(dir, 'dense'), Buffer.alloc(1 << 20, 1))
    truncateSync(join(dir, 'dense'), 1 << 20)
    writeFileSync(join(dir, 'sparse'), '')
    truncateSync(join(dir, 'sparse'), 1 << 30)
    const bytes = await diskUsage(dir)
    expect(bytes - empty).toBeGreaterThanOrEqual(1 << 20)
    expect(bytes - empty).toBeLessThan(2 << 20)
    expect(await diskUsage(join(dir, 'missing'))).toBe(0)
  })
})
