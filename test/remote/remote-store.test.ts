import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { RemoteChunkStore } from '../../lib/storage/remote/client.js'
import { chunkOf, cleanup, newKey, openStore, startServer } from './servers.js'
import { storeChecks } from './store-checks.js'

afterEach(cleanup)

storeChecks('a remote store on a storage server on loopback', async () => {
  const { key } = await newKey()
  const { port } = await startServer(key)
  return openStore(key, port)
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
