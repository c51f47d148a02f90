/**
 * Issue 15, a storage server's FENCE_STATUS (lib/storage/remote): over the
 * wire, its fence and how many mutations (data, syncs, map records) it
 * refused FENCED since it started — what the stale-owner tests read from
 * servers in their own processes. A malformed reply is PEER_PROTOCOL.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { decodeFenceStatus, encodeFenceStatus } from '../../lib/storage/remote/protocol.js'
import { chunkOf, cleanup, newKey, openStore, startServer } from '../remote/servers.js'

afterEach(cleanup)

describe('FENCE_STATUS', () => {
  it('answers the fence and counts each refused write, sync and map append of a lower token', async () => {
    const { key } = await newKey()
    const { port } = await startServer(key)
    const old = openStore(key, port, { epoch: 3 })
    await old.fence(3)
    await old.apply({ writes: [{ pca: 0, data: chunkOf(1) }], sync: true })
    expect(await old.fenceStatus()).toEqual({ fence: 3, refused: 0 })

    const next = openStore(key, port, { claim: false, epoch: 0 })
    await next.fence(9)
    await expect(old.apply({ writes: [{ pca: 1, data: chunkOf(2) }] })).rejects.toMatchObject({ code: 'FENCED' })
    await expect(old.sync({ flushUnlogged: true })).rejects.toMatchObject({ code: 'FENCED' })
    await expect(old.appendMapRecords(1, [{ key: Buffer.from([0, 0, 0, 1, 7]), value: Buffer.from('stale') }], false)).rejects.toMatchObject({ code: 'FENCED' })
    expect(await next.fenceStatus()).toEqual({ fence: 9, refused: 3 })
    // A token at the fence is no refusal.
    await next.apply({ writes: [{ pca: 1, data: chunkOf(3) }], token: 9, sync: true })
    expect((await old.fenceStatus()).refused).toBe(3)
  })

  it('round-trips its reply; a reply of another length is PEER_PROTOCOL', () => {
    expect(decodeFenceStatus(encodeFenceStatus({ fence: 2 ** 40, refused: 12 }))).toEqual({ fence: 2 ** 40, refused: 12 })
    expect(() => decodeFenceStatus(Buffer.alloc(11))).toThrow(expect.objectContaining({ code: 'PEER_PROTOCOL' }))
  })
})
