/**
 * Job drivers: what the JobManager (lib/manager/jobs.ts) needs of a job of
 * any kind. The verbs are qemu's (qapi/job.json): start, pause, resume,
 * cancel, complete (a job that converges reports `ready`, then is completed),
 * plus halt (the daemon stops: leave the job as persisted, resume it at the
 * next start). A kind of job is one `JobKindDriver` registered with the
 * JobManager: it opens a driver for each of its records (new or restored).
 *
 * Concurrency: a driver owns its record (`job`, a copy of the catalog's) and
 * changes it on the event loop; it commits it through `JobEnv.save`, which
 * is the catalog's update(). The manager reads the live record for status.
 * Verbs answer at once (JOB_STATE if the job is not in a state for them);
 * the work happens in the driver's own loop, whose end is `done`.
 *
 * Failure: a driver never throws out of `done`; a failed job concludes with
 * result `failed` and its error in `job.error`.
 */
import type { JobInfo } from '../control/schema.js'
import type { Logger } from '../log.js'
import type { ExtentEntry } from '../relay/extent-entry.js'
import type { MapStore } from '../relay/map-store.js'
import type { PlacementRule } from '../relay/extent-ops.js'
import type { ChunkMover } from '../storage/chunk-mover.js'
import type { Pool } from '../storage/pool.js'
import type { CatalogData, CatalogStore } from '../manager/catalog.js'
import type { MovableVolume } from '../migration/runner.js'
import type { JobKind, JobRecord, JobStatus } from '../migration/job.js'
import type { JournalLayer } from '../replication/journal-layer.js'
import type { PrimaryPair } from '../replication/primary.js'

export interface JobDriver<R extends JobRecord = JobRecord> {
  /** The live record: the driver's own copy, committed through JobEnv.save. */
  readonly job: R
  /** Settles when the driver's loop ends (concluded, or halted). */
  readonly done: Promise<void>
  start(): void
  pause(): void
  resume(): void
  cancel(): void
  /** Finishes a job that reported `ready` (qemu's job-complete). */
  complete(): void
  /** Stops after the current step without changing the status; settles when stopped. */
  halt(): Promise<void>
  /**
   * Issue 15: the job's volume is no longer served here (its lease was lost,
   * or `volume move` handed it on): halts and closes what the job holds
   * open here; the job stays in the catalog for the relay that serves the
   * volume now. Kinds that hold nothing beyond halt() omit it. `handover`:
   * an orderly `volume move` (the volume's I/O drained), which may leave
   * the next relay what it needs to go on without redoing work.
   */
  release?(opts?: { handover?: boolean }): Promise<void>
  progress(): { current: number; total: number }
  /** Undoes a `ready` job (a migration whose sources are kept); kinds that cannot, omit it. */
  rollback?(): void
  /** Marks the space the job holds as used (at start, before any allocation). */
  reserveHeld?(): void
  /**
   * Work that may allocate before the job's volumes serve I/O (a replication
   * journal's redo): run once every job's held space is marked and stale
   * records are cleaned (a replay that allocated first took a retained
   * source's slot: STATE_CORRUPT at the next start), and for a new job
   * before it starts.
   */
  prepare?(): Promise<void>
  /** Where new allocations of a volume go while the job holds it (undefined: no rule). */
  placementFor?(volNo: number): PlacementRule | undefined
  /** Extents the job holds space for that no volume map references (retained sources). */
  held?(): Iterable<[volNo: number, extent: number, entry: ExtentEntry]>
}

/** What JobInfo shows that depends on the kind (destination, source, copy settings). */
export type JobDetails = Pick<JobInfo, 'to' | 'from' | 'mode' | 'rate' | 'keepMs' | 'retainUntil'>

/** Issue 13: what a replication job needs of the manager (lib/jobs/replicate.ts). */
export interface ReplicationResources {
  /** The volume's journal layer, size and allocated extents. */
  journalLayer(volNo: number): JournalLayer | undefined
  volumeSize(volNo: number): number
  allocatedExtents(volNo: number): number[]
  /** Where a job's journal lives. */
  journalDir(jobId: number): string
  /** The epoch home of a new pair of the volume. */
  home(volNo: number): string
  /** The running pairs, by job id (status). */
  readonly pairs: Map<number, PrimaryPair>
  stateChanged(body: { pair: string; volume: string; from: string; to: string; reason: string }): void
  /**
   * The volume's home changed (a migration switched it): hands the journal
   * of its pair, if any, over to the new home (lib/replication/journal-chain.ts).
   * Resolves once the handoff committed or was not needed; never rejects.
   */
  handoff?(volNo: number): Promise<void>
}

/** What the manager has that jobs use: the catalog, the storage, the MapStore, names. */
export interface JobResources {
  /** Issue 13: replication jobs (absent: none can run). */
  replication?: ReplicationResources
  catalog: CatalogStore
  pool: Pool
  maps: MapStore
  mover: ChunkMover
  log: Logger
  volumeNo(name: string): number
  systemSid(name: string): number
  systemName(sid: number): string
  /** Host I/O requests so far (any volume): background work steps back while it moves. */
  hostOps(): number
}

/** What the manager gives every driver. */
export interface JobEnv extends JobResources {
  volume(volNo: number): MovableVolume | undefined
  /** The job now holding a volume, if any. */
  activeJobOf(volNo: number): JobRecord | undefined
  /** Commits a driver's record, with `alsoChange` to the catalog in the same commit. */
  save(job: JobRecord, alsoChange?: (draft: CatalogData) => void): Promise<void>
  statusChanged(job: JobRecord, from: JobStatus): void
  progressed(job: JobRecord): void
}

export interface JobKindDriver {
  readonly kinds: readonly JobKind[]
  open(job: JobRecord, env: JobEnv): Promise<JobDriver>
  /** JobInfo's kind-specific fields, for a running or a concluded job. */
  describe(job: JobRecord, env: JobEnv): JobDetails
  /** At start, after every live job is open: drops what ended jobs of these kinds left behind. */
  cleanStale?(live: ReadonlySet<number>, env: JobEnv): Promise<void>
}

/** A job as a start request describes it, before the manager gives it an id and status. */
export type NewJob = JobRecord extends infer R ? (R extends JobRecord ? Omit<R, 'id' | 'status' | 'total' | 'current' | 'createdAt'> : never) : never
