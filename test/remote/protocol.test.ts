import { describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import {
  decodeAddresses,
  decodeApply,
  decodeChunkSet,
  decodeIdentityReply,
  decodeIdentityRequest,
  decodeReadMany,
  decodeReadRun,
  decodeStored,
  decodeSync,
  encodeAddresses,
  encodeApply,
  encodeChunkSet,
  encodeIdentityReply,
  encodeIdentityRequest,
  encodeReadMany,
  encodeReadRun,
  encodeStored,
  encodeSync,
  MAX_READ_CHUNKS,
  STORAGE_MAX_BODY,
} from '../../lib/storage/remote/protocol.js'
import { codeOf } from '../helpers/errors.js'
import { chunkOf } from './servers.js'

describe('the storage protocol', () => {
  it('round-trips every message, chunk data raw', async () => {
    expect(decodeIdentityRequest(encodeIdentityRequest({ protocol: 1, sid: 2 ** 40, name: 'far-1', claim: true }))).toEqual({ protocol: 1, sid: 2 ** 40, name: 'far-1', claim: true })
    const reply = { identity: { sid: 3, name: 'x', format: 1, chunkSize: CHUNK_SIZE }, capacity: 2 ** 44, fence: 2 ** 47, unlogged: true, boot: Buffer.alloc(16, 9), incarnation: Buffer.alloc(16, 4) }
    expect(decodeIdentityReply(encodeIdentityReply(reply))).toEqual(reply)
    expect(decodeIdentityReply(encodeIdentityReply({ ...reply, incarnation: null }))).toEqual({ ...reply, incarnation: null }) // a version 1 server's
    expect(decodeReadRun(encodeReadRun(2 ** 47, 256))).toEqual({ first: 2 ** 47, count: 256 })
    expect(decodeReadMany(encodeReadMany([5, 1, 2 ** 48 - 1]))).toEqual([5, 1, 2 ** 48 - 1])
    const set = [chunkOf(1), undefined, chunkOf(3)]
    const body = encodeChunkSet(set)
    expect(body.length).toBe(4 + 1 + 2 * CHUNK_SIZE) // no bytes for the missing chunk
    expect(decodeChunkSet(body, 3).map((c) => c?.toString('hex'))).toEqual(set.map((c) => c?.toString('hex')))
    const batch = { writes: [{ pca: 7, data: chunkOf(7) }, { pca: 8, data: null }], clears: [{ first: 256, count: 256 }], unlogged: true, sync: false }
    const applied = decodeApply(encodeApply(batch, 9))
    expect(applied.token).toBe(9)
    expect(applied.batch.clears).toEqual(batch.clears)
    expect(applied.batch.writes?.map((w) => [w.pca, w.data?.equals(chunkOf(7)) ?? null])).toEqual([[7, true], [8, null]])
    expect(applied.batch).toMatchObject({ unlogged: true, sync: false })
    expect(decodeStored(encodeStored(10, 2 ** 40, 5))).toEqual({ first: 10, count: 2 ** 40, limit: 5 })
    expect(decodeAddresses(encodeAddresses([1, 2, 2 ** 48 - 1]))).toEqual([1, 2, 2 ** 48 - 1])
    expect(decodeSync(encodeSync(true, 4))).toEqual({ flushUnlogged: true, token: 4 })
  })

  it('fits a whole extent of data (one atomic batch) in one body', () => {
    const writes = Array.from({ length: 256 }, (_, i) => ({ pca: i, data: chunkOf(i) }))
    expect(encodeApply({ writes, clears: [{ first: 0, count: 256 }] }, 1).length).toBeLessThanOrEqual(STORAGE_MAX_BODY)
    expect(encodeChunkSet(writes.map((w) => w.data)).length).toBeLessThanOrEqual(STORAGE_MAX_BODY)
  })

  it('refuses truncated, padded and lying bodies with PEER_PROTOCOL, never sizing a buffer from a field', async () => {
    const apply = encodeApply({ writes: [{ pca: 1, data: chunkOf(1) }] }, 0)
    const lying = Buffer.from(apply)
    lying.writeUInt32BE(0xffffffff, 1 + 6 + 4) // "4 billion writes" in a body of one
    for (const bad of [apply.subarray(0, apply.length - 1), Buffer.concat([apply, Buffer.alloc(1)]), lying]) expect(await codeOf(() => decodeApply(bad))).toBe('PEER_PROTOCOL')
    const many = encodeReadMany([1, 2])
    many.writeUInt32BE(3, 0)
    expect(await codeOf(() => decodeReadMany(many))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeReadRun(encodeReadRun(0, MAX_READ_CHUNKS + 1)))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeChunkSet(encodeChunkSet([chunkOf(1)]), 2))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeIdentityRequest(Buffer.alloc(3)))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeSync(Buffer.alloc(8)))).toBe('PEER_PROTOCOL')
    const flags = Buffer.from(apply)
    flags[0] = 0x80
    expect(await codeOf(() => decodeApply(flags))).toBe('PEER_PROTOCOL')
  })

  it('refuses runs of chunks past the 48-bit address space with PEER_PROTOCOL (a STORED run past it reached the store and came back IO_ERROR)', async () => {
    const top = 2 ** 48 - 1
    expect(await codeOf(() => decodeStored(encodeStored(0xffffffff, top - 0xffff, 100)))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeReadRun(encodeReadRun(top, 2)))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeApply(encodeApply({ clears: [{ first: top, count: 2 }] }, 0)))).toBe('PEER_PROTOCOL')
    expect(decodeStored(encodeStored(top, 1, 100))).toMatchObject({ first: top, count: 1 })
  })

  it('refuses an APPLY that clears more than 64 extents of chunks with PEER_PROTOCOL (a 1 MiB body asked for 27 million deletions)', async () => {
    const many = Array.from({ length: 106_494 }, () => ({ first: 0, count: 256 }))
    expect(await codeOf(() => decodeApply(encodeApply({ clears: many }, 0)))).toBe('PEER_PROTOCOL')
    expect(await codeOf(() => decodeApply(encodeApply({ clears: [{ first: 0, count: 2 ** 32 - 1 }] }, 0)))).toBe('PEER_PROTOCOL')
    // What a relay sends: one extent's slot.
    expect(decodeApply(encodeApply({ clears: [{ first: 256, count: 256 }] }, 0)).batch.clears).toEqual([{ first: 256, count: 256 }])
  })

  it('refuses to encode what does not fit its field (INVALID_ARGUMENT), before anything is sent', async () => {
    expect(await codeOf(() => encodeReadRun(2 ** 48, 1))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(() => encodeApply({ writes: [{ pca: 1, data: Buffer.alloc(10) }] }, 0))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(() => encodeSync(false, -1))).toBe('INVALID_ARGUMENT')
  })
})
