/**
 * A resync's data written straight into the secondary's volumes (applier.ts):
 * not through the synced batches, durable only by a RESYNC_FLUSH of the same
 * incarnation of the secondary, and never without a resync under way. The
 * target here keeps direct writes volatile until flushDirect(), and a power
 * cut drops them, as a daemon's unsynced volume data.
 */
import { describe, expect, it } from 'vitest'
import { Applier, type ApplyTarget, type SecondaryState, type TargetChange } from '../../lib/replication/applier.js'
import { genesis, type Sender } from '../../lib/replication/epoch.js'
import { decodeAck, decodeResyncFlush, encodeResyncFlush } from '../../lib/replication/messages.js'
import { applyChange } from './model-target.js'
import { VolumeModel } from '../helpers/model.js'

const A = 'storage-a'
const fromA: Sender = { epoch: 1, home: A }
const chainA = [genesis(A)]

/** Batches durable at once; direct writes volatile until flushDirect(); powerCut() drops them. */
class DirectTarget implements ApplyTarget {
  state: SecondaryState | null = null
  durable = new Map<number, VolumeModel>()
  volatile = new Map<number, VolumeModel>()
  batches = 0
  directWrites = 0
  flushes = 0

  async load(): Promise<SecondaryState | null> {
    return this.state ? structuredClone(this.state) : null
  }

  async apply(changes: TargetChange[], state: SecondaryState): Promise<void> {
    for (const c of changes) applyChange(this.durable, c)
    this.volatile = copy(this.durable)
    this.state = structuredClone(state)
    this.batches++
  }

  async writeDirect(changes: TargetChange[]): Promise<void> {
    for (const c of changes) applyChange(this.volatile, c)
    this.directWrites++
  }

  async flushDirect(): Promise<void> {
    this.durable = copy(this.volatile)
    this.flushes++
  }

  powerCut(): void {
    this.volatile = copy(this.durable)
  }

  byte(volume: number, offset: number): number | undefined {
    return this.durable.get(volume)?.data[offset]
  }
}

function copy(images: Map<number, VolumeModel>): Map<number, VolumeModel> {
  return new Map([...images].map(([v, m]) => [v, Object.assign(new VolumeModel(0), { data: Buffer.from(m.data) })]))
}

const write = (offset: number, fill: number): TargetChange => ({ volume: 1, kind: 'write', offset, length: 4096, data: Buffer.alloc(4096, fill) })

async function open(target = new DirectTarget()) {
  const applier = await Applier.open(target, { volumes: [1], chain: chainA })
  return { target, applier }
}

describe('resync data straight into the volumes', () => {
  it('is written without a synced batch and durable once flushed by the same incarnation', async () => {
    const { target, applier } = await open()
    await applier.beginResync(fromA, 0)
    const batches = target.batches
    const ack = await applier.resyncData(fromA, [write(0, 7)])
    expect(ack.incarnation).toBe(applier.incarnation)
    expect(target.batches).toBe(batches)
    expect(target.byte(1, 0)).toBeUndefined()
    const flushed = await applier.resyncFlush(fromA, ack.incarnation!)
    expect(flushed.incarnation).toBe(applier.incarnation)
    expect(target.byte(1, 0)).toBe(7)
  })

  it('a flush from another incarnation (the secondary restarted after the data) is refused and makes nothing durable', async () => {
    const { target, applier } = await open()
    await applier.beginResync(fromA, 0)
    const ack = await applier.resyncData(fromA, [write(0, 7)])
    // The daemon dies before the flush: the data was never durable.
    target.powerCut()
    const restarted = (await open(target)).applier
    expect(restarted.incarnation).not.toBe(applier.incarnation)
    await expect(restarted.resyncFlush(fromA, ack.incarnation!)).rejects.toMatchObject({ code: 'EPOCH_STALE', details: { reason: 'other-incarnation' } })
    expect(target.flushes).toBe(0)
    expect(target.byte(1, 0)).toBeUndefined()
    expect(restarted.status.resyncing).toBe(true)
  })

  it('resync data and flushes are refused without a resync under way: nothing is written to a consistent replica', async () => {
    const { target, applier } = await open()
    await applier.receive(fromA, [{ seq: 1, epoch: 1, volume: 1, kind: 'write', offset: 0, length: 4096, data: Buffer.alloc(4096, 1) }])
    const batches = target.batches
    await expect(applier.resyncData(fromA, [write(0, 9)])).rejects.toMatchObject({ code: 'JOB_STATE', details: { reason: 'no-resync' } })
    await expect(applier.resyncFlush(fromA, applier.incarnation)).rejects.toMatchObject({ code: 'JOB_STATE', details: { reason: 'no-resync' } })
    expect([target.directWrites, target.flushes, target.batches]).toEqual([0, 0, batches])
    expect(target.byte(1, 0)).toBe(1)
    expect(applier.status.consistent).toBe(true)
  })

  it('a resize in a resync still goes through a synced batch (durable when answered)', async () => {
    const { target, applier } = await open()
    await applier.beginResync(fromA, 0)
    const batches = target.batches
    await applier.resyncData(fromA, [{ volume: 1, kind: 'resize', offset: 0, length: 8192, data: null }])
    expect(target.batches).toBe(batches + 1)
    expect(target.directWrites).toBe(0)
    target.powerCut()
    expect(target.durable.get(1)?.data.length).toBe(8192)
  })
})

describe('RESYNC_FLUSH message', () => {
  const flush = { format: 1 as const, pair: 'p', sender: fromA, incarnation: '0123abcd' }

  it('round-trips, and an ack carries the incarnation', () => {
    expect(decodeResyncFlush(encodeResyncFlush(flush))).toEqual(flush)
    const ack = { appliedSeq: 0, applied: 0, duplicates: 0, refused: null, consistent: false, incarnation: 'ff' }
    expect(decodeAck(Buffer.from(JSON.stringify(ack)))).toEqual(ack)
  })

  it('refuses a malformed flush (PEER_PROTOCOL)', () => {
    for (const bad of [
      { ...flush, incarnation: '' },
      { ...flush, incarnation: 'not hex!' },
      { ...flush, incarnation: 'a'.repeat(65) },
      { ...flush, extra: 1 },
      { format: 1, pair: 'p', sender: fromA },
    ])
      expect(() => decodeResyncFlush(Buffer.from(JSON.stringify(bad)))).toThrow(expect.objectContaining({ code: 'PEER_PROTOCOL' }))
  })
})
