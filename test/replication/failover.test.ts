/**
 * Failover and failback between two daemons (issue 13.7): promote is
 * refused while the pair is healthy; an orderly demote + promote + reverse
 * ships only what was written since (never a full copy), survives kill -9
 * of the promoted side, and never reports split-brain. Split-brain:
 * failover-split-brain.test.ts.
 */
import { openSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { cleanupAll, type DaemonHandle } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'
import { json, same, vvfs } from './failover-helpers.js'

const MiB = 1024 * 1024
let p: Pair

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

const splitLogged = (d: DaemonHandle) => d.log().includes('replication.split_brain')

describe('failover and failback', () => {
  it('promote is refused while the primary is reachable and the pair healthy (PROMOTE_REFUSED), and the volume stays read-only', async () => {
    p = await startPair()
    const { primary, secondary } = p
    await primary.client.call('volume.create', { name: 'db', size: 16 * MiB })
    // Eight allocated extents: a full copy would ship 8 MiB.
    for (let x = 0; x < 8; x++) writeAt(primary.file('db'), x * 2 * MiB, Buffer.alloc(EXTENT_SIZE, 0x10 + x))
    json(vvfs(primary)('replicate', 'start', 'db', '--to', p.secondaryAddress, '--as', 'db-copy', '--peer-key', p.keyFile, '--json'))
    await waitForPair(primary, 'db-copy', 'primary', caughtUp)
    await waitForPair(secondary, 'db-copy', 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
    const refused = vvfs(secondary)('replicate', 'promote', 'db-copy')
    expect(refused.code).toBe(1)
    expect(refused.err).toMatch(/PROMOTE_REFUSED/)
    expect(() => openSync(secondary.file('db-copy'), 'r+')).toThrow(/EROFS|read-only/)
    const sec = await waitForPair(secondary, 'db-copy', 'secondary', (s) => s.consistent)
    expect(sec.state).toBe('consistent')
  })

  it('demote, promote, write, reverse: ships at most the bytes written since plus one extent per extent touched; images identical; no split-brain', async () => {
    const { primary, secondary } = p
    // A write just before the demote: demote lets the secondary apply it first.
    writeAt(primary.file('db'), 14 * MiB, Buffer.alloc(4096, 0xdd))
    const demoted = json(vvfs(primary)('replicate', 'demote', 'db-copy', '--json'))
    expect(demoted).toMatchObject({ pair: 'db-copy', state: 'demoted', role: 'secondary' })
    expect(() => openSync(primary.file('db'), 'r+')).toThrow(/EROFS|read-only/)
    // The secondary learns that its primary is demoted (its reports), so promote needs no --force.
    await waitForPair(secondary, 'db-copy', 'secondary', (s) => s.failover?.peer?.role === 'demoted')
    const promoted = json(vvfs(secondary)('replicate', 'promote', 'db-copy', '--json'))
    expect(promoted).toMatchObject({ pair: 'db-copy', state: 'promoted', role: 'primary', epoch: 2 })
    // Writes on the new primary: three ranges in two extents.
    const writes: [number, number][] = [
      [1 * MiB + 4096, 8192],
      [1 * MiB + 64 * 1024, 4096],
      [5 * MiB + 12288, 65536],
    ]
    for (const [offset, length] of writes) writeAt(secondary.file('db-copy'), offset, Buffer.alloc(length, 0xcd))
    const written = writes.reduce((a, [, l]) => a + l, 0)
    const touched = new Set(writes.map(([o]) => Math.floor(o / EXTENT_SIZE))).size
    // The promote and the writes since it survive kill -9 of the promoted side. The old primary is paused
    // meanwhile, so no report of its address reaches the restarted side before reverse: the promote remembered it.
    primary.proc.kill('SIGSTOP')
    try {
      await secondary.kill9()
      await secondary.restart()
    } finally {
      primary.proc.kill('SIGCONT')
    }
    const reversed = json(vvfs(secondary)('replicate', 'reverse', 'db-copy', '--json'))
    expect(reversed).toMatchObject({ pair: 'db-copy', role: 'primary' })
    expect(() => openSync(primary.file('db'), 'r+')).toThrow(/EROFS|read-only/)
    const done = await waitForPair(secondary, 'db-copy', 'primary', (s) => caughtUp(s) && s.lastApplied > 0)
    expect(done.bytesShipped).toBeGreaterThanOrEqual(written)
    expect(done.bytesShipped).toBeLessThanOrEqual(written + touched * EXTENT_SIZE)
    expect(done.epoch).toBe(2)
    expect(same(primary.file('db'), secondary.file('db-copy'))).toBe(true)
    // The old primary is now the read-only replica, consistent at the new epoch.
    const replica = await waitForPair(primary, 'db-copy', 'secondary', (s) => s.consistent && s.epoch === 2)
    expect(replica.lastApplied).toBe(done.lastApplied)
    expect(() => openSync(primary.file('db'), 'r+')).toThrow(/EROFS|read-only/)
    // Later writes ship in the new direction.
    writeAt(secondary.file('db-copy'), 12 * MiB, Buffer.alloc(4096, 0xce))
    await waitForPair(secondary, 'db-copy', 'primary', (s) => caughtUp(s) && s.lastWritten > done.lastWritten)
    expect(same(primary.file('db'), secondary.file('db-copy'))).toBe(true)
    for (const d of [primary, secondary]) {
      expect(splitLogged(d)).toBe(false)
      for (const s of (await d.client.call('replicate.list', {})).pairs) expect(s.failover?.relation).not.toBe('split-brain')
    }
  })
})
