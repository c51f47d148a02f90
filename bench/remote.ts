/**
 * The remote-storage benchmark (issue 14): the four fio jobs of bench/fio.ts
 * against a 1 GiB volume on one storage server on loopback, beside the same
 * volume on a local storage system, in the same run and the same daemon;
 * then (BENCH_NETEM=1, the default) the same jobs against a server in a
 * network namespace of its own with 1 ms of delay added by tc netem on its
 * interface (shown, no target) — or, on a kernel without sch_netem, behind
 * bench/delay-proxy.ts, a userspace relay that delivers the server's replies
 * 1 ms late (labelled "proxy" in the output; how it differs from netem: see
 * that file). Targets: remote ≥ 0.8 of local for 1 MiB
 * sequential read and write, ≥ 0.5 for 4 KiB random. Also the peak RSS
 * (VmHWM) of each server.
 *
 *   node dist/bench/remote.js          (root; fio, ip, tc)
 *   BENCH_SECONDS=10  seconds per fio job     BENCH_NETEM=0  skip the delayed server
 *   BENCH_TMP=/var/tmp                        BENCH_KEEP=1   keep the temp dir
 *   BENCH_PROF=DIR  the storage servers write CPU profiles into DIR
 *   BENCH_JOBS=randread,seqread  a subset of the jobs (the volumes are written whole first either way)
 *
 * Before each job the bench waits until the daemon and the servers are idle
 * (CPU below SETTLE_BUSY for a second, at most SETTLE_MAX_MS): the LevelDB
 * compaction a job leaves behind would otherwise run during the next job,
 * which is another system's (the profile of seq write on the server showed
 * the local store's compaction taking 45% of the daemon's CPU in it).
 *
 * Placement: each volume is written whole (dd) right after its system is
 * added and while it has the most free space, so every extent of it lies on
 * that system; fio then only overwrites and reads allocated extents.
 *
 * Results: stdout and bench/out/remote.json. Cleanup (daemon, servers,
 * namespace, temp dir) runs in every case, also on Ctrl-C.
 */
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { processMemory } from '../lib/proc-memory.js'
import { JOBS, runJob, type JobName, type JobResult } from './fio.js'
import { Cleanup, cpuSeconds, freePort, must, onInterrupt, run, say, sleep, startService, stopService, waitFor, type Service } from './proc.js'
import { benchNodeFlags, ROOT, Vvfs, VVFS_BIN } from './vvfs.js'

const OUT = join(ROOT, 'bench', 'out')
const GiB = 1024 ** 3
/** Idle enough to start a job: the processes together use under this share of one core. */
const SETTLE_BUSY = 0.15
/** Longest wait for idle before a job starts anyway (a compaction of a 1 GiB store ends well within it). */
const SETTLE_MAX_MS = 30_000

/** The issue's targets: remote / local per job. */
const TARGETS: Record<JobName, number> = { seqwrite: 0.8, seqread: 0.8, randwrite: 0.5, randread: 0.5 }

interface Server {
  name: string
  address: string
  svc: Service
}

async function peakRss(pid: number): Promise<number> {
  return (await processMemory(pid)).peakRss
}

/** `vvfs storage serve` (inside `ns` when given), stopped by the cleanup. */
async function startServer(dir: string, name: string, host: string, keyFile: string, cleanup: Cleanup, ns?: string): Promise<Server> {
  const port = await freePort()
  // BENCH_PROF=DIR: the servers write a CPU profile there when they stop.
  const prof = process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : process.env.BENCH_PERF ? ['--perf-basic-prof-only-functions'] : []
  const args = [...prof, ...benchNodeFlags(), VVFS_BIN, 'storage', 'serve', '--dir', join(dir, name), '--listen', `${host}:${port}`, '--peer-key', keyFile, '--log-level', 'warn', '--log-format', 'json']
  const logFile = createWriteStream(join(dir, `${name}.log`))
  const svc = ns ? startService('ip', ['netns', 'exec', ns, process.execPath, ...args], { logFile }) : startService(process.execPath, args, { logFile })
  cleanup.add(`stop storage server ${name}`, async () => void (await stopService(svc, 'SIGTERM', 30_000)))
  const address = `${host}:${port}`
  await waitFor(`storage server ${name} to listen`, 30_000, async () => {
    if (svc.hasExited()) throw new Error(`storage server ${name} exited (${await svc.exited})`)
    const r = await run('ss', ['-Hltn', ...(ns ? ['-N', ns] : []), `sport = :${port}`])
    return r.stdout.includes(`:${port}`) ? true : undefined
  })
  return { name, address, svc }
}

/** A namespace with a veth pair to this one; its server side gets 1 ms of netem delay. */
async function delayedNamespace(cleanup: Cleanup): Promise<{ ns: string; host: string }> {
  const ns = `vvfs-bench-${process.pid}`
  const hostIf = `vb${process.pid % 100000}h`
  const nsIf = `vb${process.pid % 100000}n`
  const net = `10.${(process.pid >> 8) & 0xff}.${process.pid & 0xfc}`
  cleanup.add(`remove namespace ${ns}`, async () => {
    await run('ip', ['link', 'del', hostIf])
    await run('ip', ['netns', 'del', ns])
  })
  await must('ip', ['netns', 'add', ns])
  await must('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf])
  await must('ip', ['link', 'set', nsIf, 'netns', ns])
  await must('ip', ['addr', 'add', `${net}.1/30`, 'dev', hostIf])
  await must('ip', ['link', 'set', hostIf, 'up'])
  await must('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${net}.2/30`, 'dev', nsIf])
  await must('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', nsIf, 'up'])
  await must('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', nsIf, 'root', 'netem', 'delay', '1ms'])
  return { ns, host: `${net}.2` }
}

/** CPU ticks (user + system, all threads) of a process; 0 when it is gone. */
async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return f.length > 13 ? Number(f[11]) + Number(f[12]) : 0
}

/** Waits until `pids` together used less than SETTLE_BUSY of a core over a second (see the file comment); returns the ms waited. */
async function settle(pids: number[]): Promise<number> {
  const t0 = Date.now()
  const total = async () => (await Promise.all(pids.map(cpuTicks))).reduce((a, b) => a + b, 0)
  let before = await total()
  while (Date.now() - t0 < SETTLE_MAX_MS) {
    await sleep(1000)
    const now = await total()
    if ((now - before) / 100 < SETTLE_BUSY) break // USER_HZ is 100
    before = now
  }
  return Date.now() - t0
}

/**
 * The 1 ms delay without netem: a loopback server behind bench/delay-proxy.ts
 * (server → relay delivered 1 ms late, as netem on the server's egress).
 */
async function delayedByProxy(dir: string, keyFile: string, cleanup: Cleanup): Promise<Server> {
  const server = await startServer(dir, 'far-1ms', '127.0.0.1', keyFile, cleanup)
  const port = await freePort()
  const logFile = createWriteStream(join(dir, 'delay-proxy.log'))
  const svc = startService(process.execPath, [join(ROOT, 'dist', 'bench', 'delay-proxy.js'), '--listen', `127.0.0.1:${port}`, '--to', server.address, '--delay-ms', '1'], { logFile })
  cleanup.add('stop the delay proxy', async () => void (await stopService(svc, 'SIGTERM', 10_000)))
  await waitFor('the delay proxy to listen', 30_000, async () => {
    if (svc.hasExited()) throw new Error(`the delay proxy exited (${await svc.exited})`)
    const r = await run('ss', ['-Hltn', `sport = :${port}`])
    return r.stdout.includes(`:${port}`) ? true : undefined
  })
  return { ...server, address: `127.0.0.1:${port}` }
}

/** Adds a system, then a 1 GiB volume written whole, so it lies on that system. */
async function volumeOn(vvfs: Vvfs, volume: string, storage: string[], expect: string): Promise<string> {
  await vvfs.cli(['storage', 'add', ...storage])
  await vvfs.cli(['volume', 'create', volume, '--size', '1G'])
  const file = join(vvfs.mountDir, volume)
  // Random data: zeros are not stored (zero detection), so they would place nothing.
  await must('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', 'count=1024', 'oflag=direct', 'conv=notrunc'], { timeoutMs: 600_000 })
  const shown = await vvfs.json<{ allocatedBySystem: { storage: string }[] }>(['volume', 'show', volume])
  const on = shown.allocatedBySystem.map((s) => s.storage)
  if (on.length !== 1 || on[0] !== expect) throw new Error(`volume ${volume} lies on ${on.join(', ')}, not on ${expect} alone`)
  return file
}

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? '10')
  const netem = process.env.BENCH_NETEM !== '0'
  /** How the 1 ms server got its delay: tc netem, the userspace proxy, or none. */
  let delay: 'netem' | 'proxy' | 'none' = 'none'
  const cleanup = new Cleanup()
  onInterrupt(cleanup)
  await mkdir(join(OUT, 'fio-remote'), { recursive: true })
  const dir = await mkdtemp(join(process.env.BENCH_TMP || '/var/tmp', 'vvfs-bench-remote-'))
  if (process.env.BENCH_KEEP !== '1') cleanup.add(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }))
  const results: Record<string, Partial<Record<JobName, JobResult>>> = {}
  const rss: Record<string, number> = {}
  const cpu: Record<string, { daemon: number; servers: number }> = {}
  try {
    const keyFile = join(dir, 'peer.key')
    await writeFile(keyFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 })
    const servers = [await startServer(dir, 'far', '127.0.0.1', keyFile, cleanup)]
    if (netem) {
      // A kernel without sch_netem has no delay to add: the rest still runs.
      const delayed = await delayedNamespace(cleanup).catch((err: Error) => say(`remote bench: no tc netem (${err.message}); the 1 ms server is behind bench/delay-proxy.js`))
      if (delayed) servers.push(await startServer(dir, 'far-1ms', delayed.host, keyFile, cleanup, delayed.ns))
      else servers.push(await delayedByProxy(dir, keyFile, cleanup))
      delay = delayed ? 'netem' : 'proxy'
    }
    const vvfs = await Vvfs.start(dir, cleanup)
    // Each system a little over 1 GiB, added in turn: the new one always has the most free space.
    const volumes: [string, string][] = [['local', await volumeOn(vvfs, 'vlocal', ['near', '--capacity', '1G'], 'near')]]
    for (const s of servers) volumes.push([s.name, await volumeOn(vvfs, `v${s.name}`, [s.name, '--remote', s.address, '--peer-key', keyFile, '--capacity', '1100M'], s.name)])
    // Each job on every system in turn, then the next job: on a shared machine the load changes within
    // a minute, and the ratio of two runs seconds apart says more than of two a minute apart (the four
    // local jobs used to run before the four remote ones; their ratios moved by 2x between runs).
    for (const [system] of volumes) results[system] = {}
    const only = process.env.BENCH_JOBS?.split(',')
    for (const job of JOBS.filter((j) => !only || only.includes(j.name))) {
      for (const [system, file] of volumes) {
        const waited = await settle([vvfs.pid, ...servers.map((s) => s.svc.pid)])
        say(`remote bench: ${job.label} on ${system} (after ${(waited / 1000).toFixed(0)} s to settle)`)
        const pids = [vvfs.pid, ...servers.map((s) => s.svc.pid)]
        const before = await Promise.all(pids.map((p) => cpuSeconds(p)))
        const r = await runJob(job, file, seconds, join(OUT, 'fio-remote', `${system}-${job.name}.json`))
        const used = (await Promise.all(pids.map((p) => cpuSeconds(p)))).map((c, i) => c - before[i])
        results[system][job.name] = r
        // CPU-seconds per GiB moved: the daemon's, and the storage servers' together.
        const perGiB = (c: number) => (r.ok && r.ioBytes > 0 ? c / (r.ioBytes / 2 ** 30) : NaN)
        cpu[`${system}/${job.name}`] = { daemon: perGiB(used[0]), servers: perGiB(used.slice(1).reduce((a, b) => a + b, 0)) }
      }
    }
    for (const s of servers) rss[s.name] = await peakRss(s.svc.pid)
    rss.daemon = await vvfs.peakRss()
  } finally {
    await cleanup.all()
  }
  const figure = (r: JobResult | undefined, metric: 'mbps' | 'iops') => (r?.ok ? r[metric] : NaN)
  const lines = [`job                 local        remote       ratio  target   remote+1ms   ratio   (1 ms: ${delay === 'proxy' ? 'userspace proxy, server→relay' : delay === 'netem' ? 'tc netem on the server' : 'not run'})`]
  const rows = JOBS.map((job) => {
    const local = figure(results.local?.[job.name], job.metric)
    const remote = figure(results.far?.[job.name], job.metric)
    const delayed = figure(results['far-1ms']?.[job.name], job.metric)
    const unit = job.metric === 'mbps' ? 'MB/s' : 'IOPS'
    const row = { job: job.name, unit, local, remote, ratio: remote / local, target: TARGETS[job.name], delayed, delayedRatio: delayed / local }
    lines.push(
      `${job.label.padEnd(19)} ${local.toFixed(0).padStart(7)} ${unit.padEnd(4)} ${remote.toFixed(0).padStart(7)} ${unit.padEnd(4)} ${row.ratio.toFixed(2).padStart(5)}  ≥ ${row.target.toFixed(1)} ${row.ratio >= row.target ? 'met ' : 'MISS'} ${delayed.toFixed(0).padStart(7)} ${unit.padEnd(4)} ${row.delayedRatio.toFixed(2).padStart(5)}`,
    )
    return row
  })
  lines.push(`CPU-s per GiB moved (daemon + servers): ${Object.entries(cpu).map(([k, v]) => `${k} ${v.daemon.toFixed(2)} + ${v.servers.toFixed(2)}`).join(', ')}`)
  lines.push(`peak RSS: ${Object.entries(rss).map(([k, v]) => `${k} ${(v / 2 ** 20).toFixed(0)} MiB`).join(', ')}`)
  for (const [system, jobs] of Object.entries(results)) for (const [job, r] of Object.entries(jobs)) if (r && !r.ok) lines.push(`${system} ${job}: ${r.error}`)
  process.stdout.write(lines.join('\n') + '\n')
  await writeFile(join(OUT, 'remote.json'), JSON.stringify({ seconds, netem, delay, rows, rss, cpu, results, volumeBytes: GiB }, null, 2) + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`remote bench: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
