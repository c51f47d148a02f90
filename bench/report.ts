/**
 * The results of one bench run: their shape, the ceiling ratios and target
 * checks, and their rendering as a text table (stdout), markdown
 * (bench/out/results.md) and JSON (bench/out/results.json).
 *
 * Owns: the targets and how a ratio is taken. Must never: compare figures
 * from different runs — every ratio is to the null-FUSE figure of the same
 * job in the same run, and a missing ceiling gives no ratio, not a guess.
 */
import { EXT4_JOBS, JOBS, type JobName, type JobResult } from './fio.js'
import type { MigrationResult } from './migration.js'

export type SystemId = 'null' | 'vvfs' | 'qcow2' | 'plain'

export interface SystemRun {
  id: SystemId
  label: string
  status: 'ok' | 'unavailable'
  reason?: string
  jobs: Partial<Record<JobName, JobResult>>
  /** CPU the serving process used during each job, in % of one core. */
  cpuPercent?: Partial<Record<JobName, number>>
  /** Side notes (e.g. the null daemon's request counts). */
  notes?: string[]
}

export interface Target {
  job: JobName
  min: number
}

/**
 * vvfs as a share of the null FUSE ceiling, same job, same run: issue 17's
 * targets (the first ones, 0.35 / 0.5 / 0.25 / 0.5, were met 2026-12-02).
 */
export const TARGETS: readonly Target[] = [
  { job: 'seqwrite', min: 0.6 },
  { job: 'seqread', min: 0.9 },
  { job: 'randwrite', min: 0.6 },
  { job: 'randread', min: 0.7 },
]

export interface TargetResult extends Target {
  ratio: number | null
  verdict: 'PASS' | 'FAIL' | 'n/a'
}

export interface FioSpace {
  /** Bytes fio wrote in the write jobs on vvfs. */
  bytesWritten: number
  /** The volume's allocated bytes after the jobs (`vvfs volume show`). */
  volumeAllocated: number
  /** du of STATE/storage before the jobs, right after them, and once compaction settled. */
  duBefore: { apparent: number; allocated: number }
  duAfter: { apparent: number; allocated: number }
  duSettled: { apparent: number; allocated: number }
  settled: boolean
  settleWaitMs: number
  /** Issue 17 target 5: du once the storage systems had been idle 60 s after the jobs (the daemon's idle compaction included). */
  duIdle?: { apparent: number; allocated: number }
  idleWaitMs?: number
  /**
   * Issue 17 target 5 ("never more than 2.0 during them"): the highest
   * bytes on disk per logical byte seen while the fio jobs ran (sampled
   * every SPACE_SAMPLE_MS: the stores' du growth over the volume's
   * allocation, from samples with at least SPACE_SAMPLE_MIN_LOGICAL bytes
   * allocated), and how many samples there were.
   */
  duringPeak?: { ratio: number; diskBytes: number; logicalBytes: number; samples: number }
}

/** Issue 17 target 5: bytes on disk per logical byte of volume data, idle 60 s after the fio jobs, and right after them. */
export const SPACE_IDLE_MAX = 1.2
export const SPACE_DURING_MAX = 2.0

/** Issue 17 target 6: the vvfs daemon's peak RSS with three storage systems (VmHWM at the end of the run). */
export const PEAK_RSS_MAX = 384 * 1024 * 1024

/** Issue 17 targets 5 and 6 as table rows: [what, needs, measured, verdict]. */
export function resourceRows(results: Pick<Results, 'fioSpace' | 'daemon'>): string[][] {
  const rows: string[][] = []
  const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL')
  const f = results.fioSpace
  if (f) {
    const logical = Math.max(1, f.volumeAllocated)
    if (f.duringPeak) {
      const p = f.duringPeak
      rows.push([`bytes on disk per logical byte, highest during the fio jobs (${p.samples} samples)`, `<= ${SPACE_DURING_MAX.toFixed(1)}`, p.ratio.toFixed(3), verdict(p.ratio <= SPACE_DURING_MAX)])
    }
    const after = (f.duAfter.allocated - f.duBefore.allocated) / logical
    rows.push(['bytes on disk per logical byte, right after the fio jobs', `<= ${SPACE_DURING_MAX.toFixed(1)}`, after.toFixed(3), verdict(after <= SPACE_DURING_MAX)])
    if (f.duIdle) {
      const idle = (f.duIdle.allocated - f.duBefore.allocated) / logical
      rows.push([`bytes on disk per logical byte, idle ${((f.idleWaitMs ?? 0) / 1000).toFixed(0)} s after the fio jobs`, `<= ${SPACE_IDLE_MAX.toFixed(1)}`, idle.toFixed(3), verdict(idle <= SPACE_IDLE_MAX)])
    }
  }
  const peak = results.daemon.peakRssBytes
  if (peak > 0) {
    rows.push(['vvfs daemon peak RSS, three storage systems (ratio to the bound)', `<= ${bytes(PEAK_RSS_MAX)}`, `${bytes(peak)} (${(peak / PEAK_RSS_MAX).toFixed(2)})`, verdict(peak <= PEAK_RSS_MAX)])
  }
  return rows
}

export interface Ext4Run {
  system: SystemId
  label: string
  status: 'ok' | 'unavailable' | 'failed'
  reason?: string
  mbps?: number
  seconds?: number
  mkfsSeconds?: number
  /** The fio jobs on a file inside the ext4 (EXT4_JOBS). */
  fio?: Partial<Record<JobName, JobResult>>
  smallFiles?: { files: number; seconds: number }
  smallFilesError?: string
  /** CPU the serving process used over the whole ext4 run (dd, fio, small files). */
  serverCpuSeconds?: number
}

/** Issue 17: vvfs as a share of qcow2 over qemu-storage-daemon, ext4 on a loop device, same job, same run. */
export const EXT4_TARGET_VS_QCOW2 = 1.0
/** Issue 17: daemon CPU-seconds per GiB of sequential writes (from ~3.5). */
export const SEQWRITE_CPU_PER_GIB_TARGET = 2.0

export interface MkfsSpace {
  vvfs?: {
    mkfsSeconds: number
    volumeAllocated: number
    poolAllocatedBefore: number
    poolAllocatedAfter: number
    duBefore: { apparent: number; allocated: number }
    duAfter: { apparent: number; allocated: number }
  }
  vvfsError?: string
  qcow2?: {
    mkfsSeconds: number
    /** `du -B1` of the image: blocks on disk. */
    duBytes: number
    /** The fresh image, for reference. */
    duBytesFresh: number
    /** `qemu-img info` actual-size. */
    actualSize: number
  }
  qcow2Error?: string
}

export interface Results {
  startedAt: string
  finishedAt: string
  seconds: number
  sections: string[]
  machine: { cpus: number; kernel: string; node: string; load: number[]; loadEnd?: number[] }
  tempDir: string
  fio: SystemRun[]
  targets: TargetResult[]
  daemon: { pid: number; peakRssBytes: number; rssBytes: number; peakRssAfterFio?: number; rssAfterJob?: Partial<Record<JobName, number>>; logIssues?: { count: number; first: string[] }; exit?: { code: number | string; seconds: number } }
  fioSpace?: FioSpace
  fioSpaceError?: string
  ext4: Ext4Run[]
  mkfs64?: MkfsSpace
  migration?: MigrationResult
  errors: string[]
}

const metricOf = (job: JobName) => JOBS.find((j) => j.name === job)!.metric

/** A system's figure for a job as a share of the null FUSE figure. */
export function ratio(results: Pick<Results, 'fio'>, system: SystemId, job: JobName): number | null {
  const ceiling = results.fio.find((s) => s.id === 'null')?.jobs[job]
  const mine = results.fio.find((s) => s.id === system)?.jobs[job]
  if (!ceiling?.ok || !mine?.ok) return null
  const m = metricOf(job)
  return ceiling[m] > 0 ? mine[m] / ceiling[m] : null
}

export function checkTargets(results: Pick<Results, 'fio'>): TargetResult[] {
  return TARGETS.map((t) => {
    const r = ratio(results, 'vvfs', t.job)
    return { ...t, ratio: r, verdict: r === null ? 'n/a' : r >= t.min ? 'PASS' : 'FAIL' }
  })
}

// ---- formatting

const MiB = 1024 * 1024

export function bytes(n: number): string {
  if (!Number.isFinite(n)) return '-'
  const abs = Math.abs(n)
  if (abs >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`
  if (abs >= MiB) return `${(n / MiB).toFixed(1)} MiB`
  if (abs >= 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${n} B`
}

const int = (n: number) => Math.round(n).toLocaleString('en-US')
const mbps = (n: number) => (n >= 100 ? int(n) : n.toFixed(1))
const ms = (us: number) => (Number.isFinite(us) ? (us >= 10_000 ? (us / 1000).toFixed(1) : (us / 1000).toFixed(2)) : '-')
const share = (r: number | null) => (r === null ? '-' : r.toFixed(2))

interface Grid {
  head: string[]
  rows: string[][]
  /** Right-aligned columns. */
  right: Set<number>
}

function text(g: Grid): string {
  const widths = g.head.map((h, i) => Math.max(h.length, ...g.rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (g.right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd()
  return [line(g.head), line(widths.map((w) => '-'.repeat(w))), ...g.rows.map(line)].join('\n')
}

function markdown(g: Grid): string {
  const row = (cells: string[]) => `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`
  const rule = `|${g.head.map((_h, i) => (g.right.has(i) ? '--:' : '---')).join('|')}|`
  return [row(g.head), rule, ...g.rows.map(row)].join('\n')
}

function fioGrid(results: Results): Grid {
  const rows: string[][] = []
  for (const s of results.fio) {
    if (s.status !== 'ok') {
      rows.push([s.label, 'all', 'unavailable', '', '', '', '', '', s.reason ?? ''])
      continue
    }
    for (const job of JOBS) {
      const r = s.jobs[job.name]
      if (!r) continue
      const cpu = s.cpuPercent?.[job.name]
      if (!r.ok) rows.push([s.label, job.label, 'failed', '', '', '', '', '', r.error ?? ''])
      else rows.push([s.label, job.label, mbps(r.mbps), int(r.iops), ms(r.p50us), ms(r.p99us), share(ratio(results, s.id, job.name)), cpu === undefined ? '-' : cpu.toFixed(0), ''])
    }
  }
  return { head: ['system', 'job', 'MB/s', 'IOPS', 'p50 ms', 'p99 ms', 'x ceiling', 'server CPU %', 'note'], rows, right: new Set([2, 3, 4, 5, 6, 7]) }
}

function targetGrid(results: Results): Grid {
  const label = (job: JobName) => JOBS.find((j) => j.name === job)!.label
  return {
    head: ['target (vvfs / null FUSE, same job, same run)', 'needs', 'measured', 'verdict'],
    rows: results.targets.map((t) => [label(t.job), `>= ${t.min.toFixed(2)}`, share(t.ratio), t.verdict]),
    right: new Set([1, 2]),
  }
}

/** Issue 17 targets 5 and 6: space and memory, each against its bound. */
function resourceGrid(results: Results): Grid {
  return { head: ['target (space, memory)', 'needs', 'measured', 'verdict'], rows: resourceRows(results), right: new Set([1, 2]) }
}

function ext4Grid(results: Results): Grid {
  return {
    head: ['ext4 on a loop device over', 'mkfs s', 'dd 256 MiB conv=fsync MB/s', 'x vvfs', 'note'],
    rows: results.ext4.map((e) => {
      const mine = results.ext4.find((x) => x.system === 'vvfs' && x.status === 'ok')?.mbps
      return e.status === 'ok'
        ? [e.label, (e.mkfsSeconds ?? 0).toFixed(2), mbps(e.mbps ?? 0), mine ? ((e.mbps ?? 0) / mine).toFixed(2) : '-', '']
        : [e.label, '', e.status, '', e.reason ?? '']
    }),
    right: new Set([1, 2, 3]),
  }
}

/** What a user waits for on ext4 over each system, and vvfs against qcow2 (higher is better; for the small files, qcow2's time over ours). */
function ext4WorkloadGrid(results: Results): Grid {
  const vs = (mine: number | undefined, theirs: number | undefined) => (mine && theirs ? (mine / theirs).toFixed(2) : '-')
  const figure = (e: Ext4Run | undefined, job: (typeof EXT4_JOBS)[number]) => {
    const r = e?.fio?.[job.name]
    return r?.ok ? r[job.metric] : undefined
  }
  const vvfs = results.ext4.find((e) => e.system === 'vvfs' && e.status === 'ok')
  const qcow2 = results.ext4.find((e) => e.system === 'qcow2' && e.status === 'ok')
  const plain = results.ext4.find((e) => e.system === 'plain' && e.status === 'ok')
  const cell = (e: Ext4Run | undefined, job: (typeof EXT4_JOBS)[number]) => {
    const f = figure(e, job)
    return f === undefined ? '-' : job.metric === 'mbps' ? mbps(f) : String(Math.round(f))
  }
  const verdict = (x: number | undefined, y: number | undefined) => (x && y ? (x / y >= EXT4_TARGET_VS_QCOW2 ? 'PASS' : 'FAIL') : 'n/a')
  const rows = EXT4_JOBS.map((job) => [
    `${job.label} (${job.metric === 'mbps' ? 'MB/s' : 'IOPS'})`,
    cell(vvfs, job),
    cell(qcow2, job),
    cell(plain, job),
    vs(figure(vvfs, job), figure(qcow2, job)),
    verdict(figure(vvfs, job), figure(qcow2, job)),
  ])
  const sf = (e: Ext4Run | undefined) => e?.smallFiles?.seconds
  const ours = sf(vvfs)
  const theirs = sf(qcow2)
  rows.push([
    `unpack ${vvfs?.smallFiles?.files ?? qcow2?.smallFiles?.files ?? ''} small files + sync (s)`,
    ours?.toFixed(2) ?? '-',
    theirs?.toFixed(2) ?? '-',
    sf(plain)?.toFixed(2) ?? '-',
    vs(theirs, ours),
    verdict(theirs, ours),
  ])
  return { head: ['ext4 on a loop device, same run', 'vvfs', 'qcow2', 'plain file', 'vvfs / qcow2', `>= ${EXT4_TARGET_VS_QCOW2.toFixed(1)}`], rows, right: new Set([1, 2, 3, 4]) }
}

/** Daemon CPU-seconds per GiB written (sequential) and per 100k random writes, from the fio section. */
function cpuPerWork(results: Results): string[] {
  const v = results.fio.find((s) => s.id === 'vvfs')
  const cpuOf = (job: JobName) => {
    const r = v?.jobs[job]
    const pct = v?.cpuPercent?.[job]
    return r?.ok && pct !== undefined ? (pct / 100) * (r.runtimeMs / 1000) : undefined
  }
  const out: string[] = []
  const seq = v?.jobs.seqwrite
  const seqCpu = cpuOf('seqwrite')
  if (seq?.ok && seqCpu !== undefined && seq.ioBytes > 0) {
    const perGiB = seqCpu / (seq.ioBytes / 1024 ** 3)
    out.push(`vvfs daemon CPU per GiB of sequential writes: ${perGiB.toFixed(2)} CPU-s (target <= ${SEQWRITE_CPU_PER_GIB_TARGET.toFixed(1)}: ${perGiB <= SEQWRITE_CPU_PER_GIB_TARGET ? 'PASS' : 'FAIL'})`)
  }
  const rnd = v?.jobs.randwrite
  const rndCpu = cpuOf('randwrite')
  if (rnd?.ok && rndCpu !== undefined && rnd.ioBytes > 0) out.push(`vvfs daemon CPU per 100k random 4 KiB writes: ${(rndCpu / (rnd.ioBytes / 4096 / 100_000)).toFixed(2)} CPU-s`)
  return out
}

/** The lines after the tables: memory, space, mkfs, migration. */
function facts(results: Results): string[] {
  const out: string[] = [...cpuPerWork(results)]
  const d = results.daemon
  out.push(`vvfs daemon peak RSS (VmHWM, pid ${d.pid}): ${bytes(d.peakRssBytes)}` + (d.peakRssAfterFio ? ` (after the fio jobs: ${bytes(d.peakRssAfterFio)})` : '') + `; RSS at the end ${bytes(d.rssBytes)}`)
  if (d.rssAfterJob) out.push(`  RSS after each fio job: ${JOBS.filter((j) => d.rssAfterJob![j.name] !== undefined).map((j) => `${j.name} ${bytes(d.rssAfterJob![j.name]!)}`).join(', ')}`)
  if (d.exit) out.push(`vvfs daemon stop: SIGTERM -> exit ${d.exit.code} after ${d.exit.seconds.toFixed(1)} s`)
  if (d.logIssues?.count) {
    out.push(`vvfs daemon log: ${d.logIssues.count} warning/error lines; first: ${d.logIssues.first.join(' | ')}`)
  }
  const f = results.fioSpace
  if (f) {
    const grewNow = f.duAfter.allocated - f.duBefore.allocated
    const grew = f.duSettled.allocated - f.duBefore.allocated
    out.push(
      `vvfs on-disk bytes, fio section: the storage systems' du (allocated blocks) grew by ${bytes(grewNow)} right after the jobs, ` +
        `${bytes(grew)} once compaction ${f.settled ? `settled (${(f.settleWaitMs / 1000).toFixed(0)} s later)` : `had not settled after ${(f.settleWaitMs / 1000).toFixed(0)} s`}.`,
    )
    out.push(
      `  per byte fio wrote: ${(grew / Math.max(1, f.bytesWritten)).toFixed(3)} (fio wrote ${bytes(f.bytesWritten)} in the two write jobs; ` +
        `what exceeds the volume's allocation were overwrites, which a log-structured store keeps until compaction).`,
    )
    out.push(
      `  per logical byte of the volume that holds data: ${(grew / Math.max(1, f.volumeAllocated)).toFixed(3)} (allocated ${bytes(f.volumeAllocated)} — ` +
        `as much of the first 1 GiB as fio's writes reached); 1.0 is no overhead, more is LevelDB's log, stale versions and index.`,
    )
  } else if (results.fioSpaceError) out.push(`vvfs on-disk bytes, fio section: not measured (${results.fioSpaceError})`)
  const m = results.mkfs64
  if (m) {
    out.push('mkfs.ext4 (defaults) on a loop-attached 64 GiB thin volume:')
    if (m.vvfs) {
      const v = m.vvfs
      out.push(
        `  vvfs:  volume allocated ${bytes(v.volumeAllocated)} (pool allocated ${bytes(v.poolAllocatedBefore)} -> ${bytes(v.poolAllocatedAfter)}); ` +
          `storage du grew by ${bytes(v.duAfter.allocated - v.duBefore.allocated)} in blocks (${bytes(v.duAfter.apparent - v.duBefore.apparent)} apparent, du -sb); mkfs took ${v.mkfsSeconds.toFixed(1)} s`,
      )
    } else out.push(`  vvfs:  failed (${m.vvfsError ?? 'unknown'})`)
    if (m.qcow2) {
      const q = m.qcow2
      out.push(`  qcow2: image on disk ${bytes(q.duBytes)} (du -B1; fresh image ${bytes(q.duBytesFresh)}), qemu-img actual-size ${bytes(q.actualSize)}; mkfs took ${q.mkfsSeconds.toFixed(1)} s`)
    } else out.push(`  qcow2: unavailable (${m.qcow2Error ?? 'unknown'})`)
    if (m.vvfs && m.qcow2) {
      const ours = m.vvfs.duAfter.allocated - m.vvfs.duBefore.allocated
      out.push(`  on disk, vvfs ${bytes(ours)} vs qcow2 ${bytes(m.qcow2.duBytes)}: ${ours <= m.qcow2.duBytes ? 'PASS — ours is not larger' : 'FAIL — ours is larger'}`)
    }
  }
  if (results.migration) out.push(`migration: ${results.migration.status} — ${results.migration.note}`)
  for (const s of results.fio) for (const n of s.notes ?? []) out.push(`${s.label}: ${n}`)
  if (results.errors.length) {
    out.push('errors:')
    for (const e of results.errors) out.push(`  ${e}`)
  }
  return out
}

function header(results: Results): string {
  const m = results.machine
  return (
    `vvfs bench, ${results.startedAt}: ${results.seconds} s per fio job, direct=1, libaio, first 1 GiB of a 4 GiB file; ` +
    `${m.cpus} CPUs, kernel ${m.kernel}, node ${m.node}; load average ${m.load.map((l) => l.toFixed(2)).join(' ')} at the start` +
    (m.loadEnd ? `, ${m.loadEnd.map((l) => l.toFixed(2)).join(' ')} at the end. ` : '. ') +
    'MB/s is 10^6 bytes/s; ratios are to the null FUSE daemon, same job, same run; server CPU % is the serving process\'s user+system time ' +
    'over the job in % of one core (none for the plain file: the kernel serves it). The machine is shared, so figures are noisy.'
  )
}

export function renderText(results: Results): string {
  const parts = [header(results)]
  if (results.fio.length) parts.push(text(fioGrid(results)), text(targetGrid(results)))
  if (resourceRows(results).length) parts.push(text(resourceGrid(results)))
  if (results.ext4.length) parts.push(text(ext4Grid(results)), text(ext4WorkloadGrid(results)))
  parts.push(facts(results).join('\n'))
  return parts.join('\n\n') + '\n'
}

export function renderMarkdown(results: Results): string {
  const parts = ['# vvfs bench results', header(results)]
  if (results.fio.length) parts.push('## fio', markdown(fioGrid(results)), '## Targets', markdown(targetGrid(results)))
  if (resourceRows(results).length) parts.push('## Space and memory', markdown(resourceGrid(results)))
  if (results.ext4.length) parts.push('## ext4 over a loop device', markdown(ext4Grid(results)), markdown(ext4WorkloadGrid(results)))
  parts.push('## Memory, space, mkfs, migration', facts(results).map((l) => (l.startsWith('  ') ? `  - ${l.trim()}` : `- ${l}`)).join('\n'))
  return parts.join('\n\n') + '\n'
}
