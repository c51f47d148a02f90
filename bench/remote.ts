/**
 * The remote-storage benchmark (issue 14): the four fio jobs of bench/fio.ts
 * against a 1 GiB volume on one storage server on loopback, beside the same
 * volume on a local storage system, in the same run and the same daemon;
 * then (BENCH_NETEM=1, the default) the same jobs against a server in a
 * network namespace of its own with 1 ms of delay added by tc netem on its
 * interface (shown, no target). Targets: remote ≥ 0.8 of local for 1 MiB
 * sequential read and write, ≥ 0.5 for 4 KiB random. Also the peak RSS
 * (VmHWM) of each server.
 *
 *   node dist/bench/remote.js          (root; fio, ip, tc)
 *   BENCH_SECONDS=10  seconds per fio job     BENCH_NETEM=0  skip the delayed server
 *   BENCH_TMP=/var/tmp                        BENCH_KEEP=1   keep the temp dir
 *   BENCH_PROF=DIR  the storage servers write CPU profiles into DIR
 *   BENCH_JOBS=randread,seqread  a subset of the jobs (the volumes are written whole first either way)
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
import { JOBS, runJob, type JobName, type JobResult } from './fio.js'
import { Cleanup, freePort, must, onInterrupt, run, say, startService, stopService, waitFor, type Service } from './proc.js'
import { ROOT, Vvfs, VVFS_BIN } from './vvfs.js'

const OUT = join(ROOT, 'bench', 'out')
const GiB = 1024 ** 3

/** The issue's targets: remote / local per job. */
const TARGETS: Record<JobName, number> = { seqwrite: 0.8, seqread: 0.8, randwrite: 0.5, randread: 0.5 }

interface Server {
  name: string
  address: string
  svc: Service
}

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(status)
  return m ? Number(m[1]) * 1024 : 0
}

/** `vvfs storage serve` (inside `ns` when given), stopped by the cleanup. */
async function startServer(dir: string, name: string, host: string, keyFile: string, cleanup: Cleanup, ns?: string): Promise<Server> {
  const port = await freePort()
  // BENCH_PROF=DIR: the servers write a CPU profile there when they stop.
  const prof = process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : []
  const args = [...prof, VVFS_BIN, 'storage', 'serve', '--dir', join(dir, name), '--listen', `${host}:${port}`, '--peer-key', keyFile, '--log-level', 'warn', '--log-format', 'json']
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
  const cleanup = new Cleanup()
  onInterrupt(cleanup)
  await mkdir(join(OUT, 'fio-remote'), { recursive: true })
  const dir = await mkdtemp(join(process.env.BENCH_TMP || '/var/tmp', 'vvfs-bench-remote-'))
  if (process.env.BENCH_KEEP !== '1') cleanup.add(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }))
  const results: Record<string, Partial<Record<JobName, JobResult>>> = {}
  const rss: Record<string, number> = {}
  try {
    const keyFile = join(dir, 'peer.key')
    await writeFile(keyFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 })
    const servers = [await startServer(dir, 'far', '127.0.0.1', keyFile, cleanup)]
    if (netem) {
      // A kernel without sch_netem has no delay to add: the rest still runs.
      const delayed = await delayedNamespace(cleanup).catch((err: Error) => say(`remote bench: no 1 ms server (${err.message})`))
      if (delayed) servers.push(await startServer(dir, 'far-1ms', delayed.host, keyFile, cleanup, delayed.ns))
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
        say(`remote bench: ${job.label} on ${system}`)
        results[system][job.name] = await runJob(job, file, seconds, join(OUT, 'fio-remote', `${system}-${job.name}.json`))
      }
    }
    for (const s of servers) rss[s.name] = await peakRss(s.svc.pid)
    rss.daemon = await vvfs.peakRss()
  } finally {
    await cleanup.all()
  }
  const figure = (r: JobResult | undefined, metric: 'mbps' | 'iops') => (r?.ok ? r[metric] : NaN)
  const lines = ['job                 local        remote       ratio  target   remote+1ms   ratio']
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
  lines.push(`peak RSS: ${Object.entries(rss).map(([k, v]) => `${k} ${(v / 2 ** 20).toFixed(0)} MiB`).join(', ')}`)
  for (const [system, jobs] of Object.entries(results)) for (const [job, r] of Object.entries(jobs)) if (r && !r.ok) lines.push(`${system} ${job}: ${r.error}`)
  process.stdout.write(lines.join('\n') + '\n')
  await writeFile(join(OUT, 'remote.json'), JSON.stringify({ seconds, netem, rows, rss, results, volumeBytes: GiB }, null, 2) + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`remote bench: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
