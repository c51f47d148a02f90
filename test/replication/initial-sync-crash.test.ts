/**
 * An initial sync survives crashes of either daemon in its middle (issue
 * 13.2: "a resumable initial sync … survives kill -9 of either side"). The
 * sync's data goes straight into the secondary's volumes, durable only at a
 * RESYNC_FLUSH answered by the same incarnation of the secondary daemon
 * (primary.ts, applier.ts); an extent's dirty mark is cleared only then. So
 * a kill -9 or a power cut of the secondary between its answers to the data
 * and the flush — the data lost, or a restarted daemon answering the flush —
 * leaves those extents marked, and the sync copies them again. Here: a kill
 * -9 of the secondary, a power cut of the secondary and a power cut of the
 * primary, each in the middle of a copy pass (some extents flushed, some
 * only answered); the sync then completes and the images are byte-identical.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { afterAll, expect, it } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { removePair } from './seq-check.js'

const MiB = 1024 * 1024
/** More than two flush intervals (64 MiB) of allocated data. */
const SIZE = 160 * MiB
/** Slow enough that a crash lands mid-pass, mostly between requests (the copy waits on the rate). */
const RATE = '24M'

let p: Pair | undefined
afterAll(() => removePair(p))

/** Waits until a new copy pass (its counter below `before`) has copied more than half its extents; null if the sync finished first. */
async function midPass(primary: DaemonHandle, before: number): Promise<ReplicationInfo | null> {
  let restarted = false
  const s = await waitForPair(primary, 'vol', 'primary', (s) => {
    if (s.state === 'replicating' && s.consistent && s.journal.dirtyExtents === 0) return true
    if (s.state !== 'syncing' || s.link !== 'up') return false
    if (s.sync.copied < before) restarted = true
    return restarted && s.sync.total > 0 && s.sync.copied >= 0.55 * s.sync.total
  }, 60_000)
  return s.state === 'syncing' ? s : null
}

it('an initial sync interrupted by kill -9 and power cuts of the secondary and of the primary completes with byte-identical images', { timeout: 180_000 }, async () => {
  p = await startPair({ powerLoss: true })
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: SIZE })
  // Random data, synced on the primary: every extent allocated, and a power cut there keeps it.
  execFileSync('dd', ['if=/dev/urandom', `of=${primary.file('vol')}`, 'bs=1M', `count=${SIZE / MiB}`, 'oflag=direct', 'conv=notrunc,fsync'], { stdio: 'ignore' })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, peerKey: p.keyFile, rate: RATE })

  const crashes: [string, () => Promise<void>, DaemonHandle][] = [
    ['kill -9 of the secondary', () => secondary.kill9(), secondary],
    ['power cut of the secondary', () => secondary.powerCut().then(() => undefined), secondary],
    ['power cut of the primary', () => primary.powerCut().then(() => undefined), primary],
  ]
  let before = Infinity
  const seen: string[] = []
  for (const [what, crash, victim] of crashes) {
    const s = await midPass(primary, before)
    if (!s) break
    seen.push(`${what} at ${(s.sync.copied / MiB).toFixed(0)} of ${(s.sync.total / MiB).toFixed(0)} MiB`)
    await crash()
    await victim.restart()
    before = victim === primary ? Infinity : s.sync.copied
  }
  await waitForPair(primary, 'vol', 'primary', (s) => caughtUp(s) && s.journal.dirtyExtents === 0, 120_000)
  await waitForPair(secondary, 'vol', 'secondary', (s) => s.consistent)
  // Byte-identical after a clean restart of the secondary too (nothing only in its memory).
  await secondary.restart()
  const copy = readFileSync(secondary.file('vol'))
  const original = readFileSync(primary.file('vol'))
  expect(copy.length).toBe(SIZE)
  const differing: number[] = []
  for (let at = 0; at < SIZE; at += MiB) if (!copy.subarray(at, at + MiB).equals(original.subarray(at, at + MiB))) differing.push(at / MiB)
  expect(differing, `extents that differ after ${seen.join(', ')}`).toEqual([])
  expect(await pairStatus(secondary, 'vol', 'secondary')).toMatchObject({ consistent: true })
  // Each crash cut a copy pass short (a crash of the secondary ends the pass: its unflushed copies are sent again).
  expect(seen, seen.join(', ')).toHaveLength(3)
})

/**
 * The same-incarnation rule alone: a copy slow enough that the primary is
 * mostly waiting on the rate, nothing on the wire, when the secondary loses
 * power. Its next requests wait for the link and reach the restarted daemon,
 * which answers them and would answer a flush — but the extents it answered
 * before the cut were lost. The primary sees the incarnation change and
 * copies them again (without the rule the sync "completed" with them lost).
 */
it('a secondary restarted between its answers to copied data and the flush: that data is copied again', { timeout: 120_000 }, async () => {
  await removePair(p)
  p = await startPair({ powerLoss: true })
  const { primary, secondary } = p
  const size = 40 * MiB // less than one flush interval: one flush, at the end
  await primary.client.call('volume.create', { name: 'vol', size })
  execFileSync('dd', ['if=/dev/urandom', `of=${primary.file('vol')}`, 'bs=1M', `count=${size / MiB}`, 'oflag=direct', 'conv=notrunc,fsync'], { stdio: 'ignore' })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, peerKey: p.keyFile, rate: '6M' })
  const s = await midPass(primary, Infinity)
  expect(s, 'the sync finished before the cut').not.toBeNull()
  await secondary.powerCut()
  await secondary.restart()
  await waitForPair(primary, 'vol', 'primary', (s) => caughtUp(s) && s.journal.dirtyExtents === 0, 90_000)
  await waitForPair(secondary, 'vol', 'secondary', (s) => s.consistent)
  await secondary.restart()
  const copy = readFileSync(secondary.file('vol'))
  const original = readFileSync(primary.file('vol'))
  const differing: number[] = []
  for (let at = 0; at < size; at += MiB) if (!copy.subarray(at, at + MiB).equals(original.subarray(at, at + MiB))) differing.push(at / MiB)
  expect(differing, 'extents that differ').toEqual([])
})
