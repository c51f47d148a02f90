/**
 * A kill -9 in the middle of a consistency group's promote (issue 13.6):
 * the secondary runs with VVFS_CRASH_AT (lib/crash-points.ts) at a step of
 * the promote and kills itself there. Before the promote's record: after
 * the restart no volume is promoted (both still replicas, the same prefix);
 * after the first volume was made writable, before the second: after the
 * restart every volume is promoted, at the group's one applied number.
 * The same for a group's demote on the primary: killed after its first
 * volume turned read-only, the restart ends it demoted whole (the defect:
 * that volume stayed read-only, the other writable, the pair running).
 */
import { afterEach, expect, it } from 'vitest'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { prefixOf, removePair } from './seq-check.js'
import { BLOCKS, checkPromoted, diedAtCrashPoint, GROUP, groupOfFourExtents, groupWritten, images, LOCAL, PRIMARY, statusJson, writable } from './group-fixture.js'

let p: Pair | undefined
afterEach(async () => {
  await removePair(p)
  p = undefined
})

it('kill -9 in the middle of a group promote: before its record no volume is promoted, after the first volume every one is', { timeout: 120_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  const writer = await groupWritten(p)
  await writer.stop()
  await waitForPair(primary, GROUP, 'primary', caughtUp)
  const m = prefixOf(images(secondary), BLOCKS, 'secondary before the promote')
  const applied = (await pairStatus(secondary, GROUP, 'secondary'))!.lastApplied

  // Killed before the promote's record: nothing changed.
  await secondary.restart({ VVFS_CRASH_AT: 'replication.promote.before-record' })
  await expect(secondary.client.call('replicate.promote', { pair: GROUP, force: true })).rejects.toThrow()
  await diedAtCrashPoint(secondary)
  await secondary.restart({})
  expect(await pairStatus(secondary, GROUP, 'secondary')).toMatchObject({ group: GROUP, volume: LOCAL.join(','), lastApplied: applied })
  expect(await pairStatus(secondary, GROUP, 'primary')).toBeUndefined()
  for (const name of LOCAL) expect(writable(secondary.file(name)), `${name} still a replica`).toBe(false)
  expect(prefixOf(images(secondary), BLOCKS, 'secondary after a kill before the record')).toBe(m)

  // Killed after the first volume was made writable, before the second: the restart finishes both.
  await secondary.restart({ VVFS_CRASH_AT: 'replication.promote.member' })
  await expect(secondary.client.call('replicate.promote', { pair: GROUP, force: true })).rejects.toThrow()
  await diedAtCrashPoint(secondary)
  await secondary.restart({})
  expect(checkPromoted(secondary, applied)).toBe(m)
  expect(await pairStatus(secondary, GROUP, 'secondary')).toBeUndefined()
})

it('kill -9 in the middle of a group demote, after its first volume turned read-only: the restart ends every volume demoted, never one', { timeout: 120_000 }, async () => {
  p = await startPair()
  const { primary } = p
  await groupOfFourExtents(p)
  await primary.restart({ VVFS_CRASH_AT: 'replication.demote.member' })
  await waitForPair(primary, GROUP, 'primary', caughtUp)
  await expect(primary.client.call('replicate.demote', { pair: GROUP })).rejects.toThrow()
  await diedAtCrashPoint(primary)
  await primary.restart({})
  for (const name of PRIMARY) expect(writable(primary.file(name)), `${name} read-only`).toBe(false)
  expect(statusJson(primary, GROUP)).toMatchObject([{ state: 'demoted', volume: PRIMARY.join(',') }])
})
