/**
 * What every ChunkStore must do, checked through the interface only — the
 * remote store's stand-in for test/storage/chunk-store.suite.ts until that
 * suite is on this branch (then remote-store.test.ts calls chunkStoreSuite
 * instead: a one-line switch).
 */
import { describe, expect, it } from 'vitest'
import type { ChunkStore } from '../../lib/storage/chunk-store.js'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { chunkOf } from './servers.js'

export function storeChecks(name: string, factory: () => Promise<ChunkStore>): void {
  describe(`${name}: the ChunkStore contract`, () => {
    it('reads zeros where nothing was written, and what was written where it was', async () => {
      const store = await factory()
      const into = Buffer.alloc(4 * CHUNK_SIZE, 0xee)
      await store.readRun(100, 4, into)
      expect(into.equals(Buffer.alloc(4 * CHUNK_SIZE))).toBe(true)
      await store.apply({ writes: [{ pca: 101, data: chunkOf(1) }, { pca: 103, data: chunkOf(3) }] })
      const at = Buffer.alloc(5 * CHUNK_SIZE, 0xee)
      await store.readRun(100, 4, at, CHUNK_SIZE)
      expect(at.subarray(0, CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE, 0xee))).toBe(true) // before offset: untouched
      expect(at.subarray(2 * CHUNK_SIZE, 3 * CHUNK_SIZE).equals(chunkOf(1))).toBe(true)
      expect(at.subarray(3 * CHUNK_SIZE, 4 * CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE))).toBe(true)
      expect(at.subarray(4 * CHUNK_SIZE).equals(chunkOf(3))).toBe(true)
      const many = await store.readMany([103, 102, 101])
      expect(many[0]?.equals(chunkOf(3))).toBe(true)
      expect(many[1]).toBeUndefined()
      expect(many[2]?.equals(chunkOf(1))).toBe(true)
    })

    it('reads a run longer than one request (a whole extent and more) in order', async () => {
      const store = await factory()
      const count = 600
      const writes = Array.from({ length: count }, (_, i) => ({ pca: 5000 + i, data: chunkOf(5000 + i) }))
      for (let i = 0; i < count; i += 200) await store.apply({ writes: writes.slice(i, i + 200) })
      const into = Buffer.alloc(count * CHUNK_SIZE)
      await store.readRun(5000, count, into)
      for (let i = 0; i < count; i++) expect(into.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(chunkOf(5000 + i)), `chunk ${i}`).toBe(true)
      const many = await store.readMany(writes.map((w) => w.pca).reverse())
      expect(many.every((c, i) => c?.equals(chunkOf(5000 + count - 1 - i)))).toBe(true)
    })

    it('applies a batch in order (a later write to a chunk wins), deletes read as zeros and are not listed', async () => {
      const store = await factory()
      await store.apply({ writes: [{ pca: 10, data: chunkOf(1) }, { pca: 10, data: chunkOf(2) }, { pca: 11, data: chunkOf(3) }, { pca: 12, data: chunkOf(4) }] })
      await store.apply({ writes: [{ pca: 11, data: null }] })
      const into = Buffer.alloc(3 * CHUNK_SIZE)
      await store.readRun(10, 3, into)
      expect(into.subarray(0, CHUNK_SIZE).equals(chunkOf(2))).toBe(true)
      expect(into.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE))).toBe(true)
      expect(await store.stored(0, 1000)).toEqual([10, 12])
    })

    it('clears whole ranges, lists stored addresses ascending up to a limit', async () => {
      const store = await factory()
      await store.apply({ writes: [20, 21, 22, 30, 31, 40].map((pca) => ({ pca, data: chunkOf(pca) })) })
      expect(await store.stored(0, 100)).toEqual([20, 21, 22, 30, 31, 40])
      expect(await store.stored(21, 10)).toEqual([21, 22, 30])
      expect(await store.stored(0, 100, 2)).toEqual([20, 21])
      await store.apply({ clears: [{ first: 20, count: 11 }] })
      expect(await store.stored(0, 100)).toEqual([31, 40])
      const into = Buffer.alloc(CHUNK_SIZE, 1)
      await store.readRun(22, 1, into)
      expect(into.equals(Buffer.alloc(CHUNK_SIZE))).toBe(true)
    })

    it('takes a whole extent (256 chunks) in one atomic batch, logged, unlogged or synced', async () => {
      const store = await factory()
      for (const [i, opts] of [{}, { unlogged: true }, { sync: true }].entries()) {
        const base = 100_000 + i * 256
        await store.apply({ ...opts, writes: Array.from({ length: 256 }, (_, k) => ({ pca: base + k, data: chunkOf(base + k) })) })
        expect((await store.stored(base, 256)).length).toBe(256)
      }
      await store.sync({})
      await store.sync({ flushUnlogged: true })
    })

    it('many calls at once are all answered, each with its own data', async () => {
      const store = await factory()
      await Promise.all(Array.from({ length: 100 }, (_, i) => store.apply({ writes: [{ pca: 9000 + i, data: chunkOf(9000 + i) }] })))
      const reads = await Promise.all(Array.from({ length: 100 }, (_, i) => store.readMany([9000 + i])))
      reads.forEach((r, i) => expect(r[0]?.equals(chunkOf(9000 + i)), `chunk ${i}`).toBe(true))
    })

    it('refuses calls after close with SHUTTING_DOWN', async () => {
      const store = await factory()
      await store.close()
      await expect(store.readMany([1])).rejects.toMatchObject({ code: 'SHUTTING_DOWN' })
      await expect(store.apply({ writes: [{ pca: 1, data: chunkOf(1) }] })).rejects.toMatchObject({ code: 'SHUTTING_DOWN' })
    })
  })
}
