/**
 * The journal limit with the peer stopped (issue 13.5, "Must be shown"):
 * the secondary daemon stops, the host keeps writing past the journal's
 * limit; policy bitmap: the pair goes behind (dirty extents instead of
 * entries) and host writes keep going; when the peer returns the marked
 * extents are resynced and the pair replicates again. The events are
 * replicating → behind → resyncing → replicating, and the images match.
 */
import { readFileSync } from 'node:fs'
import { afterAll, expect, it } from 'vitest'
import type { VvfsEvent } from '../../lib/control/schema.js'
import { ControlClient } from '../../lib/control/client.js'
import { cleanupAll } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair | undefined
let events: ControlClient | undefined

afterAll(async () => {
  events?.close()
  await cleanupAll()
  removePairDirs(p)
})

it('past the journal limit with the peer down: behind, host writes go on, resync when it returns, images match', { timeout: 90_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: 32 * MiB })
  events = await ControlClient.connect(primary.socket)
  const states: string[] = []
  events.onEvent((e: VvfsEvent) => {
    if (e.type === 'replication.state') states.push(String(e.to))
  })
  await events.call('events.subscribe', { types: ['replication.state'] })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, peerKey: p.keyFile, journalLimit: '256K' })
  await waitForPair(primary, 'vol', 'primary', caughtUp)

  await secondary.stop()
  // 2 MiB in 64 KiB writes spread over the volume: eight times the limit.
  const started = Date.now()
  for (let i = 0; i < 32; i++) writeAt(primary.file('vol'), ((i * 7) % 32) * MiB + (i % 4) * 65536, Buffer.alloc(65536, i + 1))
  expect(Date.now() - started, 'host writes waited for the stopped peer').toBeLessThan(20_000)
  const behind = await waitForPair(primary, 'vol', 'primary', (s) => s.state === 'behind')
  expect(behind.journal.mode).toBe('bitmap')
  expect(behind.journal.usedBytes).toBeLessThanOrEqual(256 * 1024)
  expect(behind.journal.dirtyExtents).toBeGreaterThan(0)
  expect(behind.consistent).toBe(true) // as far as the primary heard: the secondary is still the prefix it applied

  await secondary.restart()
  await waitForPair(primary, 'vol', 'primary', caughtUp, 60_000)
  const sec = await waitForPair(secondary, 'vol', 'secondary', (s) => s.consistent)
  expect(sec.state).toBe('consistent')
  expect(Buffer.compare(readFileSync(secondary.file('vol')), readFileSync(primary.file('vol')))).toBe(0)
  const after = states.slice(states.indexOf('replicating'))
  expect(after).toEqual(['replicating', 'behind', 'resyncing', 'replicating'])
})
