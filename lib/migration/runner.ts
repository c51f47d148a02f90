/**
 * MigrationRunner: carries out one migration job — move a volume onto one
 * storage system (migrate, consolidate) or every extent off one (drain) —
 * while hosts keep reading and writing.
 *
 * Per extent, under the extent's exclusive lock (so host I/O to it waits for
 * this one copy, never longer): allocate at the target, copy the data (in the
 * worker thread) and sync the target, then in one MapStore batch switch the
 * volume map to the copy and record the source as retained; then set the
 * extent's bit in the copy bitmap (with the job's progress). While hosts are
 * idle, the same steps run for a group of extents under one lock of their
 * range (moveGroup: copies in parallel, one sync per destination, the
 * switches in one batch). Steps and what a crash after each leaves:
 *   copy   → the copy is referenced by nothing: its space is free again at
 *            start and its data cleared before reuse; the extent is redone.
 *   switch → the map points at the copy, the source is retained: the extent
 *            is seen as done when the job resumes.
 *   bitmap → done.
 *   release (at the end) → each retained source is cleared, then its record
 *            dropped; a release cut short is finished at start.
 * Sources stay retained until the job concludes (and through --keep), so
 * cancel and rollback can always return the volume whole to its source:
 * unchanged extents are switched back, extents written since their switch
 * (the dirty bitmap kept by MigrateLayer) are copied back first, extents
 * created during the job are moved to the source systems.
 *
 * Power-loss order (DESIGN.md, "Persistence and crash safety"): every copy
 * is synced on its storage system before the switch record that points at it
 * is written (copyDurably): LevelDB may make the map store's batch durable by
 * itself (a memtable flush), and a host fsync's syncAll skipped systems only
 * the worker had written. One destination sync per extent (a log sync of the
 * 1 MiB just appended) was lost in the noise: a 64 MiB in-process migration,
 * ten alternating runs each at load 8-11 on two cores, median 0.85 s (min
 * 0.53) with it against 0.83 s (min 0.34) without. Data a record stops
 * pointing at is dropped only once the
 * map store is synced (dropAfterSwitch, releaseSources). An extent switched
 * while its source system held unsynced unlogged host writes is marked dirty
 * in the switch's batch: a kill -9 may take those writes from the source
 * while its copy kept them, so a rollback must copy it back, not switch back.
 *
 * staged/free copy in two phases: first every extent to an intermediate
 * system (the reserve, or any system with room), switching the map there, so
 * the source is emptied as fast as the intermediate takes data; then to the
 * destination. memory copies each extent through one buffer and one batch.
 *
 * The host may shrink and grow a volume at any time (fsx truncates all the
 * time). Walks over a volume's extents take the index list as a snapshot
 * and await between extents, so an extent may be gone when its turn comes:
 * that is nothing to do, never an error — each step reads the entry under
 * the extent's lock (moveExtent marks it copied with 0 bytes; returnExtent
 * drops its retained source, the host having discarded the extent). No walk
 * holds an entry across an await. Extents the host creates during the job
 * (a grow, then writes) are placed per the job (placement(): the
 * destination while copying, off it while giving back); those at the
 * destination as the job starts are noted in start(), before any await, so
 * a cancel moves every extent made during the job back to the sources
 * (test/migration/resize-during-job.test.ts).
 *
 * A storage failure while moving an extent (IO_ERROR, STORAGE_FULL: a copy's
 * read or write, an injected fault) stops the job as qemu's on-error=stop
 * does: the extent's copy is dropped (the map still points at its source, so
 * the volume is whole), the job is paused with the error in `job.error`, and
 * `job resume` retries that extent (cancel gives the volume back as usual).
 */
import { asVvfsError, VvfsError } from '../errors.js'
import { crashPoint } from '../crash-points.js'
import { EXTENT_SIZE } from '../layout.js'
import type { Logger } from '../log.js'
import { entryBytes, entrySystems, sameShape, type ExtentEntry } from '../relay/extent-entry.js'
import type { ExtentOps, PlacementRule } from '../relay/extent-ops.js'
import { decodeProgress, encodeProgress, progressKey } from '../relay/key-space.js'
import type { MapStore } from '../relay/map-store.js'
import type { Pool } from '../storage/pool.js'
import { writeDurably } from '../storage/storage-system.js'
import { CopyBitmap } from './bitmap.js'
import type { JobRecord, JobResult, JobStatus } from './job.js'
import type { MigrateLayer } from './layer.js'
import { RetainedSources } from './retained.js'

/** A volume as a job sees it: its extent operations and the layer that keeps its dirty bits. */
export interface MovableVolume {
  volNo: number
  name: string
  extents: ExtentOps
  layer: MigrateLayer
}

export interface RunnerDeps {
  pool: Pool
  maps: MapStore
  volume(volNo: number): MovableVolume | undefined
  /** Persists the job record (the catalog) after a status change. */
  save(job: JobRecord): Promise<void>
  statusChanged(job: JobRecord, from: JobStatus): void
  progressed(job: JobRecord): void
  log: Logger
  /** A counter of host I/O requests: when it moves, hosts are busy and the copy steps back. */
  hostOps(): number
}

/**
 * While hosts are doing I/O, the copy waits this many times as long as its
 * last extent took before the next one: it takes at most 1/(1+HOST_SHARE) of
 * the time, so foreground I/O keeps most of the machine (bench: migration).
 * 5, not 3, since copies run through native batches: foreground 4 KiB writes
 * during a job kept 0.93–1.08 of their rate against 0.78–0.83, with the copy
 * under that load at 117–121 vs 124–127 MB/s.
 */
const HOST_SHARE = 5

/**
 * While hosts are idle, extents move in groups of up to this many (copyGroup),
 * made durable by one log sync per destination (moveGroup). A sync per
 * extent was a third of an extent's time (6 of 19 ms, 512 MiB idle copy);
 * with groups of 16 and COPY_LANES copies in flight the idle copy went from
 * 0.16–0.22 to 0.27–0.33 of the same run's sequential write
 * (bench/scripts/migration-rate.sh, alternating, load 10–12 on 2 vCPUs).
 * Unlogged copies made durable by a memtable flush per group were slower
 * there (the flush writes the table on the critical path: 13 ms per MiB
 * against 2.2 for the group's log sync).
 */
export const GROUP_EXTENTS = 16
/** Copies in flight within a group: their source reads overlap (cold table reads, 16 KiB each, bound a copy). */
const COPY_LANES = 4

/**
 * Retained sources released at a time at the end of a job: one at a time,
 * the release of 683 MiB took 0.96 s after a 12 s copy (4.1 s before a
 * slot's clear stopped reading the slot: level-store.ts).
 */
const RELEASE_LANES = 8
/** Retained records dropped (and synced) together before their sources are cleared: one MapStore sync per 64 MiB released. */
const RELEASE_GROUP = 64

/**
 * The group starting at todo[i]: up to `size` pending extents whose indexes
 * span less than 2 × size (one lock covers the span, holes included: a host
 * write into a hole waits for the group too).
 */
function copyGroup(todo: number[], i: number, size: number): number[] {
  let j = i + 1
  while (j < todo.length && j - i < size && todo[j]! - todo[i]! < 2 * size) j++
  return todo.slice(i, j)
}

export class MigrationRunner {
  private pauseRequested = false
  private stopRequested: 'cancel' | 'rollback' | null = null
  /** The daemon is stopping: leave the job as it is persisted, to resume at the next start. */
  private halted = false
  private wake: (() => void) | null = null
  private readonly bitmaps = new Map<string, CopyBitmap>()
  private readonly dirty = new Map<number, CopyBitmap>()
  private startedCopyAt = 0
  private copiedSinceStart = 0
  /**
   * The status placement() follows: the last one committed. A new status is
   * set on the record and then committed with the volumes' homes; placing by
   * it before the commit sent a host write in between to the old home (the
   * source a completed job had just emptied).
   */
  private placedBy: JobStatus
  done: Promise<void> = Promise.resolve()

  private constructor(
    readonly job: JobRecord,
    private readonly deps: RunnerDeps,
    readonly retained: RetainedSources,
  ) {
    this.placedBy = job.status
  }

  /** Loads what the job holds (retained sources, bitmaps) and marks its space. */
  static async open(job: JobRecord, deps: RunnerDeps): Promise<MigrationRunner> {
    const retained = await RetainedSources.load(deps.maps, job.id)
    const runner = new MigrationRunner(job, deps, retained)
    const saved = await deps.maps.get(progressKey(job.id))
    if (saved) {
      const p = decodeProgress(saved)
      job.current = Math.max(job.current, p.current)
      job.total = Math.max(job.total, p.total)
      job.phase = Math.max(job.phase, p.phase)
    }
    for (const volNo of job.volNos) {
      const v = deps.volume(volNo)
      const dirty = await CopyBitmap.load(deps.maps, 'dirty', job.id, volNo)
      runner.dirty.set(volNo, dirty)
      if (v && job.status !== 'concluded') v.layer.tracking = { retained, dirty }
    }
    return runner
  }

  /** Space held by retained sources, marked used at start (before any allocation). */
  adoptHeld(): void {
    for (const [volNo, , entry] of this.retained.all()) this.deps.volume(volNo)?.extents.holdSpace(entry)
  }

  start(): void {
    // The extents at the destination as the job starts, taken before any
    // await: from now on the host's new extents go there too (placement()),
    // and those are the job's to give back on cancel.
    this.done = this.loop(this.job.phase === 0 ? this.extentsAtDestination() : new Map())
  }

  /** Where new allocations of the job's volumes go (JobManager.placementFor): its destination while it copies, anywhere else while it gives back. */
  placement(): PlacementRule | undefined {
    const { toSid } = this.job
    const status = this.placedBy
    if (toSid === undefined) return undefined
    if (status === 'created' || status === 'running' || status === 'paused') return { only: toSid }
    if (status === 'cancelling' || status === 'rolling-back') return { exclude: new Set([toSid]) }
    return undefined
  }

  pause(): void {
    if (this.job.status !== 'running' && this.job.status !== 'created') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}, not running`)
    this.pauseRequested = true
  }

  resume(): void {
    if (this.job.status !== 'paused' && !this.pauseRequested) throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}, not paused`)
    this.pauseRequested = false
    this.wake?.()
  }

  /** Stops after the current extent without changing the job's status; resolves when stopped. */
  async halt(): Promise<void> {
    this.halted = true
    this.wake?.()
    await this.done.catch(() => {})
  }

  cancel(): void {
    const s = this.job.status
    if (s !== 'created' && s !== 'running' && s !== 'paused') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${s}; only a running or paused job can be cancelled (a ready job is rolled back)`)
    this.stopRequested = 'cancel'
    this.wake?.()
  }

  rollback(): void {
    if (this.job.status !== 'ready') {
      const why = this.job.status === 'concluded' ? 'it has concluded and its sources were released' : `it is ${this.job.status}`
      throw new VvfsError('JOB_STATE', `job ${this.job.id} cannot be rolled back: ${why}`)
    }
    this.stopRequested = 'rollback'
    this.wake?.()
  }

  // ---- the job's life

  private async loop(atDestination: Map<number, number[]>): Promise<void> {
    const job = this.job
    try {
      if (job.status === 'created' || job.status === 'running' || job.status === 'paused') {
        if (!job.startedAt) job.startedAt = new Date().toISOString()
        if (job.status === 'paused') this.pauseRequested = true
        else await this.setStatus('running')
        if (!(await this.copyAll(atDestination))) return this.halted ? undefined : await this.giveBack('cancelled')
        await this.afterCopy()
      }
      if (this.halted) return
      if (job.status === 'cancelling') return await this.giveBack(job.error ? 'failed' : 'cancelled')
      if (job.status === 'rolling-back') return await this.giveBack('rolled-back')
      if (job.status === 'ready') await this.retain()
    } catch (err) {
      if (this.halted) return
      const e = asVvfsError(err)
      job.error = e.toWire()
      this.deps.log.error({ event: 'job.failed', job: job.id, code: e.code, err: e.message }, 'migration failed; returning the volume to its source')
      try {
        await this.giveBack('failed')
      } catch (err2) {
        this.deps.log.error({ event: 'job.stuck', job: job.id, err: (err2 as Error).message }, 'could not return the volume to its source; the job resumes at the next start')
      }
    }
  }

  private async copyAll(atDestination: Map<number, number[]>): Promise<boolean> {
    const job = this.job
    // What the volumes hold now becomes durable where it is first (unlogged
    // writes live in memtables until a sync): a source kept for a rollback
    // must not be older than what the host last read there.
    await this.deps.pool.syncAll()
    if (job.phase === 0) {
      // Extents already at the destination when the job started stay there on cancel.
      for (const [volNo, extents] of atDestination) {
        const there = await this.bitmap(volNo, 0)
        for (const e of extents) await there.set(e)
      }
      job.total = this.remainingBytes() * job.phases
      job.phase = 1
      await this.saveProgress()
    }
    this.startedCopyAt = Date.now()
    this.copiedSinceStart = 0
    for (let phase = job.phase; phase <= job.phases; phase++) {
      if (phase !== job.phase) {
        job.phase = phase
        await this.saveProgress()
      }
      for (const volNo of job.volNos) {
        const v = this.deps.volume(volNo)
        if (!v) continue
        const bitmap = await this.bitmap(volNo, phase)
        const todo = v.extents.extentIndexes().filter((e) => !bitmap.has(e))
        // Hosts busy: one extent at a time, each followed by a wait of
        // HOST_SHARE times its copy. Idle: groups, doubling from one extent
        // up to the limit (a job cancelled or paused early stops early).
        let size = 1
        for (let i = 0; i < todo.length; ) {
          const group = copyGroup(todo, i, size)
          let bytes: number | undefined
          let ops = 0
          let t0 = 0
          while (bytes === undefined) {
            if (!(await this.checkpoint())) return false
            ops = this.deps.hostOps()
            t0 = Date.now()
            const step = group.length === 1 ? this.moveExtent(v, group[0]!, phase, bitmap) : this.moveGroup(v, group, phase, bitmap)
            bytes = await step.catch((err: unknown) => this.stopOnError(v, group, err))
          }
          i += group.length
          if (bytes > 0) await this.throttle()
          if (this.deps.hostOps() === ops) size = Math.min(2 * size, this.groupLimit())
          else {
            size = 1
            await this.rest((Date.now() - t0) * HOST_SHARE)
          }
        }
      }
    }
    job.current = job.total
    await this.saveProgress()
    return true
  }

  /**
   * The extents of each volume at the job's destination now, read in one go
   * (no await between the index list and the entries: a shrink or a host
   * write may change both while a walk awaits).
   */
  private extentsAtDestination(): Map<number, number[]> {
    const out = new Map<number, number[]>()
    if (this.job.toSid === undefined) return out
    for (const volNo of this.job.volNos) {
      const v = this.deps.volume(volNo)
      if (!v) continue
      out.set(
        volNo,
        v.extents.extentIndexes().filter((e) => {
          const cur = v.extents.entry(e)
          return cur !== undefined && this.isFinal(cur)
        }),
      )
    }
    return out
  }

  /** Bytes of the extents not yet where the job puts them (for `total`). */
  private remainingBytes(): number {
    let bytes = 0
    for (const volNo of this.job.volNos) {
      const v = this.deps.volume(volNo)
      if (!v) continue
      for (const e of v.extents.extentIndexes()) {
        const entry = v.extents.entry(e)
        if (entry && !this.isFinal(entry)) bytes += entryBytes(entry)
      }
    }
    return bytes
  }

  private async moveExtent(v: MovableVolume, e: number, phase: number, bitmap: CopyBitmap): Promise<number> {
    const release = await v.extents.lock(e)
    try {
      const cur = v.extents.entry(e)
      if (!cur || this.isDoneIn(v.volNo, e, cur, phase)) {
        await this.markCopied(bitmap, e, 0)
        return 0
      }
      const next = v.extents.allocateLike(cur, this.placementFor(phase, cur))
      if (!next) throw new VvfsError('POOL_FULL', `no room for extent ${e} of volume ${v.name} at the ${phase < this.job.phases ? 'intermediate' : 'destination'} storage`)
      let bytes: number
      try {
        bytes = await this.copyDurably(v, cur, next)
      } catch (err) {
        v.extents.forget(next)
        throw err
      }
      crashPoint('migration.copy')
      const firstMove = !this.retained.has(v.volNo, e)
      const extra = firstMove ? [this.retained.hold(v.volNo, e, cur)] : []
      // The source may lose what the copy read (unlogged writes) to a kill -9:
      // a rollback must then copy the extent back rather than switch back.
      const dirty = this.dirty.get(v.volNo)
      if (firstMove && dirty && [...entrySystems(cur)].some((sid) => this.deps.pool.get(sid).holdsUnsyncedUnlogged)) extra.push(dirty.mark(e))
      await v.extents.switchExtent(e, cur, next, extra)
      crashPoint('migration.switch')
      await this.markCopied(bitmap, e, entryBytes(cur))
      crashPoint('migration.bitmap')
      // A staged copy is not a source: once the map moved on, it goes.
      if (!firstMove) await this.dropAfterSwitch(v, cur)
      this.copiedSinceStart += bytes
      return bytes
    } finally {
      release()
    }
  }

  /**
   * Moves a group of extents (ascending indexes, copyGroup) under one lock
   * of their range: the copies COPY_LANES at a time, then one log sync of
   * each destination system (the copies become durable together), then every
   * switch in one MapStore batch, then every bitmap bit. Crash order as
   * moveExtent's, per group: before the sync the copies are referenced by
   * nothing (their space is free at start, and the extents are redone); the
   * switches are written only once the sync has made every copy they point
   * at durable (test/migration/group-copy.test.ts: what a power cut would
   * leave at each switch; the power-cut runs of
   * test/system/migration-crash.test.ts). Host I/O to the range waits for
   * the whole group, which is why groups are made only while hosts are idle.
   */
  private async moveGroup(v: MovableVolume, extents: number[], phase: number, bitmap: CopyBitmap): Promise<number> {
    const first = extents[0]!
    const release = await v.extents.lock(first, extents[extents.length - 1]! - first + 1)
    const moves: { e: number; cur: ExtentEntry; next: ExtentEntry }[] = []
    try {
      const skipped: number[] = []
      for (const e of extents) {
        const cur = v.extents.entry(e)
        if (!cur || this.isDoneIn(v.volNo, e, cur, phase)) {
          skipped.push(e)
          continue
        }
        const next = v.extents.allocateLike(cur, this.placementFor(phase, cur))
        if (!next) throw new VvfsError('POOL_FULL', `no room for extent ${e} of volume ${v.name} at the ${phase < this.job.phases ? 'intermediate' : 'destination'} storage`)
        moves.push({ e, cur, next })
      }
      await Promise.all(skipped.map((e) => this.markCopied(bitmap, e, 0)))
      let bytes = 0
      const style = this.job.mode === 'memory' ? 'whole' : 'stream'
      let k = 0
      let failed = false
      const lane = async (): Promise<void> => {
        while (k < moves.length && !failed) {
          const m = moves[k++]!
          try {
            bytes += await v.extents.copy(m.cur, m.next, style, { unsynced: true })
          } catch (err) {
            failed = true
            throw err
          }
        }
      }
      // Every lane runs to its end before the group fails: no copy is left writing into space forgotten below.
      const destinations = new Set<number>()
      for (const m of moves) for (const sid of entrySystems(m.next)) destinations.add(sid)
      // A copy a restarted storage server may have lost must not be switched to (errseq).
      await writeDurably([...destinations].map((sid) => this.deps.pool.get(sid)), 'copies of this group', async () => {
        const lanes = await Promise.allSettled(Array.from({ length: COPY_LANES }, lane))
        for (const l of lanes) if (l.status === 'rejected') throw l.reason
      })
      for (let n = 0; n < moves.length; n++) crashPoint('migration.copy')
      const dirty = this.dirty.get(v.volNo)
      const firstMoves = moves.map((m) => !this.retained.has(v.volNo, m.e))
      // Issued in one tick: the map store writes them as one batch.
      const switches = moves.map((m, n) => {
        const extra = firstMoves[n] ? [this.retained.hold(v.volNo, m.e, m.cur)] : []
        // As moveExtent: a source holding unsynced unlogged writes makes the extent dirty.
        if (firstMoves[n] && dirty && [...entrySystems(m.cur)].some((sid) => this.deps.pool.get(sid).holdsUnsyncedUnlogged)) extra.push(dirty.mark(m.e))
        return v.extents.switchExtent(m.e, m.cur, m.next, extra)
      })
      const switched = moves.splice(0)
      await Promise.all(switches)
      for (let n = 0; n < switched.length; n++) crashPoint('migration.switch')
      await Promise.all(switched.map((m) => this.markCopied(bitmap, m.e, entryBytes(m.cur))))
      for (let n = 0; n < switched.length; n++) crashPoint('migration.bitmap')
      // Staged copies are not sources: once the map moved on, they go.
      const staged = switched.filter((_, n) => !firstMoves[n])
      if (staged.length > 0) {
        await this.deps.maps.sync()
        for (const m of staged) await v.extents.discardEntry(m.cur)
      }
      this.copiedSinceStart += bytes
      return bytes
    } finally {
      // Copies never switched (a failure before the switches) are referenced by nothing.
      for (const m of moves) v.extents.forget(m.next)
      release()
    }
  }

  private async afterCopy(): Promise<void> {
    const job = this.job
    if (job.keepMs > 0) {
      job.retainUntil = new Date(Date.now() + job.keepMs).toISOString()
      await this.setStatus('ready')
      return this.retain()
    }
    await this.releaseSources()
    await this.conclude('completed')
  }

  /** Keeps the sources until the window ends (then releases them) or a rollback. */
  private async retain(): Promise<void> {
    const until = Date.parse(this.job.retainUntil ?? '') || 0
    while (!this.stopRequested && !this.halted && Date.now() < until) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(until - Date.now(), 60_000))
        this.wake = () => {
          clearTimeout(t)
          resolve()
        }
      })
    }
    if (this.halted) return
    if (this.stopRequested === 'rollback') return this.giveBack('rolled-back')
    await this.releaseSources()
    await this.conclude('completed')
  }

  private async releaseSources(): Promise<void> {
    // The switches away from the sources first: a source cleared under a map
    // record still pointing at it would lose the extent at a power cut.
    await this.deps.maps.sync()
    const sources = [...this.retained.all()]
    // Then by groups: the group's retained records dropped durably, then its
    // sources cleared and their space freed (RELEASE_LANES at a time). A
    // retained record names its source as the copy a cancel returns to —
    // without copying when the extent is clean — so it must be gone before
    // the source is cleared (2026-12-04 review: cleared first, a crash left
    // records of cleared sources, and a cancel after the restart switched
    // those extents back to zeros). A crash after a group's drop leaves its
    // sources unreferenced: their slots are free at the restart, and a slot
    // is cleared before it is handed out again.
    for (let at = 0; at < sources.length; at += RELEASE_GROUP) {
      const group = sources.slice(at, at + RELEASE_GROUP)
      await this.deps.maps.putMany(group.map(([volNo, e]) => this.retained.drop(volNo, e)))
      await this.deps.maps.sync()
      let k = 0
      const lane = async (): Promise<void> => {
        while (k < group.length) {
          const [volNo, , entry] = group[k++]!
          await this.deps.volume(volNo)?.extents.discardEntry(entry)
        }
      }
      await Promise.all(Array.from({ length: RELEASE_LANES }, lane))
      if (at === 0) crashPoint('migration.release')
    }
  }

  /** Returns every volume of the job whole to its source systems (cancel, failure, rollback). */
  private async giveBack(result: JobResult): Promise<void> {
    const job = this.job
    await this.setStatus(result === 'rolled-back' ? 'rolling-back' : 'cancelling')
    job.current = 0
    job.total = 0
    for (const [volNo, , entry] of this.retained.all()) if (this.deps.volume(volNo)) job.total += entryBytes(entry)
    await this.saveProgress()
    for (const volNo of job.volNos) {
      const v = this.deps.volume(volNo)
      const dirty = this.dirty.get(volNo)
      for (const [e, src] of [...this.retained.volume(volNo)]) {
        if (!v) {
          await this.deps.maps.putMany([this.retained.drop(volNo, e)])
          continue
        }
        await this.returnExtent(v, e, src, dirty)
        job.current = Math.min(job.total, job.current + entryBytes(src))
        this.deps.progressed(job)
      }
      // Extents created during the job live at the destination: bring them to the source too.
      if (v && job.toSid !== undefined) {
        const there = await this.bitmap(volNo, 0)
        for (const e of v.extents.extentIndexes()) {
          const cur = v.extents.entry(e)
          if (cur && !there.has(e) && !this.onSources(cur)) await this.moveToSource(v, e)
        }
      }
    }
    job.current = job.total
    await this.conclude(result)
  }

  private async returnExtent(v: MovableVolume, e: number, src: ExtentEntry, dirty: CopyBitmap | undefined): Promise<void> {
    const release = await v.extents.lock(e)
    try {
      const cur = v.extents.entry(e)
      if (!cur) {
        // The host discarded the extent since: so does the source.
        await v.extents.discardEntry(src)
        await this.deps.maps.putMany([this.retained.drop(v.volNo, e)])
        return
      }
      if (cur === src) {
        await this.deps.maps.putMany([this.retained.drop(v.volNo, e)])
        return
      }
      let target = src
      let fresh = false
      if (!sameShape(cur, src)) {
        const sid = [...entrySystems(src)][0]!
        const alloc = v.extents.allocateLike(cur, { only: sid })
        if (!alloc) throw new VvfsError('POOL_FULL', `no room to return extent ${e} of volume ${v.name} to its source`)
        await this.copyDurably(v, cur, alloc)
        target = alloc
        fresh = true
      } else if (dirty?.has(e) ?? true) {
        await this.copyDurably(v, cur, src)
      }
      await v.extents.switchExtent(e, cur, target, [this.retained.drop(v.volNo, e)])
      await this.dropAfterSwitch(v, cur)
      if (fresh) await v.extents.discardEntry(src)
    } finally {
      release()
    }
  }

  private async moveToSource(v: MovableVolume, e: number): Promise<void> {
    const release = await v.extents.lock(e)
    try {
      const cur = v.extents.entry(e)
      if (!cur || this.onSources(cur)) return
      const target = this.mostFree(this.job.sourceSids)
      const next = target === undefined ? undefined : v.extents.allocateLike(cur, { only: target })
      if (!next) throw new VvfsError('POOL_FULL', `no room to return extent ${e} of volume ${v.name} to its source systems`)
      await this.copyDurably(v, cur, next)
      await v.extents.switchExtent(e, cur, next)
      await this.dropAfterSwitch(v, cur)
    } finally {
      release()
    }
  }

  private async conclude(result: JobResult): Promise<void> {
    const job = this.job
    job.result = result
    job.finishedAt = new Date().toISOString()
    for (const volNo of job.volNos) {
      const v = this.deps.volume(volNo)
      if (v) v.layer.tracking = null
      await this.dirty.get(volNo)?.remove()
    }
    for (const bm of this.bitmaps.values()) await bm.remove()
    await this.deps.maps.put(progressKey(job.id), () => null)
    await this.setStatus('concluded')
    this.deps.log.info({ event: 'job.concluded', job: job.id, result, error: job.error?.message }, `job ${job.id} ${result}`)
  }

  // ---- where things go

  private get stagingSid(): number | undefined {
    return this.job.mode === 'staged' ? this.deps.pool.list().find((s) => s.reserve)?.sid : undefined
  }

  /** The systems an extent must leave. */
  private sourceSet(): Set<number> {
    const job = this.job
    if (job.kind === 'drain') return new Set([job.fromSid!])
    return new Set(job.sourceSids.filter((s) => s !== job.toSid))
  }

  private isFinal(entry: ExtentEntry): boolean {
    const sids = entrySystems(entry)
    const job = this.job
    if (job.kind === 'drain') {
      const staging = this.stagingSid
      return !sids.has(job.fromSid!) && (staging === undefined || !sids.has(staging))
    }
    return sids.size === 1 && sids.has(job.toSid!)
  }

  /** In a first phase an extent is done once it has left its source (its source is retained). */
  private isDoneIn(volNo: number, e: number, entry: ExtentEntry, phase: number): boolean {
    if (this.isFinal(entry)) return true
    return phase < this.job.phases && this.retained.has(volNo, e)
  }

  private placementFor(phase: number, entry: ExtentEntry): PlacementRule {
    const job = this.job
    if (phase < job.phases) {
      if (job.mode === 'staged') {
        const r = this.stagingSid
        if (r === undefined) throw new VvfsError('JOB_STATE', 'staged mode needs a reserve storage system (vvfs storage add NAME --capacity SIZE --reserve)')
        return { only: r }
      }
      // free: unused space of any storage system but the extent's own and the destination.
      const exclude = entrySystems(entry)
      if (job.toSid !== undefined) exclude.add(job.toSid)
      if (job.fromSid !== undefined) exclude.add(job.fromSid)
      return { exclude }
    }
    if (job.kind === 'drain') return { exclude: new Set([job.fromSid!]) }
    return { only: job.toSid! }
  }

  private onSources(entry: ExtentEntry): boolean {
    const src = new Set(this.job.sourceSids)
    return [...entrySystems(entry)].every((s) => src.has(s) && s !== this.job.toSid)
  }

  private mostFree(sids: number[]): number | undefined {
    let best: number | undefined
    let free = -1
    for (const sid of sids) {
      if (sid === this.job.toSid || !this.deps.pool.has(sid)) continue
      const f = this.deps.pool.get(sid).table.free
      if (f > free) {
        free = f
        best = sid
      }
    }
    return best
  }

  // ---- mechanics

  /**
   * Copies and syncs the copy on its storage systems (ExtentOps.copy): a
   * switch record may point at it only once it is durable there. Unlogged
   * copies (issue 17) would need sync() instead — one per group of extents,
   * before their switches (the mover reports their writes to it).
   */
  private copyDurably(v: MovableVolume, from: ExtentEntry, to: ExtentEntry): Promise<number> {
    return v.extents.copy(from, to, this.job.mode === 'memory' ? 'whole' : 'stream')
  }

  /** Drops the data of an entry a switch moved the map away from, once that switch is durable. */
  private async dropAfterSwitch(v: MovableVolume, entry: ExtentEntry): Promise<void> {
    await this.deps.maps.sync()
    await v.extents.discardEntry(entry)
  }

  private async bitmap(volNo: number, phase: number): Promise<CopyBitmap> {
    const k = `${volNo}:${phase}`
    let bm = this.bitmaps.get(k)
    if (!bm) this.bitmaps.set(k, (bm = await CopyBitmap.load(this.deps.maps, 'copy', this.job.id, volNo, phase)))
    return bm
  }

  private async markCopied(bitmap: CopyBitmap, e: number, bytes: number): Promise<void> {
    const job = this.job
    job.current = Math.min(job.total, job.current + bytes)
    // The bit and the job's progress go in one batch: progress never runs ahead of the bitmap.
    await Promise.all([bitmap.set(e), this.saveProgress()])
    this.deps.progressed(job)
  }

  private saveProgress(): Promise<void> {
    const { current, total, phase } = this.job
    return this.deps.maps.put(progressKey(this.job.id), () => encodeProgress({ current, total, phase }))
  }

  /** A storage failure pauses the job (the extents are retried at resume); anything else fails it. */
  private stopOnError(v: MovableVolume, extents: number[], err: unknown): undefined {
    const e = extents.length === 1 ? extents[0]! : `${extents[0]}-${extents[extents.length - 1]}`
    const error = asVvfsError(err)
    if (error.code !== 'IO_ERROR' && error.code !== 'STORAGE_FULL') throw err
    this.job.error = error.toWire()
    this.pauseRequested = true
    this.deps.log.error(
      { event: 'job.copy_failed', job: this.job.id, volume: v.name, extent: e, code: error.code, err: error.message },
      `job ${this.job.id} paused: moving extent${extents.length === 1 ? '' : 's'} ${e} of ${v.name} failed (the volume stays whole at its source); resume it once the storage is fixed`,
    )
    return undefined
  }

  private async checkpoint(): Promise<boolean> {
    if (this.stopRequested || this.halted) return false
    if (this.pauseRequested) {
      await this.setStatus('paused')
      while (this.pauseRequested && !this.stopRequested && !this.halted) await new Promise<void>((resolve) => (this.wake = resolve))
      if (this.stopRequested || this.halted) return false
      delete this.job.error
      await this.setStatus('running')
    }
    return true
  }

  /** The most extents in a group: GROUP_EXTENTS, or under --rate a quarter second's worth (at least one). */
  private groupLimit(): number {
    const rate = this.job.rate
    return rate ? Math.max(1, Math.min(GROUP_EXTENTS, Math.floor(rate / EXTENT_SIZE / 4))) : GROUP_EXTENTS
  }

  /** Keeps the copy at or under --rate, counting from the start of this run. */
  private async throttle(): Promise<void> {
    const rate = this.job.rate
    if (!rate) return
    const due = this.startedCopyAt + (1000 * this.copiedSinceStart) / rate
    const wait = due - Date.now()
    if (wait > 0) await this.rest(wait)
  }

  /**
   * Waits `ms`, or until the job is halted, paused or stopped (wake): a halt
   * never waits one out (issue 15: a step that spanned a relay's SIGSTOP made
   * its host-share wait 5× the pause, and the stopped relay's process stayed
   * up that long after its clean stop).
   */
  private rest(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      this.wake = () => {
        clearTimeout(t)
        resolve()
      }
    })
  }

  private async setStatus(status: JobStatus): Promise<void> {
    const from = this.job.status
    if (from === status) return
    this.job.status = status
    await this.deps.save(this.job)
    this.placedBy = status
    this.deps.statusChanged(this.job, from)
  }
}
