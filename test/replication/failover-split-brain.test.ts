/**
 * Split-brain between two daemons (issue 13.7): a forced promote with writes
 * on both sides is a split-brain shown on both, nothing merged, until the
 * operator names the side whose changes are discarded — on the promoted
 * side, `resolve --discard peer` (the peer becomes the replica) or
 * `--discard local` (this side does) — then the pair resyncs and the images
 * match. Promote with the primary gone (kill -9) needs no --force.
 */
import { closeSync, openSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'
import { filledWith, json, same, vvfs } from './failover-helpers.js'

const MiB = 1024 * 1024
const K4 = 4096
let p: Pair

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

describe('split-brain', () => {
  it('a forced promote with writes on both sides is a split-brain on both, nothing merged; resolve --discard peer resyncs the pair', async () => {
    p = await startPair()
    const { primary, secondary } = p
    await primary.client.call('volume.create', { name: 'db', size: 16 * MiB })
    writeAt(primary.file('db'), 0, Buffer.alloc(64 * 1024, 1))
    json(vvfs(primary)('replicate', 'start', 'db', '--to', p.secondaryAddress, '--as', 'db-copy', '--peer-key', p.keyFile, '--json'))
    await waitForPair(primary, 'db-copy', 'primary', caughtUp)
    await waitForPair(secondary, 'db-copy', 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
    json(vvfs(secondary)('replicate', 'promote', 'db-copy', '--force', '--json'))
    writeAt(secondary.file('db-copy'), 2 * MiB, Buffer.alloc(K4, 0xaa))
    writeAt(primary.file('db'), 6 * MiB, Buffer.alloc(K4, 0xbb))
    const a = await waitForPair(secondary, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    const b = await waitForPair(primary, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    expect(a.failover).toMatchObject({ role: 'promoted', relation: 'split-brain', peer: { role: 'primary' } })
    expect(b.failover).toMatchObject({ role: 'primary', relation: 'split-brain', peer: { role: 'promoted' } })
    expect(a.failover?.commonSeq).toBe(b.failover?.commonSeq)
    for (const d of [primary, secondary]) expect(d.log()).toMatch(/replication\.split_brain/)
    // Nothing merged, then or a while later.
    await new Promise((r) => setTimeout(r, 1500))
    expect(filledWith(secondary.file('db-copy'), 6 * MiB, K4, 0xbb)).toBe(false)
    expect(filledWith(primary.file('db'), 2 * MiB, K4, 0xaa)).toBe(false)
    expect(vvfs(primary)('replicate', 'status', 'db-copy').out).toMatch(/SPLIT-BRAIN/)
    // Reverse does not pick a side.
    expect(vvfs(secondary)('replicate', 'reverse', 'db-copy').err).toMatch(/SPLIT_BRAIN/)
    // The operator keeps the promoted side: the old primary's change at 6 MiB is discarded.
    expect(json(vvfs(secondary)('replicate', 'resolve', 'db-copy', '--discard', 'peer', '--json'))).toMatchObject({ pair: 'db-copy', role: 'primary' })
    await waitForPair(secondary, 'db-copy', 'primary', (s) => caughtUp(s) && s.lastApplied > 0 && s.epoch === 2)
    expect(same(primary.file('db'), secondary.file('db-copy'))).toBe(true)
    expect(filledWith(primary.file('db'), 2 * MiB, K4, 0xaa)).toBe(true)
    expect(filledWith(primary.file('db'), 6 * MiB, K4, 0xbb)).toBe(false)
    expect(() => openSync(primary.file('db'), 'r+')).toThrow(/EROFS|read-only/)
    await waitForPair(primary, 'db-copy', 'secondary', (s) => s.consistent && s.failover?.relation !== 'split-brain')
  })

  it('with the primary gone, promote needs no --force; after its restart both sides are written: split-brain; resolve --discard local makes the promoted side the replica again', async () => {
    // The second daemon is now the primary of db-copy (epoch 2), the first its replica.
    const primary = p.secondary
    const replica = p.primary
    await primary.kill9()
    await waitForPair(replica, 'db-copy', 'secondary', (s) => (s.failover?.peer?.seenSecondsAgo ?? 0) > 3.5, 15_000)
    expect(json(vvfs(replica)('replicate', 'promote', 'db-copy', '--json'))).toMatchObject({ state: 'promoted', epoch: 3 })
    // Resolve --discard local with the old primary down: refused, and the volume stays promoted and writable (the defect: it stayed read-only).
    const refused = vvfs(replica)('replicate', 'resolve', 'db-copy', '--discard', 'local')
    expect(refused.code).toBe(1)
    expect(() => closeSync(openSync(replica.file('db'), 'r+'))).not.toThrow()
    writeAt(replica.file('db'), 7 * MiB, Buffer.alloc(K4, 0x77))
    await primary.restart()
    writeAt(primary.file('db-copy'), 3 * MiB, Buffer.alloc(K4, 0x33))
    await waitForPair(primary, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    await waitForPair(replica, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    expect(filledWith(replica.file('db'), 3 * MiB, K4, 0x33)).toBe(false)
    expect(filledWith(primary.file('db-copy'), 7 * MiB, K4, 0x77)).toBe(false)
    // Only the promoted side resolves.
    expect(vvfs(primary)('replicate', 'resolve', 'db-copy', '--discard', 'peer').err).toMatch(/FAILOVER_STATE/)
    expect(json(vvfs(replica)('replicate', 'resolve', 'db-copy', '--discard', 'local', '--json'))).toMatchObject({ role: 'secondary' })
    await waitForPair(primary, 'db-copy', 'primary', (s) => caughtUp(s) && s.epoch === 2 && s.failover?.relation !== 'split-brain')
    expect(same(primary.file('db-copy'), replica.file('db'))).toBe(true)
    expect(filledWith(replica.file('db'), 3 * MiB, K4, 0x33)).toBe(true)
    expect(filledWith(replica.file('db'), 7 * MiB, K4, 0x77)).toBe(false)
    expect(() => openSync(replica.file('db'), 'r+')).toThrow(/EROFS|read-only/)
  })
})
