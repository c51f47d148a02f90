/**
 * The migration benchmark (issue 4): a 2 GiB volume spread over the three
 * storage systems is moved onto one of them
 *   - idle: nothing else runs; copy throughput = bytes moved / job time;
 *   - loaded: while fio runs 4 KiB random writes (iodepth 16) on it.
 * Beside the loaded run, the same fio job without a migration: the
 * foreground IOPS and p99 during the job against those without.
 * Targets: idle copy ≥ 50% of vvfs's sequential write rate measured by the
 * fio section of the same run; foreground IOPS during the job ≥ 70% of
 * without.
 *
 * Must never: leave a migration running when it returns or fails (the undo
 * cancels it) — the daemon is stopped right after.
 */
import { join } from 'node:path'
import { VVFS_BIN } from './vvfs.js'
import { must, run, type Cleanup } from './proc.js'
import type { JobResult, JobSpec } from './fio.js'
import type { Vvfs } from './vvfs.js'

export interface MigrationContext {
  vvfs: Vvfs
  dir: string
  seconds: number
  cleanup: Cleanup
  runJob(job: JobSpec, file: string, seconds: number, jsonPath: string): Promise<JobResult>
  say(line: string): void
  /** vvfs's sequential write MB/s from the fio section of this run, if it ran. */
  seqWriteMBps?: number
  fioDir: string
}

export interface MigrationResult {
  status: 'not built' | 'not written' | 'ok' | 'failed'
  note: string
  /** Whatever the benchmark measures, by name (MB/s, seconds, bytes …). */
  figures?: Record<string, number>
}

interface JobJson {
  id: number
  status: string
  result?: string
  startedAt?: string
  finishedAt?: string
  progress: { current: number; total: number }
  error?: { code: string; message: string }
}

const RANDWRITE: JobSpec = { name: 'randwrite', label: 'rand write 4K qd16', rw: 'randwrite', bs: '4k', iodepth: 16, metric: 'iops' }

/**
 * Whether `vvfs migrate` exists. Not just the exit code: yargs answers an
 * unknown command with `--help` by printing the top-level help and exiting 0.
 */
export async function hasMigrateCommand(): Promise<boolean> {
  const r = await run(process.execPath, [VVFS_BIN, 'migrate', '--help'], { timeoutMs: 30_000 })
  const firstLine = r.stdout.trimStart().split('\n')[0] ?? ''
  return r.code === 0 && /^vvfs migrate\b/.test(firstLine)
}

async function waitJob(v: Vvfs, id: number): Promise<JobJson> {
  for (;;) {
    const j = await v.json<JobJson>(['job', 'show', String(id)])
    if (j.status === 'concluded') {
      if (j.result !== 'completed') throw new Error(`migration job ${id} ${j.result}: ${j.error?.message ?? ''}`)
      return j
    }
    await new Promise((r) => setTimeout(r, 200))
  }
}

function copyRate(j: JobJson): number {
  const seconds = (Date.parse(j.finishedAt!) - Date.parse(j.startedAt!)) / 1000
  return j.progress.total / 1e6 / Math.max(seconds, 0.001)
}

export async function migrationBench(ctx: MigrationContext): Promise<MigrationResult> {
  if (!(await hasMigrateCommand())) {
    ctx.say('migration: not built yet')
    return { status: 'not built', note: '`vvfs migrate` does not exist yet' }
  }
  const v = ctx.vvfs
  const file = join(v.mountDir, 'mig')
  await v.cli(['volume', 'create', 'mig', '--size', '2G'])
  let running: number | undefined
  const undo = ctx.cleanup.add('cancel the benchmark migration', async () => {
    if (running !== undefined) await v.cli(['job', 'cancel', String(running)]).catch(() => {})
  })
  try {
    ctx.say('migration: writing 2 GiB of random data into a volume spread over three systems')
    await must('fio', ['--name=fill', `--filename=${file}`, '--rw=write', '--bs=1M', '--ioengine=libaio', '--iodepth=4', '--direct=1', '--size=2G', '--allow_file_create=0', '--fallocate=none', '--refill_buffers=1'], {
      timeoutMs: 600_000,
    })
    const spread = await v.json<{ allocatedBySystem: { storage: string; allocated: number }[] }>(['volume', 'show', 'mig'])
    const least = (s: { storage: string; allocated: number }[]) => ['s1', 's2', 's3'].sort((a, b) => (s.find((x) => x.storage === a)?.allocated ?? 0) - (s.find((x) => x.storage === b)?.allocated ?? 0))[0]!

    // Idle copy.
    const idleTo = least(spread.allocatedBySystem)
    ctx.say(`migration: idle, onto ${idleTo}`)
    let job = await v.json<JobJson>(['migrate', 'mig', '--to', idleTo])
    running = job.id
    const idle = await waitJob(v, job.id)
    running = undefined
    const idleRate = copyRate(idle)
    ctx.say(`migration: idle copy ${idleRate.toFixed(0)} MB/s (${(idle.progress.total / 2 ** 20).toFixed(0)} MiB)`)

    // Foreground without a job.
    const seconds = ctx.seconds
    const without = await ctx.runJob(RANDWRITE, file, seconds, join(ctx.fioDir, 'migration-baseline.json'))
    if (!without.ok) throw new Error(`baseline fio: ${without.error}`)
    ctx.say(`migration: foreground without a job ${without.iops.toFixed(0)} IOPS, p99 ${(without.p99us / 1000).toFixed(2)} ms`)

    // Foreground during a job (the whole 2 GiB moves to another system).
    const loadedTo = ['s1', 's2', 's3'].find((s) => s !== idleTo)!
    ctx.say(`migration: loaded, onto ${loadedTo}, with fio 4 KiB random writes`)
    job = await v.json<JobJson>(['migrate', 'mig', '--to', loadedTo])
    running = job.id
    const during = await ctx.runJob(RANDWRITE, file, seconds, join(ctx.fioDir, 'migration-loaded.json'))
    const stillRunning = (await v.json<JobJson>(['job', 'show', String(job.id)])).status !== 'concluded'
    const loaded = await waitJob(v, job.id)
    running = undefined
    if (!during.ok) throw new Error(`fio during the migration: ${during.error}`)
    const loadedRate = copyRate(loaded)
    ctx.say(
      `migration: during the job ${during.iops.toFixed(0)} IOPS, p99 ${(during.p99us / 1000).toFixed(2)} ms; copy ${loadedRate.toFixed(0)} MB/s` +
        (stillRunning ? '' : ' (the job ended before fio: IOPS are partly without it)'),
    )
    const idleRatio = ctx.seqWriteMBps ? idleRate / ctx.seqWriteMBps : NaN
    const fgRatio = during.iops / without.iops
    const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL')
    const note =
      `idle copy ${idleRate.toFixed(0)} MB/s = ${Number.isNaN(idleRatio) ? 'n/a (fio section not run)' : idleRatio.toFixed(2)} of vvfs seq write ` +
      `(target ≥ 0.50: ${Number.isNaN(idleRatio) ? 'n/a' : verdict(idleRatio >= 0.5)}); ` +
      `foreground ${during.iops.toFixed(0)} vs ${without.iops.toFixed(0)} IOPS = ${fgRatio.toFixed(2)} (target ≥ 0.70: ${verdict(fgRatio >= 0.7)}), ` +
      `p99 ${(during.p99us / 1000).toFixed(2)} vs ${(without.p99us / 1000).toFixed(2)} ms; copy under load ${loadedRate.toFixed(0)} MB/s`
    ctx.say(`migration: ${note}`)
    return {
      status: 'ok',
      note,
      figures: {
        idleCopyMBps: idleRate,
        idleCopyBytes: idle.progress.total,
        idleRatioToSeqWrite: idleRatio,
        loadedCopyMBps: loadedRate,
        foregroundIopsWithout: without.iops,
        foregroundIopsDuring: during.iops,
        foregroundRatio: fgRatio,
        foregroundP99usWithout: without.p99us,
        foregroundP99usDuring: during.p99us,
      },
    }
  } finally {
    await undo()
  }
}
