/**
 * Issue 17, target 6: the local stores' memtables and block caches share
 * one daemon-wide budget (`daemon --memory`), divided among the stores
 * open at the moment, so memory does not grow with the number of storage
 * systems; 16 stores written at once stay within it (peak RSS measured in
 * a child process, test/helpers/memory-budget-writer.mjs).
 */
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { MAX_CACHE, MAX_WRITE_BUFFER, MemoryBudget, MIN_MEMORY_BUDGET, shareOf, storeMemory, type MemoryShare } from '../../lib/storage/memory-budget.js'
import { join } from 'node:path'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { LevelChunkStore } from '../../lib/storage/level-store.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'

const MiB = 1024 * 1024
const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))
const writer = fileURLToPath(new URL('../helpers/memory-budget-writer.mjs', import.meta.url))

/**
 * What the writer's process holds beyond the stores' memtables and caches
 * while 16 stores take 1 MiB batches at once: the batches themselves, the
 * write batches LevelDB copies them into, table builders' buffers. 105–111
 * MiB of growth were measured under a 64 MiB budget (24 and 48 MiB written
 * per store), 415 MiB with no budget (24 MiB per store).
 */
const IN_FLIGHT = 64 * MiB

async function peakGrowth(stores: number, budget: number | 'none', mibPerStore: number): Promise<number> {
  const dir = tempDir('vvfs-memory-')
  dirs.push(dir)
  const { stdout } = await promisify(execFile)(process.execPath, [writer, dir, String(stores), String(budget), String(mibPerStore)])
  const r = JSON.parse(stdout) as { base: number; peak: number; grew: number }
  console.log(`${stores} stores, budget ${budget === 'none' ? 'none' : `${budget / MiB} MiB`}, ${mibPerStore} MiB each: peak RSS ${(r.peak / MiB).toFixed(0)} MiB, ${(r.grew / MiB).toFixed(0)} MiB above the RSS after opening`)
  return r.grew
}

class RecordingStore {
  share: MemoryShare | null = null
  held = 0
  heldMemory(): number {
    return this.held
  }
  setMemory(share: MemoryShare): void {
    this.share = share
  }
}

describe('MemoryBudget', () => {
  it('divides the budget so that every store\'s two memtables and cache fit in it, for 1 to 16 stores', () => {
    const budget = 192 * MiB
    for (let n = 1; n <= 16; n++) {
      const share = shareOf(budget, n)
      expect(share.overBudget).toBe(false)
      expect(n * storeMemory(share)).toBeLessThanOrEqual(budget)
      expect(share.writeBufferSize).toBeLessThanOrEqual(MAX_WRITE_BUFFER)
      expect(share.cacheSize).toBeLessThanOrEqual(MAX_CACHE)
    }
    // Few stores get the sizes measured best for one, not the whole budget.
    expect(shareOf(1024 * MiB, 1)).toEqual({ writeBufferSize: MAX_WRITE_BUFFER, cacheSize: MAX_CACHE, overBudget: false })
  })

  it('re-divides among the open stores when one joins or leaves, and says when the floors exceed it', () => {
    const budget = new MemoryBudget(96 * MiB)
    const a = new RecordingStore()
    const b = new RecordingStore()
    budget.join(a)
    const alone = a.share!
    budget.join(b)
    expect(a.share!.writeBufferSize).toBeLessThan(alone.writeBufferSize)
    expect(b.share).toEqual(a.share)
    expect(2 * storeMemory(a.share!)).toBeLessThanOrEqual(96 * MiB)
    budget.leave(b)
    expect(a.share).toEqual(alone)
    expect(shareOf(8 * MiB, 16).overBudget).toBe(true)
  })

  it("says what the stores hold: each store's memtable grows with its writes and empties when written to a table", async () => {
    const dir = tempDir('vvfs-memory-')
    dirs.push(dir)
    const budget = new MemoryBudget(64 * MiB)
    const a = await LevelChunkStore.open({ sid: 1, name: 'a', path: join(dir, 'a'), create: true, memory: budget })
    const b = await LevelChunkStore.open({ sid: 2, name: 'b', path: join(dir, 'b'), create: true, memory: budget })
    try {
      const empty = budget.held()
      expect(empty).toBe(a.heldMemory() + b.heldMemory())
      const data = Buffer.alloc(256 * CHUNK_SIZE, 7)
      await a.apply({ writes: Array.from({ length: 256 }, (_, i) => ({ pca: i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })) })
      expect(a.heldMemory() - empty).toBeGreaterThanOrEqual(256 * CHUNK_SIZE)
      expect(budget.held()).toBe(a.heldMemory() + b.heldMemory())
      await a.sync({ flushUnlogged: true })
      expect(a.heldMemory()).toBeLessThan(CHUNK_SIZE * 16)
    } finally {
      await a.close()
      await b.close()
    }
    expect(budget.held()).toBe(0)
  })

  it('refuses a budget too small for one store', async () => {
    expect(await codeOf(() => new MemoryBudget(MIN_MEMORY_BUDGET - 1))).toBe('INVALID_ARGUMENT')
  })

  it('16 storage systems written at once stay within a 64 MiB budget (peak RSS of the process)', async () => {
    const budget = 64 * MiB
    const grew = await peakGrowth(16, budget, 32)
    expect(grew).toBeLessThanOrEqual(budget + IN_FLIGHT)
  }, 30_000)
})
