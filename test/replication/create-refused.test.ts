/**
 * A CREATE the secondary refuses makes nothing there: every volume name of
 * the pair is checked before any replica volume is made (before 2026-12-04 a
 * group whose second name was taken left its first replica behind, an
 * orphan read-only volume, on each try).
 */
import { afterAll, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { removePairDirs, startPair, type Pair } from './daemons.js'

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

it('a group whose second replica name is taken on the secondary is refused there whole: no replica volume is made', { timeout: 60_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  for (const name of ['red', 'blue']) await primary.client.call('volume.create', { name, size: '4M' })
  // Taken on the secondary by a volume of its own, not a replica.
  await secondary.client.call('volume.create', { name: 'pg-blue', size: '4M' })
  await primary.client.call('replicate.start', { volume: 'red', also: ['blue'], group: 'pg', to: p.secondaryAddress, peerKey: p.keyFile })
  // The primary's CREATE is refused (and tried again): wait for the secondary to have refused it at least twice.
  const end = Date.now() + 20_000
  while ((secondary.log().match(/VOLUME_EXISTS/g) ?? []).length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 100))
  expect((secondary.log().match(/VOLUME_EXISTS/g) ?? []).length).toBeGreaterThanOrEqual(2)
  const names = (await secondary.client.call('volume.list', {})).volumes.map((v) => v.name)
  expect(names).toEqual(['pg-blue'])
})
