/**
 * Issue 15, defect: a relay whose lease expired rejoined as a non-owner and,
 * stopped with SIGTERM, never exited — its storage system's last sync at
 * close was refused (FENCED: the new owner had raised the server's fence),
 * and StorageSystem.close gave up before closing the store, so the remote
 * store's connection kept the process alive (test/cluster/partition.test.ts
 * shows the exit end to end). Here, over a memory store: a close whose sync
 * is refused reports the refusal and still closes the store.
 */
import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'

describe('a storage system closed after its server fenced it', () => {
  it('reports the refused last sync and still closes its store', async () => {
    const store = MemoryChunkStore.create({ sid: 1, name: 'far' })
    let storeClosed = false
    const close = store.close.bind(store)
    store.close = async () => {
      storeClosed = true
      await close()
    }
    const system = StorageSystem.over(store, { capacity: 1 << 24 })
    await system.write([{ pca: 0, data: Buffer.alloc(CHUNK_SIZE, 7) }])
    store.sync = () => Promise.reject(new VvfsError('FENCED', 'fencing token 8 is below 12: another relay owns this storage system now'))
    await expect(system.close()).rejects.toMatchObject({ code: 'FENCED' })
    expect(storeClosed).toBe(true)
  })
})
