/**
 * The job model (qemu's, as in DESIGN.md): a job is created, runs, may be
 * paused and resumed, and concludes with a result; every status change is
 * an event. Progress is `current` of `total` bytes: `total` is fixed when
 * the job (or its cancel/rollback) starts and `current` only grows, reaching
 * `total` when the work is done.
 *
 *   created → running ⇄ paused → ready (sources kept: --keep) → concluded
 *                 ↘ cancelling → concluded (cancelled | failed)
 *   ready → rolling-back → concluded (rolled-back)
 */
import type { WireError } from '../errors.js'

export const JOB_STATUSES = ['created', 'running', 'paused', 'ready', 'cancelling', 'rolling-back', 'concluded'] as const
export type JobStatus = (typeof JOB_STATUSES)[number]
export type JobKind = 'migrate' | 'consolidate' | 'drain'
export type JobResult = 'completed' | 'cancelled' | 'failed' | 'rolled-back'
export const COPY_MODES = ['direct', 'staged', 'free', 'memory'] as const
export type CopyMode = (typeof COPY_MODES)[number]

export interface JobRecord {
  id: number
  kind: JobKind
  status: JobStatus
  result?: JobResult
  error?: WireError
  /** Volume numbers the job moves (drain: every volume on the system when it started). */
  volNos: number[]
  /** Destination storage system id (migrate, consolidate). */
  toSid?: number
  /** Storage system being emptied (drain). */
  fromSid?: number
  /** Where the volumes lived when the job started (where cancel and rollback return them). */
  sourceSids: number[]
  mode: CopyMode
  /** Copy bandwidth limit, bytes per second (0: none). */
  rate: number
  /** Retention window of the source extents after the job, ms (0: release at once). */
  keepMs: number
  retainUntil?: string
  total: number
  current: number
  /** 1, or 2 for staged/free (source → intermediate → destination). */
  phases: number
  phase: number
  createdAt: string
  startedAt?: string
  finishedAt?: string
  /** Why an automatic job was started (consolidation policy). */
  reason?: string
  auto?: boolean
  /** The volume's home before the job (-1: none), restored by cancel or rollback. */
  prevHome?: number
}

export function isActive(job: JobRecord): boolean {
  return job.status === 'created' || job.status === 'running' || job.status === 'paused' || job.status === 'cancelling' || job.status === 'rolling-back'
}
