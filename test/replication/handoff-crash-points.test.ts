/**
 * A kill -9 in the middle of the journal's handoff (issue 13 build point 4,
 * claims 1–7): the primary daemon runs with VVFS_CRASH_AT set to a step of
 * the handoff (lib/replication/journal-chain.ts) and kills itself there,
 * while the numbered O_DIRECT|O_SYNC writer runs and the volume migrates
 * a1 → a2 (then back). After the restart the journal is wholly at the old
 * home (the handoff had not committed: its new log is deleted, and the start
 * hands over again under the same epoch number) or wholly at the new one
 * (the epoch record committed: the old home's remainder ships first), the
 * primary holds every acknowledged write, the secondary is a prefix of it,
 * and replication goes on without a resync to byte-identical images.
 */
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { removePairDirs, pairStatus, waitForPair, type Pair } from './daemons.js'
import { diesAt, expectNoResync, expectSameImages, journalAt, migrate, migrationsDone, PAIR, prefixOf, readImage, secondarySteady, startHandoffPair, Writer } from './handoff-fixture.js'

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

const POINTS = [
  { point: 'replication.handoff.prepared', after: 'the old home' },
  { point: 'replication.handoff.committed', after: 'the new home' },
] as const

it('a kill -9 between the handoff steps ends wholly at A or wholly at B after the restart, and replication goes on without a resync', { timeout: 90_000 }, async () => {
  p = await startHandoffPair()
  const { primary, secondary } = p
  const writer = new Writer(join(p.dir, 'acked.log'))
  let next = 1
  let home = 'a1'
  for (const { point, after } of POINTS) {
    await primary.restart({ VVFS_CRASH_AT: point })
    const before = await waitForPair(primary, PAIR, 'primary', journalAt(home))
    writer.start(primary.file('vol'), next)
    await writer.firstAck(5000)
    await new Promise((r) => setTimeout(r, 100))
    const to = home === 'a1' ? 'a2' : 'a1'
    await migrate(primary, to)
    // The migration's end commits the new home; the handoff it starts dies at `point`.
    await diesAt(primary, point)
    await writer.exited()
    const acked = writer.acked()
    await secondarySteady(secondary)
    const m = prefixOf(readImage(secondary.file(PAIR)), `${point}: secondary`)
    const logFrom = primary.log().length
    await primary.restart({})
    const held = prefixOf(readImage(primary.file('vol')), `${point}: restarted primary`)
    expect(held, `${point}: the restarted primary lost an acknowledged write`).toBeGreaterThanOrEqual(acked)
    expect(held).toBeLessThanOrEqual(acked + 1)
    expect(m, `${point}: the secondary holds write ${m}, the primary only 1..${held}`).toBeLessThanOrEqual(held)
    const restartLog = primary.log().slice(logFrom)
    if (after === 'the old home') {
      // Wholly A: the uncommitted epoch's log is deleted; the start then hands over again, as the same epoch.
      expect(restartLog).toContain('"event":"replication.handoff_abandoned"')
      expect(restartLog).toMatch(new RegExp(`"event":"replication.handoff"[^\\n]*"epoch":${before.epoch + 1}`))
    } else {
      // Wholly B: the epoch record is there at the restart; nothing is abandoned or handed over again.
      expect(restartLog).not.toContain('"event":"replication.handoff_abandoned"')
      expect(restartLog).not.toContain('"event":"replication.handoff"')
      expect((await pairStatus(primary, PAIR, 'primary'))?.epoch).toBe(before.epoch + 1)
    }
    await migrationsDone(primary)
    const done = await waitForPair(primary, PAIR, 'primary', journalAt(to))
    expect(done.epoch).toBe(before.epoch + 1)
    home = to
    next = held + 1
  }
  // The secondary followed the chain: the current epoch is the primary's.
  const sec = await pairStatus(secondary, PAIR, 'secondary')
  expect(sec?.epoch).toBe(3)
  expectNoResync(primary)
  expect(expectSameImages(p)).toBeGreaterThan(0)
})
