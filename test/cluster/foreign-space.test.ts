/**
 * ForeignSpace (lib/cluster/foreign-space.ts), without servers: the space
 * other volumes' map logs name is held in the free-space tables, so this
 * relay allocates around it; a refresh replaces the holds; a volume served
 * here gives its hold back; an unreadable log keeps what was known; space
 * already in use here is reported, not held twice.
 */
import { PassThrough } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { ForeignSpace, type ForeignVolume } from '../../lib/cluster/foreign-space.js'
import { VvfsError } from '../../lib/errors.js'
import { EXTENT_CHUNKS, EXTENT_SIZE } from '../../lib/layout.js'
import { createLogger } from '../../lib/log.js'
import type { ExtentEntry } from '../../lib/relay/extent-entry.js'
import { FreeSpaceTable } from '../../lib/storage/free-space.js'
import { Pool } from '../../lib/storage/pool.js'
import type { StorageSystem } from '../../lib/storage/storage-system.js'

const SLOTS = 8

function setup() {
  const pool = new Pool()
  // The tables are all the pool's allocation reads of a system.
  for (const sid of [1, 2]) pool.add({ sid, name: `s${sid}`, table: new FreeSpaceTable(SLOTS * EXTENT_SIZE), allocatable: true } as unknown as StorageSystem)
  const out = new PassThrough()
  const lines: string[] = []
  out.on('data', (b: Buffer) => lines.push(...b.toString().split('\n').filter(Boolean)))
  const foreign = new ForeignSpace(pool, createLogger('info', 'json', out))
  const table = (sid: number) => pool.get(sid).table
  const events = () => lines.map((l) => JSON.parse(l) as { event: string; volume?: string; pieces?: number; kept?: number })
  return { pool, foreign, table, events }
}

const whole = (sid: number, slot: number): ExtentEntry => ({ kind: 'whole', sid, slot })
const frags = (...f: [number, number, number][]): ExtentEntry => ({ kind: 'fragments', frags: new Map(f.map(([chunk, sid, pca]) => [chunk, { sid, pca }])) })
const volume = (no: number, entries: ExtentEntry[] | Error): ForeignVolume => ({
  no,
  name: `v${no}`,
  entries: async () => {
    if (entries instanceof Error) throw entries
    return entries
  },
})

/** Every slot the relay can allocate on `sid` now, in order. */
function allocateAll(pool: Pool, sid: number): number[] {
  const got: number[] = []
  for (;;) {
    const p = pool.allocateSlot({ only: sid })
    if (!p) return got
    got.push(p.address)
  }
}

describe('ForeignSpace', () => {
  it('what other volumes hold is never allocated here; a refresh replaces the holds; a volume served here gives its hold back', async () => {
    const { pool, foreign, table } = setup()
    await foreign.refresh([volume(7, [whole(1, 0), whole(1, 2), frags([0, 2, 3 * EXTENT_CHUNKS + 1]), whole(9, 4)]), volume(8, [whole(2, 5)])])
    // Slot 3 of s2 is split for v7's fragment; slot 5 is v8's; a system outside the pool (9) is skipped.
    expect(table(1).isSlotFree(0) || table(1).isSlotFree(2)).toBe(false)
    expect([table(2).isSlotFree(3), table(2).isSlotFree(5)]).toEqual([false, false])

    // v7 now holds slot 2 only, and v8 is no longer listed (it was deleted, say).
    await foreign.refresh([volume(7, [whole(1, 2)])])
    expect([table(1).isSlotFree(0), table(1).isSlotFree(2), table(2).isSlotFree(3), table(2).isSlotFree(5)]).toEqual([true, false, true, true])

    // Taken over here: its own map marks it from now on, so its hold goes.
    foreign.forget(7)
    expect(table(1).isEmpty && table(2).isEmpty).toBe(true)

    await foreign.refresh([volume(7, [whole(1, 1), whole(1, 3)])])
    expect(allocateAll(pool, 1)).toEqual([0, 2, 4, 5, 6, 7])
  })

  it('a log that cannot be read keeps what was known of its volume; space already used here is reported and not held twice', async () => {
    const { pool, foreign, table, events } = setup()
    await foreign.refresh([volume(7, [whole(1, 0)])])
    await foreign.refresh([volume(7, new VvfsError('TIMEOUT', 'the server did not answer'))])
    expect(table(1).isSlotFree(0)).toBe(false)
    expect(events().find((e) => e.event === 'relay.space_unknown')).toMatchObject({ volume: 'v7', kept: 1 })

    // Slot 1 was allocated here (to a volume served here) before the log of v8 was known to name it.
    expect(pool.allocateSlot({ only: 1 })?.address).toBe(1)
    await foreign.refresh([volume(7, [whole(1, 0)]), volume(8, [whole(1, 1), whole(1, 2)])])
    expect(events().find((e) => e.event === 'relay.space_conflict')).toMatchObject({ volume: 'v8', pieces: 1 })
    // v8 going does not give back the slot it shared with this relay's own volume.
    await foreign.refresh([volume(7, [whole(1, 0)])])
    expect([table(1).isSlotFree(1), table(1).isSlotFree(2)]).toEqual([false, true])
  })
})
