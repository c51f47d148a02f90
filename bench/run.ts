/**
 * `make bench`: one run that measures vvfs beside its references, so every
 * ratio compares figures taken minutes apart on the same machine.
 *
 *   node dist/bench/run.js
 *   BENCH_SECONDS=3          seconds per fio job (default 10)
 *   BENCH_ONLY=fio,ext4      sections to run: fio, ext4, mkfs, migration (default all)
 *   BENCH_TMP=/var/tmp       where the temp dir goes (default /var/tmp)
 *   BENCH_KEEP=1             keep the temp dir (logs, images) instead of removing it
 *   BENCH_DAEMON_ARGS=...    more `vvfs daemon` arguments, e.g. "--memory 128M"
 *   BENCH_NODE_FLAGS=...     more node flags for the daemon, e.g. --trace-gc
 *
 * Sections, in the order they run: mkfs (space of mkfs.ext4 on a 64 GiB thin
 * volume vs qcow2 — first, while the stores are quiet, so du measures only
 * it), fio (null FUSE ceiling, vvfs, qcow2 over qemu-storage-daemon, plain
 * file), ext4 (dd through ext4 on a loop device), migration (placeholder,
 * bench/migration.ts). Results: stdout, bench/out/results.{json,md}, fio's
 * own reports in bench/out/fio/, logs in bench/out/logs/.
 *
 * Exit status: 0 when the bench ran (whatever the targets say: it reports,
 * it is not a test), 1 when it could not (vvfs would not start, a tool is
 * missing), 130 when interrupted. Cleanup runs in every case.
 */
import { cpus, loadavg, release } from 'node:os'
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { failed, JOBS, runJob } from './fio.js'
import { DD_BYTES, ddOnExt4, mkfsOnLoop, prepareDdSource, prepareSmallFiles, SMALL_FILES } from './ext4.js'
import { migrationBench } from './migration.js'
import { detachLoop, du, duSettled, fusermountUz, isFuseMountAt, loopsUnder, mountsUnder, unmount } from './mounts.js'
import { MOUNT_OPTIONS } from './null-fuse.js'
import { Aborted, Cleanup, cpuSeconds, have, isAborting, must, onInterrupt, say, sleep } from './proc.js'
import { bytes, checkTargets, ratio, renderMarkdown, renderText, type Ext4Run, type FioSpace, type MkfsSpace, type Results, type SystemId, type SystemRun } from './report.js'
import { diskUsage } from '../lib/storage/disk-usage.js'
import { GiB, startNullFuse, startPlainFile, startQcow2, startQsdExport, type NullFuse, type Served } from './systems.js'
import { ROOT, Vvfs, type PoolStatusJson, type VolumeShowJson } from './vvfs.js'

const SECTIONS = ['fio', 'ext4', 'mkfs', 'migration'] as const
type Section = (typeof SECTIONS)[number]

const OUT = join(ROOT, 'bench', 'out')
/** Issue 17 target 5 measures the storage systems' du once they have been idle this long after the fio jobs. */
const IDLE_MEASURE_MS = 60_000
/**
 * ... and samples it this often while the jobs run ("never more than 2.0
 * during them"): a walk of three store directories of ~50 files and a stat
 * of the volume file, no process spawned, so the jobs barely notice.
 */
const SPACE_SAMPLE_MS = 2000
/** Samples taken while the volume holds less than this are left out: the first seconds' ratio is mostly LevelDB's fixed files. */
const SPACE_SAMPLE_MIN_LOGICAL = 64 * 1024 * 1024

/**
 * Samples bytes on disk per logical byte while the fio jobs run: the
 * stores' growth over `before` (diskUsage, as du counts) against the
 * volume's allocation (its st_blocks, which vvfs reports as allocated).
 */
function sampleSpace(storageDir: string, volumeFile: string, before: number): { stop(): Promise<FioSpace['duringPeak']> } {
  let stopped = false
  const peak = { ratio: 0, diskBytes: 0, logicalBytes: 0, samples: 0 }
  const loop = (async () => {
    while (!stopped) {
      await sleep(SPACE_SAMPLE_MS)
      const logical = (await stat(volumeFile)).blocks * 512
      const disk = (await diskUsage(storageDir)) - before
      if (logical < SPACE_SAMPLE_MIN_LOGICAL) continue
      peak.samples++
      if (disk / logical > peak.ratio) Object.assign(peak, { ratio: disk / logical, diskBytes: disk, logicalBytes: logical })
    }
  })()
  return {
    async stop() {
      stopped = true
      await loop
      return peak.samples > 0 ? peak : undefined
    },
  }
}

interface Config {
  seconds: number
  only: Set<Section>
  tmpParent: string
  keep: boolean
}

function config(): Config {
  const secondsText = process.env.BENCH_SECONDS ?? '10'
  const seconds = Number(secondsText)
  if (!Number.isInteger(seconds) || seconds < 1) usage(`BENCH_SECONDS must be a whole number of seconds >= 1, not ${JSON.stringify(secondsText)}`)
  const onlyText = process.env.BENCH_ONLY?.trim()
  const only = new Set<Section>()
  for (const s of onlyText ? onlyText.split(',').map((x) => x.trim()).filter(Boolean) : SECTIONS) {
    if (!(SECTIONS as readonly string[]).includes(s)) usage(`BENCH_ONLY: unknown section ${JSON.stringify(s)} (sections: ${SECTIONS.join(', ')})`)
    only.add(s as Section)
  }
  return { seconds, only, tmpParent: process.env.BENCH_TMP || '/var/tmp', keep: process.env.BENCH_KEEP === '1' }
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`)
  process.exit(2)
}

/** What must be there before anything starts; qemu's tools are optional (their rows become "unavailable"). */
async function preflight(cfg: Config): Promise<string[]> {
  const problems: string[] = []
  if (process.getuid?.() !== 0) problems.push('the bench needs root (fio on FUSE files, losetup, mount)')
  const tools = ['fusermount', 'du']
  if (cfg.only.has('fio')) tools.push('fio')
  if (cfg.only.has('ext4') || cfg.only.has('mkfs')) tools.push('losetup', 'mkfs.ext4', 'mount', 'umount', 'dd')
  for (const t of tools) if (!(await have(t))) problems.push(`${t} is not installed`)
  for (const f of [join(ROOT, 'dist', 'lib', 'cli', 'main.js'), fileURLToPath(new URL('./null-fuse.js', import.meta.url))]) {
    if (!(await stat(f).catch(() => null))) problems.push(`${f} is missing: build first (npx tsc -p tsconfig.build.json)`)
  }
  return problems
}

/** Warns when HostMount's FUSE options no longer match the null daemon's copy of them. */
async function mountOptionDrift(): Promise<string[]> {
  const src = await readFile(join(ROOT, 'lib', 'fuse', 'host-mount.ts'), 'utf8').catch(() => '')
  if (!src) return ['cannot read lib/fuse/host-mount.ts to compare mount options']
  const warnings: string[] = []
  const mw = /maxWrite:\s*([\d\s*]+)/.exec(src)?.[1]
  const mwValue = mw ? mw.split('*').reduce((p, x) => p * Number(x.trim()), 1) : undefined
  if (mwValue !== MOUNT_OPTIONS.maxWrite) warnings.push(`host-mount.ts has maxWrite ${mwValue ?? 'unset'}, null FUSE has ${MOUNT_OPTIONS.maxWrite}`)
  for (const opt of ['maxRead', 'kernelCache', 'autoCache', 'attrTimeout', 'entryTimeout', 'directIo']) {
    if (new RegExp(`\\b${opt}:`).test(src)) warnings.push(`host-mount.ts sets ${opt}, which the null FUSE daemon does not`)
  }
  return warnings.map((w) => `${w}: update MOUNT_OPTIONS in bench/null-fuse.ts, or the ceiling is not like for like`)
}

/** The last cleanup step: whatever the others left under the temp dir, then the dir itself. */
function sweep(dir: string, keep: boolean): () => Promise<void> {
  return async () => {
    for (const m of await mountsUnder(dir)) if (!m.fstype.startsWith('fuse')) await unmount(m.mountPoint).catch((err: Error) => say(`  cleanup: ${err.message}`))
    for (const dev of await loopsUnder(dir)) await detachLoop(dev).catch((err: Error) => say(`  cleanup: ${err.message}`))
    for (const m of await mountsUnder(dir)) if (m.fstype.startsWith('fuse')) await fusermountUz(m.mountPoint)
    await saveLogs(dir)
    const left = await mountsUnder(dir)
    if (left.length) say(`  cleanup: still mounted, so ${dir} is kept: ${left.map((m) => m.mountPoint).join(', ')}`)
    else if (keep) say(`  kept ${dir} (BENCH_KEEP=1)`)
    else await rm(dir, { recursive: true, force: true })
  }
}

async function saveLogs(dir: string): Promise<void> {
  const logs = join(OUT, 'logs')
  await rm(logs, { recursive: true, force: true })
  await mkdir(logs, { recursive: true })
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.endsWith('.log') || name.endsWith('.stats.json')) await copyFile(join(dir, name), join(logs, name)).catch(() => {})
  }
}

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err))

// ---- sections

async function fioSection(cfg: Config, dir: string, vvfs: Vvfs, cleanup: Cleanup, results: Results): Promise<void> {
  const vvfsFile = join(vvfs.mountDir, 'bench')
  const systems: { id: SystemId; label: string; start: () => Promise<Served> }[] = [
    { id: 'null', label: 'null FUSE (ceiling)', start: () => startNullFuse(dir, cleanup) },
    {
      id: 'vvfs',
      label: 'vvfs',
      start: async () => ({
        file: vvfsFile,
        check: async () => {
          if (!vvfs.running) throw new Error(`the vvfs daemon is gone: ${await vvfs.logTail()}`)
          if (!(await isFuseMountAt(vvfs.mountDir))) throw new Error(`${vvfs.mountDir} is not mounted`)
        },
        stop: async () => {},
        pid: vvfs.pid,
      }),
    },
    { id: 'qcow2', label: 'qemu-storage-daemon qcow2', start: () => startQcow2(dir, cleanup) },
    { id: 'plain', label: 'plain file (local disk)', start: () => startPlainFile(dir, cleanup) },
  ]
  // Reports of an earlier run must not sit beside this one's.
  await rm(join(OUT, 'fio'), { recursive: true, force: true })
  await mkdir(join(OUT, 'fio'), { recursive: true })
  for (const sys of systems) {
    const row: SystemRun = { id: sys.id, label: sys.label, status: 'ok', jobs: {} }
    results.fio.push(row)
    say(`fio: ${sys.label}: starting`)
    let served: Served
    try {
      served = await sys.start()
    } catch (err) {
      if (err instanceof Aborted) throw err
      row.status = 'unavailable'
      row.reason = errorText(err)
      say(`fio: ${sys.label}: unavailable: ${row.reason}`)
      continue
    }
    let duBefore: Awaited<ReturnType<typeof du>> | undefined
    let sampler: ReturnType<typeof sampleSpace> | undefined
    if (sys.id === 'vvfs') {
      duBefore = await du(vvfs.storageDir)
      sampler = sampleSpace(vvfs.storageDir, served.file, await diskUsage(vvfs.storageDir))
    }
    let duringPeak: FioSpace['duringPeak']
    try {
      for (const job of JOBS) {
        try {
          await served.check()
        } catch (err) {
          row.jobs[job.name] = failed(errorText(err))
          say(`fio: ${sys.label}: ${job.label}: not run: ${errorText(err)}`)
          continue
        }
        const cpu0 = served.pid ? await cpuSeconds(served.pid) : 0
        const r = await runJob(job, served.file, cfg.seconds, join(OUT, 'fio', `${sys.id}-${job.name}.json`))
        row.jobs[job.name] = r
        if (served.pid && r.ok && r.runtimeMs > 0) {
          row.cpuPercent ??= {}
          row.cpuPercent[job.name] = ((await cpuSeconds(served.pid)) - cpu0) / (r.runtimeMs / 1000) * 100
        }
        if (sys.id === 'vvfs') (results.daemon.rssAfterJob ??= {})[job.name] = await vvfs.rss()
        if (!r.ok) say(`fio: ${sys.label}: ${job.label}: FAILED: ${r.error}`)
        else {
          const x = ratio(results, sys.id, job.name)
          say(
            `fio: ${sys.label}: ${job.label}: ${r.mbps.toFixed(1)} MB/s, ${Math.round(r.iops)} IOPS, p50 ${(r.p50us / 1000).toFixed(2)} ms, p99 ${(r.p99us / 1000).toFixed(2)} ms` +
              (x === null || sys.id === 'null' ? '' : `, ${x.toFixed(2)} x ceiling`) +
              (row.cpuPercent?.[job.name] === undefined ? '' : `, server CPU ${row.cpuPercent[job.name]!.toFixed(0)}%`),
          )
        }
      }
    } finally {
      duringPeak = await sampler?.stop().catch((err: unknown) => {
        say(`fio: vvfs: space samples failed: ${errorText(err)}`)
        return undefined
      })
      await served.stop()
    }
    if (sys.id === 'null') {
      const counts = await (served as NullFuse).stats()
      const shown = Object.entries(counts)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')
      row.notes = [`requests answered: ${shown || 'none recorded'}`]
    }
    if (sys.id === 'vvfs' && duBefore) {
      try {
        results.daemon.peakRssAfterFio = await vvfs.peakRss()
        const jobsEnded = Date.now()
        const duAfter = await du(vvfs.storageDir)
        const volume = await vvfs.json<VolumeShowJson>(['volume', 'show', 'bench'])
        say('fio: vvfs: waiting (up to 60 s) for the storage systems\' du to settle')
        const s = await duSettled(vvfs.storageDir, 60_000)
        const written = (row.jobs.seqwrite?.ioBytes ?? 0) + (row.jobs.randwrite?.ioBytes ?? 0)
        // Issue 17 target 5: the figure once idle 60 s (the daemon compacts a bloated store after --compact-idle, 30 s by default).
        say('fio: vvfs: waiting until the storage systems have been idle 60 s')
        await sleep(Math.max(0, jobsEnded + IDLE_MEASURE_MS - Date.now()))
        const duIdle = await du(vvfs.storageDir)
        const idleWaitMs = Date.now() - jobsEnded
        results.fioSpace = { bytesWritten: written, volumeAllocated: volume.allocated, duBefore, duAfter, duSettled: s.usage, settled: s.settled, settleWaitMs: s.waitedMs, duIdle, idleWaitMs, duringPeak }
        say(
          `fio: vvfs: fio wrote ${bytes(written)}; volume allocated ${bytes(volume.allocated)}; storage du +${bytes(duAfter.allocated - duBefore.allocated)} after the jobs, ` +
            `+${bytes(s.usage.allocated - duBefore.allocated)} settled, +${bytes(duIdle.allocated - duBefore.allocated)} idle ${(idleWaitMs / 1000).toFixed(0)} s`,
        )
      } catch (err) {
        if (err instanceof Aborted) throw err
        results.fioSpaceError = errorText(err)
      }
    }
  }
}

async function ext4Section(cfg: Config, dir: string, vvfs: Vvfs, cleanup: Cleanup, results: Results): Promise<void> {
  say(`ext4: preparing ${bytes(DD_BYTES)} of random data to copy and a tar of ${SMALL_FILES} small files`)
  const src = await prepareDdSource(dir, cleanup)
  const smallFiles = await prepareSmallFiles(dir, cleanup)
  await mkdir(join(OUT, 'fio'), { recursive: true })
  const targets: { id: SystemId; label: string; start: () => Promise<Served> }[] = [
    {
      id: 'vvfs',
      label: 'vvfs 4 GiB thin volume',
      start: async () => {
        await vvfs.cli(['volume', 'create', 'ext4', '--size', '4G'])
        return { file: join(vvfs.mountDir, 'ext4'), check: async () => {}, stop: async () => {}, pid: vvfs.pid }
      },
    },
    { id: 'qcow2', label: 'qemu-storage-daemon qcow2 4 GiB', start: () => startQcow2(dir, cleanup) },
    {
      id: 'plain',
      label: 'plain sparse 4 GiB file',
      start: async () => {
        const file = join(dir, 'ext4-plain.img')
        const drop = cleanup.add(`rm ${file}`, () => rm(file, { force: true }))
        await must('truncate', ['-s', String(4 * GiB), file])
        return { file, check: async () => {}, stop: drop }
      },
    },
  ]
  for (const t of targets) {
    const row: Ext4Run = { system: t.id, label: t.label, status: 'ok' }
    results.ext4.push(row)
    say(`ext4: ${t.label}: mkfs.ext4, mount, dd ${bytes(DD_BYTES)} conv=fsync, fio on a file in it, unpack ${SMALL_FILES} files + sync`)
    let served: Served
    try {
      served = await t.start()
    } catch (err) {
      if (err instanceof Aborted) throw err
      // A reference that cannot start is unavailable; vvfs that cannot is a failure.
      row.status = t.id === 'vvfs' ? 'failed' : 'unavailable'
      row.reason = errorText(err)
      say(`ext4: ${t.label}: ${row.status}: ${row.reason}`)
      continue
    }
    try {
      const cpu0 = served.pid ? await cpuSeconds(served.pid) : undefined
      const r = await ddOnExt4(served.file, src, join(dir, `ext4-mnt-${t.id}`), cleanup, {
        seconds: cfg.seconds,
        fioReport: (job) => join(OUT, 'fio', `ext4-${t.id}-${job}.json`),
        smallFiles,
      })
      if (served.pid && cpu0 !== undefined) row.serverCpuSeconds = (await cpuSeconds(served.pid)) - cpu0
      Object.assign(row, { mbps: r.mbps, seconds: r.seconds, mkfsSeconds: r.mkfsSeconds, fio: r.fio, smallFiles: r.smallFiles, smallFilesError: r.smallFilesError })
      say(`ext4: ${t.label}: dd ${r.mbps.toFixed(1)} MB/s (${r.seconds.toFixed(2)} s; mkfs ${r.mkfsSeconds.toFixed(1)} s)`)
      for (const [job, f] of Object.entries(r.fio)) say(`ext4: ${t.label}: fio ${job}: ${f.ok ? `${f.mbps.toFixed(1)} MB/s, ${Math.round(f.iops)} IOPS` : `FAILED: ${f.error}`}`)
      say(`ext4: ${t.label}: ${r.smallFiles ? `${SMALL_FILES} small files unpacked and synced in ${r.smallFiles.seconds.toFixed(2)} s` : `small files FAILED: ${r.smallFilesError}`}`)
    } catch (err) {
      if (err instanceof Aborted) throw err
      row.status = 'failed'
      row.reason = errorText(err)
      say(`ext4: ${t.label}: FAILED: ${row.reason}`)
    } finally {
      await served.stop()
    }
  }
}

async function mkfsSection(dir: string, vvfs: Vvfs, cleanup: Cleanup, results: Results): Promise<void> {
  const m: MkfsSpace = {}
  results.mkfs64 = m
  say('mkfs: vvfs: mkfs.ext4 on a loop-attached 64 GiB thin volume')
  try {
    const duBefore = await du(vvfs.storageDir)
    const poolBefore = await vvfs.json<PoolStatusJson>(['pool', 'status'])
    await vvfs.cli(['volume', 'create', 'mkfs64', '--size', '64G'])
    const mkfsSeconds = await mkfsOnLoop(join(vvfs.mountDir, 'mkfs64'), cleanup)
    // Fragments may be promoted to whole slots in the background: wait for the figure to hold still.
    const volumeAllocated = await vvfs.settledAllocation('mkfs64', 15_000)
    const poolAfter = await vvfs.json<PoolStatusJson>(['pool', 'status'])
    const duAfter = await du(vvfs.storageDir)
    m.vvfs = { mkfsSeconds, volumeAllocated, poolAllocatedBefore: poolBefore.allocated, poolAllocatedAfter: poolAfter.allocated, duBefore, duAfter }
    say(`mkfs: vvfs: ${mkfsSeconds.toFixed(1)} s; volume allocated ${bytes(volumeAllocated)}; storage du +${bytes(duAfter.allocated - duBefore.allocated)}`)
  } catch (err) {
    if (err instanceof Aborted) throw err
    m.vvfsError = errorText(err)
    say(`mkfs: vvfs: FAILED: ${m.vvfsError}`)
  }
  say('mkfs: qcow2: mkfs.ext4 on a loop-attached 64 GiB qcow2 image over qemu-storage-daemon')
  const image = join(dir, 'mkfs64.qcow2')
  try {
    if (!(await have('qemu-img')) || !(await have('qemu-storage-daemon'))) throw new Error('qemu-img or qemu-storage-daemon is not installed (Debian: qemu-utils, qemu-system-common)')
    cleanup.add(`rm ${image}`, () => rm(image, { force: true }))
    await must('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64G'])
    const duBytesFresh = (await du(image)).allocated
    const served = await startQsdExport(image, join(dir, 'mkfs64.export'), join(dir, 'qsd-mkfs64.log'), cleanup)
    let mkfsSeconds: number
    try {
      mkfsSeconds = await mkfsOnLoop(served.file, cleanup)
    } finally {
      // qemu writes its metadata back when it stops: measure after.
      await served.stop()
    }
    const info = JSON.parse(await must('qemu-img', ['info', '--output=json', image])) as { 'actual-size': number }
    m.qcow2 = { mkfsSeconds, duBytes: (await du(image)).allocated, duBytesFresh, actualSize: info['actual-size'] }
    say(`mkfs: qcow2: ${mkfsSeconds.toFixed(1)} s; image on disk ${bytes(m.qcow2.duBytes)}`)
  } catch (err) {
    if (err instanceof Aborted) throw err
    m.qcow2Error = errorText(err)
    say(`mkfs: qcow2: unavailable: ${m.qcow2Error}`)
  }
}

// ---- main

/** Set once there is something to undo, for a crash outside the sections' own error handling. */
let cleanupOnCrash: Cleanup | undefined

function crash(err: unknown): void {
  // An interrupt exits from its own handler once cleanup is done.
  if (err instanceof Aborted || isAborting()) return
  process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`)
  void (cleanupOnCrash?.all() ?? Promise.resolve()).finally(() => process.exit(1))
}

async function main(): Promise<number> {
  const cfg = config()
  const startedAt = new Date()
  const results: Results = {
    startedAt: startedAt.toISOString(),
    finishedAt: '',
    seconds: cfg.seconds,
    sections: SECTIONS.filter((s) => cfg.only.has(s)),
    machine: { cpus: cpus().length, kernel: release(), node: process.version, load: loadavg() },
    tempDir: '',
    fio: [],
    targets: [],
    daemon: { pid: 0, peakRssBytes: 0, rssBytes: 0 },
    ext4: [],
    errors: [],
  }
  say(`vvfs bench: sections ${results.sections.join(', ')}; ${cfg.seconds} s per fio job`)
  const problems = await preflight(cfg)
  if (problems.length) {
    for (const p of problems) say(`cannot run: ${p}`)
    return 1
  }
  for (const w of await mountOptionDrift()) say(`WARNING: ${w}`)

  await mkdir(cfg.tmpParent, { recursive: true })
  const dir = await mkdtemp(join(cfg.tmpParent, 'vvfs-bench-'))
  results.tempDir = dir
  const cleanup = new Cleanup()
  cleanupOnCrash = cleanup
  cleanup.add(`sweep and remove ${dir}`, sweep(dir, cfg.keep))
  onInterrupt(cleanup)
  say(`temp dir ${dir}`)

  let status = 0
  let vvfs: Vvfs | undefined
  try {
    say('vvfs: starting the daemon')
    vvfs = await Vvfs.start(dir, cleanup)
    results.daemon.pid = vvfs.pid
    for (const s of ['s1', 's2', 's3']) await vvfs.cli(['storage', 'add', s, '--capacity', '4G'])
    await vvfs.cli(['volume', 'create', 'bench', '--size', '4G'])
    say(`vvfs: daemon pid ${vvfs.pid}, three 4 GiB storage systems, volume ${join(vvfs.mountDir, 'bench')}`)

    // mkfs first: du differences mean something only while nothing else writes to the stores.
    const sections: [Section, () => Promise<void>][] = [
      ['mkfs', () => mkfsSection(dir, vvfs!, cleanup, results)],
      ['fio', () => fioSection(cfg, dir, vvfs!, cleanup, results)],
      ['ext4', () => ext4Section(cfg, dir, vvfs!, cleanup, results)],
      [
        'migration',
        async () => {
          const seq = results.fio.find((r) => r.id === 'vvfs')?.jobs.seqwrite
          await mkdir(join(OUT, 'fio'), { recursive: true })
          results.migration = await migrationBench({
            vvfs: vvfs!,
            dir,
            seconds: cfg.seconds,
            cleanup,
            runJob,
            say,
            seqWriteMBps: seq?.ok ? seq.mbps : undefined,
            fioDir: join(OUT, 'fio'),
          })
        },
      ],
    ]
    for (const [name, fn] of sections) {
      if (!cfg.only.has(name)) continue
      try {
        await fn()
      } catch (err) {
        if (err instanceof Aborted) throw err
        results.errors.push(`${name}: ${errorText(err)}`)
        say(`${name}: FAILED: ${errorText(err)}`)
      }
    }
  } catch (err) {
    if (err instanceof Aborted) throw err
    results.errors.push(`setup: ${errorText(err)}`)
    say(`FAILED: ${errorText(err)}`)
    status = 1
  }

  if (vvfs) {
    results.daemon.peakRssBytes = await vvfs.peakRss()
    results.daemon.rssBytes = await vvfs.rss()
    if (!vvfs.running) results.errors.push(`the vvfs daemon died during the bench: ${await vvfs.logTail()}`)
    // Stopped here, not in the final cleanup, so that how it stops is part of the results.
    say('vvfs: stopping the daemon (SIGTERM)')
    const exit = await vvfs.stop().catch(() => undefined)
    results.daemon.exit = exit
    if (exit && exit.code !== 0) results.errors.push(`the vvfs daemon exited with ${exit.code} on SIGTERM`)
    results.daemon.logIssues = await vvfs.logIssues()
  }
  results.targets = checkTargets(results)
  results.machine.loadEnd = loadavg()
  results.finishedAt = new Date().toISOString()

  process.stdout.write('\n' + renderText(results) + '\n')
  await mkdir(OUT, { recursive: true })
  await writeFile(join(OUT, 'results.json'), JSON.stringify(results, null, 2) + '\n')
  await writeFile(join(OUT, 'results.md'), renderMarkdown(results))
  say(`wrote ${join(OUT, 'results.json')} and ${join(OUT, 'results.md')}`)

  say('cleaning up')
  await cleanup.all()
  say('done')
  return status
}

process.on('uncaughtException', crash)
process.on('unhandledRejection', crash)
main().then((code) => process.exit(code), crash)
