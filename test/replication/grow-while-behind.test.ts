/**
 * A volume grown while its pair is behind (issue 13.5 with a resize): the
 * journal is past its limit, so the grow and the writes past the old end
 * are dirty marks, not entries. When the peer returns, the resync must make
 * the secondary that size before it copies extents past its old end — it
 * copied them first and the secondary refused them (OUT_OF_RANGE), the
 * resync failing on every retry. The images match after it.
 */
import { readFileSync } from 'node:fs'
import { afterAll, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair | undefined

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

it('a grow and writes past the old end while behind: the resync sizes the secondary first; images match', { timeout: 90_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: 8 * MiB })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, peerKey: p.keyFile, journalLimit: '256K' })
  await waitForPair(primary, 'vol', 'primary', caughtUp)

  await secondary.stop()
  for (let i = 0; i < 8; i++) writeAt(primary.file('vol'), i * MiB, Buffer.alloc(65536, i + 1))
  await waitForPair(primary, 'vol', 'primary', (s) => s.state === 'behind')
  await primary.client.call('volume.resize', { name: 'vol', size: 24 * MiB })
  for (let i = 8; i < 24; i += 3) writeAt(primary.file('vol'), i * MiB + 4096, Buffer.alloc(65536, i + 1))

  await secondary.restart()
  await waitForPair(primary, 'vol', 'primary', (s) => caughtUp(s) && s.state === 'replicating' && s.journal.dirtyExtents === 0, 60_000)
  await waitForPair(secondary, 'vol', 'secondary', (s) => s.consistent)
  const copy = (await secondary.client.call('volume.list', {})).volumes.find((v) => v.name === 'vol')
  expect(copy?.size).toBe(24 * MiB)
  expect(Buffer.compare(readFileSync(secondary.file('vol')), readFileSync(primary.file('vol')))).toBe(0)
})
