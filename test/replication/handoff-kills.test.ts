/**
 * Prefix consistency while the primary migrates between storage systems
 * (issue 13 build point 4, "the same while the primary migrates A → B"): a
 * numbered O_DIRECT|O_SYNC writer runs; each round migrates the volume to
 * the other system (a1 ⇄ a2), which hands the journal over at the
 * migration's end, and kill -9 lands on the primary daemon at a random
 * moment (copying, switching, handing over, shipping the old home's
 * remainder) — or, in some rounds, exactly in the middle of the handoff
 * (VVFS_CRASH_AT at its steps), or with the pair paused (the handoff then
 * leaves A's entries to ship after the restart). After every restart:
 *   - the secondary's image is exactly writes 1..m for some m,
 *   - the restarted primary holds every acknowledged write (writes 1..p,
 *     p ≥ the last acknowledged, p ≤ the last issued), and m ≤ p;
 * after each round the journal is at the new home with no earlier home's
 * journal left, no resync ever ran, and after catch-up the two images are
 * byte-identical.
 *
 * VVFS_HANDOFF_KILLS sets the number of rounds (default 5, two of them at
 * the handoff's crash points; ~25 s alone, ~50 s in a loaded full run);
 * VVFS_REPL_SEED the random moments.
 */
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { removePairDirs, pairStatus, waitForPair, type Pair } from './daemons.js'
import { diesAt, expectNoResync, expectSameImages, journalAt, migrate, migrationsDone, PAIR, prefixOf, readImage, secondarySteady, startHandoffPair, Writer } from './handoff-fixture.js'

const KILLS = Number(process.env.VVFS_HANDOFF_KILLS ?? 5)
let seed = Number(process.env.VVFS_REPL_SEED ?? Date.now() % 100000)
const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32)
/** Rounds 2 and 4 (of every five) die at a step of the handoff itself. */
const crashPointOf = (k: number): string | null => (k % 5 === 2 ? 'replication.handoff.prepared' : k % 5 === 4 ? 'replication.handoff.committed' : null)

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

it(`the secondary stays a prefix of the primary's acknowledged writes across ${KILLS} kill -9s of the primary while it migrates a1 ⇄ a2`, { timeout: 30_000 + KILLS * 12_000 }, async () => {
  const startSeed = seed
  p = await startHandoffPair()
  const { primary, secondary } = p
  const writer = new Writer(join(p.dir, 'acked.log'))
  let next = 1
  let home = 'a1'
  const rounds: string[] = []
  for (let k = 0; k < KILLS; k++) {
    const point = crashPointOf(k)
    // Every fifth round from the second runs with the pair paused: the kill lands with A's entries unshipped, the restart ships them first.
    const paused = k % 5 === 1
    if (paused) await primary.client.call('replicate.pause', { pair: PAIR })
    if (point) {
      await primary.restart({ VVFS_CRASH_AT: point })
      await waitForPair(primary, PAIR, 'primary', journalAt(home))
    }
    writer.start(primary.file('vol'), next)
    await writer.firstAck(5000)
    await new Promise((r) => setTimeout(r, rand() * 300))
    const to = home === 'a1' ? 'a2' : 'a1'
    await migrate(primary, to)
    if (point) await diesAt(primary, point)
    else {
      await new Promise((r) => setTimeout(r, rand() * 700))
      await primary.kill9()
    }
    await writer.exited()
    const acked = writer.acked()
    await secondarySteady(secondary)
    const m = prefixOf(readImage(secondary.file(PAIR)), `round ${k} (seed ${startSeed}): secondary after a kill of the primary`)
    await primary.restart({})
    const held = prefixOf(readImage(primary.file('vol')), `round ${k} (seed ${startSeed}): restarted primary`)
    expect(held, `round ${k}: the restarted primary lost an acknowledged write`).toBeGreaterThanOrEqual(acked)
    expect(held).toBeLessThanOrEqual(acked + 1)
    expect(m, `round ${k}: the secondary holds write ${m}, the primary only 1..${held}`).toBeLessThanOrEqual(held)
    if (paused && (await pairStatus(primary, PAIR, 'primary'))?.state === 'paused') await primary.client.call('replicate.resume', { pair: PAIR })
    // The interrupted migration resumes and ends; the journal follows it.
    await migrationsDone(primary)
    const s = await waitForPair(primary, PAIR, 'primary', journalAt(to))
    rounds.push(`${point ?? 'random'}:${m}/${held}@e${s.epoch}`)
    home = to
    next = held + 1
  }
  // The seed and rounds first: a failure below is replayed with VVFS_REPL_SEED.
  console.log(`VVFS_REPL_SEED=${startSeed}: ${rounds.join(' ')}`)
  expectNoResync(primary)
  expect(expectSameImages(p), `rounds: ${rounds.join(' ')}`).toBeGreaterThan(0)
  // Some kills landed with writes still to ship (the paused rounds at least).
  expect(rounds.some((r) => Number(r.split(':')[1]!.split('/')[0]) < Number(r.split('/')[1]!.split('@')[0])), rounds.join(' ')).toBe(true)
})
