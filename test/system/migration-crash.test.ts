/**
 * kill -9 in the middle of a migration — at each step of a job's state
 * machine (after an extent's copy, after its switch, after its bitmap bit,
 * in the middle of releasing the sources) and at a random moment: after a
 * restart the job resumes from its bitmap, finishes, the data is intact and
 * allocated space equals what the maps reference.
 */
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { JobInfo } from '../../lib/control/schema.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { payload, rng, VolumeModel } from '../helpers/model.js'

const MiB = 1024 * 1024
let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  for (const s of ['s1', 's2', 's3']) await d.client.call('storage.add', { name: s, capacity: '256M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

function fill(name: string, size: number, seed: number): VolumeModel {
  const model = new VolumeModel(size)
  const r = rng(seed)
  const fd = openSync(d.file(name), 'r+')
  for (let off = 0; off < size; off += 256 * 1024) {
    const data = r.next() < 0.2 ? Buffer.alloc(256 * 1024) : payload(r, 256 * 1024)
    writeSync(fd, data, 0, data.length, off)
    model.write(off, data)
  }
  // Scattered small writes become fragments: they move too.
  for (let i = 0; i < 30; i++) {
    const off = r.int(0, size - 512)
    const data = payload(r, 300)
    writeSync(fd, data, 0, data.length, off)
    model.write(off, data)
  }
  closeSync(fd)
  return model
}

function check(name: string, model: VolumeModel): void {
  const fd = openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(model.size)
    expect(readSync(fd, buf, 0, model.size, 0)).toBe(model.size)
    expect(buf.equals(model.data)).toBe(true)
  } finally {
    closeSync(fd)
  }
}

async function finish(id: number): Promise<JobInfo> {
  for (;;) {
    const j = await d.client.call('job.show', { id })
    if (j.status === 'concluded') return j
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function consistent(): Promise<void> {
  const st = await d.client.call('storage.list', {})
  const vols = await d.client.call('volume.list', {})
  const pool = await d.client.call('pool.status', {})
  expect(st.storage.reduce((a, s) => a + s.allocated, 0)).toBe(vols.volumes.reduce((a, v) => a + v.allocated, 0) + pool.heldByJobs)
}

describe('kill -9 during a migration', () => {
  const points: [string, string, string][] = [
    ['migration.copy:4', 'after an extent is copied, before its switch', 'direct'],
    ['migration.switch:4', 'after the switch, before the bitmap bit', 'direct'],
    ['migration.bitmap:4', 'after the bitmap bit', 'memory'],
    ['migration.switch:9', 'in the second phase of a staged-through-free-space copy', 'free'],
    ['migration.release:1', 'in the middle of releasing the sources', 'direct'],
  ]
  points.forEach(([point, when, mode], i) => {
    it(`resumes and finishes, data intact, when killed ${when} (${point}, ${mode})`, async () => {
      const name = `crash${i}`
      await d.restart({ VVFS_CRASH_AT: point })
      await d.client.call('volume.create', { name, size: '24M' })
      const model = fill(name, 24 * MiB, 100 + i)
      // The destination is the system holding least of the volume, so that most extents move.
      const by = new Map((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => [s.storage, s.allocated]))
      const to = ['s1', 's2', 's3'].sort((a, b) => (by.get(a) ?? 0) - (by.get(b) ?? 0))[0]!
      expect(24 * MiB - (by.get(to) ?? 0)).toBeGreaterThan(12 * MiB)
      const job = await d.client.call('migrate.start', { volume: name, to, mode: mode as 'direct' })
      await d.exited()
      await d.restart({})
      const done = await finish(job.id)
      expect(done.result).toBe('completed')
      expect(done.progress.current).toBe(done.progress.total)
      expect((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => s.storage)).toEqual([to])
      check(name, model)
      await consistent()
      expect((await d.client.call('pool.status', {})).heldByJobs).toBe(0)
    })
  })

  it('keeps what the host wrote before the job started, never fsynced, across a kill -9 during the job', async () => {
    await d.restart({ VVFS_CRASH_AT: 'migration.bitmap:3' })
    const name = 'unsynced'
    await d.client.call('volume.create', { name, size: '16M' })
    const model = new VolumeModel(16 * MiB)
    const r = rng(4242)
    // O_DIRECT, whole extents, no fsync and no close: bulk overwrites that
    // live only in the storage systems' memtables until something syncs them.
    const fd = openSync(d.file(name), constants.O_RDWR | constants.O_DIRECT)
    try {
      for (let pass = 0; pass < 2; pass++) {
        for (let off = 0; off < 16 * MiB; off += MiB) {
          const data = Buffer.alloc(MiB)
          payload(r, MiB).copy(data)
          writeSync(fd, data, 0, MiB, off)
          model.write(off, data)
        }
      }
      const by = new Map((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => [s.storage, s.allocated]))
      const to = ['s1', 's2', 's3'].sort((a, b) => (by.get(a) ?? 0) - (by.get(b) ?? 0))[0]!
      const job = await d.client.call('migrate.start', { volume: name, to })
      await d.exited()
      await d.restart({})
      expect((await finish(job.id)).result).toBe('completed')
    } finally {
      try {
        closeSync(fd)
      } catch {
        // the daemon that served this descriptor is gone
      }
    }
    check(name, model)
    await consistent()
  })

  it('resumes and finishes after a kill -9 at a random moment, with a host writing', async () => {
    await d.client.call('volume.create', { name: 'rnd', size: '32M' })
    const model = fill('rnd', 32 * MiB, 999)
    const by = new Map((await d.client.call('volume.show', { name: 'rnd' })).allocatedBySystem.map((s) => [s.storage, s.allocated]))
    const to = ['s1', 's2', 's3'].sort((a, b) => (by.get(a) ?? 0) - (by.get(b) ?? 0))[0]!
    const job = await d.client.call('migrate.start', { volume: 'rnd', to, rate: '4M' })
    await new Promise((r) => setTimeout(r, 500 + Math.floor(Math.random() * 1500)))
    const mid = await d.client.call('job.show', { id: job.id })
    expect(mid.status).toBe('running')
    await d.kill9()
    await d.restart()
    const resumed = await d.client.call('job.show', { id: job.id })
    expect(resumed.progress.current).toBeGreaterThanOrEqual(mid.progress.current)
    const done = await finish(job.id)
    expect(done.result).toBe('completed')
    check('rnd', model)
    await consistent()
  })
})
