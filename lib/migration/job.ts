/**
 * The job model (qemu's qapi/job.json, as in DESIGN.md): a job is created,
 * runs, may be paused and resumed, and concludes with a result; every status
 * change is an event. A job that converges (a mirror, a migration keeping
 * its sources) reports `ready` and stays there until it is completed (or
 * rolled back). Progress is `current` of `total` bytes: `total` is fixed when
 * the job (or its cancel/rollback) starts and `current` only grows, reaching
 * `total` when the work is done.
 *
 *   created → running ⇄ paused → ready (sources kept: --keep) → concluded
 *                 ↘ cancelling → concluded (cancelled | failed)
 *   ready → rolling-back → concluded (rolled-back)
 *
 * `JobRecord` is a union by `kind`: what every job has (`JobCommon`) and
 * what its kind adds. A new kind of job (replication, initial sync) adds its
 * record to the union and a driver (lib/jobs/driver.ts) registered with the
 * JobManager; nothing else in the manager changes.
 */
import type { WireError } from '../errors.js'

export const JOB_STATUSES = ['created', 'running', 'paused', 'ready', 'cancelling', 'rolling-back', 'concluded'] as const
export type JobStatus = (typeof JOB_STATUSES)[number]
export const JOB_KINDS = ['migrate', 'consolidate', 'drain', 'replicate'] as const
export type JobKind = (typeof JOB_KINDS)[number]
export const JOB_RESULTS = ['completed', 'cancelled', 'failed', 'rolled-back'] as const
export type JobResult = (typeof JOB_RESULTS)[number]
export const COPY_MODES = ['direct', 'staged', 'free', 'memory'] as const
export type CopyMode = (typeof COPY_MODES)[number]

/** What every job has, whatever its kind. */
export interface JobCommon {
  id: number
  kind: JobKind
  status: JobStatus
  result?: JobResult
  error?: WireError
  /** Volume numbers the job works on. */
  volNos: number[]
  total: number
  current: number
  createdAt: string
  startedAt?: string
  finishedAt?: string
  /** Why an automatic job was started (consolidation policy). */
  reason?: string
  auto?: boolean
}

/** A job that moves volumes' extents between storage systems (lib/migration/runner.ts). */
interface MoveJobFields {
  /** Where the volumes lived when the job started (where cancel and rollback return them). */
  sourceSids: number[]
  mode: CopyMode
  /** Copy bandwidth limit, bytes per second (0: none). */
  rate: number
  /** Retention window of the source extents after the job, ms (0: release at once). */
  keepMs: number
  retainUntil?: string
  /** 1, or 2 for staged/free (source → intermediate → destination). */
  phases: number
  phase: number
  /** The volume's home before the job (-1: none), restored by cancel or rollback. */
  prevHome?: number
}

/** Moves one volume onto one storage system (by hand: migrate; by the consolidation policy: consolidate). */
export interface MigrateJobRecord extends JobCommon, MoveJobFields {
  kind: 'migrate' | 'consolidate'
  /** Destination storage system id. */
  toSid: number
  fromSid?: undefined
}

/** Moves every extent off one storage system (volNos: every volume on it when the job started). */
export interface DrainJobRecord extends JobCommon, MoveJobFields {
  kind: 'drain'
  /** Storage system being emptied. */
  fromSid: number
  toSid?: undefined
}

export type MoveJobRecord = MigrateJobRecord | DrainJobRecord

/** Issue 13: a replication pair's primary side (lib/jobs/replicate.ts); runs until stopped (cancel). */
export interface ReplicateJobRecord extends JobCommon, MoveJobFields {
  kind: 'replicate'
  /** The secondary daemon's ADDR:PORT. */
  peer: string
  /** The pair's (and the secondary volume's) name there. */
  pair: string
  /** Issue 13.6: the consistency group whose volumes (volNos) share this pair's sequence. */
  group?: string
  peerKey: string
  /** Copy rate limit of the initial sync and resyncs, bytes/s (0: none). */
  rate: number
  journalLimit?: number
  journalPolicy?: 'bitmap' | 'throttle'
  /** The epoch chain (lib/replication/epoch.ts) as this primary knows it. */
  chain: { epoch: number; home: string; firstSeq: number; predecessor: { epoch: number; home: string; lastSeq: number } | null }[]
  /** Issue 13.7: the journal kept since a promote (lib/replication/failover.ts): a reversed pair ships from it — no initial sync. */
  journalDir?: string
  /** The last handoff's management information (lib/replication/journal-chain.ts), committed with the chain. */
  handoffPending?: { epoch: number; since: number; marks: { volume: number; extent: number }[] | null }
  /**
   * Issue 15: `volume move` handed the volume on with the pair caught up —
   * the secondary applied every number of `epoch` through `lastSeq`, and the
   * old relay numbers no more — so the next relay numbers from lastSeq + 1
   * without a resync. Cleared by the next open of the job.
   */
  handedOver?: { epoch: number; lastSeq: number }
  toSid?: undefined
  fromSid?: undefined
}

/** Every job record, discriminated by `kind`. */
export type JobRecord = MoveJobRecord | ReplicateJobRecord

export function isActive(job: JobCommon): boolean {
  return job.status === 'created' || job.status === 'running' || job.status === 'paused' || job.status === 'cancelling' || job.status === 'rolling-back'
}
