/**
 * kill -9 in the middle of a migration — at each step of a job's state
 * machine (after an extent's copy, after its switch, after its bitmap bit,
 * in the middle of releasing the sources) and at a random moment: after a
 * restart the job resumes from its bitmap, finishes, the data is intact and
 * allocated space equals what the maps reference. Each under both crashes:
 * kill -9, and a power cut (the state directory also loses every byte not
 * synced, test/helpers/powercut.ts).
 */
import { closeSync, constants, fsyncSync, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { JobInfo } from '../../lib/control/schema.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { payload, rng, VolumeModel } from '../helpers/model.js'

const MiB = 1024 * 1024

function fill(d: DaemonHandle, name: string, size: number, seed: number): VolumeModel {
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
  // Durable before the job starts: what a power cut may not take.
  fsyncSync(fd)
  closeSync(fd)
  return model
}

function check(d: DaemonHandle, name: string, model: VolumeModel): void {
  const fd = openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(model.size)
    expect(readSync(fd, buf, 0, model.size, 0)).toBe(model.size)
    expect(buf.equals(model.data), differences(buf, model.data)).toBe(true)
  } finally {
    closeSync(fd)
  }
}

/** Which chunks differ, and how many of them read as zeros. */
function differences(got: Buffer, want: Buffer): string {
  const differ: number[] = []
  let zeros = 0
  for (let off = 0; off < want.length; off += CHUNK_SIZE) {
    const g = got.subarray(off, off + CHUNK_SIZE)
    if (g.equals(want.subarray(off, off + CHUNK_SIZE))) continue
    differ.push(off)
    if (g.every((b) => b === 0)) zeros++
  }
  return `${differ.length} of ${want.length / CHUNK_SIZE} chunks differ (${zeros} read as zeros), first at ${differ[0]}`
}

/**
 * Every chunk holds what one of the models holds there: a power cut may take
 * writes that were never fsynced, but never tears a chunk or shows data
 * nobody wrote at that place.
 */
function checkEachChunkFrom(d: DaemonHandle, name: string, models: VolumeModel[]): void {
  const size = models[0]!.size
  const fd = openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(size)
    expect(readSync(fd, buf, 0, size, 0)).toBe(size)
    for (let off = 0; off < size; off += CHUNK_SIZE) {
      const got = buf.subarray(off, off + CHUNK_SIZE)
      expect(
        models.some((m) => m.data.subarray(off, off + CHUNK_SIZE).equals(got)),
        `chunk at ${off}`,
      ).toBe(true)
    }
  } finally {
    closeSync(fd)
  }
}

async function finish(d: DaemonHandle, id: number): Promise<JobInfo> {
  for (;;) {
    const j = await d.client.call('job.show', { id })
    if (j.status === 'concluded') return j
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function consistent(d: DaemonHandle): Promise<void> {
  const st = await d.client.call('storage.list', {})
  const vols = await d.client.call('volume.list', {})
  const pool = await d.client.call('pool.status', {})
  expect(st.storage.reduce((a, s) => a + s.allocated, 0)).toBe(vols.volumes.reduce((a, v) => a + v.allocated, 0) + pool.heldByJobs)
}

describe.each([
  { crash: 'kill -9', powerLoss: false },
  { crash: 'a power cut', powerLoss: true },
])('$crash during a migration', ({ crash, powerLoss }) => {
  let d: DaemonHandle
  beforeAll(async () => {
    d = await startDaemon({ powerLoss })
    for (const s of ['s1', 's2', 's3']) await d.client.call('storage.add', { name: s, capacity: '256M' })
  })
  afterAll(async () => {
    await cleanupAll()
    removeDir(d.dir)
  })

  const points: [string, string, string][] = [
    ['migration.copy:4', 'after an extent is copied, before its switch', 'direct'],
    ['migration.switch:4', 'after the switch, before the bitmap bit', 'direct'],
    ['migration.bitmap:4', 'after the bitmap bit', 'memory'],
    ['migration.switch:9', 'in the second phase of a staged-through-free-space copy', 'free'],
    ['migration.release:1', 'in the middle of releasing the sources', 'direct'],
  ]
  points.forEach(([point, when, mode], i) => {
    it(`resumes and finishes, data intact, after ${crash} ${when} (${point}, ${mode})`, async () => {
      const name = `crash${i}`
      await d.restart({ VVFS_CRASH_AT: point })
      await d.client.call('volume.create', { name, size: '24M' })
      const model = fill(d, name, 24 * MiB, 100 + i)
      // The destination is the system holding least of the volume, so that most extents move.
      const by = new Map((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => [s.storage, s.allocated]))
      const to = ['s1', 's2', 's3'].sort((a, b) => (by.get(a) ?? 0) - (by.get(b) ?? 0))[0]!
      expect(24 * MiB - (by.get(to) ?? 0)).toBeGreaterThan(12 * MiB)
      const job = await d.client.call('migrate.start', { volume: name, to, mode: mode as 'direct' })
      await d.exited()
      await d.crash()
      await d.restart({})
      const done = await finish(d, job.id)
      expect(done.result).toBe('completed')
      expect(done.progress.current).toBe(done.progress.total)
      expect((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => s.storage)).toEqual([to])
      check(d, name, model)
      await consistent(d)
      expect((await d.client.call('pool.status', {})).heldByJobs).toBe(0)
    })
  })

  it(`keeps what the host wrote before the job started, never fsynced, across ${crash} during the job`, async () => {
    await d.restart({ VVFS_CRASH_AT: 'migration.bitmap:3' })
    const name = 'unsynced'
    await d.client.call('volume.create', { name, size: '16M' })
    const model = new VolumeModel(16 * MiB)
    // What the volume held before each pass (a power cut may take never-fsynced passes).
    const before: VolumeModel[] = []
    const r = rng(4242)
    // O_DIRECT, whole extents, no fsync and no close: bulk overwrites that
    // live only in the storage systems' memtables until something syncs them.
    const fd = openSync(d.file(name), constants.O_RDWR | constants.O_DIRECT)
    try {
      for (let pass = 0; pass < 2; pass++) {
        before.push(new VolumeModel(16 * MiB))
        model.data.copy(before[pass]!.data)
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
      await d.crash()
      await d.restart({})
      expect((await finish(d, job.id)).result).toBe('completed')
    } finally {
      try {
        closeSync(fd)
      } catch {
        // the daemon that served this descriptor is gone
      }
    }
    // A kill -9 keeps everything the daemon had accepted; a power cut only
    // what was synced — the job's start syncs the storage systems, but the
    // host never asked for these writes to be durable.
    if (powerLoss) checkEachChunkFrom(d, name, [...before, model])
    else check(d, name, model)
    await consistent(d)
  })

  it(`resumes and finishes after ${crash} at a random moment, after the host fsynced during the job`, async () => {
    await d.client.call('volume.create', { name: 'rnd', size: '32M' })
    const model = fill(d, 'rnd', 32 * MiB, 999)
    const by = new Map((await d.client.call('volume.show', { name: 'rnd' })).allocatedBySystem.map((s) => [s.storage, s.allocated]))
    const to = ['s1', 's2', 's3'].sort((a, b) => (by.get(a) ?? 0) - (by.get(b) ?? 0))[0]!
    const job = await d.client.call('migrate.start', { volume: 'rnd', to, rate: '4M' })
    await new Promise((r) => setTimeout(r, 500 + Math.floor(Math.random() * 1500)))
    const mid = await d.client.call('job.show', { id: job.id })
    expect(mid.status).toBe('running')
    // The host fsyncs while the job runs: whatever that makes durable (the
    // switches of extents already moved) must not point at copies that are not.
    const fd = openSync(d.file('rnd'), 'r+')
    fsyncSync(fd)
    closeSync(fd)
    await d.crash()
    await d.restart()
    const resumed = await d.client.call('job.show', { id: job.id })
    // Progress is in the page cache at once, on disk only when something syncs
    // it: a power cut may set it back (the data check below is what counts).
    if (!powerLoss) expect(resumed.progress.current).toBeGreaterThanOrEqual(mid.progress.current)
    const done = await finish(d, job.id)
    expect(done.result).toBe('completed')
    check(d, 'rnd', model)
    await consistent(d)
  })
})
