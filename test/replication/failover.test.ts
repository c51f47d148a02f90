/**
 * Failover and failback between two daemons (issue 13.7): promote is
 * refused while the pair is healthy; an orderly demote + promote + reverse
 * ships only what was written since (never a full copy) and never reports
 * split-brain; a forced promote with writes on both sides is a split-brain
 * on both, nothing merged, until the operator names the side whose changes
 * are discarded — then the pair resyncs and the images match.
 */
import { openSync, readFileSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { cliFor } from '../helpers/cli.js'
import { cleanupAll, removeDir, type DaemonHandle } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair

afterAll(async () => {
  await cleanupAll()
  if (p) for (const d of [p.primary.dir, p.secondary.dir, p.dir]) removeDir(d)
})

const vvfs = (d: DaemonHandle) => cliFor(() => d.socket)
const json = (r: { code: number | null; out: string; err: string }): ReplicationInfo => {
  expect(r.code, r.err).toBe(0)
  return JSON.parse(r.out) as ReplicationInfo
}
const same = (a: string, b: string) => Buffer.compare(readFileSync(a), readFileSync(b)) === 0
const bytesAt = (file: string, offset: number, length: number) => readFileSync(file).subarray(offset, offset + length)
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
    const reversed = json(vvfs(secondary)('replicate', 'reverse', 'db-copy', '--json'))
    expect(reversed).toMatchObject({ pair: 'db-copy', role: 'primary' })
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

  it('a forced promote with writes on both sides is a split-brain on both, nothing merged; resolve --discard peer resyncs the pair', async () => {
    // Now the secondary daemon is the primary of db-copy and the first daemon its replica.
    const newPrimary = p.secondary
    const replica = p.primary
    await waitForPair(replica, 'db-copy', 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
    expect(vvfs(replica)('replicate', 'promote', 'db-copy').err).toMatch(/PROMOTE_REFUSED/)
    json(vvfs(replica)('replicate', 'promote', 'db-copy', '--force', '--json'))
    writeAt(replica.file('db'), 2 * MiB, Buffer.alloc(4096, 0xaa))
    writeAt(newPrimary.file('db-copy'), 6 * MiB, Buffer.alloc(4096, 0xbb))
    const a = await waitForPair(replica, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    const b = await waitForPair(newPrimary, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    expect(a.failover).toMatchObject({ role: 'promoted', relation: 'split-brain', peer: { role: 'primary' } })
    expect(b.failover).toMatchObject({ role: 'primary', relation: 'split-brain', peer: { role: 'promoted' } })
    expect(a.failover?.commonSeq).toBe(b.failover?.commonSeq)
    // Nothing merged, then or a while later.
    await new Promise((r) => setTimeout(r, 1500))
    expect(bytesAt(replica.file('db'), 6 * MiB, 4096).every((x) => x === 0xbb)).toBe(false)
    expect(bytesAt(newPrimary.file('db-copy'), 2 * MiB, 4096).every((x) => x === 0xaa)).toBe(false)
    const status = vvfs(newPrimary)('replicate', 'status', 'db-copy')
    expect(status.out).toMatch(/SPLIT-BRAIN/)
    // Reverse does not pick a side.
    expect(vvfs(replica)('replicate', 'reverse', 'db-copy').err).toMatch(/SPLIT_BRAIN/)
    // The operator keeps the promoted side: the peer's change at 6 MiB is discarded.
    const resolved = json(vvfs(replica)('replicate', 'resolve', 'db-copy', '--discard', 'peer', '--json'))
    expect(resolved).toMatchObject({ pair: 'db-copy', role: 'primary' })
    await waitForPair(replica, 'db-copy', 'primary', (s) => caughtUp(s) && s.lastApplied > 0 && s.epoch === 3)
    expect(same(replica.file('db'), newPrimary.file('db-copy'))).toBe(true)
    expect(bytesAt(newPrimary.file('db-copy'), 2 * MiB, 4096).every((x) => x === 0xaa)).toBe(true)
    expect(bytesAt(newPrimary.file('db-copy'), 6 * MiB, 4096).every((x) => x === 0xbb)).toBe(false)
    await waitForPair(newPrimary, 'db-copy', 'secondary', (s) => s.consistent && s.failover?.relation !== 'split-brain')
  })

  it('with the primary gone, promote needs no --force; after its restart both sides are written: split-brain; resolve --discard local makes the promoted side the replica again', async () => {
    // The first daemon is the primary of db-copy again (epoch 3), the second its replica.
    const primary = p.primary
    const replica = p.secondary
    await primary.kill9()
    await waitForPair(replica, 'db-copy', 'secondary', (s) => (s.failover?.peer?.seenSecondsAgo ?? 0) > 3.5, 15_000)
    const promoted = json(vvfs(replica)('replicate', 'promote', 'db-copy', '--json'))
    expect(promoted).toMatchObject({ state: 'promoted', epoch: 4 })
    writeAt(replica.file('db-copy'), 7 * MiB, Buffer.alloc(4096, 0x77))
    await primary.restart()
    writeAt(primary.file('db'), 3 * MiB, Buffer.alloc(4096, 0x33))
    await waitForPair(primary, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    await waitForPair(replica, 'db-copy', 'primary', (s) => s.state === 'split-brain')
    expect(bytesAt(replica.file('db-copy'), 3 * MiB, 4096).every((x) => x === 0x33)).toBe(false)
    expect(bytesAt(primary.file('db'), 7 * MiB, 4096).every((x) => x === 0x77)).toBe(false)
    // Only the promoted side resolves.
    expect(vvfs(primary)('replicate', 'resolve', 'db-copy', '--discard', 'peer').err).toMatch(/FAILOVER_STATE/)
    const resolved = json(vvfs(replica)('replicate', 'resolve', 'db-copy', '--discard', 'local', '--json'))
    expect(resolved).toMatchObject({ role: 'secondary' })
    await waitForPair(primary, 'db-copy', 'primary', (s) => caughtUp(s) && s.epoch === 3 && s.failover?.relation !== 'split-brain')
    expect(same(primary.file('db'), replica.file('db-copy'))).toBe(true)
    expect(bytesAt(replica.file('db-copy'), 3 * MiB, 4096).every((x) => x === 0x33)).toBe(true)
    expect(bytesAt(replica.file('db-copy'), 7 * MiB, 4096).every((x) => x === 0x77)).toBe(false)
    expect(() => openSync(replica.file('db-copy'), 'r+')).toThrow(/EROFS|read-only/)
  })
})
