/**
 * A kill -9 in the middle of a consistency group's resolve (issue
 * 13.6/13.7): one daemon runs with VVFS_CRASH_AT (lib/crash-points.ts) at a
 * step of `replicate resolve pg --discard local|peer` and kills itself
 * there. After its restart the group is resolved whole or not at all —
 * every volume of each side in the same role, never a mixed group — and
 * running the command again completes it: the images end byte-identical to
 * the kept side's, what ships bounded as in group-resolve.test.ts.
 *
 * --discard local, on the promoted side: killed before the resolve's
 * record, after its first volume turned read-only, after every volume
 * before the old primary is told: nothing resolved (both volumes writable,
 * still promoted); after the old primary was told: resolved (both volumes
 * the replica). --discard peer: the promoted side killed before the record
 * or after the old primary answered; the old primary killed after its
 * first volume turned read-only (it restarts demoted, whole) or after it
 * adopted the replica, before answering (a re-run gets its answer again).
 */
import { afterEach, describe, expect, it } from 'vitest'
import type { DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { filledWith, json, same, vvfs } from './failover-helpers.js'
import { diedAtCrashPoint, GROUP, groupSplit, LOCAL, PRIMARY, readOnly, shippedBound, shippedFloor, writable, type Write } from './group-fixture.js'
import { removePair } from './seq-check.js'

let p: Pair | undefined
afterEach(async () => {
  await removePair(p)
  p = undefined
})

/** Runs the resolve on the promoted side with `victim` set to die at `point`; returns once it died and restarted without it. */
async function resolveKilled(promoted: DaemonHandle, victim: DaemonHandle, discard: 'local' | 'peer', point: string): Promise<void> {
  await victim.restart({ VVFS_CRASH_AT: point })
  if (victim !== promoted) await waitForPair(promoted, GROUP, 'primary', (s) => s.state === 'split-brain' && (s.failover?.peer?.seenSecondsAgo ?? 9) < 2)
  await expect(promoted.client.call('replicate.resolve', { pair: GROUP, discard })).rejects.toThrow()
  await diedAtCrashPoint(victim)
  await victim.restart({})
}

/** Every volume of the promoted side still promoted and writable, the old primary's still its own: nothing resolved. */
async function notResolved(promoted: DaemonHandle, old: DaemonHandle): Promise<void> {
  expect(await pairStatus(promoted, GROUP, 'primary')).toMatchObject({ state: expect.stringMatching(/promoted|split-brain/), volume: LOCAL.join(','), failover: { role: 'promoted' } })
  expect(await pairStatus(promoted, GROUP, 'secondary')).toBeUndefined()
  for (const name of LOCAL) expect(writable(promoted.file(name)), `${name} still writable`).toBe(true)
  const there = await pairStatus(old, GROUP, 'primary')
  expect(there?.volume).toBe(PRIMARY.join(','))
}

/** What the old primary's pair shipped so far (its initial sync): a resolve --discard local's copy is counted from here. */
const shippedSoFar = async (d: DaemonHandle) => (await pairStatus(d, GROUP, 'primary'))!.bytesShipped!

/** The resolve finished: the replica side's volumes all read-only and byte-identical to the kept side's, the discarded writes gone. */
async function resolved(kept: { d: DaemonHandle; names: string[]; writes: Write[]; shippedBefore: number }, replica: { d: DaemonHandle; names: string[]; writes: Write[] }): Promise<void> {
  const done = await waitForPair(kept.d, GROUP, 'primary', (s) => caughtUp(s) && s.failover?.relation !== 'split-brain', 60_000)
  await waitForPair(replica.d, GROUP, 'secondary', (s) => s.consistent && s.lastApplied === done.lastApplied && s.volume === replica.names.join(','))
  kept.names.forEach((name, i) => expect(same(kept.d.file(name), replica.d.file(replica.names[i]!)), `${name} byte-identical`).toBe(true))
  for (const [, offset, length, byte] of replica.writes) expect(replica.names.some((name) => filledWith(replica.d.file(name), offset, length, byte)), `discarded write at ${offset}`).toBe(false)
  readOnly(replica.d, replica.names)
  const shipped = done.bytesShipped! - kept.shippedBefore
  expect(shipped).toBeGreaterThanOrEqual(shippedFloor(kept.writes, replica.writes))
  expect(shipped).toBeLessThanOrEqual(shippedBound(kept.writes, replica.writes))
}

describe('kill -9 mid group resolve --discard local (the promoted side becomes the replica again)', () => {
  for (const point of ['replication.resolve.before-record', 'replication.resolve.member', 'replication.resolve.before-peer'])
    it(`killed at ${point}: nothing resolved; the re-run resolves the whole group`, { timeout: 180_000 }, async () => {
      p = await startPair()
      const { primary, secondary } = p
      const { kept, discarded } = await groupSplit(p)
      const shippedBefore = await shippedSoFar(primary)
      await resolveKilled(secondary, secondary, 'local', point)
      await notResolved(secondary, primary)
      // Killed past the record: the restart said it undid the resolve.
      if (point !== 'replication.resolve.before-record') expect(secondary.log()).toMatch(/replication\.resolve_undone/)
      expect(json(vvfs(secondary)('replicate', 'resolve', GROUP, '--discard', 'local', '--to', `127.0.0.1:${p.primaryPort}`, '--json'))).toMatchObject({ role: 'secondary', volume: LOCAL.join(',') })
      await resolved({ d: primary, names: PRIMARY, writes: discarded, shippedBefore }, { d: secondary, names: LOCAL, writes: kept })
    })

  it('killed after the old primary was told: the restart finishes the resolve, every volume the replica', { timeout: 180_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const { kept, discarded } = await groupSplit(p)
    const shippedBefore = await shippedSoFar(primary)
    await resolveKilled(secondary, secondary, 'local', 'replication.resolve.after-peer')
    expect(secondary.log()).toMatch(/replication\.resolve_finished/)
    expect(await pairStatus(secondary, GROUP, 'primary')).toBeUndefined()
    for (const name of LOCAL) expect(writable(secondary.file(name)), `${name} a replica`).toBe(false)
    await resolved({ d: primary, names: PRIMARY, writes: discarded, shippedBefore }, { d: secondary, names: LOCAL, writes: kept })
  })
})

describe('kill -9 mid group resolve --discard peer (the old primary becomes the replica)', () => {
  const cases: { who: 'promoted' | 'old primary'; point: string }[] = [
    { who: 'promoted', point: 'replication.resolve.before-record' },
    { who: 'old primary', point: 'replication.take-over.member' },
    { who: 'old primary', point: 'replication.take-over.adopted' },
    { who: 'promoted', point: 'replication.resolve.after-peer' },
  ]
  for (const { who, point } of cases)
    it(`the ${who} killed at ${point}: each side whole; the re-run resolves the group, copying what the old primary changed`, { timeout: 180_000 }, async () => {
      p = await startPair()
      const { primary, secondary } = p
      const { kept, discarded } = await groupSplit(p)
      await resolveKilled(secondary, who === 'promoted' ? secondary : primary, 'peer', point)
      // The promoted side: still promoted, every volume writable (its volumes never change role in this direction).
      for (const name of LOCAL) expect(writable(secondary.file(name)), `${name} writable`).toBe(true)
      // The old primary: its two volumes alike — both its own (still primary) or both read-only (demoted or the replica).
      const old = PRIMARY.map((name) => writable(primary.file(name)))
      expect(old[0], 'the old primary\'s volumes in one role').toBe(old[1])
      if (point === 'replication.take-over.member') expect(old[0], 'killed after the record: demoted whole').toBe(false)
      expect(json(vvfs(secondary)('replicate', 'resolve', GROUP, '--discard', 'peer', '--to', `127.0.0.1:${p.primaryPort}`, '--json'))).toMatchObject({ role: 'primary', volume: LOCAL.join(',') })
      await resolved({ d: secondary, names: LOCAL, writes: kept, shippedBefore: 0 }, { d: primary, names: PRIMARY, writes: discarded })
    })
})
