/**
 * The jobs that move extents — migrate, consolidate (a migrate the policy
 * starts) and drain — as job drivers over MigrationRunner: how a start
 * request becomes a record (checks: destination usable, room, one job per
 * volume), the driver verbs, where a volume lives after the job (its home),
 * and what ended jobs left in the MapStore.
 *
 * Concurrency: as every driver (lib/jobs/driver.ts); the runner does the
 * work. Crash order: the runner's (lib/migration/runner.ts); a record is
 * committed with the volumes' homes in one catalog update.
 *
 * Replication (issue 13, claims 1–7): once a commit changed the home of a
 * replicated volume, its journal is handed over to the new home
 * (ReplicationResources.handoff) before the job goes on; a crash between the
 * two commits is finished by the replication job at the next start.
 */
import { VvfsError } from '../errors.js'
import { EXTENT_CHUNKS } from '../layout.js'
import type { CatalogData } from '../manager/catalog.js'
import type { CopyMode, DrainJobRecord, JobRecord, MigrateJobRecord, MoveJobRecord } from '../migration/job.js'
import { MigrationRunner } from '../migration/runner.js'
import type { ExtentEntry } from '../relay/extent-entry.js'
import type { PlacementRule } from '../relay/extent-ops.js'
import { decodeExtentRecord, isRetainedKey, jobNoOfKey, jobOwnedPrefixes, parseRetainedKey } from '../relay/key-space.js'
import type { JobDetails, JobDriver, JobEnv, JobKindDriver, NewJob } from './driver.js'

export interface MoveOptions {
  mode: CopyMode
  keepMs: number
  rate: number
}

/** A migrate (or consolidate) request: checks it and describes the job. */
export function newMigration(env: JobEnv, p: MoveOptions & { volume: string; to: string; kind?: 'migrate' | 'consolidate'; reason?: string; auto?: boolean }): NewJob {
  const volNo = env.volumeNo(p.volume)
  const toSid = env.systemSid(p.to)
  const dest = env.pool.get(toSid)
  if (dest.reserve) throw new VvfsError('INVALID_ARGUMENT', `${p.to} is a reserve storage system (for staged transfers), not a destination`)
  if (dest.draining) throw new VvfsError('INVALID_ARGUMENT', `${p.to} is being drained`)
  checkIdle(env, volNo, p.volume)
  const v = env.volume(volNo)!
  const bySystem = v.extents.allocationBySystem()
  const toMove = [...bySystem].filter(([sid]) => sid !== toSid).reduce((a, [, b]) => a + b, 0)
  if (toMove > dest.table.free) throw new VvfsError('POOL_FULL', `${p.to} has ${dest.table.free} bytes free; volume ${p.volume} needs ${toMove} there`)
  checkMode(env, p.mode)
  const job: Omit<MigrateJobRecord, 'id' | 'status' | 'total' | 'current' | 'createdAt'> = {
    kind: p.kind ?? 'migrate',
    volNos: [volNo],
    toSid,
    sourceSids: [...bySystem.keys()],
    ...moveFields(p),
    reason: p.reason,
    auto: p.auto,
  }
  return job
}

/** A drain request: checks it and describes the job (every volume with an extent on the system). */
export function newDrain(env: JobEnv, p: MoveOptions & { system: string }): { job: NewJob; alsoChange: (d: CatalogData) => void } {
  const fromSid = env.systemSid(p.system)
  const from = env.pool.get(fromSid)
  const volNos: number[] = []
  for (let volNo = 1; volNo < env.catalog.read().data.nextVolumeNo; volNo++) {
    const v = env.volume(volNo)
    if (v && v.extents.allocationBySystem().has(fromSid)) {
      checkIdle(env, volNo, v.name)
      volNos.push(volNo)
    }
  }
  const room = env.pool.list().filter((s) => s.sid !== fromSid && s.allocatable).reduce((a, s) => a + s.table.free, 0)
  if (from.table.allocated > room) throw new VvfsError('POOL_FULL', `the other storage systems have ${room} bytes free; ${p.system} holds ${from.table.allocated}`)
  checkMode(env, p.mode)
  const job: Omit<DrainJobRecord, 'id' | 'status' | 'total' | 'current' | 'createdAt'> = { kind: 'drain', volNos, fromSid, sourceSids: [fromSid], ...moveFields(p) }
  // The system takes no new allocations from the commit that records the job on.
  const alsoChange = (d: CatalogData) => {
    const rec = d.storage.find((s) => s.sid === fromSid)
    if (!rec) throw new VvfsError('STORAGE_NOT_FOUND', `storage system ${p.system} is gone`)
    rec.draining = true
  }
  return { job, alsoChange }
}

function moveFields(p: MoveOptions) {
  return { mode: p.mode, keepMs: p.keepMs, rate: p.rate, phases: p.mode === 'staged' || p.mode === 'free' ? 2 : 1, phase: 0 }
}

function checkMode(env: JobEnv, mode: CopyMode): void {
  if (mode === 'staged' && !env.pool.list().some((s) => s.reserve)) {
    throw new VvfsError('INVALID_ARGUMENT', 'staged mode needs a reserve storage system: vvfs storage add NAME --capacity SIZE --reserve')
  }
}

function checkIdle(env: JobEnv, volNo: number, name: string): void {
  const j = env.activeJobOf(volNo)
  if (j) throw new VvfsError('JOB_STATE', `volume ${name} is already in job ${j.id} (${j.status})`)
}

/**
 * Where a volume lives after a job: on the destination once a move is done
 * (ready or completed), back where it was after a rollback or cancel; a
 * drained system is nobody's home.
 */
function updateHomes(d: CatalogData, job: MoveJobRecord): void {
  const setHome = (v: CatalogData['volumes'][number], sid: number | undefined) => {
    if (sid === undefined) delete v.home
    else v.home = sid
  }
  if (job.kind === 'drain') {
    if (job.status === 'concluded' && job.result === 'completed') for (const v of d.volumes) if (v.home === job.fromSid) setHome(v, undefined)
    return
  }
  for (const volNo of job.volNos) {
    const v = d.volumes.find((x) => x.no === volNo)
    if (!v) continue
    if (job.status === 'ready' || (job.status === 'concluded' && job.result === 'completed')) setHome(v, job.toSid)
    else if (job.status === 'concluded') setHome(v, job.prevHome === undefined || job.prevHome < 0 ? undefined : job.prevHome)
  }
}

class MoveDriver implements JobDriver<MoveJobRecord> {
  private constructor(private readonly runner: MigrationRunner) {}

  static async open(job: MoveJobRecord, env: JobEnv): Promise<MoveDriver> {
    const runner = await MigrationRunner.open(job, {
      ...env,
      save: async (j) => {
        // A migration remembers the volume's home as the job starts, to restore it on cancel.
        if (j.kind !== 'drain' && j.status === 'running' && j.prevHome === undefined) {
          j.prevHome = env.catalog.read().data.volumes.find((v) => v.no === j.volNos[0])?.home ?? -1
        }
        const homes = () => new Map(env.catalog.read().data.volumes.filter((v) => j.volNos.includes(v.no)).map((v) => [v.no, v.home]))
        const before = homes()
        await env.save(j, (d) => updateHomes(d, j as MoveJobRecord))
        const after = homes()
        for (const [volNo, home] of after) if (before.get(volNo) !== home) await env.replication?.handoff?.(volNo)
      },
    })
    return new MoveDriver(runner)
  }

  get job(): MoveJobRecord {
    return this.runner.job as MoveJobRecord
  }

  get done(): Promise<void> {
    return this.runner.done
  }

  start(): void {
    this.runner.start()
  }

  pause(): void {
    this.runner.pause()
  }

  resume(): void {
    this.runner.resume()
  }

  cancel(): void {
    this.runner.cancel()
  }

  complete(): void {
    const j = this.job
    throw new VvfsError('JOB_STATE', `job ${j.id} (${j.kind}) completes by itself${j.keepMs ? ` when its retention window ends${j.retainUntil ? ` (${j.retainUntil})` : ''}` : ' once every extent is moved'}`)
  }

  halt(): Promise<void> {
    return this.runner.halt()
  }

  rollback(): void {
    this.runner.rollback()
  }

  progress(): { current: number; total: number } {
    return { current: this.job.current, total: this.job.total }
  }

  reserveHeld(): void {
    this.runner.adoptHeld()
  }

  /** The runner's one rule (MigrationRunner.placement) for the job's volumes. */
  placementFor(volNo: number): PlacementRule | undefined {
    return this.job.volNos.includes(volNo) ? this.runner.placement() : undefined
  }

  held(): Iterable<[number, number, ExtentEntry]> {
    return this.runner.retained.all()
  }
}

/** migrate, consolidate and drain: one driver over MigrationRunner. */
export const moveJobs: JobKindDriver = {
  kinds: ['migrate', 'consolidate', 'drain'],
  open: (job: JobRecord, env: JobEnv) => MoveDriver.open(job as MoveJobRecord, env),
  describe(job: JobRecord, env: JobEnv): JobDetails {
    return {
      to: job.toSid === undefined ? undefined : env.systemName(job.toSid),
      from: job.fromSid === undefined ? undefined : env.systemName(job.fromSid),
      mode: job.mode,
      rate: job.rate,
      keepMs: job.keepMs,
      retainUntil: job.retainUntil,
    }
  },
  /** Records of jobs that are gone: retained sources whose release was cut short, bitmaps. */
  async cleanStale(live, env) {
    for (const prefix of jobOwnedPrefixes()) {
      const stale: Buffer[] = []
      for await (const [key, value] of env.maps.scan(prefix)) {
        if (live.has(jobNoOfKey(key))) continue
        if (isRetainedKey(key)) {
          const v = env.volume(parseRetainedKey(key).volNo)
          const { entry } = decodeExtentRecord(value)
          if (v && entry && isFree(env, entry)) {
            v.extents.holdSpace(entry)
            await v.extents.discardEntry(entry)
          }
        }
        stale.push(key)
      }
      await env.maps.deleteNow(stale)
    }
  },
}

function isFree(env: JobEnv, entry: ExtentEntry): boolean {
  if (entry.kind === 'whole') return env.pool.has(entry.sid) && env.pool.get(entry.sid).table.isSlotFree(entry.slot)
  return [...entry.frags.values()].every((f) => env.pool.has(f.sid) && env.pool.get(f.sid).table.isSlotFree(Math.floor(f.pca / EXTENT_CHUNKS)))
}
