import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { Applier } from '../../lib/replication/applier.js'
import type { JournalEntry } from '../../lib/replication/entry.js'
import { genesis, handoff, takeover, TAKEOVER_SEQ_STRIDE, validateChain, type Sender } from '../../lib/replication/epoch.js'
import { MemoryApplyTarget } from './model-target.js'

const A = 'storage-a'
const B = 'storage-b'
const fromA: Sender = { epoch: 1, home: A }
const fromB: Sender = { epoch: 2, home: B }
const chainA = [genesis(A)]

function w(seq: number, offset: number, fill: number, epoch = 1, volume = 1): JournalEntry {
  return { seq, epoch, volume, kind: 'write', offset, length: 4096, data: Buffer.alloc(4096, fill) }
}

async function open(volumes = [1]) {
  const target = new MemoryApplyTarget()
  const applier = await Applier.open(target, { volumes, chain: chainA })
  return { target, applier }
}

describe('applier: strictly in order, data and applied number in one batch', () => {
  it('applies consecutive entries and acknowledges through the last', async () => {
    const { target, applier } = await open()
    const ack = await applier.receive(fromA, [w(1, 0, 1), w(2, 4096, 2), w(3, 0, 3)])
    expect(ack).toEqual({ appliedSeq: 3, applied: 3, duplicates: 0, refused: null, consistent: true })
    const img = target.images().get(1) as Buffer
    expect([img[0], img[4096]]).toEqual([3, 2])
    expect(target.state?.appliedSeq).toBe(3)
  })

  it('after a power cut in the middle of a batch the applied number always matches the image', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1)])
    target.hold()
    void applier.receive(fromA, [w(2, 0, 2), w(3, 4096, 3)])
    await new Promise((r) => setImmediate(r))
    target.powerCut()
    const reopened = await Applier.open(target, { volumes: [1], chain: chainA })
    expect(reopened.status.appliedSeq).toBe(1)
    expect((target.images().get(1) as Buffer)[0]).toBe(1)
    // The primary resends from 2.
    expect((await reopened.receive(fromA, [w(2, 0, 2), w(3, 4096, 3)])).appliedSeq).toBe(3)
  })

  it('refuses a batch with a gap, applying nothing of it, and names the next number', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1)])
    const before = target.batches
    const ack = await applier.receive(fromA, [w(2, 0, 2), w(4, 0, 4)])
    expect(ack.appliedSeq).toBe(1)
    expect(ack.refused).toMatchObject({ code: 'REPLICATION_GAP', details: { reason: 'gap', expected: 3 } })
    expect(target.batches).toBe(before)
    expect((target.images().get(1) as Buffer)[0]).toBe(1)
  })

  it('acknowledges a replayed old number without applying it again', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1), w(2, 0, 2)])
    const before = target.batches
    const ack = await applier.receive(fromA, [w(1, 0, 1)]) // applying it again would turn block 0 back to 1
    expect(ack).toMatchObject({ appliedSeq: 2, applied: 0, duplicates: 1, refused: null })
    expect(target.batches).toBe(before)
    expect((target.images().get(1) as Buffer)[0]).toBe(2)
  })

  it('refuses a batch holding an entry for a volume not in the pair, applying none of it', async () => {
    const { target, applier } = await open([1, 2])
    const ack = await applier.receive(fromA, [w(1, 0, 1), w(2, 0, 2, 1, 2), w(3, 0, 3, 1, 9)])
    expect(ack.refused).toMatchObject({ code: 'VOLUME_NOT_FOUND', details: { reason: 'unknown-volume', volume: 9 } })
    expect(ack.appliedSeq).toBe(0)
    expect(target.images().size).toBe(0)
  })
})

describe('applier: the epoch chain across a migration of the primary', () => {
  it("applies A's entries up to its last and B's after, and refuses A's past B's first once B said hello", async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1), w(2, 0, 2)])
    const chainB = [...chainA, handoff(chainA, B, 3)]
    // B is not known before its hello.
    expect((await applier.receive(fromB, [w(4, 0, 40, 2)])).refused).toMatchObject({ details: { reason: 'unknown-epoch' } })
    await applier.hello(fromB, chainB)
    expect(target.state?.chain).toEqual(chainB) // adopted durably
    expect((await applier.receive(fromB, [w(4, 0, 40, 2)])).refused).toMatchObject({ details: { reason: 'gap', expected: 3 } })
    expect((await applier.receive(fromA, [w(3, 0, 3)])).appliedSeq).toBe(3)
    const zombie = await applier.receive(fromA, [w(4, 0, 99)])
    expect(zombie.refused).toMatchObject({ code: 'EPOCH_STALE', details: { reason: 'stale-epoch' } })
    expect((await applier.receive(fromB, [w(4, 0, 40, 2)])).appliedSeq).toBe(4)
    expect((target.images().get(1) as Buffer)[0]).toBe(40)
  })

  it('refuses a hello whose chain conflicts with its own (split-brain) and one from a home not in the chain', async () => {
    const { applier } = await open()
    await applier.hello(fromB, [...chainA, handoff(chainA, B, 0)])
    const other = [...chainA, handoff(chainA, 'storage-c', 0)]
    await expect(applier.hello({ epoch: 2, home: 'storage-c' }, other)).rejects.toMatchObject({ code: 'SPLIT_BRAIN', details: { reason: 'split-brain' } })
    await expect(applier.hello({ epoch: 2, home: 'storage-c' }, chainA)).rejects.toMatchObject({ details: { reason: 'wrong-home' } })
  })
})

describe('applier: failures and resync', () => {
  it('a failed batch is reported (IO_ERROR) and the state reloaded before the next', async () => {
    const { target, applier } = await open()
    target.failNext()
    await expect(applier.receive(fromA, [w(1, 0, 1)])).rejects.toBeInstanceOf(VvfsError)
    expect((await applier.receive(fromA, [w(1, 0, 1)])).appliedSeq).toBe(1)
  })

  it('handles concurrent batches one at a time, in arrival order', async () => {
    const { applier } = await open()
    const acks = await Promise.all([applier.receive(fromA, [w(1, 0, 1)]), applier.receive(fromA, [w(2, 0, 2)]), applier.receive(fromA, [w(3, 0, 3)])])
    expect(acks.map((a) => a.appliedSeq)).toEqual([1, 2, 3])
  })

  it('a resync makes the image inconsistent until its data is in and entries reach the consistency point', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1)])
    await expect(applier.beginResync(fromA, 0)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' })
    await applier.beginResync(fromA, 10)
    expect(applier.status).toMatchObject({ appliedSeq: 10, consistent: false, resyncing: true })
    expect((await applier.receive(fromA, [w(5, 0, 5)])).duplicates).toBe(1) // covered by the resync
    await applier.resyncData(fromA, [{ volume: 1, kind: 'write', offset: 8192, length: 4096, data: Buffer.alloc(4096, 8) }])
    expect((await applier.receive(fromA, [w(11, 0, 11)])).consistent).toBe(false)
    await applier.endResync(fromA, 12)
    expect(applier.status.consistent).toBe(false)
    expect((await applier.receive(fromA, [w(12, 4096, 12)])).consistent).toBe(true)
    const img = target.images().get(1) as Buffer
    expect([img[0], img[4096], img[8192]]).toEqual([11, 12, 8])
    await expect(applier.resyncData(fromA, [])).rejects.toMatchObject({ code: 'JOB_STATE' })
  })

  it('commits the resync data that arrives while one batch commits as one batch; a refused request fails alone', async () => {
    const { target, applier } = await open()
    await applier.beginResync(fromA, 10)
    const piece = (extent: number, fill: number, volume = 1) => ({ volume, kind: 'write' as const, offset: extent * 65536, length: 4096, data: Buffer.alloc(4096, fill) })
    const before = target.batches
    // Eight requests in flight at once (the primary's window), one of them for a volume not in the pair.
    const sent = [1, 2, 3, 4, 5, 6, 7, 8].map((i) => applier.resyncData(fromA, [piece(i, i, i === 5 ? 9 : 1)]))
    const results = await Promise.allSettled(sent)
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled'])
    expect((results[4] as PromiseRejectedResult).reason).toMatchObject({ code: 'VOLUME_NOT_FOUND' })
    // All arrived before the first commit began: the seven valid ones are one batch (one sync).
    expect(target.batches - before).toBe(1)
    const img = target.images().get(1) as Buffer
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((i) => img[i * 65536])).toEqual([1, 2, 3, 4, 0, 6, 7, 8])
    expect(applier.status).toMatchObject({ appliedSeq: 10, resyncing: true })
  })
})

describe('applier: a target that failed for good', () => {
  it('refuses resync data after a failed batch whose state cannot be reloaded, instead of leaving it unanswered', async () => {
    const { target, applier } = await open()
    await applier.beginResync(fromA, 10)
    target.failNext()
    await expect(applier.receive(fromA, [w(11, 0, 1)])).rejects.toBeInstanceOf(VvfsError)
    target.failLoads()
    const piece = { volume: 1, kind: 'write' as const, offset: 0, length: 4096, data: Buffer.alloc(4096, 7) }
    const unanswered = new Promise<'unanswered'>((r) => setTimeout(() => r('unanswered'), 2000).unref())
    for (let i = 0; i < 2; i++) await expect(Promise.race([applier.resyncData(fromA, [piece]), unanswered])).rejects.toThrow(/load failure/)
  })
})

describe('applier: a relay took the pair over (issue 15) without the old owner journal', () => {
  it('adopts the takeover epoch; once its resync begins, nothing the old owner still sends is applied', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [w(1, 0, 1), w(2, 0, 2)])
    const chain = [...chainA, takeover(chainA, A)]
    const taker: Sender = { epoch: 2, home: chain[1]!.home }
    expect(chain[1]).toMatchObject({ epoch: 2, home: `${A}@takeover-e2`, firstSeq: 1 + TAKEOVER_SEQ_STRIDE, predecessor: { epoch: 1, home: A, lastSeq: TAKEOVER_SEQ_STRIDE } })
    await applier.hello(taker, chain)
    // The old owner, not yet fenced off, ships one more: applied (the resync will copy over it).
    expect((await applier.receive(fromA, [w(3, 0, 3)])).appliedSeq).toBe(3)
    // Only the current home may resync; its base is past every number the old owner could give.
    await expect(applier.beginResync(fromA, TAKEOVER_SEQ_STRIDE)).rejects.toMatchObject({ details: { reason: 'stale-epoch' } })
    await applier.beginResync(taker, TAKEOVER_SEQ_STRIDE)
    const late = await applier.receive(fromA, [w(4, 0, 4)])
    expect([late.applied, late.duplicates, late.refused]).toEqual([0, 1, null])
    expect((target.images().get(1) as Buffer)[0]).toBe(3)
    await applier.endResync(taker, TAKEOVER_SEQ_STRIDE)
    expect((await applier.receive(taker, [w(TAKEOVER_SEQ_STRIDE + 1, 0, 9, 2)])).appliedSeq).toBe(TAKEOVER_SEQ_STRIDE + 1)
    expect((target.images().get(1) as Buffer)[0]).toBe(9)
  })

  it('a chain of takeovers stays valid; when the numbers run out, a takeover is refused', () => {
    let chain = [...chainA]
    for (let i = 0; i < 100; i++) chain = [...chain, takeover(chain, A)]
    expect(() => validateChain(chain)).not.toThrow()
    const last = { ...chain[chain.length - 1]!, firstSeq: Number.MAX_SAFE_INTEGER - 10 }
    expect(() => takeover([last].map((r) => ({ ...r, epoch: 1, predecessor: null })), A)).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }))
  })
})
