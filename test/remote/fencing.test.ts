import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { chunkOf, cleanup, newKey, openStore, startServer } from './servers.js'

afterEach(cleanup)

describe('fencing on a storage server', () => {
  it('after a fence to a higher epoch, a write with the old epoch is refused with FENCED and its data is not stored', async () => {
    const { key } = await newKey()
    const { port, server } = await startServer(key)
    const oldRelay = openStore(key, port, { epoch: 1 })
    await oldRelay.apply({ writes: [{ pca: 1, data: chunkOf(1) }] })
    const newRelay = openStore(key, port, { epoch: 1 })
    expect(await newRelay.fence(2)).toBe(2)
    expect(server.fenceToken).toBe(2)
    await expect(oldRelay.apply({ writes: [{ pca: 1, data: chunkOf(99) }, { pca: 2, data: chunkOf(2) }] })).rejects.toMatchObject({ code: 'FENCED' })
    await expect(oldRelay.apply({ clears: [{ first: 0, count: 256 }] })).rejects.toMatchObject({ code: 'FENCED' })
    await expect(oldRelay.sync({})).rejects.toMatchObject({ code: 'FENCED' })
    // Nothing of the refused batches is there: chunk 1 is still the old epoch's, chunk 2 was never written.
    const [one, two] = await newRelay.readMany([1, 2])
    expect(one?.equals(chunkOf(1))).toBe(true)
    expect(two).toBeUndefined()
    // The new owner writes with its epoch.
    await newRelay.apply({ writes: [{ pca: 2, data: chunkOf(2) }], sync: true })
    expect(await newRelay.stored(0, 10)).toEqual([1, 2])
  })

  it('keeps the highest token across a restart: it was synced to disk before the raise was acknowledged', async () => {
    const { key } = await newKey()
    const first = await startServer(key)
    const store = openStore(key, first.port, { epoch: 0, deadlineMs: 1000 })
    await store.fence(41)
    expect((await readFile(join(first.dir, 'fence'), 'utf8')).trim()).toBe('41')
    await first.stop()
    const second = await startServer(key, { dir: first.dir })
    expect(second.server.fenceToken).toBe(41)
    const late = openStore(key, second.port, { epoch: 40 })
    await expect(late.apply({ writes: [{ pca: 3, data: chunkOf(3) }] })).rejects.toMatchObject({ code: 'FENCED' })
    expect(await late.stored(0, 10)).toEqual([])
  })

  it('a mutation with a higher token raises the fence (persisted) before it is applied; a lower fence request is refused', async () => {
    const { key } = await newKey()
    const { port, server, dir } = await startServer(key)
    const store = openStore(key, port)
    await store.apply({ writes: [{ pca: 1, data: chunkOf(1) }], token: 5 })
    expect(server.fenceToken).toBe(5)
    expect((await readFile(join(dir, 'fence'), 'utf8')).trim()).toBe('5')
    await expect(store.fence(4)).rejects.toMatchObject({ code: 'FENCED' })
    await expect(store.apply({ writes: [{ pca: 2, data: chunkOf(2) }], token: 4 })).rejects.toMatchObject({ code: 'FENCED' })
    expect(await store.stored(0, 10)).toEqual([1])
  })

  it('a raise takes effect at once: writes of the old epoch sent right behind it are all refused, none stored', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const old = openStore(key, port, { epoch: 1 })
    const owner = openStore(key, port, { epoch: 1 })
    await old.apply({ writes: [{ pca: 0, data: chunkOf(0) }] })
    await owner.readMany([0])
    const raised = owner.fence(2)
    await new Promise((r) => setImmediate(r))
    const writes = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => old.apply({ writes: [{ pca: 100 + i, data: chunkOf(i) }] })))
    await raised
    const stored = await owner.stored(100, 20)
    // Every write either was refused or is stored, and none after the raise was acknowledged.
    const ok = writes.filter((w) => w.status === 'fulfilled').length
    expect(stored.length).toBe(ok)
    await expect(old.apply({ writes: [{ pca: 200, data: chunkOf(1) }] })).rejects.toMatchObject({ code: 'FENCED' })
    const into = Buffer.alloc(CHUNK_SIZE)
    await owner.readRun(200, 1, into)
    expect(into.equals(Buffer.alloc(CHUNK_SIZE))).toBe(true)
  })
})
