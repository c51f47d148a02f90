/**
 * ======================== MIGRATION BENCHMARK: TO BE BUILT ========================
 *
 * The section `BENCH_ONLY=migration` runs. Today it only finds out whether
 * vvfs has a `migrate` command; the benchmark itself is for whoever builds
 * migration to write here. What it gets (`MigrationContext`): the running
 * daemon with three 4 GiB storage systems (`ctx.vvfs.cli([...])`,
 * `ctx.vvfs.json(...)`), the bench's temp dir, the run length, the fio job
 * runner (to load a volume while it moves) and the cleanup stack (register
 * an undo for anything you start). What it must give back: a
 * `MigrationResult`, which run.ts puts into results.json/results.md as is.
 *
 * Must never: leave a migration running or a volume half-moved when it
 * returns or fails — register the undo with `ctx.cleanup.add` first.
 * ===================================================================================
 */
import { VVFS_BIN } from './vvfs.js'
import { run, type Cleanup } from './proc.js'
import type { JobResult, JobSpec } from './fio.js'
import type { Vvfs } from './vvfs.js'

export interface MigrationContext {
  vvfs: Vvfs
  dir: string
  seconds: number
  cleanup: Cleanup
  runJob(job: JobSpec, file: string, seconds: number, jsonPath: string): Promise<JobResult>
  say(line: string): void
}

export interface MigrationResult {
  status: 'not built' | 'not written' | 'ok' | 'failed'
  note: string
  /** Whatever the benchmark measures, by name (MB/s, seconds, bytes …). */
  figures?: Record<string, number>
}

/**
 * Whether `vvfs migrate` exists. Not just the exit code: yargs answers an
 * unknown command with `--help` by printing the top-level help and exiting 0.
 */
export async function hasMigrateCommand(): Promise<boolean> {
  const r = await run(process.execPath, [VVFS_BIN, 'migrate', '--help'], { timeoutMs: 30_000 })
  const firstLine = r.stdout.trimStart().split('\n')[0] ?? ''
  return r.code === 0 && /^vvfs migrate\b/.test(firstLine)
}

export async function migrationBench(ctx: MigrationContext): Promise<MigrationResult> {
  if (!(await hasMigrateCommand())) {
    ctx.say('migration: not built yet')
    return { status: 'not built', note: '`vvfs migrate` does not exist yet' }
  }
  // ---- BEGIN: the migration benchmark goes here (see the header). ----
  ctx.say('migration: `vvfs migrate` exists, but its benchmark is not written yet (bench/migration.ts)')
  return { status: 'not written', note: '`vvfs migrate` exists; bench/migration.ts does not measure it yet' }
  // ---- END ----
}
