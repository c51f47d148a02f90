/**
 * CLI commands for migrations and jobs: `vvfs migrate …`, `vvfs job …`,
 * `vvfs storage drain`. `--wait` follows the job's events and draws a
 * progress bar (bytes done / total, rate, ETA); it exits non-zero if the job
 * does not complete.
 */
import { SingleBar } from 'cli-progress'
import type { Argv } from 'yargs'
import { ControlClient } from '../control/client.js'
import { CopyMode, type JobInfo } from '../control/schema.js'
import { VvfsError } from '../errors.js'
import { formatSize } from '../units.js'
import { fields, table } from './output.js'
import { watch, watchOptions } from './watch.js'

export interface Common {
  socket: string
  json: boolean
}

export type Call = <T>(argv: Common, run: (c: ControlClient) => Promise<T>) => Promise<T>

export const MODES = CopyMode.options

export function jobText(j: JobInfo): string {
  const p = j.progress
  const rows: [string, string | number][] = [
    ['job', `${j.id} (${j.kind}${j.auto ? ', automatic' : ''})`],
    ['status', j.status + (j.result ? ` (${j.result})` : '')],
    ['volumes', j.volumes.join(', ') || '-'],
  ]
  if (j.to) rows.push(['to', j.to])
  if (j.from) rows.push(['from', j.from])
  rows.push(['mode', j.mode])
  rows.push(['progress', `${formatSize(p.current)} of ${formatSize(p.total)} (${p.percent}%)`])
  if (p.bytesPerSecond) rows.push(['rate', `${formatSize(p.bytesPerSecond)}/s`])
  if (p.etaSeconds !== null && j.status !== 'concluded') rows.push(['eta', `${p.etaSeconds}s`])
  if (j.rate) rows.push(['rate limit', `${formatSize(j.rate)}/s`])
  if (j.keepMs) rows.push(['keep sources', `${j.keepMs / 1000}s${j.retainUntil ? ` (until ${j.retainUntil})` : ''}`])
  if (j.reason) rows.push(['why', j.reason])
  if (j.error) rows.push(['error', `${j.error.code}: ${j.error.message}`])
  rows.push(['created', j.createdAt])
  if (j.finishedAt) rows.push(['finished', j.finishedAt])
  return fields(rows)
}

export function jobRows(jobs: JobInfo[]): string {
  return table(
    ['ID', 'KIND', 'STATUS', 'VOLUMES', 'TO/FROM', 'MODE', 'PROGRESS'],
    jobs.map((j) => [j.id, j.kind, j.status + (j.result ? `:${j.result}` : ''), j.volumes.join(',') || '-', j.to ?? j.from ?? '-', j.mode, `${j.progress.percent}%`]),
  )
}

/** Follows a job to its end; draws a progress bar unless --json. Throws if it did not complete. */
export async function waitForJob(client: ControlClient, id: number, json: boolean): Promise<JobInfo> {
  const bar = json || !process.stderr.isTTY ? null : new SingleBar({ format: 'job {id} {status} [{bar}] {percent}% {done}/{all} {rate}/s ETA {eta_s}s', hideCursor: true })
  let last = await client.call('job.show', { id })
  const render = (j: JobInfo) =>
    bar?.update(j.progress.current, { id: j.id, status: j.status, done: formatSize(j.progress.current), all: formatSize(j.progress.total), rate: formatSize(j.progress.bytesPerSecond) })
  bar?.start(Math.max(1, last.progress.total), last.progress.current, { id, status: last.status, done: '0 B', all: formatSize(last.progress.total), rate: '0 B' })
  let poll: NodeJS.Timeout | undefined
  const done = await new Promise<JobInfo>((resolve) => {
    const check = (j: JobInfo) => {
      last = j
      bar?.setTotal(Math.max(1, j.progress.total))
      render(j)
      // A job paused on a storage error waits for `job resume`: stop following it.
      if (j.status === 'concluded' || j.status === 'ready' || (j.status === 'paused' && j.error)) resolve(j)
    }
    client.onEvent((e) => {
      if (e.type === 'job.status' && e.job.id === id) check(e.job)
      if (e.type === 'job.progress' && e.job === id) {
        render({ ...last, progress: { current: e.current, total: e.total, percent: e.percent, bytesPerSecond: e.bytesPerSecond, etaSeconds: e.etaSeconds } })
      }
    })
    // A job may end before this is answered; the CLI then closes the connection
    // and the request fails: the poll below covers a subscription that failed.
    client.call('events.subscribe', { types: ['job.status', 'job.progress'] }).catch(() => {})
    check(last)
    // An event may fall between the first show and the subscription: poll as well.
    poll = setInterval(() => void client.call('job.show', { id }).then(check, () => {}), 1000)
  })
  clearInterval(poll)
  bar?.stop()
  if (done.status === 'paused' && done.error) {
    throw new VvfsError('JOB_STATE', `job ${id} paused on ${done.error.code}: ${done.error.message} (vvfs job resume ${id} retries, vvfs job cancel ${id} gives the volume back)`)
  }
  if (done.status === 'concluded' && done.result !== 'completed' && done.result !== 'rolled-back') {
    throw new VvfsError('JOB_STATE', `job ${id} ${done.result}${done.error ? `: ${done.error.code}: ${done.error.message}` : ''}`)
  }
  return done
}

export function copyOptions<U>(y: Argv<U>) {
  return y
    .option('mode', { choices: MODES, default: 'direct' as const, describe: 'direct | staged (via a reserve system) | free (via unused space) | memory (whole-extent buffer)' })
    .option('keep', { type: 'string', describe: 'keep the source extents this long after the job (e.g. 1h), for rollback' })
    .option('rate', { type: 'string', describe: 'copy bandwidth limit per second, e.g. 50M' })
    .option('wait', { type: 'boolean', default: false, describe: 'follow the job with a progress bar; exit non-zero if it fails' })
}

/** Prints a started job, or follows it with --wait. */
export async function startedJob(argv: Common & { wait?: boolean }, c: ControlClient, j: JobInfo, print: Print): Promise<void> {
  if (!argv.wait) return print(argv, j, () => `started job ${j.id} (${j.kind} ${j.volumes.join(', ') || j.from}${j.to ? ` → ${j.to}` : ''}, ${j.mode}); follow it with: vvfs job wait ${j.id}`)
  const done = await waitForJob(c, j.id, argv.json)
  print(argv, done, () => jobText(done))
}

export type Print = (argv: Common, result: unknown, human: () => string) => void

export function migrationCommands<T>(y: Argv<T>, call: Call, print: Print) {
  const started = (argv: Common & { wait?: boolean }, c: ControlClient, j: JobInfo) => startedJob(argv, c, j, print)
  return y
    .command(
      'migrate [volume]',
      'move a volume onto one storage system while it is in use (also: plan, policy, rollback)',
      (y) =>
        copyOptions(y.positional('volume', { type: 'string' }).option('to', { type: 'string', describe: 'destination storage system' }))
          .command('plan', 'what the consolidation policy would do now, and why', (y) => y, async (argv) => {
            const p = await call(argv as unknown as Common, (c) => c.call('migrate.plan', {}))
            print(argv as unknown as Common, p, () => {
              const head = `consolidation policy: ${p.policy.enabled ? 'on' : 'off'} (fragmentation > ${Math.round(p.policy.fragmentation * 100)}% of free space in runs < ${formatSize(p.policy.minRun)}; every ${p.policy.intervalMs / 1000}s)`
              const moves = p.moves.length ? p.moves.map((m, i) => `${i + 1}. migrate ${m.volume} → ${m.to} [${m.trigger}]\n   because ${m.reason}`).join('\n') : 'nothing to do'
              return `${head}\n\n${moves}\n\n${p.findings.map((f) => `- ${f}`).join('\n')}`
            })
          })
          .command(
            'policy',
            'show or set the consolidation policy',
            (y) =>
              y
                .option('consolidate', { choices: ['on', 'off'] as const })
                .option('fragmentation', { type: 'number', describe: 'share (0-1) of free space in short runs that counts as fragmented' })
                .option('min-run', { type: 'string', describe: 'free runs shorter than this are short (e.g. 16M)' })
                .option('interval', { type: 'string', describe: 'how often the policy is evaluated (e.g. 30s)' }),
            async (argv) => {
              const p = await call(argv as unknown as Common, (c) =>
                c.call('migrate.policy', {
                  enabled: argv.consolidate === undefined ? undefined : argv.consolidate === 'on',
                  fragmentation: argv.fragmentation,
                  minRun: argv['min-run'],
                  interval: argv.interval,
                }),
              )
              print(argv as unknown as Common, p, () =>
                fields([
                  ['consolidate', p.enabled ? 'on' : 'off'],
                  ['fragmentation', p.fragmentation],
                  ['min run', formatSize(p.minRun)],
                  ['interval', `${p.intervalMs / 1000}s`],
                ]),
              )
            },
          )
          .command(
            'rollback <job>',
            'return the volume to its source within the retention window',
            (y) => y.positional('job', { type: 'number', demandOption: true }).option('wait', { type: 'boolean', default: false }),
            async (argv) => {
              const c = argv as unknown as Common & { wait: boolean }
              await call(c, async (client) => started(c, client, await client.call('migrate.rollback', { id: argv.job })))
            },
          ),
      async (argv) => {
        if (!argv.volume || !argv.to) throw new VvfsError('INVALID_ARGUMENT', 'usage: vvfs migrate VOLUME --to SYSTEM [--mode …] [--keep …] [--rate …] [--wait]')
        const c = argv as unknown as Common & { wait: boolean }
        await call(c, async (client) =>
          started(c, client, await client.call('migrate.start', { volume: argv.volume!, to: argv.to!, mode: argv.mode, keep: argv.keep, rate: argv.rate })),
        )
      },
    )
    .command('job', 'long-running work (migrations, drains)', (y) =>
      y
        .command('list', 'list jobs', (y) => watchOptions(y), async (argv) => {
          const common = argv as unknown as Common
          if (argv.watch) {
            const human = (jobs: JobInfo[]) => (jobs.length ? jobRows(jobs) : 'no jobs')
            const fetch = (c: ControlClient) => async () => (await c.call('job.list', {})).jobs
            await call(common, (c) => watch({ title: 'vvfs job list', fetch: fetch(c), human, json: common.json, interval: argv.interval }))
            return
          }
          const r = await call(argv as unknown as Common, (c) => c.call('job.list', {}))
          print(argv as unknown as Common, r.jobs, () => jobRows(r.jobs))
        })
        .command('show <id>', 'one job', (y) => y.positional('id', { type: 'number', demandOption: true }), async (argv) => {
          const j = await call(argv as unknown as Common, (c) => c.call('job.show', { id: argv.id }))
          print(argv as unknown as Common, j, () => jobText(j))
        })
        .command('wait <id>', 'follow a job to its end', (y) => y.positional('id', { type: 'number', demandOption: true }), async (argv) => {
          const j = await call(argv as unknown as Common, (c) => waitForJob(c, argv.id, (argv as unknown as Common).json))
          print(argv as unknown as Common, j, () => jobText(j))
        })
        .command('pause <id>', 'pause a running job', (y) => y.positional('id', { type: 'number', demandOption: true }), async (argv) => {
          const j = await call(argv as unknown as Common, (c) => c.call('job.pause', { id: argv.id }))
          print(argv as unknown as Common, j, () => `job ${j.id} pausing after its current extent`)
        })
        .command('resume <id>', 'resume a paused job', (y) => y.positional('id', { type: 'number', demandOption: true }), async (argv) => {
          const j = await call(argv as unknown as Common, (c) => c.call('job.resume', { id: argv.id }))
          print(argv as unknown as Common, j, () => `job ${j.id} resumed`)
        })
        .command('cancel <id>', 'cancel a job: the volume returns whole to its source', (y) => y.positional('id', { type: 'number', demandOption: true }), async (argv) => {
          const j = await call(argv as unknown as Common, (c) => c.call('job.cancel', { id: argv.id }))
          print(argv as unknown as Common, j, () => `job ${j.id} cancelling; the volume returns to its source`)
        })
        .demandCommand(1),
    )
}

