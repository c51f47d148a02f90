/**
 * Online migration in-process: each kind (migrate, drain) and each copy mode
 * moves the volume while a writer keeps doing verified random writes and
 * reads; pause/resume, cancel, rollback within and after the retention
 * window. Crash safety (kill -9 at each step) is in test/system/.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { Manager } from '../../lib/manager/manager.js'
import type { CopyMode } from '../../lib/migration/job.js'
import type { VvfsError } from '../../lib/errors.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openManager, withSystems } from '../helpers/manager.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'
import { codeOf } from '../helpers/errors.js'

const MiB = 1024 * 1024
let m: Manager | undefined
let dir: string
afterEach(async () => {
  await m?.close()
  m = undefined
  removeDir(dir)
})

async function setup(systems: [string, string][] = [['s1', '64M'], ['s2', '64M'], ['s3', '64M']], reserve = false) {
  dir = tempDir('vvfs-mig-')
  m = await openManager(dir)
  await withSystems(m, systems)
  if (reserve) await m.addStorage({ name: 'r', capacity: 64 * MiB, reserve: true })
  return m
}

/** Writes a random base image of `size` bytes (spread over every system by placement). */
async function fillVolume(m: Manager, name: string, size: number, seed = 5): Promise<VolumeModel> {
  await m.createVolume({ name, size })
  const v = m.volumeNamed(name)
  const model = new VolumeModel(size)
  const r = rng(seed)
  for (let off = 0; off < size; off += 256 * 1024) {
    const data = r.next() < 0.15 ? Buffer.alloc(256 * 1024) : payload(r, 256 * 1024)
    await v.write(off, data)
    model.write(off, data)
  }
  // Some scattered small writes: fragments.
  for (let i = 0; i < 40; i++) {
    const off = r.int(0, size - 4096)
    const data = payload(r, 100)
    await v.write(off, data)
    model.write(off, data)
  }
  return model
}

/** A host that keeps writing and verifying while `until` is pending. */
async function busyHost(m: Manager, name: string, model: VolumeModel, until: Promise<unknown>, seed = 9) {
  const v = m.volumeNamed(name)
  const r = rng(seed)
  let done = false
  void until.finally(() => (done = true))
  let ops = 0
  while (!done) {
    const [offset, len] = range(r, model.size, 200 * 1024)
    if (r.next() < 0.5) {
      const data = payload(r, len)
      await v.write(offset, data)
      model.write(offset, data)
    } else {
      const buf = Buffer.alloc(len)
      const n = await v.read(offset, len, buf)
      if (!buf.subarray(0, n).equals(model.read(offset, len))) throw new Error(`read of ${len} at ${offset} during the job differs from the model`)
    }
    ops++
    if (ops % 20 === 0) await new Promise((res) => setImmediate(res))
  }
  return ops
}

async function verify(m: Manager, name: string, model: VolumeModel) {
  const v = m.volumeNamed(name)
  const all = Buffer.alloc(model.size)
  await v.read(0, model.size, all)
  expect(all.equals(model.data)).toBe(true)
}

function systemsOf(m: Manager, name: string): string[] {
  return m.showVolume(name).allocatedBySystem.map((s) => s.storage).sort()
}

describe('migrating a volume onto one storage system', () => {
  for (const mode of ['direct', 'staged', 'free', 'memory'] as CopyMode[]) {
    it(`moves every extent (${mode}) while a host writes and reads, and releases the sources`, async () => {
      const m = await setup(undefined, mode === 'staged')
      const model = await fillVolume(m, 'v', 16 * MiB)
      expect(systemsOf(m, 'v').length).toBe(3)
      const job = await m.migrate({ volume: 'v', to: 's2', mode })
      const finished = m.jobs.settled(job.id)
      const ops = await busyHost(m, 'v', model, finished)
      const done = await finished
      expect(done.status).toBe('concluded')
      expect(done.result).toBe('completed')
      expect(done.progress.current).toBe(done.progress.total)
      expect(ops).toBeGreaterThan(10)
      expect(systemsOf(m, 'v')).toEqual(['s2'])
      await verify(m, 'v', model)
      const pool = m.poolStatus()
      expect(pool.heldByJobs).toBe(0)
      expect(m.listStorage().reduce((a, s) => a + s.allocated, 0)).toBe(m.volumeNamed('v').allocatedBytes)
    })
  }
})

describe('job control', () => {
  it('pauses and resumes; a paused job copies nothing', async () => {
    const m = await setup()
    const model = await fillVolume(m, 'v', 24 * MiB)
    const job = await m.migrate({ volume: 'v', to: 's1', rate: 4 * MiB })
    await new Promise((r) => setTimeout(r, 300))
    m.jobs.pause(job.id)
    await new Promise((r) => setTimeout(r, 400))
    const a = m.jobs.show(job.id)
    expect(a.status).toBe('paused')
    await new Promise((r) => setTimeout(r, 400))
    expect(m.jobs.show(job.id).progress.current).toBe(a.progress.current)
    expect(await codeOf(() => m.jobs.pause(job.id))).toBe('JOB_STATE')
    m.jobs.resume(job.id)
    m.jobs.show(job.id)
    const done = await m.jobs.settled(job.id)
    expect(done.result).toBe('completed')
    expect(systemsOf(m, 'v')).toEqual(['s1'])
    await verify(m, 'v', model)
  })

  it('cancels: the volume stays whole on its source, with what was written meanwhile', async () => {
    const m = await setup([['s1', '64M'], ['s2', '64M']])
    await m.addStorage({ name: 'src', capacity: 64 * MiB })
    // Put the volume wholly on "src" by draining nothing else: migrate it there first.
    const model = await fillVolume(m, 'v', 16 * MiB)
    await m.jobs.settled((await m.migrate({ volume: 'v', to: 'src' })).id)
    expect(systemsOf(m, 'v')).toEqual(['src'])
    const job = await m.migrate({ volume: 'v', to: 's1', rate: 8 * MiB })
    const cancelled = new Promise<void>((resolve) =>
      setTimeout(() => {
        m.jobs.cancel(job.id)
        resolve()
      }, 600),
    )
    await busyHost(m, 'v', model, cancelled.then(() => m.jobs.settled(job.id)))
    const done = m.jobs.show(job.id)
    expect(done.result).toBe('cancelled')
    expect(systemsOf(m, 'v')).toEqual(['src'])
    await verify(m, 'v', model)
    expect(m.poolStatus().heldByJobs).toBe(0)
  })

  it('keeps the sources for --keep and rolls back within the window, with writes made after the switch', async () => {
    const m = await setup()
    await m.addStorage({ name: 'src', capacity: 64 * MiB })
    const model = await fillVolume(m, 'v', 8 * MiB)
    await m.jobs.settled((await m.migrate({ volume: 'v', to: 'src' })).id)
    const job = await m.migrate({ volume: 'v', to: 's3', keep: 60_000 })
    for (let i = 0; i < 100 && m.jobs.show(job.id).status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 50))
    const ready = m.jobs.show(job.id)
    expect(ready.status).toBe('ready')
    expect(systemsOf(m, 'v')).toEqual(['s3'])
    expect(m.poolStatus().heldByJobs).toBeGreaterThan(0)
    // Writes after the switch, then roll back.
    const v = m.volumeNamed('v')
    const r = rng(77)
    for (let i = 0; i < 50; i++) {
      const [off, len] = range(r, model.size, 300 * 1024)
      const data = payload(r, len)
      await v.write(off, data)
      model.write(off, data)
    }
    m.jobs.rollback(job.id)
    const done = await m.jobs.settled(job.id)
    expect(done.result).toBe('rolled-back')
    expect(systemsOf(m, 'v')).toEqual(['src'])
    await verify(m, 'v', model)
    expect(m.poolStatus().heldByJobs).toBe(0)
  })

  it('refuses a rollback after the window, with a clear error', async () => {
    const m = await setup()
    const model = await fillVolume(m, 'v', 4 * MiB)
    const job = await m.migrate({ volume: 'v', to: 's1', keep: 200 })
    const done = await m.jobs.settled(job.id)
    expect(done.result).toBe('completed')
    let err: VvfsError | undefined
    try {
      m.jobs.rollback(job.id)
    } catch (e) {
      err = e as VvfsError
    }
    expect(err?.code).toBe('JOB_STATE')
    expect(err?.message).toMatch(/retention window ended/)
    await verify(m, 'v', model)
  })

  it('refuses a second job on the same volume and deleting a volume under migration', async () => {
    const m = await setup()
    await fillVolume(m, 'v', 8 * MiB)
    const job = await m.migrate({ volume: 'v', to: 's1', rate: 2 * MiB })
    expect(await codeOf(m.migrate({ volume: 'v', to: 's2' }))).toBe('JOB_STATE')
    expect(await codeOf(m.deleteVolume('v'))).toBe('VOLUME_BUSY')
    m.jobs.cancel(job.id)
    await m.jobs.settled(job.id)
  })
})

describe('draining a storage system', () => {
  it('moves every extent off it, so it can be removed with every volume intact', async () => {
    const m = await setup()
    const a = await fillVolume(m, 'a', 12 * MiB, 1)
    const b = await fillVolume(m, 'b', 8 * MiB, 2)
    expect(systemsOf(m, 'a')).toContain('s2')
    const job = await m.drain({ name: 's2' })
    const finished = m.jobs.settled(job.id)
    await busyHost(m, 'a', a, finished)
    expect((await finished).result).toBe('completed')
    expect(m.listStorage().find((s) => s.name === 's2')!.allocated).toBe(0)
    expect(systemsOf(m, 'a')).not.toContain('s2')
    await m.removeStorage('s2')
    await verify(m, 'a', a)
    await verify(m, 'b', b)
  })
})

describe('persistence', () => {
  it('resumes an interrupted job after a reopen and finishes it', async () => {
    const m1 = await setup()
    const model = await fillVolume(m1, 'v', 24 * MiB)
    // --rate counts the bytes copied (about half of each extent here) while
    // progress counts whole extents: at 8 MiB/s the job once ended inside
    // 800 ms once groups made copies cheaper. At 3 MiB/s it takes ~3 s.
    const job = await m1.migrate({ volume: 'v', to: 's3', rate: 3 * MiB })
    await new Promise((r) => setTimeout(r, 800))
    const mid = m1.jobs.show(job.id)
    expect(mid.progress.current).toBeGreaterThan(0)
    expect(mid.progress.current).toBeLessThan(mid.progress.total)
    await m1.close()
    m = await openManager(dir)
    const again = m.jobs.show(job.id)
    expect(again.progress.current).toBeGreaterThanOrEqual(mid.progress.current)
    const done = await m.jobs.settled(job.id)
    expect(done.result).toBe('completed')
    expect(systemsOf(m, 'v')).toEqual(['s3'])
    await verify(m, 'v', model)
    expect(EXTENT_SIZE).toBe(MiB)
  })
})
