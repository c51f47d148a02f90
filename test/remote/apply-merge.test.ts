/**
 * Batches that wait for the remote store's window (APPLY_WINDOW) leave
 * together: the claims of RemoteChunkStore's merging, seen at the server's
 * store — fewer requests of at most an extent, every chunk stored, a later
 * write of a chunk winning, clears going alone (nothing merged across them), a refused
 * request failing every batch in it.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import type { ChunkBatch } from '../../lib/storage/chunk-store.js'
import { LevelChunkStore } from '../../lib/storage/level-store.js'
import { APPLY_WINDOW, MAX_APPLY_CHUNKS, type RemoteChunkStore } from '../../lib/storage/remote/client.js'
import { StorageServer } from '../../lib/storage/remote/server.js'
import type { PeerKey } from '../../lib/wire/auth.js'
import { capturedLog } from '../wire/peers.js'
import { chunkOf, cleanup, newKey, openStore, tempDir } from './servers.js'

afterEach(cleanup)

/** A storage server whose store records every batch it applies. */
async function countingServer(key: PeerKey): Promise<{ port: number; applied: ChunkBatch[]; stop: () => Promise<void> }> {
  const applied: ChunkBatch[] = []
  const server = new StorageServer({
    dir: await tempDir(),
    host: '127.0.0.1',
    port: 0,
    key,
    log: capturedLog().log,
    openStore: async (o) => {
      const store = await LevelChunkStore.open(o)
      const apply = store.apply.bind(store)
      store.apply = (batch: ChunkBatch) => {
        applied.push(batch)
        return apply(batch)
      }
      return store
    },
  })
  const { port } = await server.start()
  return { port, applied, stop: () => server.close() }
}

/** A connected, checked store on a counting server (the window is then all that holds batches back), and what the server applied since. */
async function onCountingServer(test: (store: RemoteChunkStore, applied: ChunkBatch[]) => Promise<void>): Promise<void> {
  const { key } = await newKey()
  const server = await countingServer(key)
  try {
    const store = openStore(key, server.port)
    await store.apply({ writes: run(0, 1) })
    server.applied.length = 0
    await test(store, server.applied)
  } finally {
    await server.stop()
  }
}

/** Batches that fill the window, so the next ones wait. */
const fillWindow = (store: RemoteChunkStore) => Array.from({ length: APPLY_WINDOW }, (_, i) => store.apply({ writes: run(1000 + i * 32, 32) }))

const run = (first: number, count: number, seed = first) => Array.from({ length: count }, (_, k) => ({ pca: first + k, data: chunkOf(seed + k) }))

describe('a remote store merges the batches waiting for its window', () => {
  it('64 writes of 32 chunks at once reach the server in fewer requests of at most an extent, and every chunk is stored', async () => {
    await onCountingServer(async (store, applied) => {
      await Promise.all(Array.from({ length: 64 }, (_, i) => store.apply({ writes: run(i * 32, 32), unlogged: true })))
      const sizes = applied.map((b) => b.writes?.length ?? 0)
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(64 * 32)
      expect(Math.max(...sizes)).toBeLessThanOrEqual(MAX_APPLY_CHUNKS)
      // The first APPLY_WINDOW go alone at once; the rest wait and leave merged, an extent a request.
      expect(applied.length).toBeLessThanOrEqual(APPLY_WINDOW + Math.ceil((64 - APPLY_WINDOW) / (MAX_APPLY_CHUNKS / 32)) + APPLY_WINDOW)
      expect(applied.every((b) => b.unlogged === true)).toBe(true)
      const into = Buffer.alloc(64 * 32 * CHUNK_SIZE)
      await store.readRun(0, 64 * 32, into)
      for (let p = 0; p < 64 * 32; p++) expect(into.subarray(p * CHUNK_SIZE, (p + 1) * CHUNK_SIZE).equals(chunkOf(p)), `chunk ${p}`).toBe(true)
    })
  })

  it('a later write of a chunk wins over an earlier one merged into the same request', async () => {
    await onCountingServer(async (store, applied) => {
      const writes = fillWindow(store)
      writes.push(store.apply({ writes: [{ pca: 7, data: chunkOf(1) }] }), store.apply({ writes: [{ pca: 7, data: chunkOf(2) }] }))
      await Promise.all(writes)
      expect(applied.some((b) => b.writes?.filter((w) => w.pca === 7).length === 2)).toBe(true)
      const into = Buffer.alloc(CHUNK_SIZE)
      await store.readRun(7, 1, into)
      expect(into.equals(chunkOf(2))).toBe(true)
    })
  })

  it('a batch with clears goes alone, and no batch is merged across it', async () => {
    await onCountingServer(async (store, applied) => {
      await store.apply({ writes: run(2000, 16) })
      const writes = fillWindow(store)
      writes.push(store.apply({ writes: run(3000, 4) }), store.apply({ clears: [{ first: 2000, count: 16 }] }), store.apply({ writes: run(3004, 4) }))
      await Promise.all(writes)
      const clearing = applied.filter((b) => (b.clears?.length ?? 0) > 0)
      expect(clearing).toHaveLength(1)
      expect(clearing[0].writes ?? []).toHaveLength(0)
      const pcas = (b: ChunkBatch) => (b.writes ?? []).map((w) => w.pca)
      expect(applied.filter((b) => pcas(b).includes(3000) && pcas(b).includes(3004))).toHaveLength(0)
      expect(await store.stored(2000, 16)).toEqual([])
      expect(await store.stored(3000, 8)).toEqual([3000, 3001, 3002, 3003, 3004, 3005, 3006, 3007])
    })
  })

  it('a refused merged request fails every batch in it, and none of their chunks is stored', async () => {
    await onCountingServer(async (store, applied) => {
      await store.fence(5)
      const results = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => store.apply({ writes: run(100 + i * 32, 32), token: 1 })))
      expect(results.map((r) => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'applied'))).toEqual(Array(16).fill('FENCED'))
      expect(applied).toHaveLength(0)
      expect(await store.stored(100, 16 * 32)).toEqual([])
    })
  })
})
