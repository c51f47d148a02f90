/**
 * The fallback of the journal's handoff (issue 13 build point 4): when the
 * old home's entries can no longer be shipped — here its log is deleted
 * while the daemon is down, after a handoff whose remainder the paused pair
 * had not shipped — the primary resyncs only the extents the handoff
 * recorded as touched by those entries (a bounded resync from the dirty
 * extents, not a full copy), says so (event replication.handoff_resync, the
 * state event to resyncing with the reason), and the images match after it.
 */
import { closeSync, constants, openSync, readdirSync, rmSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { cleanupAll } from '../helpers/daemon.js'
import { removePairDirs, caughtUp, waitForPair, type Pair } from './daemons.js'
import { migrate, migrationsDone, PAIR, readImage, startHandoffPair } from './handoff-fixture.js'

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

/** Synchronous 4 KiB writes (O_DIRECT|O_SYNC) of `fill` at the given byte offsets. */
function writeBlocks(file: string, offsets: number[], fill: number): void {
  const fd = openSync(file, constants.O_RDWR | constants.O_DIRECT | constants.O_SYNC)
  try {
    // O_DIRECT wants an aligned buffer: a fresh 4 KiB allocation from the pool is not always one, a large one is.
    const block = Buffer.alloc(64 * 1024, fill).subarray(0, CHUNK_SIZE)
    for (const at of offsets) writeSync(fd, block, 0, CHUNK_SIZE, at)
  } finally {
    closeSync(fd)
  }
}

it('entries of the old home that can no longer be shipped are resent by a resync of the extents they touched, and it says so', { timeout: 90_000 }, async () => {
  p = await startHandoffPair()
  const { primary, secondary } = p
  writeBlocks(primary.file('vol'), [0, 7 * CHUNK_SIZE], 1)
  await waitForPair(primary, PAIR, 'primary', caughtUp)
  await primary.client.call('replicate.pause', { pair: PAIR })
  // Not shipped: writes into extents 0 and 3 at a1, then the migration hands the journal over to a2.
  writeBlocks(primary.file('vol'), [CHUNK_SIZE, 3 * EXTENT_SIZE + 5 * CHUNK_SIZE, 3 * EXTENT_SIZE + 9 * CHUNK_SIZE], 2)
  await migrate(primary, 'a2')
  await migrationsDone(primary)
  const handed = await waitForPair(primary, PAIR, 'primary', (s) => s.home?.name === 'a2')
  expect(handed.home?.keptEpochs).toEqual([1, 2])
  expect(handed.lastApplied).toBeLessThan(handed.lastWritten)
  await primary.stop()
  // The old home's journal is lost while the daemon is down.
  const journals = join(primary.dir, 'state', 'journals')
  const epoch1 = readdirSync(journals).filter((n) => /^job-\d+$/.test(n))
  expect(epoch1).toHaveLength(1)
  rmSync(join(journals, epoch1[0]!), { recursive: true, force: true })
  const logFrom = primary.log().length
  await primary.restart({})
  await primary.client.call('replicate.resume', { pair: PAIR })
  const done = await waitForPair(primary, PAIR, 'primary', (s) => caughtUp(s) && s.home?.keptEpochs.length === 1)
  const log = primary.log().slice(logFrom)
  const said = log.split('\n').find((l) => l.includes('"event":"replication.handoff_resync"'))
  expect(said, 'the primary did not say it resyncs').toBeDefined()
  // Bounded: the two extents the lost entries touched, not the volume's eight.
  expect(JSON.parse(said!).extents).toBe(2)
  expect(done.sync.total).toBe(2 * EXTENT_SIZE)
  expect(log).toMatch(/"event":"replication.state"[^\n]*"to":"resyncing"[^\n]*can no longer be shipped/)
  expect(log).not.toContain('"event":"replication.full_resync"')
  expect(Buffer.compare(readImage(primary.file('vol')), readImage(secondary.file(PAIR))), 'images differ after the resync').toBe(0)
})
