/**
 * Consistency groups under kill -9 (issue 13.6, "Must be shown"): two
 * volumes replicated as one group share one sequence; a writer writes them
 * alternately (write s to volume s % 2, numbered blocks as in the prefix
 * test) while kill -9 lands on the primary, the secondary or both. After
 * every restart both secondaries together are the same prefix 1..m of the
 * combined sequence — never volume 0 at one point in time and volume 1 at
 * another — the primary holds every acknowledged write, and after catch-up
 * the images are byte-identical (seq-check.ts, killRounds).
 *
 * VVFS_REPL_GROUP_KILLS sets the number of kill points (default 8).
 */
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { pairStatus, startPair, type Pair } from './daemons.js'
import { BLOCK } from './seq-blocks.mjs'
import { killDice, killRounds, removePair } from './seq-check.js'

const KILLS = Number(process.env.VVFS_REPL_GROUP_KILLS ?? 8)
const SIZE = 4 * 1024 * 1024

let p: Pair | undefined
afterAll(() => removePair(p))

it(`two volumes of a group are one prefix of their combined writes across ${KILLS} kill -9s`, { timeout: 60_000 + KILLS * 15_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  for (const name of ['red', 'blue']) await primary.client.call('volume.create', { name, size: SIZE })
  // More than one volume needs a group name.
  await expect(primary.client.call('replicate.start', { volume: 'red', also: ['blue'], to: p.secondaryAddress, peerKey: p.keyFile })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
  const started = await primary.client.call('replicate.start', { volume: 'red', also: ['blue'], group: 'pg', to: p.secondaryAddress, peerKey: p.keyFile })
  expect(started).toMatchObject({ pair: 'pg', group: 'pg', volume: 'red,blue', role: 'primary' })
  // One volume cannot be in two pairs.
  await expect(primary.client.call('replicate.start', { volume: 'blue', to: p.secondaryAddress, peerKey: p.keyFile })).rejects.toMatchObject({ code: 'JOB_STATE' })
  await killRounds(
    {
      primary,
      secondary,
      pair: 'pg',
      primaryFiles: () => [primary.file('red'), primary.file('blue')],
      secondaryFiles: () => [secondary.file('pg-red'), secondary.file('pg-blue')],
      blocks: SIZE / BLOCK,
      kills: KILLS,
      ackLog: join(p.dir, 'acked.log'),
      rand: killDice(),
      verbose: process.env.VVFS_REPL_VERBOSE !== undefined,
    },
    (ok, why) => expect(ok, why).toBe(true),
  )
  // Group-level status on both sides.
  expect(await pairStatus(secondary, 'pg', 'secondary')).toMatchObject({ group: 'pg', volume: 'pg-red,pg-blue', consistent: true })
})
