/**
 * A consistency group's promote (issue 13.6/13.7): two volumes replicated as
 * one group, written alternately by the numbered writer (write s to volume
 * s % 2, seq-check.ts). After a kill -9 of the primary, `replicate promote G`
 * on the secondary makes both volumes writable together at the group's one
 * applied number: both are the same prefix 1..m of the combined sequence
 * (prefixOf throws if one volume is ahead of the other), and the promote
 * survives a kill -9. Status shows the group on both sides. Resolve with
 * the old primary down is refused, changing nothing. A forced promote
 * while the primary still ships reads the applied number only once the
 * pair is fenced and settled: no batch lands past it. Demote and reverse of
 * a group: group-failback.test.ts; a kill -9 mid-promote:
 * group-promote-crash.test.ts; a group's resolve: group-resolve*.test.ts.
 */
import { readFileSync } from 'node:fs'
import { afterEach, describe, expect, it } from 'vitest'
import { writeAt } from '../helpers/files.js'
import { startPair, waitForPair, type Pair } from './daemons.js'
import { filledWith, json, vvfs } from './failover-helpers.js'
import { BLOCK } from './seq-blocks.mjs'
import { prefixOf, secondarySteady, removePair } from './seq-check.js'
import { BLOCKS, checkPromoted, GROUP, groupWritten, LOCAL, statusJson, writable } from './group-fixture.js'

let p: Pair | undefined
afterEach(async () => {
  await removePair(p)
  p = undefined
})

describe('a consistency group promoted on the secondary', () => {
  it('after kill -9 of the primary: both volumes writable together, the same prefix of the combined sequence, at one applied number; survives kill -9', { timeout: 120_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const writer = await groupWritten(p)
    // Group-level status on both sides, while it runs.
    const [prim] = statusJson(primary, GROUP)
    expect(prim).toMatchObject({ pair: GROUP, role: 'primary', group: GROUP, volume: 'red,blue' })
    const sec = await waitForPair(secondary, GROUP, 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
    expect(sec).toMatchObject({ group: GROUP, volume: LOCAL.join(','), consistent: true })
    // The same refusal as a single pair's: the primary is reachable and the pair healthy.
    const refused = vvfs(secondary)('replicate', 'promote', GROUP)
    expect(refused.code).toBe(1)
    expect(refused.err).toMatch(/PROMOTE_REFUSED/)
    for (const name of LOCAL) expect(writable(secondary.file(name))).toBe(false)

    // The primary dies with the writer writing (and the secondary maybe behind).
    secondary.proc.kill('SIGSTOP')
    await new Promise((r) => setTimeout(r, 200))
    await primary.kill9()
    secondary.proc.kill('SIGCONT')
    await writer.exited()
    await secondarySteady(secondary, GROUP)
    // Once its reports are older than PEER_ALIVE_MS (3 s) the primary is unreachable: promote needs no --force.
    const applied = (await waitForPair(secondary, GROUP, 'secondary', (s) => (s.failover?.peer?.seenSecondsAgo ?? 0) > 3.5, 30_000)).lastApplied
    const promoted = json(vvfs(secondary)('replicate', 'promote', GROUP, '--json'))
    expect(promoted).toMatchObject({ pair: GROUP, state: 'promoted', role: 'primary', group: GROUP, volume: LOCAL.join(','), promotedAt: applied, epoch: 2 })
    const m = checkPromoted(secondary, applied)
    expect(m, 'the promoted group holds some of the writes').toBeGreaterThan(0)
    // Resolve --discard local needs the old primary to record our changes: with it down, refused, and every volume stays promoted, writable.
    const resolve = vvfs(secondary)('replicate', 'resolve', GROUP, '--discard', 'local', '--to', `127.0.0.1:${p.primaryPort}`)
    expect(resolve.code).toBe(1)
    expect(resolve.err).toMatch(/^vvfs: [A-Z_]+: /m)
    expect(statusJson(secondary, GROUP)[0]).toMatchObject({ state: 'promoted', volume: LOCAL.join(',') })
    for (const name of LOCAL) expect(writable(secondary.file(name)), `${name} still writable`).toBe(true)
    // Writes on both volumes, kept across kill -9 of the promoted side.
    writeAt(secondary.file(LOCAL[0]!), 0, Buffer.alloc(BLOCK, 0xa1))
    writeAt(secondary.file(LOCAL[1]!), BLOCK, Buffer.alloc(BLOCK, 0xb2))
    await secondary.kill9()
    await secondary.restart()
    const [row] = statusJson(secondary, GROUP)
    expect(row).toMatchObject({ state: 'promoted', promotedAt: applied, volume: LOCAL.join(',') })
    expect(row!.lastWritten).toBeGreaterThan(applied)
    for (const name of LOCAL) expect(writable(secondary.file(name))).toBe(true)
    expect(filledWith(secondary.file(LOCAL[0]!), 0, BLOCK, 0xa1)).toBe(true)
    expect(filledWith(secondary.file(LOCAL[1]!), BLOCK, BLOCK, 0xb2)).toBe(true)
  })

  it('a forced promote while the primary ships: no batch is applied past the promote number (the defect: promote read the number before the batches in flight landed)', { timeout: 120_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const writer = await groupWritten(p)
    // Batches arrive while the promote runs: the pair is fenced and settled before its number is read.
    const promoted = json(vvfs(secondary)('replicate', 'promote', GROUP, '--force', '--json'))
    const at = promoted.promotedAt!
    await writer.stop()
    const m = checkPromoted(secondary, at)
    // The primary's last acknowledgement from the secondary: at most the promote's number.
    const prim = await waitForPair(primary, GROUP, 'primary', (s) => s.link === 'down')
    expect(prim.lastApplied, `the secondary acknowledged applying ${prim.lastApplied}, promoted at ${at}`).toBeLessThanOrEqual(at)
    expect(prim.lastError?.code).toBe('EPOCH_STALE')
    // What the volumes hold is the old primary's writes through that number: a prefix the primary holds too.
    expect(m).toBeLessThanOrEqual(prefixOf([primary.file('red'), primary.file('blue')].map((f) => readFileSync(f)), BLOCKS, 'primary'))
  })

})
