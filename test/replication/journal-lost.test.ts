/**
 * A pair whose current journal is gone (the state directory lost it; the
 * same path a relay takes when it adopts a replicated volume it took over,
 * test/cluster/replicated-takeover.test.ts): the primary starts the pair
 * over as a takeover epoch — numbered past anything the lost journal gave
 * out, never again from 1 — and a resync of the whole volume brings the
 * secondary to the primary's image, changes the lost journal never shipped
 * and a discard of replicated data included.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { TAKEOVER_SEQ_STRIDE } from '../../lib/replication/epoch.js'
import { cleanupAll, removeDir } from '../helpers/daemon.js'
import { writeAndFsync } from '../helpers/synced-write.js'
import { caughtUp, waitForPair, type Pair } from './daemons.js'
import { diesAt, PAIR, readImage, startHandoffPair } from './handoff-fixture.js'

let p: Pair | undefined
const pairs: Pair[] = []
afterAll(async () => {
  await cleanupAll()
  for (const q of pairs) for (const d of [q.primary.dir, q.secondary.dir, q.dir]) removeDir(d)
})

it.each([
  ['a kill -9', false],
  ['a power cut', true],
])('a lost journal is started over as a new epoch past its numbers (also after %s before its record is committed, and after it), and a whole-volume resync makes the images equal', { timeout: 90_000 }, async (_crash, powerLoss) => {
  p = await startHandoffPair({ powerLoss })
  pairs.push(p)
  const { primary, secondary } = p
  const file = primary.file('vol')
  for (let i = 0; i < 8; i++) await writeAndFsync(file, Buffer.alloc(CHUNK_SIZE, i + 1), i * EXTENT_SIZE)
  const before = await waitForPair(primary, PAIR, 'primary', (s) => caughtUp(s) && s.lastWritten >= 8)
  await primary.client.call('replicate.pause', { pair: PAIR })
  // Never shipped: a write, and a discard of an extent the secondary holds.
  await writeAndFsync(file, Buffer.alloc(CHUNK_SIZE, 0xee), 2 * EXTENT_SIZE + CHUNK_SIZE)
  execFileSync('fallocate', ['--punch-hole', '--keep-size', '--offset', String(5 * EXTENT_SIZE), '--length', String(EXTENT_SIZE), file])
  await writeAndFsync(file, Buffer.alloc(0), 0)
  await primary.stop()
  const journals = join(primary.dir, 'state', 'journals')
  for (const n of readdirSync(journals)) rmSync(join(journals, n), { recursive: true, force: true })
  // A kill -9 between writing the new epoch's log and committing its record: the restart starts over (the chain is still epoch 1's).
  // (restart() fails once the daemon dies before its socket is up; waited for by the exit, whatever the load makes of the socket's timeout.)
  await primary.restart({ VVFS_CRASH_AT: 'replication.takeover.prepared' }).catch(() => undefined)
  await diesAt(primary, 'replication.takeover.prepared', 60_000)
  await primary.crash() // under power loss: what the new epoch's log had not synced is gone too
  expect(readdirSync(journals)).toHaveLength(1)
  const logFrom = primary.log().length
  await primary.restart({})
  const taken = await waitForPair(primary, PAIR, 'primary', (s) => s.state === 'paused')
  expect(taken.epoch).toBe(2)
  expect(primary.log().slice(logFrom)).toMatch(/"event":"replication.taken_over"/)
  // A crash once the takeover epoch is committed: its log (synced before the commit) is there at the restart.
  await primary.crash()
  const againFrom = primary.log().length
  await primary.restart({})
  expect((await waitForPair(primary, PAIR, 'primary', (s) => s.state === 'paused')).epoch).toBe(2)
  expect(primary.log().slice(againFrom)).not.toMatch(/"event":"replication.(taken_over|handoff_abandoned)"/)
  await primary.client.call('replicate.resume', { pair: PAIR })
  await writeAndFsync(file, Buffer.alloc(CHUNK_SIZE, 0x77), 6 * EXTENT_SIZE)
  const done = await waitForPair(primary, PAIR, 'primary', (s) => caughtUp(s) && s.lastWritten > TAKEOVER_SEQ_STRIDE)
  expect(done.lastApplied).toBeGreaterThan(before.lastApplied)
  expect(done.lag.entries).toBe(0)
  await waitForPair(secondary, PAIR, 'secondary', (s) => s.consistent && s.lastApplied === done.lastApplied)
  const copy = readImage(secondary.file(PAIR))
  expect(Buffer.compare(readImage(file), copy), 'images differ after the resync').toBe(0)
  expect(copy.subarray(5 * EXTENT_SIZE, 6 * EXTENT_SIZE).every((b) => b === 0)).toBe(true)
  expect(copy[2 * EXTENT_SIZE + CHUNK_SIZE]).toBe(0xee)
})

it('at start, journal logs of pairs that are stopped or gone from the catalog are deleted; the live pair\'s stays', { timeout: 60_000 }, async () => {
  const { primary } = p!
  await primary.stop()
  const journals = join(primary.dir, 'state', 'journals')
  const live = readdirSync(journals)
  for (const n of ['job-9999', 'job-9999.e2']) mkdirSync(join(journals, n))
  await primary.restart({})
  expect(readdirSync(journals)).toEqual(live)
  await waitForPair(primary, PAIR, 'primary', caughtUp)
})
