/**
 * Replication end to end between two daemons on this machine (issue 13):
 * `replicate start` creates the read-only secondary volume in the peer's
 * mount, syncs the allocated extents, ships the journal; status fields and
 * events; kill -9 of either daemon resumes without a full copy; stop.
 */
import { openSync, readFileSync } from 'node:fs'
import { writeAt } from '../helpers/files.js'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { cliFor } from '../helpers/cli.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

describe('replication between two daemons', () => {
  it('syncs the allocated extents, ships later writes in order, and shows the pair on both sides', async () => {
    p = await startPair()
    const { primary, secondary } = p
    await primary.client.call('volume.create', { name: 'db', size: 16 * MiB })
    const file = primary.file('db')
    writeAt(file, 0, Buffer.alloc(64 * 1024, 1))
    writeAt(file, 5 * MiB, Buffer.alloc(4096, 2))
    const vvfs = cliFor(() => primary.socket)
    const started = vvfs('replicate', 'start', 'db', '--to', p.secondaryAddress, '--as', 'db-copy', '--peer-key', p.keyFile, '--rate', '64M', '--json')
    expect(started.code, started.err).toBe(0)
    expect(JSON.parse(started.out)).toMatchObject({ pair: 'db-copy', role: 'primary', volume: 'db' })
    await waitForPair(primary, 'db-copy', 'primary', caughtUp)
    // Later writes are shipped.
    writeAt(file, 3 * MiB + 4096, Buffer.alloc(8192, 3))
    const s = await waitForPair(primary, 'db-copy', 'primary', (s) => caughtUp(s) && s.lastWritten > 0)
    expect(s.lag).toEqual({ entries: 0, bytes: 0, seconds: 0 })
    expect(s.epoch).toBe(1)
    expect(s.lastDurable).toBe(s.lastWritten)
    // The secondary volume is a file in the peer's mount, byte-identical, and read-only.
    const copy = secondary.file('db-copy')
    expect(Buffer.compare(readFileSync(copy), readFileSync(file))).toBe(0)
    expect(() => openSync(copy, 'r+')).toThrow(/EROFS|read-only/)
    const sec = await waitForPair(secondary, 'db-copy', 'secondary', (x) => x.consistent)
    expect(sec.lastApplied).toBe(s.lastApplied)
    // A replicated volume is not deleted under its pair.
    await expect(primary.client.call('volume.delete', { name: 'db' })).rejects.toMatchObject({ code: 'VOLUME_BUSY' })
    const status = cliFor(() => primary.socket)('replicate', 'status', 'db-copy')
    expect(status.code, status.err).toBe(0)
    expect(status.out).toMatch(/state\s+replicating/)
  })

  it('resumes after kill -9 of the secondary and of the primary without losing or reordering a write', async () => {
    const { primary, secondary } = p
    const file = primary.file('db')
    await secondary.kill9()
    writeAt(file, 7 * MiB, Buffer.alloc(4096, 4))
    const behind = await waitForPair(primary, 'db-copy', 'primary', (s) => s.link === 'down' && s.lag.entries > 0)
    expect(behind.lag.seconds).toBeGreaterThanOrEqual(0)
    await secondary.restart()
    await waitForPair(primary, 'db-copy', 'primary', caughtUp)
    await primary.kill9()
    await primary.restart()
    writeAt(primary.file('db'), 9 * MiB, Buffer.alloc(4096, 5))
    await waitForPair(primary, 'db-copy', 'primary', (s) => caughtUp(s) && s.sync.total === 0)
    expect(Buffer.compare(readFileSync(secondary.file('db-copy')), readFileSync(primary.file('db')))).toBe(0)
  })

  it('a grow and a shrink of the primary reach the secondary in order with the writes around them', async () => {
    const { primary, secondary } = p
    await primary.client.call('volume.resize', { name: 'db', size: 24 * MiB })
    writeAt(primary.file('db'), 20 * MiB, Buffer.alloc(8192, 6))
    await primary.client.call('volume.resize', { name: 'db', size: 22 * MiB + 512 })
    writeAt(primary.file('db'), 21 * MiB, Buffer.alloc(4096, 7))
    await waitForPair(primary, 'db-copy', 'primary', caughtUp)
    const copy = (await secondary.client.call('volume.list', {})).volumes.find((v) => v.name === 'db-copy')
    expect(copy?.size).toBe(22 * MiB + 512)
    expect(Buffer.compare(readFileSync(secondary.file('db-copy')), readFileSync(primary.file('db')))).toBe(0)
  })

  it('stop ends the pair on the primary; the secondary keeps its volume', async () => {
    const { primary, secondary } = p
    const vvfs = cliFor(() => primary.socket)
    const r = vvfs('replicate', 'stop', 'db-copy')
    expect(r.code, r.err).toBe(0)
    expect((await primary.client.call('replicate.list', {})).pairs).toEqual([])
    expect((await secondary.client.call('volume.list', {})).volumes.map((v) => v.name)).toContain('db-copy')
    const again = vvfs('replicate', 'stop', 'db-copy')
    expect(again.code).toBe(1)
    expect(again.err).toMatch(/PAIR_NOT_FOUND/)
    // The secondary's volume can go, and its pair with it.
    await secondary.client.call('volume.delete', { name: 'db-copy' })
    expect((await secondary.client.call('replicate.list', {})).pairs).toEqual([])
    await secondary.restart()
    expect((await secondary.client.call('volume.list', {})).volumes.map((v) => v.name)).not.toContain('db-copy')
  })
})
