/**
 * Split-brain of a consistency group, resolved in one command (issue
 * 13.6/13.7): a forced promote of the group with writes on both sides, on
 * both volumes, is a split-brain shown for the group on both daemons;
 * `replicate resolve G --discard peer` on the promoted side makes every
 * volume of the old primary the replica (its changes since the promote
 * discarded), `--discard local` makes every volume of the promoted side the
 * replica again (its changes discarded). Either way the images end
 * byte-identical to the kept side's, what ships is at most what was written
 * plus one extent per extent touched (per-extent copies, never a full copy),
 * one `resolved` event names the whole group, and status shows the group
 * consistent again. Kill -9 mid-resolve: group-resolve-crash.test.ts.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { ControlClient } from '../../lib/control/client.js'
import type { VvfsEvent } from '../../lib/control/schema.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { filledWith, json, same, vvfs } from './failover-helpers.js'
import { GROUP, groupSplit, LOCAL, PRIMARY, readOnly, shippedBound, shippedFloor, splitBoth, write, type Write } from './group-fixture.js'
import { removePair } from './seq-check.js'

const MiB = 1024 * 1024

let p: Pair | undefined
const subscriptions: ControlClient[] = []
afterAll(async () => {
  for (const c of subscriptions) c.close()
  await removePair(p)
})

/** The `replication.failover` events of one daemon, from now on. */
async function failoverEvents(d: DaemonHandle): Promise<VvfsEvent[]> {
  const c = await ControlClient.connect(d.socket)
  subscriptions.push(c)
  const seen: VvfsEvent[] = []
  c.onEvent((e: VvfsEvent) => {
    if (e.type === 'replication.failover') seen.push(e)
  })
  await c.call('events.subscribe', { types: ['replication.failover'] })
  return seen
}

describe('group resolve', () => {
  it('a forced group promote, writes on both sides: split-brain for the group; resolve --discard peer makes both old-primary volumes the replicas, shipping only what differs', { timeout: 180_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const { kept, discarded } = await groupSplit(p)
    const events = await failoverEvents(secondary)
    const resolved = json(vvfs(secondary)('replicate', 'resolve', GROUP, '--discard', 'peer', '--json'))
    expect(resolved).toMatchObject({ pair: GROUP, role: 'primary', group: GROUP, volume: LOCAL.join(',') })
    const done = await waitForPair(secondary, GROUP, 'primary', (s) => caughtUp(s) && s.lastApplied > 0 && s.epoch === 2)
    PRIMARY.forEach((name, i) => expect(same(primary.file(name), secondary.file(LOCAL[i]!)), `${name} after the resolve`).toBe(true))
    for (const [, offset, length, byte] of discarded) expect(PRIMARY.some((name) => filledWith(primary.file(name), offset, length, byte)), `the old primary's write at ${offset}`).toBe(false)
    // Entries for what the kept side wrote, a copy of each extent either side touched at most: never a full copy.
    const bound = shippedBound(kept, discarded)
    expect(done.bytesShipped).toBeGreaterThanOrEqual(shippedFloor(kept, discarded))
    expect(done.bytesShipped).toBeLessThanOrEqual(bound)
    readOnly(primary, PRIMARY)
    const replica = await waitForPair(primary, GROUP, 'secondary', (s) => s.consistent && s.epoch === 2 && s.failover?.relation !== 'split-brain')
    expect(replica).toMatchObject({ group: GROUP, volume: PRIMARY.join(','), lastApplied: done.lastApplied })
    expect(await pairStatus(primary, GROUP, 'primary')).toBeUndefined()
    expect(events.filter((e) => e.action === 'resolved')).toMatchObject([{ pair: GROUP, volume: LOCAL.join(',') }])
  })

  it('the old side promoted in turn, both written: resolve --discard local makes every promoted volume the replica again, its changes discarded', { timeout: 180_000 }, async () => {
    // The second daemon is now the group's primary (epoch 2), the first its replica.
    const primary = p!.secondary
    const replica = p!.primary
    await primary.kill9()
    await waitForPair(replica, GROUP, 'secondary', (s) => (s.failover?.peer?.seenSecondsAgo ?? 0) > 3.5, 15_000)
    expect(json(vvfs(replica)('replicate', 'promote', GROUP, '--json'))).toMatchObject({ state: 'promoted', volume: PRIMARY.join(','), epoch: 3 })
    // Into extents allocated whole on the kept side (groupSplit's first writes): each is copied back whole.
    const discarded: Write[] = [
      [replica.file(PRIMARY[0]!), 4 * MiB + 8192, 4096, 0xc1],
      [replica.file(PRIMARY[1]!), 12 * MiB + 16384, 16384, 0xc2],
    ]
    write(discarded)
    await primary.restart()
    const kept: Write[] = [
      [primary.file(LOCAL[0]!), 3 * MiB, 4096, 0xd1],
      [primary.file(LOCAL[1]!), 11 * MiB + 4096, 8192, 0xd2],
    ]
    write(kept)
    await splitBoth(replica, primary, { promoted: PRIMARY, other: LOCAL })
    const before = (await pairStatus(primary, GROUP, 'primary'))!.bytesShipped

    const events = await failoverEvents(replica)
    expect(vvfs(primary)('replicate', 'resolve', GROUP, '--discard', 'peer').err).toMatch(/FAILOVER_STATE/)
    expect(json(vvfs(replica)('replicate', 'resolve', GROUP, '--discard', 'local', '--json'))).toMatchObject({ pair: GROUP, role: 'secondary', volume: PRIMARY.join(',') })
    const done = await waitForPair(primary, GROUP, 'primary', (s) => caughtUp(s) && s.epoch === 2 && s.failover?.relation !== 'split-brain')
    PRIMARY.forEach((name, i) => expect(same(replica.file(name), primary.file(LOCAL[i]!)), `${name} after the resolve`).toBe(true))
    for (const [, offset, length, byte] of discarded) expect(PRIMARY.some((name) => filledWith(replica.file(name), offset, length, byte)), `the promoted side's write at ${offset}`).toBe(false)
    const bound = shippedBound(kept, discarded)
    expect(done.bytesShipped! - before!).toBeGreaterThanOrEqual(shippedFloor(kept, discarded))
    expect(done.bytesShipped! - before!).toBeLessThanOrEqual(bound)
    readOnly(replica, PRIMARY)
    expect(await waitForPair(replica, GROUP, 'secondary', (s) => s.consistent && s.epoch === 2 && s.lastApplied === done.lastApplied)).toMatchObject({ group: GROUP, volume: PRIMARY.join(',') })
    expect(await pairStatus(replica, GROUP, 'primary')).toBeUndefined()
    expect(events.filter((e) => e.action === 'resolved')).toMatchObject([{ pair: GROUP, volume: PRIMARY.join(',') }])
  })
})
