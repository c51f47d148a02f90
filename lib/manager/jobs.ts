/**
 * JobManager: the manager's jobs, of any kind — start, list, pause, resume,
 * cancel, complete, rollback — persisted in the catalog and resumed at
 * start; status changes and progress (bytes done/total, rate, ETA) go out as
 * events. Each kind of job is a driver (lib/jobs/driver.ts) registered here
 * by kind: migrate, consolidate and drain are lib/jobs/move.ts. It also runs
 * the consolidation policy: every interval, when enabled, it starts the
 * first move the planner proposes (one automatic job at a time).
 *
 * Records: a driver keeps its job's record (a copy of the catalog's) and
 * commits it through the catalog's update(); lists show the live copy. A
 * new job is committed (with whatever its kind changes beside it, such as a
 * drained system's flag) before its driver starts.
 *
 * Never: moves data itself (the drivers do, through the relay).
 */
import type { EventBody, JobInfo } from '../control/schema.js'
import { VvfsError, asVvfsError } from '../errors.js'
import type { JobDriver, JobEnv, JobKindDriver, JobResources, NewJob } from '../jobs/driver.js'
import { moveJobs, newDrain, newMigration, type MoveOptions } from '../jobs/move.js'
import { newReplication, replicateJobs, type ReplicateOptions } from '../jobs/replicate.js'
import { isActive, type JobKind, type JobRecord } from '../migration/job.js'
import { planConsolidation, type Plan, type PlannerSystem, type PlannerVolume } from '../migration/planner.js'
import type { MovableVolume } from '../migration/runner.js'
import { entryBytes } from '../relay/extent-entry.js'
import type { PlacementRule } from '../relay/extent-ops.js'
import { draftOf, type CatalogData } from './catalog.js'

/** A new job's record, and what changes beside it in the same commit. */
export interface JobRequest {
  job: NewJob
  alsoChange?: (draft: CatalogData) => void
}

export interface JobHost extends JobResources {
  movable(volNo: number): MovableVolume | undefined
  volumeName(volNo: number): string
  emit<T extends 'job.status' | 'job.progress'>(type: T, body: EventBody<T>): void
}

const KEEP_CONCLUDED = 100

/** The kinds of job the manager runs; a new kind is one more driver here. */
export const JOB_KIND_DRIVERS: readonly JobKindDriver[] = [moveJobs, replicateJobs]

export class JobManager {
  private readonly drivers = new Map<number, JobDriver>()
  /** The last start queued (startJob): starts run one at a time. */
  private starting: Promise<unknown> = Promise.resolve()
  private readonly kinds = new Map<JobKind, JobKindDriver>()
  private readonly samples = new Map<number, { t: number; current: number }[]>()
  private readonly lastProgressEvent = new Map<number, number>()
  private policyTimer: NodeJS.Timeout | null = null
  /** Issue 15: whether this relay serves a volume (null: not in a cluster, it serves all). */
  private serves: ((volNo: number) => boolean) | null = null
  /** What drivers get; also what a kind's start request is checked against. */
  readonly env: JobEnv

  constructor(
    private readonly h: JobHost,
    kinds: readonly JobKindDriver[] = JOB_KIND_DRIVERS,
  ) {
    for (const k of kinds) for (const kind of k.kinds) this.kinds.set(kind, k)
    const { catalog, pool, maps, mover, log, volumeNo, systemSid, systemName, hostOps } = h
    this.env = {
      ...{ catalog, pool, maps, mover, log, volumeNo, systemSid, systemName, hostOps, replication: h.replication },
      volume: (volNo) => h.movable(volNo),
      activeJobOf: (volNo) => this.activeJobOf(volNo),
      save: (job, alsoChange) => this.save(job, alsoChange),
      statusChanged: (job, from) => {
        h.log.info({ event: 'job.status', job: job.id, from, to: job.status }, `job ${job.id}: ${from} → ${job.status}`)
        h.emit('job.status', { job: this.info(job), from })
      },
      progressed: (job) => {
        this.sample(job)
        const now = Date.now()
        if (now - (this.lastProgressEvent.get(job.id) ?? 0) < 500 && job.current < job.total) return
        this.lastProgressEvent.set(job.id, now)
        h.emit('job.progress', { job: job.id, ...this.info(job).progress })
      },
    }
  }

  /** Every job's record: a driver's live copy while it runs, else the catalog's. */
  private get jobs(): readonly JobRecord[] {
    return this.h.catalog.read().data.jobs.map((j) => this.drivers.get(j.id)?.job ?? (j as JobRecord))
  }

  private kindDriver(kind: JobKind): JobKindDriver {
    const k = this.kinds.get(kind)
    if (!k) throw new VvfsError('NOT_SUPPORTED', `no driver for jobs of kind ${kind}`)
    return k
  }

  /** Marks the space jobs hold (before stray records are cleaned) and opens their drivers. */
  async restore(serves?: (volNo: number) => boolean): Promise<void> {
    this.serves = serves ?? null
    for (const committed of this.h.catalog.read().data.jobs.filter((j) => j.status !== 'concluded')) {
      // Issue 15: in a cluster only the jobs of volumes this relay serves (another relay runs the others).
      if (serves && !committed.volNos.every(serves)) continue
      const job = draftOf<JobRecord>(committed)
      const driver = await this.kindDriver(job.kind).open(job, this.env)
      driver.reserveHeld?.()
      this.drivers.set(job.id, driver)
    }
    const live = new Set(this.drivers.keys())
    for (const k of new Set(this.kinds.values())) await k.cleanStale?.(live, this.env)
    for (const d of this.drivers.values()) await d.prepare?.()
  }

  /**
   * Issue 15: a volume this relay took over — opens and starts the jobs of
   * it that are not concluded (and whose volumes are all served here),
   * from what the rebuilt map cache holds (a migration from its bitmap).
   */
  async adoptJobsOf(volNo: number, beforeLaunch?: () => void): Promise<number[]> {
    const adopted: JobDriver[] = []
    for (const committed of this.h.catalog.read().data.jobs) {
      if (committed.status === 'concluded' || !committed.volNos.includes(volNo) || this.drivers.has(committed.id)) continue
      if (this.serves && !committed.volNos.every(this.serves)) continue
      const job = draftOf<JobRecord>(committed)
      const driver = await this.kindDriver(job.kind).open(job, this.env)
      driver.reserveHeld?.()
      this.drivers.set(job.id, driver)
      // As at start: a replication job's journal is attached to the volume here.
      await driver.prepare?.()
      adopted.push(driver)
    }
    beforeLaunch?.()
    for (const d of adopted) this.launch(d)
    return adopted.map((d) => d.job.id)
  }

  /** Issue 15: a volume this relay lost (lease expired) or handed on (volume move) — its jobs stop here and are forgotten (the new owner resumes them). */
  async dropJobsOf(volNo: number, opts: { handover?: boolean } = {}): Promise<void> {
    const drivers = [...this.drivers.values()].filter((d) => d.job.volNos.includes(volNo))
    for (const d of drivers) this.drivers.delete(d.job.id)
    await Promise.all(
      drivers.map((d) =>
        (d.release ? d.release(opts) : d.halt()).catch((err: unknown) => {
          const e = asVvfsError(err)
          this.h.log.error({ event: 'job.release_failed', job: d.job.id, code: e.code, err: e.message }, `job ${d.job.id}: releasing it here failed`)
        }),
      ),
    )
  }

  /** Starts the drivers (after the mounts are up) and the policy timer. */
  start(): void {
    for (const d of this.drivers.values()) this.launch(d)
    this.schedulePolicy()
  }

  async close(): Promise<void> {
    if (this.policyTimer) clearTimeout(this.policyTimer)
    this.policyTimer = null
    // Each driver stops after its current step; progress is persisted per step.
    await Promise.all([...this.drivers.values()].map((d) => d.halt()))
  }

  /** Where new allocations of a volume go while a job holds it. */
  placementFor(volNo: number): PlacementRule {
    for (const d of this.drivers.values()) {
      const rule = d.placementFor?.(volNo)
      if (rule) return rule
    }
    return {}
  }

  activeJobOf(volNo: number): JobRecord | undefined {
    // A replication pair (issue 13) runs beside a volume's other jobs: it does not hold the volume.
    return [...this.drivers.values()].map((d) => d.job).find((j) => j.volNos.includes(volNo) && j.status !== 'concluded' && j.kind !== 'replicate')
  }

  /** Extent indexes of a volume whose source a job still holds (the web view marks them). */
  retainedExtents(volNo: number): number[] {
    const out: number[] = []
    for (const d of this.drivers.values()) for (const [v, e] of d.held?.() ?? []) if (v === volNo) out.push(e)
    return out
  }

  /** Bytes held by jobs (retained sources): allocated, not free, referenced by no volume map. */
  heldBytes(): number {
    let bytes = 0
    for (const d of this.drivers.values()) for (const [, , entry] of d.held?.() ?? []) bytes += entryBytes(entry)
    return bytes
  }

  // ---- starting jobs

  startMigration(p: MoveOptions & { volume: string; to: string; kind?: 'migrate' | 'consolidate'; reason?: string; auto?: boolean }): Promise<JobInfo> {
    return this.startJob(() => ({ job: newMigration(this.env, p) }))
  }

  /** Issue 13: a replication pair of a volume (lib/jobs/replicate.ts). */
  startReplication(p: ReplicateOptions): Promise<JobInfo> {
    return this.startJob(async () => ({ job: await newReplication(this.env, p) }))
  }

  startDrain(p: MoveOptions & { system: string }): Promise<JobInfo> {
    return this.startJob(() => newDrain(this.env, p))
  }

  /**
   * Records a new job of any kind (with `alsoChange` in the same commit),
   * then opens and starts its driver. Starts run one at a time, the
   * request's checks (one job per volume) included, so a check sees every
   * job started before it: a policy run is not in the Manager's queue
   * (2026-12-04 review: it and a `migrate` could both pass the check while
   * the other's driver was opening, and run two moves on one volume).
   */
  startJob(request: () => JobRequest | Promise<JobRequest>): Promise<JobInfo> {
    const run = this.starting.then(async () => {
      const { job, alsoChange } = await request()
      return this.record(job, alsoChange)
    })
    this.starting = run.catch(() => undefined)
    return run
  }

  private async record(p: NewJob, alsoChange?: (draft: CatalogData) => void): Promise<JobInfo> {
    const kind = this.kindDriver(p.kind)
    const createdAt = new Date().toISOString()
    const { result: job } = await this.h.catalog.update((d) => {
      const job = { ...p, id: d.nextJobNo++, status: 'created', total: 0, current: 0, createdAt } as JobRecord
      d.jobs.push(job)
      prune(d)
      alsoChange?.(d)
      return structuredClone(job)
    })
    const driver = await kind.open(job, this.env)
    await driver.prepare?.()
    this.drivers.set(job.id, driver)
    this.h.log.info({ event: 'job.created', job: job.id, kind: job.kind, volumes: job.volNos.map((n) => this.h.volumeName(n)), reason: job.reason }, `job ${job.id} created`)
    this.h.emit('job.status', { job: this.info(job), from: null })
    this.launch(driver)
    return this.info(job)
  }

  private launch(driver: JobDriver): void {
    driver.start()
    void driver.done.finally(() => {
      if (driver.job.status === 'concluded') this.drivers.delete(driver.job.id)
    })
  }

  /** Commits a driver's record (and what its kind changes beside it); the driver keeps its copy. */
  private async save(job: JobRecord, alsoChange?: (draft: CatalogData) => void): Promise<void> {
    const rec = structuredClone(job)
    await this.h.catalog.update((d) => {
      const i = d.jobs.findIndex((j) => j.id === job.id)
      // A job pruned from the catalog meanwhile (only concluded ones are) is not brought back.
      if (i >= 0) d.jobs[i] = structuredClone(rec)
      alsoChange?.(d)
    })
  }

  // ---- control

  list(): JobInfo[] {
    return this.jobs.map((j) => this.info(j))
  }

  show(id: number): JobInfo {
    return this.info(this.job(id))
  }

  pause(id: number): JobInfo {
    this.driver(id).pause()
    return this.show(id)
  }

  resume(id: number): JobInfo {
    this.driver(id).resume()
    return this.show(id)
  }

  cancel(id: number): JobInfo {
    this.driver(id).cancel()
    return this.show(id)
  }

  /** Finishes a job that is ready (qemu's job-complete). */
  complete(id: number): JobInfo {
    this.driver(id).complete()
    return this.show(id)
  }

  rollback(id: number): JobInfo {
    const job = this.job(id)
    if (job.status === 'concluded') {
      const why = job.result === 'completed' && job.keepMs > 0 ? `its retention window ended at ${job.retainUntil} and the sources were released` : `it concluded (${job.result})`
      throw new VvfsError('JOB_STATE', `job ${id} cannot be rolled back: ${why}`)
    }
    const driver = this.driver(id)
    if (!driver.rollback) throw new VvfsError('JOB_STATE', `job ${id} (${job.kind}) cannot be rolled back`)
    driver.rollback()
    return this.show(id)
  }

  /** Resolves when the job concludes (tests, --wait). */
  async settled(id: number): Promise<JobInfo> {
    await this.drivers.get(id)?.done
    return this.show(id)
  }

  private job(id: number): JobRecord {
    const j = this.jobs.find((x) => x.id === id)
    if (!j) throw new VvfsError('JOB_NOT_FOUND', `no job ${id}`)
    return j
  }

  private driver(id: number): JobDriver {
    const job = this.job(id)
    const d = this.drivers.get(id)
    if (!d) throw new VvfsError('JOB_STATE', `job ${id} has concluded (${job.result})`)
    return d
  }

  // ---- consolidation policy

  plan(): Plan {
    const data = this.h.catalog.read().data
    const held = new Set<string>()
    for (const d of this.drivers.values()) for (const [, , entry] of d.held?.() ?? []) if (entry.kind === 'whole') held.add(`${entry.sid}:${entry.slot}`)
    const systems: PlannerSystem[] = this.h.pool.list().map((s) => {
      const owners = new Int32Array(s.table.slotCount)
      for (let slot = 0; slot < owners.length; slot++) owners[slot] = s.table.isSlotFree(slot) ? 0 : -1
      return { sid: s.sid, name: s.name, free: s.table.free, allocatable: s.allocatable, owners }
    })
    const bySid = new Map(systems.map((s) => [s.sid, s]))
    const volumes: PlannerVolume[] = []
    for (let volNo = 1; volNo < data.nextVolumeNo; volNo++) {
      const v = this.h.movable(volNo)
      if (!v) continue
      for (const e of v.extents.extentIndexes()) {
        const entry = v.extents.entry(e)!
        if (entry.kind === 'whole' && !held.has(`${entry.sid}:${entry.slot}`)) bySid.get(entry.sid)!.owners[entry.slot] = volNo
      }
      volumes.push({ volNo, name: v.name, bySystem: v.extents.allocationBySystem(), busy: this.activeJobOf(volNo) !== undefined })
    }
    return planConsolidation(systems, volumes, data.consolidation)
  }

  private schedulePolicy(): void {
    const interval = Math.max(1000, this.h.catalog.read().data.consolidation.intervalMs)
    this.policyTimer = setTimeout(() => {
      void this.runPolicy()
        .catch((err) => this.h.log.error({ event: 'policy.failed', err: (err as Error).message }, 'consolidation policy failed'))
        .finally(() => this.schedulePolicy())
    }, interval)
    this.policyTimer.unref()
  }

  /** One evaluation of the policy: starts the first proposed move, if enabled and nothing automatic runs. */
  async runPolicy(): Promise<JobInfo | undefined> {
    const policy = this.h.catalog.read().data.consolidation
    if (!policy.enabled) return undefined
    if ([...this.drivers.values()].some((d) => d.job.auto && isActive(d.job))) return undefined
    const move = this.plan().moves[0]
    if (!move) return undefined
    this.h.log.info({ event: 'policy.fired', trigger: move.trigger, volume: move.volume, to: move.to, reason: move.reason }, 'consolidation policy fired')
    return this.startMigration({ volume: move.volume, to: move.to, mode: 'direct', keepMs: 0, rate: 0, kind: 'consolidate', reason: move.reason, auto: true })
  }

  // ---- helpers

  private sample(job: JobRecord): void {
    const s = this.samples.get(job.id) ?? []
    s.push({ t: Date.now(), current: job.current })
    while (s.length > 2 && s[0]!.t < Date.now() - 10_000) s.shift()
    this.samples.set(job.id, s)
  }

  info(job: JobRecord): JobInfo {
    const s = this.samples.get(job.id) ?? []
    let rate = 0
    if (s.length >= 2) {
      const dt = (s[s.length - 1]!.t - s[0]!.t) / 1000
      if (dt > 0) rate = Math.max(0, (s[s.length - 1]!.current - s[0]!.current) / dt)
    }
    const { current, total } = this.drivers.get(job.id)?.progress() ?? job
    const left = total - current
    const details = this.kindDriver(job.kind).describe(job, this.env)
    return {
      id: job.id,
      kind: job.kind,
      status: job.status,
      result: job.result,
      error: job.error,
      volumes: job.volNos.map((n) => this.h.volumeName(n)),
      ...details,
      progress: {
        current,
        total,
        percent: total === 0 ? (job.status === 'concluded' ? 100 : 0) : Math.floor((1000 * current) / total) / 10,
        bytesPerSecond: Math.round(rate),
        etaSeconds: rate > 0 && left > 0 ? Math.ceil(left / rate) : left === 0 ? 0 : null,
      },
      createdAt: job.createdAt,
      startedAt: job.startedAt,
      finishedAt: job.finishedAt,
      reason: job.reason,
      auto: job.auto ?? false,
    }
  }
}

/** Keeps the last KEEP_CONCLUDED concluded jobs in the catalog. */
function prune(d: CatalogData): void {
  const done = d.jobs.filter((j) => j.status === 'concluded')
  if (done.length > KEEP_CONCLUDED) {
    const drop = new Set(done.slice(0, done.length - KEEP_CONCLUDED))
    d.jobs = d.jobs.filter((j) => !drop.has(j))
  }
}
