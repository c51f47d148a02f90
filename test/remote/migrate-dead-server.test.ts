/**
 * A migration off a storage server that dies (issue 14, "failures are
 * answers"): a volume whose extents lie on a `vvfs storage serve` process,
 * migrated to a local system; the server is killed (kill -9) mid-job. The
 * job does not hang and corrupts nothing: it pauses with the storage error
 * (IO_ERROR, the remote deadline passed) and the volume stays whole at its
 * source; the server restarted on the same directory and port, `job.resume`
 * finishes it and every byte the writer wrote reads back. Then `storage
 * drain` of the remote system onto the local one completes and verifies.
 * Real daemon (built dist/), FUSE, server processes on loopback.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { payload, rng, VolumeModel } from '../helpers/model.js'
import { cleanupWithDaemon, freePort, newKey, placement, spawnServer, tempDir, waitForJob, whyJob, type ServerProcess } from './servers.js'

const MiB = 1024 * 1024
/** The remote deadline of this daemon: short, so the dead server is an answer within seconds. */
const DEADLINE_MS = 1500
let d: DaemonHandle
let key: Awaited<ReturnType<typeof newKey>>
let far: { dir: string; port: number; proc: ServerProcess }
const model = new VolumeModel(16 * MiB)

async function serveFar(): Promise<void> {
  const dir = far?.dir ?? `${await tempDir()}/far`
  const port = far?.port ?? (await freePort())
  far = { dir, port, proc: await spawnServer({ dir, port, keyFile: key.file, capacity: '64M' }) }
}

beforeAll(async () => {
  key = await newKey()
  await serveFar()
  d = await startDaemon({ env: { VVFS_REMOTE_DEADLINE_MS: String(DEADLINE_MS) } })
  // The remote system first and alone: the volume's every extent is placed on it.
  await d.client.call('storage.add', { name: 'far', remote: `127.0.0.1:${far.port}`, peerKey: key.file })
  await d.client.call('volume.create', { name: 'v', size: '16M' })
  const r = rng(1414)
  const fd = openSync(d.file('v'), 'r+')
  try {
    for (let off = 0; off < model.size; off += MiB) {
      const data = payload(r, MiB)
      writeSync(fd, data, 0, data.length, off)
      model.write(off, data)
    }
  } finally {
    closeSync(fd)
  }
  await d.client.call('storage.add', { name: 'near', capacity: '128M' })
}, 60_000)

afterAll(() => cleanupWithDaemon(d))

async function connected(name: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await d.client.call('storage.list', {})).storage.find((s) => s.name === name)?.connection === 'ready') return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${name} did not reconnect`)
}

function readAll(): Buffer {
  const all = Buffer.alloc(model.size)
  const fd = openSync(d.file('v'), 'r')
  try {
    readSync(fd, all, 0, model.size, 0)
  } finally {
    closeSync(fd)
  }
  return all
}

describe('a migration off a storage server that dies', { timeout: 60_000 }, () => {
  it('pauses with IO_ERROR within the deadline when the server is killed (kill -9) mid-job, and completes after the server returns and the job is resumed: every byte verified', async () => {
    expect(await placement(d, 'v')).toEqual(['far'])
    // 16 MiB at 4 MiB/s: the job is mid-copy for seconds.
    const job = await d.client.call('migrate.start', { volume: 'v', to: 'near', rate: '4M', keep: '0s' })
    await waitForJob(d, job.id, { until: (j) => j.progress.current >= 2 * MiB, ms: 20_000, what: 'past 2 MiB' })
    far.proc.proc.kill('SIGKILL')
    await far.proc.exited
    const killedAt = Date.now()
    const paused = await waitForJob(d, job.id, { until: (j) => j.status === 'paused' || j.status === 'concluded', ms: 4 * DEADLINE_MS + 5000, what: 'paused' })
    expect(paused.status, whyJob(d, paused)).toBe('paused')
    expect(paused.error?.code).toBe('IO_ERROR')
    expect(paused.progress.current).toBeLessThan(model.size)
    const pausedAfter = Date.now() - killedAt
    // It stays paused while the server is gone (no retry loop, no conclusion) and the volume is still the source's.
    await new Promise((r) => setTimeout(r, 500))
    expect((await d.client.call('job.show', { id: job.id })).status).toBe('paused')
    expect(await placement(d, 'v')).toContain('far')

    await serveFar()
    await connected('far')
    await d.client.call('job.resume', { id: job.id })
    const done = await waitForJob(d, job.id, { ms: 30_000 })
    expect(done.result, whyJob(d, done)).toBe('completed')
    expect(await placement(d, 'v')).toEqual(['near'])
    expect(readAll().equals(model.data)).toBe(true)
    console.log(`migration off a dead server: paused ${pausedAfter} ms after the kill (deadline ${DEADLINE_MS} ms)`)
  })

  it('storage drain of the remote system onto the local one completes and the data verifies', async () => {
    const back = await d.client.call('migrate.start', { volume: 'v', to: 'far', keep: '0s' })
    expect((await waitForJob(d, back.id, { ms: 30_000 })).result).toBe('completed')
    expect(await placement(d, 'v')).toEqual(['far'])
    const drain = await d.client.call('storage.drain', { name: 'far', keep: '0s' })
    const done = await waitForJob(d, drain.id, { ms: 30_000 })
    expect(done.result, whyJob(d, done)).toBe('completed')
    expect(await placement(d, 'v')).toEqual(['near'])
    const pool = await d.client.call('pool.status', {})
    expect(pool.systems.find((s) => s.name === 'far')).toMatchObject({ allocated: 0, capacity: 64 * MiB })
    expect(readAll().equals(model.data)).toBe(true)
  })
})
