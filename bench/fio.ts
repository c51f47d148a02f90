/**
 * The four fio jobs of bench-anchors.md and the parsing of fio's JSON.
 *
 * Owns: the job definitions (so every system runs exactly the same ones) and
 * the check that a job really ran. Must never: let fio create or lay out a
 * file — a missing FUSE file would otherwise turn into a benchmark of the
 * local disk under the mountpoint, with plausible numbers.
 */
import { readFile } from 'node:fs/promises'
import { run } from './proc.js'

export type JobName = 'seqwrite' | 'seqread' | 'randwrite' | 'randread'

export interface JobSpec {
  name: JobName
  label: string
  rw: 'write' | 'read' | 'randwrite' | 'randread'
  bs: string
  iodepth: number
  /** Which figure the ceiling ratio and the target use. */
  metric: 'mbps' | 'iops'
}

/** In this order: reads follow the writes that put data where they read. */
export const JOBS: readonly JobSpec[] = [
  { name: 'seqwrite', label: 'seq write 1M qd4', rw: 'write', bs: '1M', iodepth: 4, metric: 'mbps' },
  { name: 'seqread', label: 'seq read 1M qd4', rw: 'read', bs: '1M', iodepth: 4, metric: 'mbps' },
  { name: 'randwrite', label: 'rand write 4K qd16', rw: 'randwrite', bs: '4k', iodepth: 16, metric: 'iops' },
  { name: 'randread', label: 'rand read 4K qd16', rw: 'randread', bs: '4k', iodepth: 16, metric: 'iops' },
]

/**
 * The same four jobs on a file inside ext4 on a loop device (issue 17: what
 * users run): direct=1 on the ext4 file, random writes fsync'd every 32,
 * over a 512 MiB file fio lays out itself (inside ext4 that is the point).
 */
export const EXT4_JOBS: readonly (JobSpec & { fsync?: number })[] = [
  { name: 'seqwrite', label: 'ext4 file seq write 1M qd4', rw: 'write', bs: '1M', iodepth: 4, metric: 'mbps' },
  { name: 'seqread', label: 'ext4 file seq read 1M qd4', rw: 'read', bs: '1M', iodepth: 4, metric: 'mbps' },
  { name: 'randwrite', label: 'ext4 file rand write 4K qd16, fsync/32', rw: 'randwrite', bs: '4k', iodepth: 16, metric: 'iops', fsync: 32 },
  { name: 'randread', label: 'ext4 file rand read 4K qd16', rw: 'randread', bs: '4k', iodepth: 16, metric: 'iops' },
]
/** Size of the ext4 jobs' file: twice the loop device's page cache share we would otherwise measure, small enough for a 4 GiB volume beside dd's 256 MiB. */
export const EXT4_FIO_SIZE = '512M'

export interface JobResult {
  ok: boolean
  error?: string
  /** 1e6 bytes per second, as fio's MB/s. */
  mbps: number
  iops: number
  /** Completion latency percentiles, microseconds. */
  p50us: number
  p99us: number
  /** Bytes fio moved in the job. */
  ioBytes: number
  runtimeMs: number
}

interface FioSide {
  io_bytes: number
  bw_bytes: number
  iops: number
  runtime: number
  clat_ns?: { percentile?: Record<string, number> }
}

interface FioJson {
  jobs?: { jobname: string; error: number; read: FioSide; write: FioSide }[]
}

export function failed(error: string): JobResult {
  return { ok: false, error, mbps: 0, iops: 0, p50us: 0, p99us: 0, ioBytes: 0, runtimeMs: 0 }
}

/**
 * Runs one job against `file` (direct I/O, over its first 1 GiB, for
 * `seconds`); `jsonPath` keeps fio's report beside the results. `inFs`: the
 * file is inside a file system fio may lay it out in (`size` of it), and
 * `fsync` every that many writes.
 */
export async function runJob(job: JobSpec, file: string, seconds: number, jsonPath: string, inFs?: { size: string; fsync?: number }): Promise<JobResult> {
  const args = [
    `--name=${job.name}`,
    `--filename=${file}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    '--ioengine=libaio',
    `--iodepth=${job.iodepth}`,
    '--direct=1',
    `--size=${inFs?.size ?? '1G'}`,
    '--offset=0',
    '--time_based=1',
    `--runtime=${seconds}`,
    ...(inFs ? ['--allow_file_create=1', '--fallocate=none', ...(inFs.fsync ? [`--fsync=${inFs.fsync}`] : [])] : ['--allow_file_create=0', '--fallocate=none']),
    '--output-format=json',
    `--output=${jsonPath}`,
  ]
  const r = await run('fio', args, { timeoutMs: (seconds + 120) * 1000 })
  let report: FioJson
  try {
    report = JSON.parse(jsonText(await readFile(jsonPath, 'utf8'))) as FioJson
  } catch {
    const why = (r.stderr.trim() || r.stdout.trim() || `exit ${r.code ?? r.signal}`).split('\n').slice(-3).join(' | ')
    return failed(`fio gave no JSON report: ${why}`)
  }
  const j = report.jobs?.[0]
  if (!j) return failed('fio report has no job')
  const side = job.rw.includes('write') ? j.write : j.read
  if (j.error !== 0 || r.code !== 0) {
    const why = r.stderr.trim().split('\n').slice(-3).join(' | ')
    return failed(`fio error ${j.error} (exit ${r.code ?? r.signal})${why ? `: ${why}` : ''}`)
  }
  if (!side || side.io_bytes <= 0) return failed('fio moved no bytes')
  const pct = side.clat_ns?.percentile ?? {}
  return {
    ok: true,
    mbps: side.bw_bytes / 1e6,
    iops: side.iops,
    p50us: (pct['50.000000'] ?? NaN) / 1000,
    p99us: (pct['99.000000'] ?? NaN) / 1000,
    ioBytes: side.io_bytes,
    runtimeMs: side.runtime,
  }
}

/** fio may print notes before the JSON object even with --output. */
function jsonText(text: string): string {
  const start = text.search(/^\{/m)
  return start > 0 ? text.slice(start) : text
}
