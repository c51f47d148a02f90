/**
 * Issue 15, stale owner, end to end: a `vvfs daemon --etcd` relay owns a
 * volume on a storage server (its own process); the relay is SIGSTOPped
 * past its lease TTL; another owner (lib/cluster, in this test) takes the
 * volume with a higher token, fences the server and writes the volume's
 * first chunk; the old relay gets SIGCONT: its host write is refused at once
 * (EIO: its lease window is over, FENCED in its log; or, once it heard its
 * lease expired, ENOENT: it stopped serving the volume — within 1 s either
 * way), and the server keeps the new owner's data — nothing of the old
 * relay's is stored; the server's FENCED counter (FENCE_STATUS) rises with
 * the refusals the old relay reports (a write it held unsynced when paused
 * meets the fence at the latest when it stops, cleanly).
 */
import { Etcd3 } from 'etcd3'
import { closeSync, constants, openSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Ownership, ownerKey } from '../../lib/cluster/ownership.js'
import { RelayLease } from '../../lib/cluster/relay-lease.js'
import { silentLogger } from '../../lib/log.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { errnoOf, writeSynced } from '../helpers/synced-write.js'
import { chunkOf, cleanup, freePort, newKey, openStore, spawnServer, tempDir } from '../remote/servers.js'

const TTL_MS = 3000
let etcd: EtcdServer
let client: Etcd3 | undefined
let lease: RelayLease | undefined
let d: DaemonHandle | undefined
/** A descriptor the test holds open on the old relay's volume file (closed after the test, also when it failed). */
let unsynced: number | undefined

beforeAll(async () => {
  etcd = await startEtcd()
}, 30_000)
afterAll(async () => {
  if (d?.proc.exitCode === null) d.proc.kill('SIGCONT')
  if (unsynced !== undefined) errnoOf(() => closeSync(unsynced!))
  await cleanupAll()
  if (d) removeDir(d.dir)
  await lease?.close(true)
  client?.close()
  await cleanup()
  await stopAllEtcd()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('stale owner', () => {
  it('SIGSTOP past the TTL, a new owner fences and writes, SIGCONT: the old relay\'s write is EIO within 1 s and none of its data is stored', async () => {
    const key = await newKey()
    const port = await freePort()
    await spawnServer({ dir: await tempDir(), port, keyFile: key.file })
    d = await startDaemon({ extraArgs: ['--etcd', etcd.url, '--relay-id', 'old', '--lease-ttl', `${TTL_MS / 1000}s`] })
    await d.client.call('storage.add', { name: 'far', remote: `127.0.0.1:${port}`, peerKey: key.file, capacity: '64M' })
    const vol = await d.client.call('volume.create', { name: 'v', size: '16M' })
    expect(writeSynced(d.file('v'), 0, chunkOf(1))).toBeUndefined()
    const where = await d.client.call('volume.mapOf', { name: 'v', offset: 0 })
    expect(where.storage).toBe('far')
    const far = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 'far')!
    const oldToken = (await d.client.call('relay.list', {})).relays.find((r) => r.self)!.volumes[0]!.token
    // The relay fenced the server at its token when it took the volume: its writes carry it.
    expect(far.epoch).toBe(oldToken)

    // A write the host has not synced when the pause lands, its file kept open (a close flushes: it would sync it).
    // Nothing else syncs it, so the old relay's next sync — at the latest its stop's — meets the fence.
    unsynced = openSync(d.file('v'), constants.O_RDWR)
    writeSync(unsynced, chunkOf(5), 0, 4096, 8 * 4096)
    d.proc.kill('SIGSTOP')
    client = new Etcd3({ hosts: [etcd.url] })
    lease = await RelayLease.start({ client, prefix: 'vvfs/', relayId: 'new', ttlMs: TTL_MS, log: silentLogger() })
    // The old relay's lease expires (etcd deletes its owner key); then the volume is free to take.
    for (let i = 0; i < 200 && (await client.get(ownerKey('vvfs/', vol.id)).exec()).kvs.length > 0; i++) await sleep(50)
    const owner = await new Ownership(client, 'vvfs/', lease).take(vol.id, 'v')
    expect(owner.token).toBeGreaterThan(oldToken)
    const store = openStore(key.key, port, { sid: far.id, name: 'far', claim: false, epoch: 0 })
    await store.fence(owner.token)
    await store.apply({ writes: [{ pca: where.chunkAddress!, data: chunkOf(2) }], token: owner.token, sync: true })

    const refusedBefore = (await store.fenceStatus()).refused
    const logBefore = d.log().length
    d.proc.kill('SIGCONT')
    const t0 = Date.now()
    // Refused either way: EIO (its lease window is over: FENCED), or — once its first keep-alive told it the
    // lease expired — the volume has left its mount (it rejoins owning nothing, test/cluster/partition.test.ts).
    let answer: string | undefined
    try {
      answer = writeSynced(d.file('v'), 0, chunkOf(3))
    } catch (err) {
      answer = (err as NodeJS.ErrnoException).code
    }
    expect(['EIO', 'ENOENT']).toContain(answer)
    const answeredIn = Date.now() - t0
    expect(answeredIn).toBeLessThan(1000)
    while (!/"code":"FENCED"|"event":"relay.lease_lost"/.test(d.log().slice(logBefore)) && Date.now() - t0 < 1000) await sleep(20)
    expect(d.log().slice(logBefore)).toMatch(/"code":"FENCED"|"event":"relay.lease_lost"/)
    // Let anything the old relay still had queued reach the server: all of it is refused.
    await sleep(1500)
    const [stored] = await store.readMany([where.chunkAddress!])
    expect(stored?.equals(chunkOf(2))).toBe(true)
    // Its stop syncs the write it held unsynced when paused: refused too. The server counted every refusal
    // the old relay met (one refusal may be logged on several lines: at least one counted for any logged).
    expect(await Promise.race([d.stop(), sleep(15_000).then(() => 'no exit in 15 s')])).toBe(0)
    errnoOf(() => closeSync(unsynced!))
    unsynced = undefined
    const refusedByServer = (await store.fenceStatus()).refused - refusedBefore
    const reported = (d.log().slice(logBefore).match(/fencing token \d+ is below \d+/g) ?? []).length
    expect(reported).toBeGreaterThan(0)
    expect(refusedByServer).toBeGreaterThan(0)
    console.log(`stale owner: answered ${answer} ${answeredIn} ms after SIGCONT; the server refused ${refusedByServer} of its requests (it logged ${reported} refusals)`)
  })
})
