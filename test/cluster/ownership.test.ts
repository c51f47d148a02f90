/**
 * Issue 15, ownership by lease (lib/cluster/relay-lease.ts, ownership.ts)
 * on a real etcd and a real storage server:
 * - of two relays claiming a volume at once exactly one owns it; its token
 *   is the revision of the transaction that made it owner;
 * - an owner stops acknowledging ⅔·TTL after its last good keep-alive when
 *   etcd stops answering (etcd SIGSTOPped), without waiting for the lease to
 *   be reported lost, and acknowledges again once etcd answers in time;
 * - a stale owner (keep-alives stopped past the TTL): the standby takes the
 *   volume with a higher token, fences the storage server, writes; the old
 *   owner's late writes are refused with FENCED and none of their data is
 *   stored.
 */
import { Etcd3 } from 'etcd3'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Ownership, type Owner } from '../../lib/cluster/ownership.js'
import { RelayLease, listRelays } from '../../lib/cluster/relay-lease.js'
import { silentLogger } from '../../lib/log.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { chunkOf, cleanup, newKey, openStore, startServer } from '../remote/servers.js'

let etcd: EtcdServer
const clients: Etcd3[] = []
const leases: RelayLease[] = []
let prefixNo = 0

beforeAll(async () => {
  etcd = await startEtcd()
}, 30_000)
afterEach(async () => {
  etcd.resume()
  for (const l of leases.splice(0)) await l.close(true)
  for (const c of clients.splice(0)) c.close()
  await cleanup()
})
afterAll(async () => {
  await stopAllEtcd()
})

async function relay(relayId: string, prefix: string, ttlMs = 3000): Promise<{ lease: RelayLease; ownership: Ownership; client: Etcd3 }> {
  const client = new Etcd3({ hosts: [etcd.url] })
  clients.push(client)
  const lease = await RelayLease.start({ client, prefix, relayId, ttlMs, log: silentLogger() })
  leases.push(lease)
  return { lease, ownership: new Ownership(client, prefix, lease), client }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('ownership by lease', () => {
  it('two relays claim a volume at once: exactly one owns it, its token is the revision that made it owner, the other is refused NOT_OWNER', async () => {
    const prefix = `own${++prefixNo}/`
    const a = await relay('a', prefix)
    const b = await relay('b', prefix)
    const [oa, ob] = await Promise.all([a.ownership.claim('vol-1', 'v1'), b.ownership.claim('vol-1', 'v1')])
    expect(oa).toEqual(ob)
    const owner = oa.relay === 'a' ? a : b
    const other = oa.relay === 'a' ? b : a
    const kv = (await a.client.get(`${prefix}owners/vol-1`).exec()).kvs[0]!
    expect(oa.token).toBe(Number(kv.create_revision))
    expect(kv.lease).toBe(owner.lease.leaseId)
    // Claiming again: the same token; the other relay cannot take it.
    expect((await owner.ownership.take('vol-1', 'v1')).token).toBe(oa.token)
    await expect(other.ownership.take('vol-1', 'v1')).rejects.toMatchObject({ code: 'NOT_OWNER', details: { owner: oa.relay } })
    // A second relay under a live relay id is refused.
    await expect(RelayLease.start({ client: a.client, prefix, relayId: 'a', ttlMs: 3000, log: silentLogger() })).rejects.toMatchObject({ code: 'RELAY_EXISTS' })
    const listed = await listRelays(a.client, prefix)
    expect(listed.map((r) => r.relay).sort()).toEqual(['a', 'b'])
    expect(listed.every((r) => r.leaseTtlMs > 0)).toBe(true)
  })

  it('etcd stops answering: the owner stops acknowledging within ⅔·TTL of its last good keep-alive, before any lost event; it acknowledges again once etcd answers within the TTL', async () => {
    const prefix = `own${++prefixNo}/`
    const ttlMs = 3000
    const a = await relay('a', prefix, ttlMs)
    await a.ownership.take('vol-1', 'v1')
    await sleep(700)
    expect(a.lease.acknowledging()).toBe(true)
    const pausedAt = Date.now()
    etcd.pause()
    while (a.lease.acknowledging()) await sleep(5)
    const stoppedAfter = Date.now() - pausedAt
    expect(stoppedAfter).toBeLessThanOrEqual((2 / 3) * ttlMs + 50)
    expect(a.lease.isLost).toBe(false)
    expect(() => a.lease.check('a write')).toThrow(expect.objectContaining({ code: 'FENCED' }) as Error)
    // Back at once, ~⅓·TTL before etcd could expire the lease.
    etcd.resume()
    for (let i = 0; i < 100 && !a.lease.acknowledging(); i++) await sleep(20)
    expect(a.lease.acknowledging()).toBe(true)
    expect((await a.ownership.take('vol-1', 'v1')).relay).toBe('a')
  })

  it('stale owner: its keep-alives stop past the TTL, the standby takes the volume with a higher token and fences the storage server; the old owner\'s writes are refused FENCED and none is stored', async () => {
    const prefix = `own${++prefixNo}/`
    const ttlMs = 2000
    const a = await relay('a', prefix, ttlMs)
    const b = await relay('b', prefix, ttlMs)
    const { key } = await newKey()
    const { port, server } = await startServer(key)

    const first = await a.ownership.take('vol-1', 'v1')
    const oldStore = openStore(key, port, { epoch: 0 })
    await oldStore.fence(first.token)
    await oldStore.apply({ writes: [{ pca: 1, data: chunkOf(1) }], sync: true })

    // The standby waits for the owner key to go.
    let taken: Owner | undefined
    const takeover = new Promise<Owner>((resolve, reject) => {
      void b.ownership
        .watchOwners((volumeId) => {
          b.ownership.take(volumeId, 'v1').then((o) => resolve((taken = o)), reject)
        })
        .then((w) => (watcher = w))
    })
    let watcher: { cancel(): Promise<void> } | undefined
    // The owner freezes (as under SIGSTOP): no more keep-alives.
    await a.lease.close(false)
    const frozenAt = Date.now()
    const owner = await takeover
    const tookMs = Date.now() - frozenAt
    await watcher?.cancel()
    expect(owner.relay).toBe('b')
    expect(owner.token).toBeGreaterThan(first.token)
    expect(tookMs).toBeLessThan(ttlMs + 2000)

    const newStore = openStore(key, port, { epoch: 0 })
    expect(await newStore.fence(owner.token)).toBe(owner.token)
    expect(server.fenceToken).toBe(owner.token)
    await newStore.apply({ writes: [{ pca: 1, data: chunkOf(2) }], sync: true })

    // The old owner wakes up and writes what it had queued: all refused.
    await expect(oldStore.apply({ writes: [{ pca: 1, data: chunkOf(99) }, { pca: 3, data: chunkOf(3) }] })).rejects.toMatchObject({ code: 'FENCED' })
    await expect(oldStore.sync({})).rejects.toMatchObject({ code: 'FENCED' })
    expect(a.lease.acknowledging()).toBe(false)
    const [one, three] = await newStore.readMany([1, 3])
    expect(one?.equals(chunkOf(2))).toBe(true)
    expect(three).toBeUndefined()
    expect(taken?.token).toBe(owner.token)
  })
})
