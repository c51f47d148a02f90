/**
 * Issue 17: StorageSystem.compact over a LevelDB store gives back the space
 * of overwritten and deleted chunks and changes no chunk; it goes in steps,
 * can be stopped between them and reports each, and a kill -9 after any
 * step loses no synced chunk; a store without the capability refuses with
 * NOT_SUPPORTED; diskUsage counts allocated blocks, as du does.
 */
import { execFile } from 'node:child_process'
import { writeFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { silentLogger } from '../../lib/log.js'
import { StoreCompaction, type CompactionProgress, type CompactionResult } from '../../lib/manager/compaction.js'
import { Pool } from '../../lib/storage/pool.js'
import { diskUsage } from '../../lib/storage/disk-usage.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'
import { RUN, spreadChunk, spreadChunks, STEPS } from '../helpers/spread-chunks.mjs'

const killer = fileURLToPath(new URL('../helpers/compaction-killer.mjs', import.meta.url))

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

  it('goes in steps, stops between two when asked, and every chunk reads as before', async () => {
    const system = await spreadStore('vvfs-compact-steps-', 3)
    try {
      const steps: [number, number][] = []
      const stopped = await system.compact({ shouldStop: () => steps.length === 2, progress: (done, total) => steps.push([done, total]) })
      expect(stopped.completed).toBe(false)
      expect(steps).toEqual([
        [1, STEPS],
        [2, STEPS],
      ])
      await expectVersion(system, 3)
      steps.length = 0
      expect((await system.compact({ progress: (done, total) => steps.push([done, total]) })).completed).toBe(true)
      expect(steps.map(([done]) => done)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1))
      await expectVersion(system, 3)
    } finally {
      await system.close()
    }
  })

  it('under the idle policy ends at the next step once a write reaches the store, and the write and every chunk read back', async () => {
    const system = await spreadStore('vvfs-compact-yield-', 2)
    const pool = new Pool()
    pool.add(system)
    const events: CompactionProgress[] = []
    const results: CompactionResult[] = []
    const compaction = new StoreCompaction(pool, silentLogger(), 1, (r) => results.push(r), (p) => {
      events.push(p)
      // A host write arrives during the compaction's first step.
      if (p.done === 1) void system.write([{ pca: 1, data: spreadChunk(1, 9) }])
    })
    try {
      const r = await compaction.compactNow(system, 'idle')
      expect(r.completed).toBe(false)
      expect(results).toEqual([r])
      expect(events.length).toBeGreaterThan(0)
      expect(events.length).toBeLessThan(STEPS)
      const one = Buffer.alloc(CHUNK_SIZE)
      await system.readRun(1, 1, one)
      expect(one.equals(spreadChunk(1, 9))).toBe(true)
      await system.write([{ pca: 1, data: spreadChunk(1, 2) }])
      await expectVersion(system, 2)
      // The explicit command is not stopped by writes.
      events.length = 0
      expect((await compaction.compactNow(system, 'command')).completed).toBe(true)
      expect(events.at(-1)).toEqual({ storage: 's1', done: STEPS, total: STEPS })
    } finally {
      await system.close()
    }
  })

  it('a kill -9 after any step of a compaction loses no synced chunk', async () => {
    const dir = tempDir('vvfs-compact-kill-')
    dirs.push(dir)
    const path = join(dir, 's1')
    const created = await StorageSystem.open({ sid: 1, name: 's1', path, capacity: 1 << 40, create: true })
    await created.write(spreadChunks(1))
    await created.sync()
    await created.close()
    for (let step = 1; step <= STEPS; step++) {
      // Version step + 1, written unlogged and synced by the child, which then dies after this step of its compaction.
      await promisify(execFile)(process.execPath, [killer, path, String(step + 1), String(step)]).catch((err: { signal?: string }) => {
        if (err.signal !== 'SIGKILL') throw err
      })
      const system = await StorageSystem.open({ sid: 1, name: 's1', path, capacity: 1 << 40, create: false })
      try {
        await expectVersion(system, step + 1)
      } finally {
        await system.close()
      }
    }
  }, 30_000)

  it('refuses with NOT_SUPPORTED over a store without the capability (memory)', async () => {
    const system = StorageSystem.over(MemoryChunkStore.create({ sid: 2, name: 'm' }), { capacity: 1 << 30 })
    expect(system.compactable).toBe(false)
    expect(await system.diskBytes()).toBeNull()
    expect(await codeOf(system.compact())).toBe('NOT_SUPPORTED')
    await system.close()
  })
})

/** A new store holding versions 1 to `versions` of spreadChunks, each written unlogged and synced. */
async function spreadStore(prefix: string, versions: number): Promise<StorageSystem> {
  const dir = tempDir(prefix)
  dirs.push(dir)
  const system = await StorageSystem.open({ sid: 1, name: 's1', path: join(dir, 's1'), capacity: 1 << 40, create: true })
  for (let v = 1; v <= versions; v++) {
    await system.write(spreadChunks(v), { unlogged: true })
    await system.sync()
  }
  return system
}

/** Every chunk of spreadChunks reads as version `v`. */
async function expectVersion(system: StorageSystem, v: number): Promise<void> {
  for (const { pca } of spreadChunks(v).filter((_, i) => i % RUN === 0)) {
    const back = Buffer.alloc(RUN * CHUNK_SIZE)
    await system.readRun(pca, RUN, back)
    for (let j = 0; j < RUN; j++) expect(back.subarray(j * CHUNK_SIZE, (j + 1) * CHUNK_SIZE).equals(spreadChunk(pca + j, v))).toBe(true)
  }
}

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
