import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { RemoteChunkStore } from '../../lib/storage/remote/client.js'
import { chunkOf, cleanup, newKey, openStore, startServer } from './servers.js'
import { chunkStoreSuite } from '../storage/chunk-store.suite.js'

afterEach(cleanup)

/** The ChunkStore conformance suite against a remote store: a storage server (LevelDB) on loopback, claimed as the suite's storage system. */
chunkStoreSuite(
  'remote store on a storage server on loopback',
  async ({ sid, name }) => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const open = () => openStore(key, port, { sid, name })
    return { store: open(), reopen: async () => open(), cleanup: async () => {} }
  },
  { syncRead: false, unlogged: true, fencing: true, reopen: true },
)

describe('a remote store reads and lists more than one request holds', () => {
  it('a run of 600 chunks and 600 scattered ones come back in order', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const store = openStore(key, port)
    const count = 600
    const writes = Array.from({ length: count }, (_, i) => ({ pca: 5000 + i, data: chunkOf(5000 + i) }))
    for (let i = 0; i < count; i += 200) await store.apply({ writes: writes.slice(i, i + 200) })
    const into = Buffer.alloc(count * CHUNK_SIZE)
    await store.readRun(5000, count, into)
    for (let i = 0; i < count; i++) expect(into.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(chunkOf(5000 + i)), `chunk ${i}`).toBe(true)
    const many = await store.readMany(writes.map((w) => w.pca).reverse())
    expect(many.every((c, i) => c?.equals(chunkOf(5000 + count - 1 - i)))).toBe(true)
    expect((await store.stored(0, 1e6)).length).toBe(count)
  })
})

describe('a remote store', () => {
  it('claims a new server once; the server then refuses to be another storage system', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const { server } = await RemoteChunkStore.connect({ host: '127.0.0.1', port, key, log: (await import('../../lib/log.js')).createLogger('silent'), sid: 3, name: 'a', claim: true })
    expect(server.identity).toMatchObject({ sid: 3, name: 'a', chunkSize: CHUNK_SIZE })
    const other = openStore(key, port, { sid: 4, name: 'b' })
    await expect(other.readMany([0])).rejects.toMatchObject({ code: 'STORAGE_PATH_IN_USE' })
  })

  it('is served only once claimed: a store that must exist finds none on a new server', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const store = openStore(key, port, { claim: false })
    await expect(store.readMany([0])).rejects.toMatchObject({ code: 'STATE_CORRUPT' })
  })

  it('keeps what was synced across a server restart on the same directory and port, and reconnects by itself', async () => {
    const { key } = await newKey()
    const first = await startServer(key)
    const store = openStore(key, first.port, { deadlineMs: 1000 })
    await store.apply({ writes: [{ pca: 5, data: chunkOf(5) }], sync: true })
    await first.stop()
    await expect(store.readMany([5])).rejects.toMatchObject({ code: 'IO_ERROR' })
    await startServer(key, { dir: first.dir, port: first.port })
    const back = await store.readMany([5])
    expect(back[0]?.equals(chunkOf(5))).toBe(true)
    expect(store.link.state).toBe('ready')
  })

  it('refuses addresses beyond the server capacity with STORAGE_FULL, storing nothing', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key, { capacity: 1024 * 1024 })
    const store = openStore(key, port)
    await expect(store.apply({ writes: [{ pca: 1, data: chunkOf(1) }, { pca: 256, data: chunkOf(2) }] })).rejects.toMatchObject({ code: 'STORAGE_FULL' })
    expect(await store.stored(0, 1000)).toEqual([])
  })
})
