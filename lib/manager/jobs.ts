/**
 * JobManager: the migration jobs of the manager — start, list, pause,
 * resume, cancel, rollback — persisted in the catalog and resumed at start;
 * status changes and progress (bytes done/total, rate, ETA) go out as
 * events. It also runs the consolidation policy: every interval, when
 * enabled, it starts the first move the planner proposes (one automatic
 * job at a time).
 *
 * Never: moves data itself (MigrationRunner does, through the relay).
 */
import { VvfsError } from '../errors.js'
import { EXTENT_CHUNKS } from '../layout.js'
import type { Logger } from '../log.js'
import { isActive, type CopyMode, type JobKind, type JobRecord, type JobStatus } from '../migration/job.js'
import { planConsolidation, type Plan, type PlannerSystem, type PlannerVolume } from '../migration/planner.js'
import { MigrationRunner, type MovableVolume } from '../migration/runner.js'
import { entryBytes, type ExtentEntry } from '../relay/extent-entry.js'
import type { PlacementRule } from '../relay/extent-ops.js'
import { decodeExtentRecord, isRetainedKey, jobNoOfKey, jobOwnedPrefixes, parseRetainedKey } from '../relay/key-space.js'
import type { MapStore } from '../relay/map-store.js'
import type { ChunkMover } from '../storage/chunk-mover.js'
import type { Pool } from '../storage/pool.js'
import type { Catalog } from './catalog.js'

export interface JobInfo {
  id: number
  kind: JobKind
  status: JobStatus
  result?: string
  error?: { code: string; message: string }
  volumes: string[]
  to?: string
  from?: string
  mode: CopyMode
  rate: number
  keepMs: number
  retainUntil?: string
  progress: { current: number; total: number; percent: number; bytesPerSecond: number; etaSeconds: number | null }
  createdAt: string
  startedAt?: string
  finishedAt?: string
  reason?: string
  auto: boolean
}

export interface JobHost {
  catalog: Catalog
  pool: Pool
  maps: MapStore
  mover: ChunkMover
  log: Logger
  movable(volNo: number): MovableVolume | undefined
  volumeNo(name: string): number
  volumeName(volNo: number): string
  systemSid(name: string): number
  systemName(sid: number): string
  emit(type: 'job.status' | 'job.progress', body: Record<string, unknown>): void
  /** A volume now lives on `sid` (undefined: nowhere in particular); persisted with the catalog save that follows. */
  setHome(volNo: number, sid: number | undefined): void
  /** Host I/O requests so far (any volume). */
  hostOps(): number
}

const KEEP_CONCLUDED = 100

export class JobManager {
  private readonly runners = new Map<number, MigrationRunner>()
  private readonly samples = new Map<number, { t: number; current: number }[]>()
  private readonly lastProgressEvent = new Map<number, number>()
  private policyTimer: NodeJS.Timeout | null = null

  constructor(private readonly h: JobHost) {}

  private get jobs(): JobRecord[] {
    return this.h.catalog.data.jobs
  }

  /** Marks the space jobs hold (before stray records are cleaned) and loads their runners. */
  async restore(): Promise<void> {
    for (const job of this.jobs.filter((j) => j.status !== 'concluded')) {
      const runner = await MigrationRunner.open(job, this.deps())
      runner.adoptHeld()
      this.runners.set(job.id, runner)
    }
    // Records of jobs that are gone: retained sources whose release was cut short, bitmaps.
    const live = new Set(this.runners.keys())
    for (const prefix of jobOwnedPrefixes()) {
      const stale: Buffer[] = []
      for await (const [key, value] of this.h.maps.scan(prefix)) {
        if (live.has(jobNoOfKey(key))) continue
        if (isRetainedKey(key)) {
          const v = this.h.movable(parseRetainedKey(key).volNo)
          const { entry } = decodeExtentRecord(value)
          if (v && entry && this.isFree(entry)) {
            v.extents.holdSpace(entry)
            await v.extents.discardEntry(entry)
          }
        }
        stale.push(key)
      }
      await this.h.maps.deleteNow(stale)
    }
  }

  /** Starts the runners (after the mounts are up) and the policy timer. */
  start(): void {
    for (const r of this.runners.values()) this.launch(r)
    this.schedulePolicy()
  }

  async close(): Promise<void> {
    if (this.policyTimer) clearTimeout(this.policyTimer)
    this.policyTimer = null
    // Each runner stops after its current extent; progress is persisted per extent.
    await Promise.all([...this.runners.values()].map((r) => r.halt()))
  }

  /** Where new allocations of a volume go while a job moves it. */
  placementFor(volNo: number): PlacementRule {
    for (const r of this.runners.values()) {
      const rule = r.job.volNos.includes(volNo) ? r.placement() : undefined
      if (rule) return rule
    }
    return {}
  }

  activeJobOf(volNo: number): JobRecord | undefined {
    return [...this.runners.values()].map((r) => r.job).find((j) => j.volNos.includes(volNo) && j.status !== 'concluded')
  }

  /** Extent indexes of a volume whose migration source a job still retains (the web view marks them). */
  retainedExtents(volNo: number): number[] {
    const out: number[] = []
    for (const r of this.runners.values()) out.push(...r.retained.volume(volNo).keys())
    return out
  }

  /** Bytes held by jobs (retained sources): allocated, not free, referenced by no volume map. */
  heldBytes(): number {
    let bytes = 0
    for (const r of this.runners.values()) for (const [, , entry] of r.retained.all()) bytes += entryBytes(entry)
    return bytes
  }

  // ---- starting jobs

  async startMigration(p: { volume: string; to: string; mode: CopyMode; keepMs: number; rate: number; kind?: JobKind; reason?: string; auto?: boolean }): Promise<JobInfo> {
    const volNo = this.h.volumeNo(p.volume)
    const toSid = this.h.systemSid(p.to)
    const dest = this.h.pool.get(toSid)
    if (dest.reserve) throw new VvfsError('INVALID_ARGUMENT', `${p.to} is a reserve storage system (for staged transfers), not a destination`)
    if (dest.draining) throw new VvfsError('INVALID_ARGUMENT', `${p.to} is being drained`)
    this.checkIdle(volNo, p.volume)
    const v = this.h.movable(volNo)!
    const bySystem = v.extents.allocationBySystem()
    const sources = [...bySystem.keys()]
    const toMove = [...bySystem].filter(([sid]) => sid !== toSid).reduce((a, [, b]) => a + b, 0)
    if (toMove > dest.table.free) {
      throw new VvfsError('POOL_FULL', `${p.to} has ${dest.table.free} bytes free; volume ${p.volume} needs ${toMove} there`)
    }
    this.checkMode(p.mode)
    return this.create({ kind: p.kind ?? 'migrate', volNos: [volNo], toSid, sourceSids: sources, mode: p.mode, keepMs: p.keepMs, rate: p.rate, reason: p.reason, auto: p.auto })
  }

  async startDrain(p: { system: string; mode: CopyMode; keepMs: number; rate: number }, persistDraining: (sid: number) => Promise<void>): Promise<JobInfo> {
    const fromSid = this.h.systemSid(p.system)
    const from = this.h.pool.get(fromSid)
    const volNos: number[] = []
    for (let volNo = 1; volNo < this.h.catalog.data.nextVolumeNo; volNo++) {
      const v = this.h.movable(volNo)
      if (v && v.extents.allocationBySystem().has(fromSid)) {
        this.checkIdle(volNo, v.name)
        volNos.push(volNo)
      }
    }
    const room = this.h.pool.list().filter((s) => s.sid !== fromSid && s.allocatable).reduce((a, s) => a + s.table.free, 0)
    if (from.table.allocated > room) throw new VvfsError('POOL_FULL', `the other storage systems have ${room} bytes free; ${p.system} holds ${from.table.allocated}`)
    this.checkMode(p.mode)
    await persistDraining(fromSid)
    return this.create({ kind: 'drain', volNos, fromSid, sourceSids: [fromSid], mode: p.mode, keepMs: p.keepMs, rate: p.rate })
  }

  private checkMode(mode: CopyMode): void {
    if (mode === 'staged' && !this.h.pool.list().some((s) => s.reserve)) {
      throw new VvfsError('INVALID_ARGUMENT', 'staged mode needs a reserve storage system: vvfs storage add NAME --capacity SIZE --reserve')
    }
  }

  private checkIdle(volNo: number, name: string): void {
    const j = this.activeJobOf(volNo)
    if (j) throw new VvfsError('JOB_STATE', `volume ${name} is already in job ${j.id} (${j.status})`)
  }

  private async create(p: Pick<JobRecord, 'kind' | 'volNos' | 'sourceSids' | 'mode' | 'keepMs' | 'rate'> & Partial<JobRecord>): Promise<JobInfo> {
    const data = this.h.catalog.data
    const job: JobRecord = {
      ...p,
      id: data.nextJobNo++,
      status: 'created',
      total: 0,
      current: 0,
      phases: p.mode === 'staged' || p.mode === 'free' ? 2 : 1,
      phase: 0,
      createdAt: new Date().toISOString(),
    }
    data.jobs.push(job)
    this.prune()
    await this.h.catalog.save()
    const runner = await MigrationRunner.open(job, this.deps())
    this.runners.set(job.id, runner)
    this.h.log.info({ event: 'job.created', job: job.id, kind: job.kind, volumes: job.volNos.map((n) => this.h.volumeName(n)), mode: job.mode, reason: job.reason }, `job ${job.id} created`)
    this.h.emit('job.status', { job: this.info(job), from: null })
    this.launch(runner)
    return this.info(job)
  }

  private launch(runner: MigrationRunner): void {
    runner.start()
    void runner.done.finally(() => {
      if (runner.job.status === 'concluded') this.runners.delete(runner.job.id)
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
    this.runner(id).pause()
    return this.show(id)
  }

  resume(id: number): JobInfo {
    this.runner(id).resume()
    return this.show(id)
  }

  cancel(id: number): JobInfo {
    this.runner(id).cancel()
    return this.show(id)
  }

  rollback(id: number): JobInfo {
    const job = this.job(id)
    if (job.status === 'concluded') {
      const why = job.result === 'completed' && job.keepMs > 0 ? `its retention window ended at ${job.retainUntil} and the sources were released` : `it concluded (${job.result})`
      throw new VvfsError('JOB_STATE', `job ${id} cannot be rolled back: ${why}`)
    }
    this.runner(id).rollback()
    return this.show(id)
  }

  /** Resolves when the job concludes (tests, --wait). */
  async settled(id: number): Promise<JobInfo> {
    await this.runners.get(id)?.done
    return this.show(id)
  }

  private job(id: number): JobRecord {
    const j = this.jobs.find((x) => x.id === id)
    if (!j) throw new VvfsError('JOB_NOT_FOUND', `no job ${id}`)
    return j
  }

  private runner(id: number): MigrationRunner {
    const job = this.job(id)
    const r = this.runners.get(id)
    if (!r) throw new VvfsError('JOB_STATE', `job ${id} has concluded (${job.result})`)
    return r
  }

  // ---- consolidation policy

  plan(): Plan {
    const data = this.h.catalog.data
    const held = new Set<string>()
    for (const r of this.runners.values()) for (const [, , entry] of r.retained.all()) if (entry.kind === 'whole') held.add(`${entry.sid}:${entry.slot}`)
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
    const interval = Math.max(1000, this.h.catalog.data.consolidation.intervalMs)
    this.policyTimer = setTimeout(() => {
      void this.runPolicy()
        .catch((err) => this.h.log.error({ event: 'policy.failed', err: (err as Error).message }, 'consolidation policy failed'))
        .finally(() => this.schedulePolicy())
    }, interval)
    this.policyTimer.unref()
  }

  /** One evaluation of the policy: starts the first proposed move, if enabled and nothing automatic runs. */
  async runPolicy(): Promise<JobInfo | undefined> {
    const policy = this.h.catalog.data.consolidation
    if (!policy.enabled) return undefined
    if ([...this.runners.values()].some((r) => r.job.auto && isActive(r.job))) return undefined
    const move = this.plan().moves[0]
    if (!move) return undefined
    this.h.log.info({ event: 'policy.fired', trigger: move.trigger, volume: move.volume, to: move.to, reason: move.reason }, 'consolidation policy fired')
    return this.startMigration({ volume: move.volume, to: move.to, mode: 'direct', keepMs: 0, rate: 0, kind: 'consolidate', reason: move.reason, auto: true })
  }

  // ---- helpers

  /**
   * Where a volume lives after a job: on the destination once a move is done
   * (ready or completed), back where it was after a rollback or cancel; a
   * drained system is nobody's home.
   */
  private updateHomes(job: JobRecord): void {
    const vols = this.h.catalog.data.volumes
    if (job.kind === 'drain') {
      if (job.status === 'concluded' && job.result === 'completed') for (const v of vols) if (v.home === job.fromSid) this.h.setHome(v.no, undefined)
      return
    }
    for (const volNo of job.volNos) {
      const v = vols.find((x) => x.no === volNo)
      if (!v) continue
      if (job.status === 'running' && job.prevHome === undefined) job.prevHome = v.home ?? -1
      if (job.status === 'ready' || (job.status === 'concluded' && job.result === 'completed')) this.h.setHome(volNo, job.toSid)
      else if (job.status === 'concluded') this.h.setHome(volNo, job.prevHome === undefined || job.prevHome < 0 ? undefined : job.prevHome)
    }
  }

  private isFree(entry: ExtentEntry): boolean {
    if (entry.kind === 'whole') return this.h.pool.has(entry.sid) && this.h.pool.get(entry.sid).table.isSlotFree(entry.slot)
    return [...entry.frags.values()].every((f) => this.h.pool.has(f.sid) && this.h.pool.get(f.sid).table.isSlotFree(Math.floor(f.pca / EXTENT_CHUNKS)))
  }

  private prune(): void {
    const done = this.jobs.filter((j) => j.status === 'concluded')
    if (done.length > KEEP_CONCLUDED) {
      const drop = new Set(done.slice(0, done.length - KEEP_CONCLUDED))
      this.h.catalog.data.jobs = this.jobs.filter((j) => !drop.has(j))
    }
  }

  private deps() {
    return {
      pool: this.h.pool,
      maps: this.h.maps,
      mover: this.h.mover,
      log: this.h.log,
      volume: (volNo: number) => this.h.movable(volNo),
      hostOps: () => this.h.hostOps(),
      save: (job: JobRecord) => {
        this.updateHomes(job)
        return this.h.catalog.save()
      },
      statusChanged: (job: JobRecord, from: JobStatus) => {
        this.h.log.info({ event: 'job.status', job: job.id, from, to: job.status }, `job ${job.id}: ${from} → ${job.status}`)
        this.h.emit('job.status', { job: this.info(job), from })
      },
      progressed: (job: JobRecord) => {
        this.sample(job)
        const now = Date.now()
        if (now - (this.lastProgressEvent.get(job.id) ?? 0) < 500 && job.current < job.total) return
        this.lastProgressEvent.set(job.id, now)
        this.h.emit('job.progress', { job: job.id, ...this.info(job).progress })
      },
    }
  }

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
    const left = job.total - job.current
    return {
      id: job.id,
      kind: job.kind,
      status: job.status,
      result: job.result,
      error: job.error,
      volumes: job.volNos.map((n) => this.h.volumeName(n)),
      to: job.toSid === undefined ? undefined : this.h.systemName(job.toSid),
      from: job.fromSid === undefined ? undefined : this.h.systemName(job.fromSid),
      mode: job.mode,
      rate: job.rate,
      keepMs: job.keepMs,
      retainUntil: job.retainUntil,
      progress: {
        current: job.current,
        total: job.total,
        percent: job.total === 0 ? (job.status === 'concluded' ? 100 : 0) : Math.floor((1000 * job.current) / job.total) / 10,
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
