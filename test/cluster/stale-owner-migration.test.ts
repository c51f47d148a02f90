/**
 * Issue 15, stale owner with the pause landing mid-migration (real etcd, two
 * storage servers and two relays as their own processes, started by the
 * test): relay `paused` owns volume w and migrates it from server `from` to
 * server `to` (rate-limited, so it is under way); it is SIGSTOPped past its
 * lease TTL; the standby `heir` takes the volume over — fences both servers,
 * rebuilds the map, resumes the migration from its bitmap — and writes to
 * the volume; then the old relay gets SIGCONT. Shown:
 * - none of the old relay's writes or copies is accepted: the servers'
 *   FENCED-refusal counters (FENCE_STATUS) rise with the refusals the old
 *   relay reports (a write it held unsynced when paused is sent or synced
 *   after SIGCONT at the latest by its stop), and the volume reads back
 *   exactly the image plus the heir's write once the migration completed
 *   on the heir;
 * - a storage server added after the relay took its volumes is fenced at
 *   its token (it wrote there with token 0 before);
 * - the old relay reports FENCED (or that its lease expired) within 1 s,
 *   and its host write is refused (EIO, or ENOENT once the volume left its
 *   mount);
 * - the migration completes on the heir; every extent is on `to`.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, writeSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import type { RemoteChunkStore } from '../../lib/storage/remote/client.js'
import { PeerKey } from '../../lib/wire/auth.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { errnoOf, writeAndFsync, writeSynced } from '../helpers/synced-write.js'
import { openStore, placement, waitForJob } from '../remote/servers.js'
import { relaysForFile, storageServers } from './relays.js'

const TTL_MS = 3000
const MiB = 1024 * 1024
const { relay } = relaysForFile(TTL_MS)
let paused: DaemonHandle | undefined
/** A descriptor the test holds open on the old relay's volume file. */
let held: number | undefined
// Registered after relaysForFile's: runs before its cleanup, which could not stop a stopped process.
afterAll(() => {
  if (paused && paused.proc.exitCode === null && paused.proc.signalCode === null) paused.proc.kill('SIGCONT')
  if (held !== undefined) errnoOf(() => closeSync(held!))
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function waitFor(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(50)
  }
}

/** The old relay's log lines in which a storage server refused its token (one refusal may be logged on several lines). */
function serverRefusals(log: string): number {
  return (log.match(/fencing token \d+ is below \d+/g) ?? []).length
}

describe('stale owner, paused mid-migration', () => {
  it('SIGSTOP during a migration past the TTL, the heir takes over, resumes the migration and writes, SIGCONT: nothing of the old relay is accepted, FENCED within 1 s, the migration completes on the heir', async () => {
    const { keyFile, ports } = await storageServers(2)
    const a = (paused = await relay('paused'))
    await a.client.call('storage.add', { name: 'from', remote: `127.0.0.1:${ports[0]}`, peerKey: keyFile, capacity: '64M' })
    await a.client.call('volume.create', { name: 'w', size: '12M' })
    const image = Buffer.alloc(12 * MiB)
    for (let i = 0; i < image.length; i += 4) image.writeUInt32LE((i * 2654435761) >>> 0, i)
    await writeAndFsync(a.file('w'), image, 0)
    await a.client.call('storage.add', { name: 'to', remote: `127.0.0.1:${ports[1]}`, peerKey: keyFile, capacity: '64M' })
    const b = await relay('heir', ['--standby'])

    // Each server's fence and FENCED count, read over its own connection (FENCE_STATUS).
    const key = new PeerKey(Buffer.from(readFileSync(keyFile, 'utf8').trim()))
    const systems = (await a.client.call('storage.list', {})).storage
    const servers: [string, RemoteChunkStore][] = ['from', 'to'].map((name, i) => [name, openStore(key, ports[i]!, { sid: systems.find((s) => s.name === name)!.id, name, claim: false, epoch: 0 })])
    const refused = async () => Object.fromEntries(await Promise.all(servers.map(async ([n, s]) => [n, (await s.fenceStatus()).refused] as const))) as Record<string, number>
    const oldToken = (await a.client.call('relay.list', {})).relays.find((r) => r.self)!.volumes[0]!.token
    // A server added after the relay took its volumes is fenced at its token too (it wrote there with token 0).
    for (const [name, s] of servers) expect((await s.fenceStatus()).fence, `${name}'s fence`).toBe(oldToken)
    const atStart = await refused()

    const job = await a.client.call('migrate.start', { volume: 'w', to: 'to', rate: '2M', keep: '0s' })
    const before = await waitForJob(a, job.id, { ms: 10_000, until: (j) => j.progress.current >= 3 * MiB, what: '3 MiB copied' })
    expect(before.progress.current).toBeLessThan(before.progress.total)
    // A write the host has not synced when the pause lands, its file kept open (a close flushes: it would sync it),
    // to an extent not copied yet (on `from`, which the copy does not sync): the old relay's next sync of `from` —
    // at the latest its stop's — meets the heir's fence.
    const unsynced = { offset: 10 * MiB, data: Buffer.alloc(65536, 0xcc) }
    held = openSync(a.file('w'), constants.O_RDWR)
    writeSync(held, unsynced.data, 0, unsynced.data.length, unsynced.offset)
    a.proc.kill('SIGSTOP')

    // Its lease expires; the heir takes the volume (and the migration) over and fences both servers.
    await waitFor('the volume and its migration taken by the heir', 6 * TTL_MS, () => /"event":"relay.volume_taken"/.test(b.log()))
    expect(b.log()).toMatch(new RegExp(`"event":"relay.volume_taken".*"jobs":\\[${job.id}\\]`))
    expect(existsSync(b.file('w'))).toBe(true)
    const heirToken = (await b.client.call('relay.list', {})).relays.find((r) => r.self)!.volumes[0]!.token
    expect(heirToken).toBeGreaterThan(oldToken)
    for (const [name, s] of servers) expect((await s.fenceStatus()).fence, `${name}'s fence`).toBeGreaterThanOrEqual(heirToken)
    // The heir writes (the first MiB: copied by the old relay before the pause, so its stale copy would clash).
    const heirWrite = Buffer.alloc(MiB, 0x5a)
    await writeAndFsync(b.file('w'), heirWrite, 0)
    heirWrite.copy(image, 0)

    const logBefore = a.log().length
    a.proc.kill('SIGCONT')
    const t0 = Date.now()
    let answer: string | undefined
    try {
      answer = writeSynced(a.file('w'), 2 * MiB, Buffer.alloc(65536, 0xee))
    } catch (err) {
      answer = (err as NodeJS.ErrnoException).code
    }
    expect(['EIO', 'ENOENT']).toContain(answer)
    await waitFor('FENCED or lease_lost in the old relay\'s log', 1000, () => /"code":"FENCED"|"event":"relay.lease_lost"/.test(a.log().slice(logBefore)))
    const reportedWithin = Date.now() - t0
    expect(reportedWithin).toBeLessThan(1000)

    // The migration completes on the heir; everything is on `to` and reads back: the image and the heir's write.
    const done = await waitForJob(b, job.id, { ms: 30_000 })
    expect(done.result).toBe('completed')
    expect(await placement(b, 'w')).toEqual(['to'])
    // The old relay drops the volume (its lease is gone) and rejoins owning nothing; whatever it sent until then was refused.
    await waitFor('the old relay rejoined', 10_000, () => /"event":"relay.rejoined"/.test(a.log().slice(logBefore)))
    const back = readFileSync(b.file('w'))
    // The unsynced write: each 4 KiB chunk holds the image or its bytes (it was not promised); all else is exact.
    const at = unsynced.offset
    for (let c = at; c < at + unsynced.data.length; c += 4096) {
      const chunk = back.subarray(c, c + 4096)
      expect(chunk.equals(image.subarray(c, c + 4096)) || chunk.equals(unsynced.data.subarray(0, 4096)), `chunk at ${c}`).toBe(true)
    }
    image.copy(back, at, at, at + unsynced.data.length)
    expect(back.equals(image)).toBe(true)
    // Its stop syncs what it still held: refused too, and counted.
    expect(await Promise.race([a.stop(), sleep(15_000).then(() => `no exit in 15 s; its log ends:\n${a.log().split('\n').slice(-25).join('\n')}`)])).toBe(0)
    errnoOf(() => closeSync(held!))
    held = undefined
    const atEnd = await refused()
    const countedRefusals = atEnd.from! - atStart.from! + (atEnd.to! - atStart.to!)
    const reported = serverRefusals(a.log().slice(logBefore))
    // The old relay met refusals (at least the unsynced write's sync on `from`), and the servers counted them.
    expect(reported).toBeGreaterThan(0)
    expect(countedRefusals).toBeGreaterThan(0)
    expect(atEnd.from! - atStart.from!, 'refused by from').toBeGreaterThan(0)
    console.log(
      `stale owner mid-migration: reported FENCED ${reportedWithin} ms after SIGCONT; servers refused ${JSON.stringify({ from: atEnd.from! - atStart.from!, to: atEnd.to! - atStart.to! })} of the old relay's requests (it logged ${reported} server refusals); migration resumed at ${before.progress.current} of ${before.progress.total} bytes and completed on the heir`,
    )
    expect(await b.stop()).toBe(0)
  })
})
