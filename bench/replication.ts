/**
 * The replication benchmark (issue 13): one 1 GiB volume on a primary
 * daemon, replicated to a secondary daemon on this machine (loopback, the
 * same two cores). In one run:
 *   - 4 KiB random and 1 MiB sequential write throughput (fio, bench/fio.ts)
 *     on the volume before replication starts (the unreplicated figure),
 *     with the peer running (end to end), and with the peer stopped (the
 *     journal alone) — as ratios to the unreplicated figure. Targets: ≥ 0.7
 *     (4 KiB) and ≥ 0.6 (1 MiB) journal alone, ≥ 0.5 end to end;
 *   - the initial sync rate (1 GiB of allocated extents / the sync's time),
 *     as a ratio to a migration's copy of the same GiB between two storage
 *     systems of the primary, just before (target ≥ 0.5);
 *   - replication lag (`replicate status`: seconds since the oldest entry
 *     not yet applied) sampled every 100 ms while fio writes 4 KiB at half
 *     the unreplicated IOPS: median and p99 (targets < 250 ms, < 1 s);
 *   - after a peer outage (BENCH_OUTAGE_SECONDS, default 30) under the same
 *     load: seconds until the lag is back under 1 s (target: within 60 s).
 * Every fio job starts from compacted stores (`storage compact --wait` on
 * each side): a job run right after others paid for their compaction — the
 * journal-alone jobs came after the unreplicated ones and were charged 11.5
 * CPU-seconds per GiB against 5.8–6.7 from compacted stores (one run each,
 * 2026-12-04). The primary's CPU-seconds per GiB of each job are printed.
 *
 *   node dist/bench/replication.js     BENCH_SECONDS=10 per fio job
 *   BENCH_TMP=/var/tmp  BENCH_KEEP=1 keep the temp dir
 *   BENCH_ONLY=writes   only the write ratios (no migration, lag or outage runs)
 *   BENCH_ONLY=journal  only unreplicated and journal-alone writes (no end-to-end)
 *   BENCH_ONLY=sync     only the initial sync's ratio to a migration copy (no fio, lag or outage runs)
 *   BENCH_ONLY=outage   only the unreplicated 4 KiB job (for the load), the initial
 *                       sync, the lag and the outage runs; the catch-up's
 *                       trajectory (applied entries per second, lag) and each
 *                       daemon's CPU during it are printed
 *   BENCH_LAG_IOPS=N    the lag and outage runs' load (default: half the unreplicated 4 KiB rate)
 *   BENCH_JOBS=seqwrite only these fio jobs (comma-separated: seqwrite,randwrite)
 *   BENCH_PERF=FILE     `perf record -g` of the daemons during each journal-alone
 *                       job's fio run, into FILE.<job> (the daemons run with
 *                       --perf-basic-prof);
 *                       BENCH_PERF_PHASE=end-to-end: during those instead;
 *                       BENCH_PERF_PHASE=all: every phase, into FILE.<phase>.<job>;
 *                       BENCH_PERF_PHASE=catch-up: the outage's catch-up, into
 *                       FILE.catch-up.primary and FILE.catch-up.secondary
 *
 * Results: stdout and bench/out/replication.json. Cleanup (daemons, temp
 * dir) runs in every case, also on Ctrl-C.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ControlClient } from '../lib/control/client.js'
import { JOBS, runJob, type JobResult, type JobSpec } from './fio.js'
import { Cleanup, cpuSeconds, freePort, must, onInterrupt, run, say, sleep, waitFor } from './proc.js'
import { ROOT, Vvfs } from './vvfs.js'

const OUT = join(ROOT, 'bench', 'out')
const ONLY = process.env.BENCH_ONLY ?? ''
/** The lag and outage runs: in a full run and BENCH_ONLY=outage. */
const LAG_RUNS = ONLY === '' || ONLY === 'outage'
const PICKED = (process.env.BENCH_JOBS ?? (ONLY === 'outage' ? 'randwrite' : 'seqwrite,randwrite')).split(',')
const WRITES = JOBS.filter((j) => (j.name === 'randwrite' || j.name === 'seqwrite') && PICKED.includes(j.name))
const TARGETS = { journal: { randwrite: 0.7, seqwrite: 0.6 }, endToEnd: { randwrite: 0.5, seqwrite: 0.5 } } as const

interface PairJson {
  pair: string
  role: string
  state: string
  link: string
  consistent: boolean
  lastWritten: number
  lastApplied: number
  lag: { entries: number; bytes: number; seconds: number }
}

/** The primary pair's status over the control socket (a CLI process per sample would take a second each under load). */
async function primaryStatus(v: Vvfs): Promise<PairJson | undefined> {
  const client = await ControlClient.connect(v.socket).catch(() => undefined)
  if (!client) return undefined
  try {
    const r = await client.call('replicate.list', {}).catch(() => undefined)
    return r?.pairs.find((p) => p.role === 'primary')
  } finally {
    client.close()
  }
}

const percentile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))]! : NaN
}

/** fio writing 4 KiB at `iops` for `seconds` (the lag runs); resolves when it ends. */
function steadyWriter(file: string, iops: number, seconds: number): Promise<unknown> {
  return run(
    'fio',
    ['--name=steady', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--ioengine=libaio', '--iodepth=4', '--direct=1', '--size=1G', '--time_based=1', `--runtime=${seconds}`, `--rate_iops=${Math.max(1, Math.round(iops))}`, '--allow_file_create=0'],
    { timeoutMs: (seconds + 120) * 1000 },
  )
}

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? '10')
  const outage = Number(process.env.BENCH_OUTAGE_SECONDS ?? '30')
  const cleanup = new Cleanup()
  onInterrupt(cleanup)
  await mkdir(join(OUT, 'fio-replication'), { recursive: true })
  const dir = await mkdtemp(join(process.env.BENCH_TMP || '/var/tmp', 'vvfs-bench-repl-'))
  if (process.env.BENCH_KEEP !== '1') cleanup.add(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }))
  const fio: Record<string, Partial<Record<string, JobResult>>> = {}
  const figures: Record<string, number> = {}
  const cpuPerGiB: Record<string, { primary: number; secondary: number }> = {}
  /** The primary daemon's CPU-seconds per GiB written during each job alone (no catch-up), per phase. */
  const primaryCpuPerGiB: Record<string, Record<string, number>> = {}
  /** The outage's catch-up, sampled every 5 s. */
  const catchUp: { t: number; appliedPerSecond: number; lagEntries: number; lagSeconds: number }[] = []
  try {
    const keyFile = join(dir, 'peer.key')
    await writeFile(keyFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 })
    for (const side of ['a', 'b']) await mkdir(join(dir, side), { recursive: true })
    const port = await freePort()
    const secondaryArgs = ['--listen', `127.0.0.1:${port}`, '--peer-key', keyFile]
    const primary = await Vvfs.start(join(dir, 'a'), cleanup)
    let secondary = await Vvfs.start(join(dir, 'b'), cleanup, secondaryArgs)
    await primary.cli(['storage', 'add', 'a1', '--capacity', '1100M'])
    const primaryStores = ['a1']
    await secondary.cli(['storage', 'add', 'b1', '--capacity', '1100M'])
    await primary.cli(['volume', 'create', 'vol', '--size', '1G'])
    const file = join(primary.mountDir, 'vol')
    // Random data: zeros are not stored, so they would place (and sync) nothing.
    await must('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', 'count=1024', 'oflag=direct', 'conv=notrunc'], { timeoutMs: 600_000 })
    /** `beforeEach`: run just before each job, once the stores are compacted; `afterEach`: run after each job (end to end: the catch-up, so the job's CPU includes applying it). */
    const jobs = async (label: string, pids: number[] = [], afterEach?: (job: string) => Promise<void>, beforeEach?: () => Promise<void>) => {
      const phase = process.env.BENCH_PERF_PHASE ?? 'journal-alone'
      const perfPhase = process.env.BENCH_PERF && (label === phase || phase === 'all')
      const perfFile = phase === 'all' ? `${process.env.BENCH_PERF}.${label}` : process.env.BENCH_PERF!
      // Only the fio window of each job, into FILE.<job>: the compaction before a job is not the job's cost.
      const record = (job: string) => spawn('perf', ['record', '-F', '499', '-g', '-o', `${perfFile}.${job}`, '-p', [primary.pid, ...pids].filter((p, i, a) => a.indexOf(p) === i).join(',')], { stdio: 'ignore' })
      fio[label] = {}
      primaryCpuPerGiB[label] = {}
      for (const job of WRITES) {
        // Every job starts from compacted stores: otherwise a job pays for the compaction of the writes before it (the journal-alone jobs for the unreplicated ones, the end-to-end ones for the initial sync), and a short job leaves its own debt to the next.
        for (const name of primaryStores) await primary.cli(['storage', 'compact', name, '--wait'], 600_000)
        if (label === 'end-to-end') await secondary.cli(['storage', 'compact', 'b1', '--wait'], 600_000)
        say(`replication bench: ${job.label}, ${label}`)
        await beforeEach?.()
        const cpu0 = await cpuSeconds(primary.pid)
        const perf = perfPhase ? record(job.name) : null
        fio[label][job.name] = await runJob(job as JobSpec, file, seconds, join(OUT, 'fio-replication', `${label}-${job.name}.json`))
        if (perf) {
          perf.kill('SIGINT')
          await new Promise((r) => perf.once('exit', r))
        }
        primaryCpuPerGiB[label][job.name] = (await cpuSeconds(primary.pid) - cpu0) / ((fio[label][job.name]?.ioBytes ?? NaN) / 2 ** 30)
        await afterEach?.(job.name)
      }
    }
    if (ONLY !== 'sync') await jobs('unreplicated')

    if (ONLY === '' || ONLY === 'sync') {
      // A migration's copy of the same allocated GiB, on the same daemon, for the initial sync's ratio.
      await primary.cli(['storage', 'add', 'a2', '--capacity', '1100M'])
      primaryStores.push('a2')
      const m0 = Date.now()
      await primary.cli(['migrate', 'vol', '--to', 'a2', '--wait'])
      figures.migrationCopyMBps = 1024 / ((Date.now() - m0) / 1000) * 1.048576
    }

    const t0 = Date.now()
    await primary.cli(['replicate', 'start', 'vol', '--to', `127.0.0.1:${port}`, '--peer-key', keyFile, '--journal-limit', '8G'])
    await waitFor('the initial sync', 600_000, async () => {
      const s = await primaryStatus(primary)
      return s && s.state === 'replicating' && s.consistent ? true : undefined
    }, 200)
    figures.initialSyncMBps = 1024 / ((Date.now() - t0) / 1000) * 1.048576
    if (ONLY !== 'journal' && ONLY !== 'sync' && ONLY !== 'outage') {
      // CPU-seconds of each daemon per GiB replicated, per job (the job and its catch-up): what the two shared cores pay, whatever else loads them.
      // From after the compaction before the job: until 2026-12-04 it counted the compaction of the initial sync's GiB too (primary 19–21 CPU-s per GiB).
      let cpu: number[] = []
      const atStart = async () => void (cpu = [await cpuSeconds(primary.pid), await cpuSeconds(secondary.pid)])
      await jobs('end-to-end', [primary.pid, secondary.pid], async (name) => {
        await waitFor(`catch-up after the end-to-end ${name} job`, 600_000, async () => ((await primaryStatus(primary))?.lag.entries === 0 ? true : undefined), 200)
        const now = [await cpuSeconds(primary.pid), await cpuSeconds(secondary.pid)]
        const gib = (fio['end-to-end']?.[name]?.ioBytes ?? NaN) / 2 ** 30
        cpuPerGiB[name] = { primary: (now[0]! - cpu[0]!) / gib, secondary: (now[1]! - cpu[1]!) / gib }
      }, atStart)
    }

    if (ONLY !== 'sync' && ONLY !== 'outage') {
      await secondary.stop()
      await jobs('journal-alone', [primary.pid])
    }
    if (LAG_RUNS) {
      if (ONLY === '') secondary = await Vvfs.start(join(dir, 'b'), cleanup, secondaryArgs)
      await waitFor('catch-up before the lag runs', 900_000, async () => ((await primaryStatus(primary))?.lag.entries === 0 ? true : undefined), 500)
      // From compacted stores, as every fio job above: the catch-up of the journal-alone jobs leaves the secondary gigabytes of compaction to do, which ran during the outage's catch-up and was charged to it.
      for (const name of primaryStores) await primary.cli(['storage', 'compact', name, '--wait'], 600_000)
      await secondary.cli(['storage', 'compact', 'b1', '--wait'], 600_000)

      // Lag at half the unreplicated 4 KiB write rate.
      const halfIops = Number(process.env.BENCH_LAG_IOPS ?? (fio.unreplicated?.randwrite?.iops ?? 0) / 2)
      figures.lagLoadIops = halfIops
      const lags: number[] = []
      const load = steadyWriter(file, halfIops, seconds)
      const sampleUntil = Date.now() + seconds * 1000
      while (Date.now() < sampleUntil) {
        const s = await primaryStatus(primary)
        if (s) lags.push(s.lag.seconds)
        await sleep(100)
      }
      await load
      figures.lagMedianMs = percentile(lags, 0.5) * 1000
      figures.lagP99Ms = percentile(lags, 0.99) * 1000
      figures.lagSamples = lags.length

      // A peer outage under the same load, then how long until the lag is under 1 s.
      const outageLoad = steadyWriter(file, halfIops, outage + 70)
      await sleep(2000)
      await secondary.stop()
      await sleep(outage * 1000)
      const backlog = await primaryStatus(primary)
      secondary = await Vvfs.start(join(dir, 'b'), cleanup, secondaryArgs)
      const back = Date.now()
      const cpu0 = [await cpuSeconds(primary.pid), await cpuSeconds(secondary.pid)]
      // BENCH_PERF_PHASE=catch-up: each daemon's catch-up into FILE.catch-up.primary and FILE.catch-up.secondary.
      const perfs = process.env.BENCH_PERF && process.env.BENCH_PERF_PHASE === 'catch-up'
        ? [['primary', primary.pid], ['secondary', secondary.pid]].map(([side, pid]) => spawn('perf', ['record', '-F', '499', '-g', '-o', `${process.env.BENCH_PERF}.catch-up.${side}`, '-p', String(pid)], { stdio: 'ignore' }))
        : []
      let recovered = NaN
      let last = { t: back, applied: backlog?.lastApplied ?? 0 }
      while (Date.now() - back < 65_000) {
        const s = await primaryStatus(primary)
        if (s && s.link === 'up' && s.lag.seconds < 1 && s.state === 'replicating') {
          recovered = (Date.now() - back) / 1000
          break
        }
        // Every 5 s: how fast the secondary applies against how fast the load adds (the catch-up's bound).
        if (s && Date.now() - last.t >= 5000) {
          catchUp.push({ t: (Date.now() - back) / 1000, appliedPerSecond: (s.lastApplied - last.applied) / ((Date.now() - last.t) / 1000), lagEntries: s.lag.entries, lagSeconds: s.lag.seconds })
          last = { t: Date.now(), applied: s.lastApplied }
        }
        await sleep(200)
      }
      for (const perf of perfs) {
        perf.kill('SIGINT')
        await new Promise((r) => perf.once('exit', r))
      }
      const cpu1 = [await cpuSeconds(primary.pid), await cpuSeconds(secondary.pid)]
      const span = (Date.now() - back) / 1000
      figures.outageBacklogEntries = backlog?.lag.entries ?? NaN
      figures.catchUpPrimaryCpu = (cpu1[0]! - cpu0[0]!) / span
      figures.catchUpSecondaryCpu = (cpu1[1]! - cpu0[1]!) / span
      figures.outageSeconds = outage
      figures.lagUnder1sAfterSeconds = recovered
      await outageLoad
    }
  } finally {
    await cleanup.all()
  }
  const base = fio.unreplicated ?? {}
  const metric = (job: JobSpec, r: JobResult | undefined) => (r?.ok ? (job.metric === 'iops' ? r.iops : r.mbps) : NaN)
  const lines = ONLY === 'sync' ? [] : ['job                 unreplicated   journal alone  ratio target     end to end     ratio target']
  const rows = (ONLY === 'sync' ? [] : WRITES).map((job) => {
    const u = metric(job, base[job.name])
    const j = metric(job, fio['journal-alone']?.[job.name])
    const e = metric(job, fio['end-to-end']?.[job.name])
    const unit = job.metric === 'iops' ? 'IOPS' : 'MB/s'
    const tj = TARGETS.journal[job.name as 'randwrite' | 'seqwrite']
    const te = TARGETS.endToEnd[job.name as 'randwrite' | 'seqwrite']
    lines.push(
      `${job.label.padEnd(19)} ${u.toFixed(0).padStart(7)} ${unit}   ${j.toFixed(0).padStart(7)} ${unit} ${(j / u).toFixed(2).padStart(5)} ≥${tj} ${j / u >= tj ? 'met ' : 'MISS'} ${e.toFixed(0).padStart(7)} ${unit} ${(e / u).toFixed(2).padStart(5)} ≥${te} ${e / u >= te ? 'met ' : 'MISS'}`,
    )
    return { job: job.name, unit, unreplicated: u, journalAlone: j, endToEnd: e, journalRatio: j / u, endToEndRatio: e / u }
  })
  for (const [label, jobs] of Object.entries(primaryCpuPerGiB)) lines.push(`${label}: the primary's CPU-seconds per GiB written during the job: ${Object.entries(jobs).map(([n, c]) => `${n} ${c.toFixed(2)}`).join(', ')}`)
  for (const [name, c] of Object.entries(cpuPerGiB)) lines.push(`end to end, ${name}: CPU-seconds per GiB replicated (the job and its catch-up): primary ${c.primary.toFixed(2)}, secondary ${c.secondary.toFixed(2)}`)
  const syncRatio = (figures.initialSyncMBps ?? NaN) / (figures.migrationCopyMBps ?? NaN)
  if (ONLY !== '' && ONLY !== 'sync' && ONLY !== 'outage') lines.push(`BENCH_ONLY=${ONLY}: no initial sync ratio, lag or outage figures${ONLY === 'journal' ? ', no end-to-end runs' : ''}`)
  else if (ONLY !== 'outage') lines.push(
    `initial sync: ${figures.initialSyncMBps?.toFixed(1)} MB/s (1 GiB allocated); a migration's copy of it ${figures.migrationCopyMBps?.toFixed(1)} MB/s: ratio ${syncRatio.toFixed(2)} ≥0.5 ${syncRatio >= 0.5 ? 'met' : 'MISS'}`,
  )
  if (LAG_RUNS) lines.push(`lag at ${figures.lagLoadIops?.toFixed(0)} IOPS (half the unreplicated 4K rate): median ${figures.lagMedianMs?.toFixed(0)} ms (< 250), p99 ${figures.lagP99Ms?.toFixed(0)} ms (< 1000), ${figures.lagSamples} samples`)
  if (LAG_RUNS) {
    lines.push(`after a ${figures.outageSeconds} s peer outage: lag under 1 s after ${Number.isNaN(figures.lagUnder1sAfterSeconds) ? 'more than 65' : figures.lagUnder1sAfterSeconds?.toFixed(1)} s (target ≤ 60)`)
    lines.push(`  backlog at the peer's return ${figures.outageBacklogEntries} entries; during the catch-up the primary used ${figures.catchUpPrimaryCpu?.toFixed(2)} and the secondary ${figures.catchUpSecondaryCpu?.toFixed(2)} CPU-seconds per second`)
    for (const c of catchUp) lines.push(`  at ${c.t.toFixed(0).padStart(3)} s: applying ${c.appliedPerSecond.toFixed(0)} entries/s (load ${figures.lagLoadIops?.toFixed(0)}/s), ${c.lagEntries} behind, lag ${c.lagSeconds.toFixed(1)} s`)
  }
  for (const [label, jobs] of Object.entries(fio)) for (const [job, r] of Object.entries(jobs)) if (r && !r.ok) lines.push(`${label} ${job}: ${r.error}`)
  process.stdout.write(lines.join('\n') + '\n')
  await writeFile(join(OUT, 'replication.json'), JSON.stringify({ seconds, rows, figures, cpuPerGiB, primaryCpuPerGiB, catchUp, fio }, null, 2) + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`replication bench: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
