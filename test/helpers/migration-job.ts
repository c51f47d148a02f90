/**
 * One migration job over a test stack (test/helpers/stack.ts), run as the
 * JobManager runs it — the MigrationRunner with the stack's extent
 * operations and MigrateLayer, new allocations placed per the job
 * (JobManager.placementFor) — plus the image a job starts from and the
 * check that the volume still reads as the model says.
 */
import { expect } from 'vitest'
import { silentLogger } from '../../lib/log.js'
import type { CopyMode, JobRecord } from '../../lib/migration/job.js'
import { MigrationRunner } from '../../lib/migration/runner.js'
import type { ExtentOps } from '../../lib/relay/extent-ops.js'
import type { MapStore } from '../../lib/relay/map-store.js'
import { payload, rng, VolumeModel } from './model.js'
import type { Stack } from './stack.js'

/** Writes a random image, spread over every system (the pool's placement). */
export async function fill(stack: Stack, size: number): Promise<VolumeModel> {
  const model = new VolumeModel(size)
  const r = rng(7)
  for (let off = 0; off < size; off += 256 * 1024) {
    const data = payload(r, 256 * 1024)
    await stack.volume.write(off, data)
    model.write(off, data)
  }
  for (let i = 0; i < 30; i++) {
    const off = r.int(0, size - 100)
    const data = payload(r, 100)
    await stack.volume.write(off, data)
    model.write(off, data)
  }
  await stack.volume.drain()
  return model
}

export interface JobOptions {
  /** What the runner writes its bitmaps, progress and retained sources through (default: the stack's). */
  maps?: MapStore
  /** The extent operations the runner drives (default: the stack's). */
  extents?: ExtentOps
  /** The job record's commit (the JobManager's catalog update); default: at once. */
  save?: (job: JobRecord, runner: MigrationRunner) => Promise<void>
}

/** Runs one migration job of the stack's volume onto system `toSid`, as the JobManager would. */
export async function runJob(stack: Stack, toSid: number, mode: CopyMode, whileRunning: (runner: MigrationRunner) => Promise<void>, opts: JobOptions = {}): Promise<JobRecord> {
  const job: JobRecord = {
    id: 1,
    kind: 'migrate',
    status: 'created',
    volNos: [1],
    toSid,
    sourceSids: [...stack.map.allocationBySystem().keys()],
    mode,
    rate: 0,
    keepMs: 0,
    total: 0,
    current: 0,
    phases: 1,
    phase: 0,
    createdAt: new Date().toISOString(),
  }
  const extents = opts.extents ?? stack.extents
  // save is called only once the runner exists.
  const runner: MigrationRunner = await MigrationRunner.open(job, {
    pool: stack.pool,
    maps: opts.maps ?? stack.maps,
    volume: (volNo) => (volNo === 1 ? { volNo, name: 'v', extents, layer: stack.layers.migrate } : undefined),
    save: async (j) => opts.save?.(j, runner),
    statusChanged: () => {},
    progressed: () => {},
    log: silentLogger(),
    hostOps: () => 0,
  })
  // New allocations go where the job says (as JobManager.placementFor has them).
  stack.thin.placement = () => runner.placement() ?? {}
  runner.start()
  await whileRunning(runner)
  await runner.done
  stack.thin.placement = () => ({})
  return job
}

/** The whole volume reads as the model (after the writes answered so far are stored). */
export async function expectContent(stack: Stack, model: VolumeModel): Promise<void> {
  await stack.volume.drain()
  expect(stack.volume.size).toBe(model.size)
  const all = Buffer.alloc(model.size)
  await stack.volume.read(0, model.size, all)
  expect(all.equals(model.data)).toBe(true)
}
