/**
 * Issue 15, takeover after a crash (real etcd, two storage servers and two
 * relays as their own processes, started by the test): the owner relay is
 * killed with kill -9 while a writer makes fsync'd writes to its volume and
 * logs each write after its fsync returned (outside vvfs); the standby takes
 * the volume over — claims it, fences the servers, rebuilds the map from the
 * map log on the volume's log server — and serves its file in its own host
 * mount, where every logged write reads back. A migration that was running
 * on the owner resumes on the new owner from its bitmap and completes.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { blockData } from '../helpers/block-data.mjs'
import { placement, waitForJob } from '../remote/servers.js'
import { relaysForFile, storageServers } from './relays.js'

const WRITER = resolve(import.meta.dirname, '../helpers/crash-writer.mjs')
const TTL_MS = 3000
const { relay, ownerAndStandby } = relaysForFile(TTL_MS)

/** The writes the writer logged after their fsync returned, each read back from `file`: the ones that differ. */
async function lostWrites(file: string, log: string): Promise<{ checked: number; lost: string[] }> {
  const writes = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { id: number; offset: number; length: number }) : []
  const fh = await open(file, 'r')
  const lost: string[] = []
  try {
    for (const w of writes) {
      const buf = Buffer.alloc(w.length)
      await fh.read(buf, 0, w.length, w.offset)
      if (!buf.equals(blockData(w.id, w.length))) lost.push(`write ${w.id} (${w.length} bytes at ${w.offset})`)
    }
  } finally {
    await fh.close()
  }
  return { checked: writes.length, lost }
}

async function waitFor(what: string, ms: number, ok: () => boolean | Promise<boolean>): Promise<number> {
  const start = Date.now()
  while (!(await ok())) {
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return Date.now() - start
}

describe('takeover after kill -9 of the owner', () => {
  it('every write whose fsync returned before the kill reads back through the standby\'s mount', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'owner', standby: 'standby', systems: 'far', capacity: '128M', volume: 'v', size: '96M' })
    expect((await b.client.call('volume.list', {})).volumes).toEqual([])

    const log = join(a.dir, 'durable.log')
    const writer = spawn(process.execPath, [WRITER, a.file('v'), log, '4241', '20'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let said = ''
    writer.stdout.on('data', (c) => (said += String(c)))
    writer.stderr.on('data', (c) => (said += String(c)))
    const writerDone = new Promise((r) => writer.once('exit', r))
    await new Promise((r) => setTimeout(r, 2000 + Math.floor(Math.random() * 1000)))
    const killedAt = Date.now()
    await a.kill9()
    await writerDone

    // The owner's lease expires within the TTL; the standby takes the volume and its file appears in its mount.
    await waitFor('the volume served by the standby', 4 * TTL_MS, () => existsSync(b.file('v')))
    const takeover = Date.now() - killedAt
    const { checked, lost } = await lostWrites(b.file('v'), log)
    expect(lost, `writer: ${said}`).toEqual([])
    expect(checked, `writer: ${said}`).toBeGreaterThan(10)
    const relays = (await b.client.call('relay.list', {})).relays
    expect(relays.map((r) => [r.relay, r.volumes.map((v) => v.name)])).toEqual([['standby', ['v']]])
    expect(b.log()).toMatch(/"event":"relay.map_loaded"/)
    // The new owner writes: its token is above the old one's fence.
    const fh = await open(b.file('v'), 'r+')
    try {
      await fh.write(Buffer.alloc(4096, 9), 0, 4096, 0)
      await fh.sync()
    } finally {
      await fh.close()
    }
    console.log(`takeover: ${checked} fsync'd writes checked; volume served by the standby ${takeover} ms after kill -9 (TTL ${TTL_MS} ms)`)
    expect(await b.stop()).toBe(0)
  })
})

describe('takeover of a volume under migration', () => {
  it('a migration running when the owner is killed resumes on the new owner from where it was and completes; the volume reads back whole', async () => {
    const { keyFile, ports } = await storageServers(2)
    const a = await relay('mover')
    await a.client.call('storage.add', { name: 'from', remote: `127.0.0.1:${ports[0]}`, peerKey: keyFile, capacity: '64M' })
    await a.client.call('volume.create', { name: 'w', size: '12M' })
    const image = Buffer.alloc(12 * 1024 * 1024)
    for (let i = 0; i < image.length; i += 4) image.writeUInt32LE((i * 2654435761) >>> 0, i)
    const fh = await open(a.file('w'), 'r+')
    try {
      await fh.write(image, 0, image.length, 0)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await a.client.call('storage.add', { name: 'to', remote: `127.0.0.1:${ports[1]}`, peerKey: keyFile, capacity: '64M' })
    const b = await relay('heir', ['--standby'])
    const job = await a.client.call('migrate.start', { volume: 'w', to: 'to', rate: '2M', keep: '0s' })
    const MiB = 1024 * 1024
    const before = await waitForJob(a, job.id, { ms: 10_000, until: (j) => j.progress.current >= 3 * MiB, what: '3 MiB copied' })
    expect(before.progress.current).toBeLessThan(before.progress.total)
    await a.kill9()

    await waitFor('the volume served by the new owner', 4 * TTL_MS, () => existsSync(b.file('w')))
    // The file appears as soon as the volume is served; its jobs are adopted (their bitmaps read) just after.
    const taken = new RegExp(`"event":"relay.volume_taken".*"jobs":\\[${job.id}\\]`)
    await waitFor('the migration adopted by the new owner', 10_000, () => taken.test(b.log()))
    const resumed = await b.client.call('job.show', { id: job.id })
    // From its persisted progress (at most the steps under way are done again), not from the start.
    expect(resumed.progress.current).toBeGreaterThanOrEqual(before.progress.current - 2 * MiB)
    const done = await waitForJob(b, job.id, { ms: 20_000 })
    expect(done.result).toBe('completed')
    expect(await placement(b, 'w')).toEqual(['to'])
    const back = Buffer.alloc(image.length)
    const rh = await open(b.file('w'), 'r')
    try {
      await rh.read(back, 0, back.length, 0)
    } finally {
      await rh.close()
    }
    expect(back.equals(image)).toBe(true)
    expect(await b.stop()).toBe(0)
  })
})
