/**
 * Issue 15, partition: the owner relay runs in a network namespace made by
 * this test (nsenter --net: its FUSE mount stays visible here) and reaches
 * etcd and the storage server over a veth pair; the test cuts only its route
 * to etcd (a blackhole route in the namespace). The owner stops
 * acknowledging — its host writes get EIO — within ⅔·TTL; the standby takes
 * the volume over with everything the owner acknowledged; when the route
 * returns, the old owner learns its lease expired, stops serving the volume
 * (its file leaves its mount) and rejoins the cluster as a relay that owns
 * nothing; stopped (SIGTERM) while the host still holds its file open, it
 * exits cleanly within a bound.
 *
 * What a refused write leaves: its data reached the relay stack (and maybe
 * the storage server and the map log) before the refusal, so its slot reads
 * back, chunk by chunk, either what was acknowledged there before or the
 * refused bytes; every other slot reads exactly what was acknowledged last.
 */
import { spawnSync } from 'node:child_process'
import { closeSync, constants, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Result } from '../../lib/control/schema.js'
import { cleanupAll, removeDir, sh, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { errnoOf, writeSynced } from '../helpers/synced-write.js'
import { cleanup, freePort, newKey, spawnServerIn, tempDir } from '../remote/servers.js'

const NS = 'vvfs-partition'
const HOST_IF = 'vvpart-h'
const NS_IF = 'vvpart-n'
const NET = '10.211.0'
/** The storage server listens here (host side). */
const SERVER_ADDR = `${NET}.1`
/** etcd listens here (host side too): the route the test cuts. */
const ETCD_ADDR = `${NET}.3`
const RELAY_ADDR = `${NET}.2`
const TTL_MS = 3000
let etcd: EtcdServer
const daemons: DaemonHandle[] = []
/** A descriptor the test holds open on the owner's volume file (closed after the test, also when it failed). */
let held: number | undefined

function removeNamespace(): void {
  spawnSync('ip', ['link', 'del', HOST_IF], { stdio: 'ignore' })
  spawnSync('ip', ['netns', 'del', NS], { stdio: 'ignore' })
}

function etcdRoute(state: 'cut' | 'back'): void {
  sh('ip', ['netns', 'exec', NS, 'ip', 'route', state === 'cut' ? 'add' : 'del', 'blackhole', `${ETCD_ADDR}/32`])
}

beforeAll(async () => {
  removeNamespace()
  sh('ip', ['netns', 'add', NS])
  sh('ip', ['link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', NS_IF])
  sh('ip', ['link', 'set', NS_IF, 'netns', NS])
  sh('ip', ['addr', 'add', `${SERVER_ADDR}/24`, 'dev', HOST_IF])
  sh('ip', ['addr', 'add', `${ETCD_ADDR}/24`, 'dev', HOST_IF])
  sh('ip', ['link', 'set', HOST_IF, 'up'])
  sh('ip', ['netns', 'exec', NS, 'ip', 'addr', 'add', `${RELAY_ADDR}/24`, 'dev', NS_IF])
  sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', NS_IF, 'up'])
  sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up'])
  etcd = await startEtcd({ host: ETCD_ADDR })
}, 30_000)
afterAll(async () => {
  if (held !== undefined) errnoOf(() => closeSync(held!))
  await cleanupAll()
  for (const d of daemons) removeDir(d.dir)
  await cleanup()
  await stopAllEtcd()
  removeNamespace()
})

async function relay(id: string, opts: { netns?: string; extra?: string[] } = {}): Promise<DaemonHandle> {
  const d = await startDaemon({ netns: opts.netns, extraArgs: ['--etcd', etcd.url, '--relay-id', id, '--lease-ttl', `${TTL_MS / 1000}s`, ...(opts.extra ?? [])] })
  daemons.push(d)
  return d
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const block = (byte: number) => Buffer.alloc(65536, byte)

async function until(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(50)
  }
}

describe('partition of the owner from etcd', () => {
  it('the owner stops acknowledging within ⅔·TTL, the standby takes the volume with every acknowledged write, the old owner rejoins as a non-owner', async () => {
    const key = await newKey()
    const port = await freePort()
    await spawnServerIn(null, { dir: await tempDir(), host: SERVER_ADDR, port, keyFile: key.file })
    const a = await relay('cut-off', { netns: NS })
    await a.client.call('storage.add', { name: 'far', remote: `${SERVER_ADDR}:${port}`, peerKey: key.file, capacity: '64M' })
    await a.client.call('volume.create', { name: 'v', size: '8M' })
    const b = await relay('across', { extra: ['--standby'] })
    // Slot → the byte the owner acknowledged there last (fsync returned).
    const acked = new Map<number, number>()
    for (let slot = 0; slot < 8; slot++) {
      expect(writeSynced(a.file('v'), slot * 65536, block(slot + 1))).toBeUndefined()
      acked.set(slot, slot + 1)
    }

    // Written after the cut through one descriptor the host keeps open, also after its write is refused (as a
    // loop device does): the old owner must still stop cleanly (its last sync at stop refused — FENCED — it did
    // not exit: the storage server's connection stayed open).
    held = openSync(a.file('v'), constants.O_RDWR)
    const writeHeld = (offset: number, data: Buffer) =>
      errnoOf(() => {
        writeSync(held!, data, 0, data.length, offset)
        fsyncSync(held!)
      })
    etcdRoute('cut')
    const cutAt = Date.now()
    let failedAfter = -1
    /** When (ms after the cut) the last write the owner acknowledged began. */
    let lastAckedStart = -1
    /** The write the owner refused: its data reached the relay stack before the refusal, and maybe the server. */
    let refused: { slot: number; byte: number } | undefined
    for (let i = 0; !refused && Date.now() - cutAt < 3 * TTL_MS; i++) {
      const slot = i % 64
      const byte = 100 + (i % 100)
      const startedAfter = Date.now() - cutAt
      const answer = writeHeld(slot * 65536, block(byte))
      if (answer === 'EIO') {
        failedAfter = Date.now() - cutAt
        refused = { slot, byte }
        break
      }
      // Acknowledged or refused with EIO: any other answer is a defect.
      expect(answer, `write ${i} (slot ${slot})`).toBeUndefined()
      lastAckedStart = startedAfter
      acked.set(slot, byte)
      await sleep(20)
    }
    expect(refused, 'a write refused after the cut').toBeDefined()
    // Its last keep-alive went out before the cut, so no write begun ⅔·TTL after it is acknowledged (the
    // time a refusal takes to reach the test is the machine's, not the claim's: it is reported, not bounded).
    expect(lastAckedStart).toBeLessThan((2 / 3) * TTL_MS)

    // The lease expires; the standby takes the volume over with every write the owner acknowledged.
    await until('the volume served by the standby', 4 * TTL_MS, () => existsSync(b.file('v')))
    const served = readFileSync(b.file('v'))
    const slotOf = (slot: number) => served.subarray(slot * 65536, (slot + 1) * 65536)
    /** The distinct bytes a slot holds, for the failure message. */
    const bytesIn = (slot: number) => [...new Set(slotOf(slot))].join(',')
    for (const [slot, byte] of acked) {
      if (slot === refused!.slot) continue
      expect(slotOf(slot).every((x) => x === byte), `slot ${slot}: acknowledged ${byte}, reads ${bytesIn(slot)}`).toBe(true)
    }
    // The refused write's slot: its 4 KiB chunks hold the byte acknowledged before it or the refused one (a
    // write that fails may have reached the server before the new owner's fence, in part or in whole).
    const before = acked.get(refused!.slot) ?? 0
    const chunks = Array.from({ length: 16 }, (_, c) => slotOf(refused!.slot).subarray(c * 4096, (c + 1) * 4096))
    expect(
      chunks.every((c) => c.every((x) => x === before) || c.every((x) => x === refused!.byte)),
      `slot ${refused!.slot} (refused write of ${refused!.byte} over ${before}): reads ${bytesIn(refused!.slot)}`,
    ).toBe(true)
    expect(writeSynced(b.file('v'), 0, block(250))).toBeUndefined()

    // The route returns: the old owner hears its lease is gone, stops serving v and rejoins owning nothing.
    etcdRoute('back')
    await until('the old owner rejoined', 20_000, () => /"event":"relay.rejoined"/.test(a.log())).catch((err: Error) => {
      throw new Error(`${err.message}; its log:\n${a.log().split('\n').filter((l) => /relay\.|keepalive|lease/.test(l)).slice(-12).join('\n')}`)
    })
    await until('v gone from the old owner\'s mount', 5_000, () => !existsSync(a.file('v')))
    const { relays } = (await b.client.call('relay.list', {})) as Result<'relay.list'>
    expect(relays.map((r) => [r.relay, r.volumes.map((v) => v.name)])).toEqual([
      ['across', ['v']],
      ['cut-off', []],
    ])
    expect((await a.client.call('volume.list', {})).volumes).toEqual([])
    expect(readFileSync(b.file('v')).subarray(0, 65536).every((x) => x === 250)).toBe(true)
    const refusedReads = bytesIn(refused!.slot)
    console.log(`partition: first refusal returned ${failedAfter} ms after the cut, last acknowledged write began at ${lastAckedStart} ms (⅔·TTL = ${(2 / 3) * TTL_MS} ms); ${acked.size} slots acknowledged read back on the standby; the refused write's slot reads ${refusedReads} (before ${before}, refused ${refused!.byte})`)
    // A stop that does not end fails here, not at the test's timeout.
    const stopped = (d: DaemonHandle) => Promise.race([d.stop(), sleep(15_000).then(() => `${d.dir}: no exit in 15 s; its log ends:\n${d.log().split('\n').slice(-25).join('\n')}`)])
    expect(await stopped(a)).toBe(0)
    expect(errnoOf(() => closeSync(held!))).toBe('ENOTCONN') // its mount went with the old owner
    held = undefined
    expect(await stopped(b)).toBe(0)
  })
})
