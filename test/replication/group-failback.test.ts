/**
 * Failback of a consistency group (issue 13.6/13.7): an orderly demote of
 * the group on its primary, promote on the secondary (no --force: the
 * primary reports itself demoted), writes on both volumes there, reverse:
 * the old primary's two volumes become the group's replicas, only what was
 * written since the promote ships (at most its bytes plus one extent per
 * extent touched — never a full copy), the images of both volumes match,
 * and no split-brain is reported. A group's split-brain and its resolve:
 * group-resolve.test.ts.
 */
import { afterAll, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { caughtUp, startPair, waitForPair, type Pair } from './daemons.js'
import { json, same, vvfs } from './failover-helpers.js'
import { GROUP, groupOfFourExtents, LOCAL, PRIMARY, readOnly } from './group-fixture.js'
import { removePair } from './seq-check.js'

const MiB = 1024 * 1024

let p: Pair | undefined
afterAll(() => removePair(p))

const splitLogged = (d: DaemonHandle) => d.log().includes('replication.split_brain')

it('demote, promote, write, reverse a group: both volumes together; ships at most what was written plus one extent per extent touched; images identical; no split-brain', { timeout: 120_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  // Four allocated extents per volume: a full copy would ship 8 MiB.
  await groupOfFourExtents(p)
  // A write on each just before the demote: demote lets the secondary apply them first.
  PRIMARY.forEach((name, i) => writeAt(primary.file(name), 14 * MiB, Buffer.alloc(4096, 0xd0 + i)))
  const demoted = json(vvfs(primary)('replicate', 'demote', GROUP, '--json'))
  expect(demoted).toMatchObject({ pair: GROUP, state: 'demoted', role: 'secondary', group: GROUP, volume: PRIMARY.join(',') })
  readOnly(primary, PRIMARY)
  await waitForPair(secondary, GROUP, 'secondary', (s) => s.failover?.peer?.role === 'demoted')
  const promoted = json(vvfs(secondary)('replicate', 'promote', GROUP, '--json'))
  expect(promoted).toMatchObject({ pair: GROUP, state: 'promoted', group: GROUP, volume: LOCAL.join(','), epoch: 2 })
  // The demote drained: the group was promoted at the old primary's last number, both volumes with the last writes.
  expect(promoted.promotedAt).toBe(demoted.lastWritten)
  PRIMARY.forEach((name, i) => expect(same(primary.file(name), secondary.file(LOCAL[i]!)), `${name} before the writes`).toBe(true))

  // Writes on the new primary: two ranges in two extents of one volume, two in one extent of the other.
  const writes: [string, number, number][] = [
    [LOCAL[0]!, 1 * MiB + 4096, 8192],
    [LOCAL[0]!, 5 * MiB + 12288, 65536],
    [LOCAL[1]!, 1 * MiB + 64 * 1024, 4096],
    [LOCAL[1]!, 1 * MiB + 4096, 4096],
  ]
  for (const [name, offset, length] of writes) writeAt(secondary.file(name), offset, Buffer.alloc(length, 0xcd))
  const written = writes.reduce((a, [, , l]) => a + l, 0)
  const touched = new Set(writes.map(([name, o]) => `${name}:${Math.floor(o / EXTENT_SIZE)}`)).size

  const reversed = json(vvfs(secondary)('replicate', 'reverse', GROUP, '--json'))
  expect(reversed).toMatchObject({ pair: GROUP, role: 'primary', group: GROUP, volume: LOCAL.join(',') })
  readOnly(primary, PRIMARY)
  const done = await waitForPair(secondary, GROUP, 'primary', (s) => caughtUp(s) && s.lastApplied > 0)
  expect(done.bytesShipped).toBeGreaterThanOrEqual(written)
  expect(done.bytesShipped).toBeLessThanOrEqual(written + touched * EXTENT_SIZE)
  PRIMARY.forEach((name, i) => expect(same(primary.file(name), secondary.file(LOCAL[i]!)), `${name} after the reverse`).toBe(true))
  // The old primary is the group's read-only replica, consistent at the new epoch.
  const replica = await waitForPair(primary, GROUP, 'secondary', (s) => s.consistent && s.epoch === 2)
  expect(replica).toMatchObject({ group: GROUP, volume: PRIMARY.join(','), lastApplied: done.lastApplied })
  // Later writes ship in the new direction, to both volumes.
  LOCAL.forEach((name, i) => writeAt(secondary.file(name), 12 * MiB, Buffer.alloc(4096, 0xe0 + i)))
  await waitForPair(secondary, GROUP, 'primary', (s) => caughtUp(s) && s.lastWritten > done.lastWritten)
  PRIMARY.forEach((name, i) => expect(same(primary.file(name), secondary.file(LOCAL[i]!)), `${name} after later writes`).toBe(true))
  for (const d of [primary, secondary]) {
    expect(splitLogged(d)).toBe(false)
    for (const s of (await d.client.call('replicate.list', {})).pairs) expect(s.failover?.relation).not.toBe('split-brain')
  }
})
