/**
 * Prefix consistency under power cuts (issue 13, "Must be shown", the way
 * power loss behaves: every byte either daemon had not synced is gone). The
 * rounds of prefix-kills.test.ts with both daemons in power-loss mode: after
 * a cut of the primary, the secondary or both, the secondary is exactly
 * writes 1..m, the primary still holds every write whose O_SYNC write
 * returned, and never less than the secondary (only entries synced at the
 * primary are shipped, and what was shipped is replayed from its journal);
 * after catch-up the images are identical.
 *
 * VVFS_REPL_CUTS sets the number of cuts (default 8).
 */
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { startPair, type Pair } from './daemons.js'
import { BLOCK } from './seq-blocks.mjs'
import { killDice, killRounds, removePair } from './seq-check.js'

const CUTS = Number(process.env.VVFS_REPL_CUTS ?? 8)
const SIZE = 4 * 1024 * 1024

let p: Pair | undefined
afterAll(() => removePair(p))

it(`the secondary is a prefix of the primary's synced writes across ${CUTS} power cuts of either daemon or both`, { timeout: 60_000 + CUTS * 20_000 }, async () => {
  p = await startPair({ powerLoss: true })
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: SIZE })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, as: 'cut', peerKey: p.keyFile })
  await killRounds(
    {
      primary,
      secondary,
      pair: 'cut',
      primaryFiles: () => [primary.file('vol')],
      secondaryFiles: () => [secondary.file('cut')],
      blocks: SIZE / BLOCK,
      kills: CUTS,
      ackLog: join(p.dir, 'acked.log'),
      rand: killDice(),
      verbose: process.env.VVFS_REPL_VERBOSE !== undefined,
    },
    (ok, why) => expect(ok, why).toBe(true),
  )
})
