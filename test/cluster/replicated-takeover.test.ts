/**
 * A replicated volume taken over by another relay (issue 15 meets issue
 * 13): the pair follows the volume. The owner relay, whose journal lives in
 * its own state directory, is killed with kill -9; the standby takes the
 * volume over and with it the replication job, and the secondary ends up
 * holding exactly the volume as the new owner serves it — every write
 * before the kill (also those the old owner never shipped, and a discard)
 * and every write after — without a new pair.
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanupAll, removeDir, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js'
import { writeAndFsync } from '../helpers/synced-write.js'
import { caughtUp, freePort, waitForPair } from '../replication/daemons.js'
import { relaysForFile } from './relays.js'

const TTL_MS = 3000
const { ownerAndStandby } = relaysForFile(TTL_MS)
const MiB = 1024 * 1024

const writeAt = writeAndFsync

/** The secondary: a third daemon (not in the cluster) listening on loopback with its own key; answers it and where to replicate to. */
const dirs: string[] = []
afterAll(async () => {
  await cleanupAll()
  for (const d of dirs) removeDir(d)
})

async function secondaryDaemon(): Promise<{ s: DaemonHandle; keyFile: string; to: string }> {
  const keyDir = tempDir('vvfs-repl-takeover-')
  const dir = tempDir('vvfs-repl-s-')
  dirs.push(keyDir, dir)
  const keyFile = join(keyDir, 'peer.key')
  writeFileSync(keyFile, randomBytes(32).toString('hex'), { mode: 0o600 })
  const port = await freePort()
  const s = await startDaemon({ dir, extraArgs: ['--listen', `127.0.0.1:${port}`, '--peer-key', keyFile] })
  await s.client.call('storage.add', { name: 's1', capacity: '64M' })
  return { s, keyFile, to: `127.0.0.1:${port}` }
}

/** The 4 KiB blocks (by number) in which two images differ. */
function differingBlocks(a: Buffer, b: Buffer): number[] {
  const out: number[] = []
  for (let at = 0; at < Math.max(a.length, b.length); at += 4096) if (!a.subarray(at, at + 4096).equals(b.subarray(at, at + 4096))) out.push(at / 4096)
  return out
}

async function waitFor(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe('a replicated volume taken over after kill -9 of its owner', () => {
  it('the pair follows the volume to the new owner: the secondary ends equal to the volume, writes before and after the kill included', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'owner', standby: 'standby', systems: 'far', capacity: '64M', volume: 'v', size: '16M' })
    const { s, keyFile, to } = await secondaryDaemon()

    await writeAt(a.file('v'), randomBytes(4 * MiB), 0)
    await a.client.call('replicate.start', { volume: 'v', to, peerKey: keyFile })
    await waitForPair(a, 'v', 'primary', caughtUp)
    // Entries shipped and applied one by one, so the secondary's applied number is well past 1.
    for (let i = 0; i < 40; i++) await writeAt(a.file('v'), randomBytes(4096), 4 * MiB + i * 8192)
    const before = await waitForPair(a, 'v', 'primary', (x) => caughtUp(x) && x.lastWritten >= 40)
    // Changes the secondary never gets from the old owner: its pair paused, writes and a discard of replicated data, then kill -9.
    await a.client.call('replicate.pause', { pair: 'v' })
    for (let i = 0; i < 10; i++) await writeAt(a.file('v'), randomBytes(4096), 6 * MiB + i * 4096)
    execFileSync('fallocate', ['--punch-hole', '--keep-size', '--offset', String(MiB), '--length', String(MiB), a.file('v')])
    await writeAt(a.file('v'), Buffer.alloc(0), 0)
    await a.kill9()

    await waitFor('the volume served by the standby', 4 * TTL_MS, () => existsSync(b.file('v')))
    await waitFor('the replication job adopted by the standby', 10_000, () => /"event":"relay.volume_taken"/.test(b.log()))
    // The pair was paused on the old owner: it stays paused on the new one until resumed.
    const taken = await waitForPair(b, 'v', 'primary', (x) => x.state === 'paused')
    expect(taken.epoch).toBe(2)
    await b.client.call('replicate.resume', { pair: 'v' })
    // Writes on the new owner: new extents and overwrites of replicated ones.
    await writeAt(b.file('v'), randomBytes(2 * MiB), 8 * MiB)
    for (let i = 0; i < 20; i++) await writeAt(b.file('v'), randomBytes(4096), i * 65536)

    const after = await waitForPair(b, 'v', 'primary', (x) => caughtUp(x) && x.lastWritten > 0, 60_000)
    expect(after.lastApplied).toBeGreaterThan(before.lastApplied)
    expect(after.epoch).toBe(2)
    expect(after.lag.entries).toBe(0)
    expect(b.log()).toMatch(/"event":"replication.taken_over"[^\n]*"resync":true/)
    expect(b.log()).toMatch(/"event":"replication.taken_over"/)
    await waitForPair(s, 'v', 'secondary', (x) => x.consistent && x.lastApplied === after.lastApplied)
    const volume = readFileSync(b.file('v'))
    const copy = readFileSync(s.file('v'))
    expect(copy.length).toBe(volume.length)
    expect(differingBlocks(volume, copy)).toEqual([])
    // The discard (the new owner's writes below reach 1.25 MiB).
    expect(copy.subarray(1.25 * MiB, 2 * MiB).every((x) => x === 0)).toBe(true)
    expect(await b.stop()).toBe(0)
  })
})

describe('a replicated volume moved to another relay and back (volume move)', () => {
  it('the pair follows each move caught up — a new epoch numbering on, no resync; the first relay\'s stale journal is dropped — and the secondary ends equal to the volume', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'left', standby: 'right', systems: 'moved', capacity: '64M', volume: 'm', size: '8M' })
    const { s, keyFile, to } = await secondaryDaemon()
    await writeAt(a.file('m'), randomBytes(2 * MiB), 0)
    const started = await a.client.call('replicate.start', { volume: 'm', to, peerKey: keyFile })
    for (let i = 0; i < 10; i++) await writeAt(a.file('m'), randomBytes(4096), 3 * MiB + i * 4096)
    await waitForPair(a, 'm', 'primary', (x) => caughtUp(x) && x.lastWritten >= 10)

    await a.client.call('volume.move', { name: 'm', relay: 'right' })
    await writeAt(b.file('m'), randomBytes(MiB), 4 * MiB)
    const right = await waitForPair(b, 'm', 'primary', (x) => caughtUp(x) && x.lastWritten > 0)
    expect(right.epoch).toBe(2)
    // Handed over caught up: numbered on from the old relay's last number, nothing resynced.
    expect(b.log()).toMatch(/"event":"replication.taken_over"[^\n]*"resync":false/)
    expect(right.sync.total).toBe(0)
    expect(right.lastWritten).toBeLessThan(100)
    await b.client.call('volume.move', { name: 'm', relay: 'left' })
    await writeAt(a.file('m'), randomBytes(MiB), 5 * MiB)
    const left = await waitForPair(a, 'm', 'primary', (x) => caughtUp(x) && x.lastWritten > right.lastWritten)
    expect(left.epoch).toBe(3)
    expect(left.sync.total).toBe(0)
    // The first relay's log of epoch 1 was stale once the pair moved on: gone, only epoch 3's is kept there.
    expect(readdirSync(join(a.dir, 'state', 'journals'))).toEqual([`job-${started.job}.e3`])
    await waitForPair(s, 'm', 'secondary', (x) => x.consistent && x.lastApplied === left.lastApplied)
    expect(differingBlocks(readFileSync(a.file('m')), readFileSync(s.file('m')))).toEqual([])
    expect(await a.stop()).toBe(0)
  })
})

describe('a consistency group taken over after kill -9 of its owner', () => {
  it('the group\'s pair follows both volumes to the new owner by a resync, and both secondaries end equal to their volumes', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'g-left', standby: 'g-right', systems: 'grouped', capacity: '64M', volume: 'g1', size: '4M' })
    await a.client.call('volume.create', { name: 'g2', size: '4M' })
    const { s, keyFile, to } = await secondaryDaemon()
    await writeAt(a.file('g1'), randomBytes(MiB), 0)
    await writeAt(a.file('g2'), randomBytes(MiB), 0)
    await a.client.call('replicate.start', { volume: 'g1', also: ['g2'], group: 'g', to, peerKey: keyFile })
    await waitForPair(a, 'g', 'primary', caughtUp)
    await a.client.call('replicate.pause', { pair: 'g' })
    await writeAt(a.file('g2'), randomBytes(MiB), 2 * MiB)
    await a.kill9()

    await waitFor('both volumes served by the standby', 4 * TTL_MS, () => existsSync(b.file('g1')) && existsSync(b.file('g2')))
    // Adopted once both members are served here.
    const taken = await waitForPair(b, 'g', 'primary', (x) => x.state === 'paused', 10_000)
    expect(taken.epoch).toBe(2)
    await b.client.call('replicate.resume', { pair: 'g' })
    await writeAt(b.file('g1'), randomBytes(MiB), 2 * MiB)
    const done = await waitForPair(b, 'g', 'primary', (x) => caughtUp(x) && x.lastWritten > 0, 60_000)
    expect(b.log()).toMatch(/"event":"replication.taken_over"[^\n]*"resync":true/)
    await waitForPair(s, 'g', 'secondary', (x) => x.consistent && x.lastApplied === done.lastApplied)
    for (const v of ['g1', 'g2']) expect(differingBlocks(readFileSync(b.file(v)), readFileSync(s.file(`g-${v}`))), v).toEqual([])
    expect(await b.stop()).toBe(0)
  })
})
