/**
 * Issue 15, relays as daemons (`vvfs daemon --etcd URL --relay-id NAME`,
 * real etcd, FUSE mounts):
 * - the relay that creates a volume owns it: `vvfs relay list` shows both
 *   relays, their leases and the owner's volume with its token; the standby
 *   serves nothing;
 * - etcd stops answering (SIGSTOPped, as when the owner's link to etcd is
 *   cut): the owner's host writes fail with EIO — never hang — within ⅔·TTL
 *   of its last keep-alive, and succeed again once etcd answers in time;
 * - a clean stop revokes the lease: its volumes are free at once.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import type { Result } from '../../lib/control/schema.js'
import { cliFor } from '../helpers/cli.js'
import { writeSynced } from '../helpers/synced-write.js'
import { relaysForFile } from './relays.js'

const TTL_MS = 3000
const { etcd: etcdServer, relay } = relaysForFile(TTL_MS)

/** write + fsync + close of 64 KiB of `byte` at `offset`; the first errno code, if any. */
function writeBlock(file: string, offset: number, byte: number): string | undefined {
  return writeSynced(file, offset, Buffer.alloc(65536, byte))
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('relays in a cluster', () => {
  it('owner, standby, relay list; etcd silent: the owner\'s writes fail with EIO within ⅔·TTL and work again when it answers; a clean stop frees the volumes', async () => {
    const b = await relay('relay-b', ['--standby'])
    const a = await relay('relay-a')
    await a.client.call('storage.add', { name: 's1', capacity: '64M' })
    await a.client.call('volume.create', { name: 'v', size: '16M' })

    const list = cliFor(() => b.socket)('relay', 'list', '--json')
    expect(list.code, list.err).toBe(0)
    const { relays } = JSON.parse(list.out) as Result<'relay.list'>
    expect(relays.map((r) => [r.relay, r.self, r.volumes.map((v) => v.name)])).toEqual([
      ['relay-a', false, ['v']],
      ['relay-b', true, []],
    ])
    expect(relays[0]!.volumes[0]!.token).toBeGreaterThan(0)
    expect(relays.every((r) => r.leaseTtlMs > 0 && r.leaseTtlMs <= TTL_MS)).toBe(true)
    const human = cliFor(() => a.socket)('relay', 'list')
    expect(human.out).toMatch(/relay-a \*.*v \(\d+\)/)
    // The standby serves nothing; the owner serves v.
    expect((await b.client.call('volume.list', {})).volumes).toEqual([])
    expect((await a.client.call('volume.list', {})).volumes.map((v) => v.name)).toEqual(['v'])

    const file = a.file('v')
    expect(writeBlock(file, 0, 1)).toBeUndefined()
    // etcd stops answering: the owner keeps serving until ⅔·TTL after its last good keep-alive, then EIO.
    const pausedAt = Date.now()
    etcdServer().pause()
    let failedAfter = -1
    for (let i = 0; Date.now() - pausedAt < TTL_MS; i++) {
      if (writeBlock(file, (i % 64) * 65536, 2) === 'EIO') {
        failedAfter = Date.now() - pausedAt
        break
      }
      await sleep(20)
    }
    expect(failedAfter).toBeGreaterThanOrEqual(0)
    expect(failedAfter).toBeLessThanOrEqual((2 / 3) * TTL_MS + 300)
    // etcd answers again at once, ~⅓·TTL before the lease could run out: the owner acknowledges again.
    etcdServer().resume()
    let back = false
    for (let i = 0; i < 100 && !back; i++) {
      back = writeBlock(file, 0, 3) === undefined
      if (!back) await sleep(50)
    }
    expect(back).toBe(true)

    // A clean stop revokes the lease: relay-a and its ownership are gone at once.
    expect(await a.stop()).toBe(0)
    const after = await b.client.call('relay.list', {})
    expect(after.relays.map((r) => r.relay)).toEqual(['relay-b'])
    expect(await b.stop()).toBe(0)
  })
})

describe('etcd restarted under a relay', () => {
  it('etcd killed and restarted during fsync\'d writes: every write whose fsync returned reads back; the relay keeps its lease, its volume and its token', async () => {
    const a = await relay('relay-r')
    await a.client.call('storage.add', { name: 'sr', capacity: '64M' })
    await a.client.call('volume.create', { name: 'w', size: '16M' })
    const before = await a.client.call('relay.list', {})
    const file = a.file('w')
    const acked = new Map<number, number>()
    let failed = 0
    let restarting: Promise<void> | undefined
    const started = Date.now()
    for (let i = 0; Date.now() - started < 6000; i++) {
      if (i === 20) restarting = etcdServer().restart()
      const slot = i % 200
      const byte = (i % 250) + 1
      if (writeBlock(file, slot * 65536, byte) === undefined) acked.set(slot, byte)
      else failed++
      await sleep(10)
    }
    await restarting
    // Whatever fsync acknowledged is there (a failed write's slot may hold either version: it was not promised).
    const fd = openSync(file, constants.O_RDONLY | constants.O_DIRECT)
    try {
      const buf = Buffer.alloc(65536)
      for (const [slot, byte] of acked) {
        readSync(fd, buf, 0, 65536, slot * 65536)
        expect(buf.every((b) => b === byte), `slot ${slot}`).toBe(true)
      }
    } finally {
      closeSync(fd)
    }
    expect(acked.size).toBeGreaterThan(20)
    // The lease lived through the restart: same relay, same lease, same token.
    const after = await a.client.call('relay.list', {})
    expect(after.relays.map((r) => [r.relay, r.lease, r.volumes])).toEqual(before.relays.map((r) => [r.relay, r.lease, r.volumes]))
    expect(writeBlock(file, 0, 7)).toBeUndefined()
    console.log(`etcd restart: ${acked.size} slots acknowledged, ${failed} writes refused (EIO) while etcd was down`)
    expect(await a.stop()).toBe(0)
  })
})

describe('a relay claims at start only the volumes whose map it holds', () => {
  it('regression (another relay\'s volume claimed at start, served with an empty map): a relay started while the owner is down does not take its volume; the owner restarted takes it back with a higher token and its data', async () => {
    const a = await relay('relay-m')
    await a.client.call('storage.add', { name: 'sm', capacity: '64M' })
    await a.client.call('volume.create', { name: 'mine', size: '16M' })
    expect(writeBlock(a.file('mine'), 0, 5)).toBeUndefined()
    const first = (await a.client.call('relay.list', {})).relays.find((r) => r.self)!.volumes[0]!.token
    expect(await a.stop()).toBe(0)

    const other = await relay('relay-n')
    expect((await other.client.call('volume.list', {})).volumes).toEqual([])
    expect((await other.client.call('relay.list', {})).relays.flatMap((r) => r.volumes)).toEqual([])

    await a.restart()
    const mine = (await a.client.call('relay.list', {})).relays.find((r) => r.self)!.volumes
    expect(mine.map((v) => v.name)).toEqual(['mine'])
    expect(mine[0]!.token).toBeGreaterThan(first)
    const fd = openSync(a.file('mine'), constants.O_RDONLY | constants.O_DIRECT)
    try {
      const buf = Buffer.alloc(65536)
      readSync(fd, buf, 0, 65536, 0)
      expect(buf.every((b) => b === 5)).toBe(true)
    } finally {
      closeSync(fd)
    }
    expect(await a.stop()).toBe(0)
    expect(await other.stop()).toBe(0)
  })
})
