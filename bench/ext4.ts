/**
 * ext4 on a loop device over a served file: a 256 MiB sequential file write
 * through ext4 (`dd ... conv=fsync`), the four fio jobs on a file inside the
 * ext4 (EXT4_JOBS), unpacking a tree of SMALL_FILES small files then `sync`
 * (issue 17: what users run, beside qcow2 and a plain file), and the space a
 * fresh 64 GiB mkfs.ext4 takes. The loop device writes to its file buffered, so this is the path a
 * VM or container image on vvfs takes, unlike fio's direct I/O.
 *
 * Owns: its loop devices and ext4 mounts, always undone (umount, then
 * losetup -d) before the section returns or fails. Must never: measure the
 * random source — the dd input is prepared beforehand in memory.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { EXT4_FIO_SIZE, EXT4_JOBS, type JobName, type JobResult, runJob } from './fio.js'
import { attachLoop, mountDev } from './mounts.js'
import { must, run, type Cleanup } from './proc.js'

export const DD_BYTES = 256 * 1024 * 1024
/** The small-file job: a source tree's worth (the Linux tree has ~80k files of median ~5 KiB; a quarter of it). */
export const SMALL_FILES = 20_000
/** File sizes 1..8 KiB: the median of a source tree, and more than one block each for ext4. */
const SMALL_FILE_MAX = 8 * 1024

/** Prepares the dd source (random, so nothing below can compress it or skip zeros). */
export async function prepareDdSource(dir: string, cleanup: Cleanup): Promise<string> {
  const shm = await run('sh', ['-c', `test -d /dev/shm && test $(df -k --output=avail /dev/shm | tail -1) -gt ${(DD_BYTES / 1024) * 2}`])
  const src = join(shm.code === 0 ? '/dev/shm' : dir, `vvfs-bench-dd-${process.pid}.bin`)
  cleanup.add(`rm ${src}`, () => rm(src, { force: true }))
  await must('dd', ['if=/dev/urandom', `of=${src}`, 'bs=1M', `count=${DD_BYTES / (1024 * 1024)}`, 'status=none'])
  return src
}

/** A tar of SMALL_FILES files of 1..8 KiB in 200 directories, made beforehand (like the dd source). */
export async function prepareSmallFiles(dir: string, cleanup: Cleanup): Promise<string> {
  const shm = await run('sh', ['-c', 'test -d /dev/shm && test $(df -k --output=avail /dev/shm | tail -1) -gt 400000'])
  const base = shm.code === 0 ? '/dev/shm' : dir
  const tree = join(base, `vvfs-bench-tree-${process.pid}`)
  const tar = `${tree}.tar`
  cleanup.add(`rm ${tar}`, () => rm(tar, { force: true }))
  try {
    for (let d = 0; d < 200; d++) await mkdir(join(tree, `d${d}`), { recursive: true })
    const pool = randomBytes(SMALL_FILE_MAX * 64)
    for (let i = 0; i < SMALL_FILES; i++) {
      const size = 1024 + ((i * 7919) % (SMALL_FILE_MAX - 1024))
      const at = (i * 4099) % (pool.length - size)
      await writeFile(join(tree, `d${i % 200}`, `f${i}`), pool.subarray(at, at + size))
    }
    await must('tar', ['-cf', tar, '-C', tree, '.'])
  } finally {
    await rm(tree, { recursive: true, force: true })
  }
  return tar
}

export interface SmallFilesResult {
  files: number
  seconds: number
}

export interface Ext4Workloads {
  /** Seconds per fio job. */
  seconds: number
  /** Where fio's JSON reports go, named `<prefix>-<job>.json`. */
  fioReport: (job: JobName) => string
  /** The tar of prepareSmallFiles. */
  smallFiles: string
}

export interface DdResult {
  ok: boolean
  error?: string
  bytes: number
  seconds: number
  /** 1e6 bytes per second. */
  mbps: number
  mkfsSeconds: number
  fio: Partial<Record<JobName, JobResult>>
  smallFiles?: SmallFilesResult
  smallFilesError?: string
}

/**
 * mkfs.ext4 (defaults) on a loop device over `file`, mount, write `src` with
 * dd conv=fsync; then, with `more`, the fio jobs on a file in the ext4 and
 * the small-file unpack.
 */
export async function ddOnExt4(file: string, src: string, mnt: string, cleanup: Cleanup, more?: Ext4Workloads): Promise<DdResult> {
  const loop = await attachLoop(file, cleanup)
  let umount: (() => Promise<void>) | null = null
  try {
    const mkfs = await run('mkfs.ext4', ['-q', '-F', loop.dev], { timeoutMs: 600_000 })
    if (mkfs.code !== 0) throw new Error(`mkfs.ext4 failed: ${mkfs.stderr.trim()}`)
    await mkdir(mnt, { recursive: true })
    umount = await mountDev(loop.dev, mnt, cleanup)
    const dd = await run('dd', [`if=${src}`, `of=${join(mnt, 'f')}`, 'bs=1M', 'conv=fsync'], { timeoutMs: 600_000, env: { ...process.env, LC_ALL: 'C' } })
    if (dd.code !== 0) throw new Error(`dd failed: ${dd.stderr.trim()}`)
    // "268435456 bytes (268 MB, 256 MiB) copied, 1.23 s, 218 MB/s"
    const m = /(\d+) bytes .*copied, ([\d.e+-]+) s/.exec(dd.stderr)
    const bytes = m ? Number(m[1]) : DD_BYTES
    const seconds = m ? Number(m[2]) : dd.seconds
    const result: DdResult = { ok: true, bytes, seconds, mbps: bytes / seconds / 1e6, mkfsSeconds: mkfs.seconds, fio: {} }
    if (more) {
      for (const job of EXT4_JOBS) result.fio[job.name] = await runJob(job, join(mnt, 'fio.dat'), more.seconds, more.fioReport(job.name), { size: EXT4_FIO_SIZE, fsync: job.fsync })
      try {
        result.smallFiles = await unpackSmallFiles(more.smallFiles, join(mnt, 'tree'))
      } catch (err) {
        result.smallFilesError = (err as Error).message
      }
    }
    return result
  } finally {
    if (umount) await umount()
    await loop.detach()
  }
}

/** Unpacks the tree into `into` and syncs: the time of both, as a user waits for them. */
async function unpackSmallFiles(tar: string, into: string): Promise<SmallFilesResult> {
  await mkdir(into, { recursive: true })
  const t0 = process.hrtime.bigint()
  await must('tar', ['-xf', tar, '-C', into])
  await must('sync', ['-f', into])
  return { files: SMALL_FILES, seconds: Number(process.hrtime.bigint() - t0) / 1e9 }
}

/** mkfs.ext4 (defaults) on a loop device over `file`; returns how long it took. */
export async function mkfsOnLoop(file: string, cleanup: Cleanup): Promise<number> {
  const loop = await attachLoop(file, cleanup)
  try {
    const mkfs = await run('mkfs.ext4', ['-q', '-F', loop.dev], { timeoutMs: 900_000 })
    if (mkfs.code !== 0) throw new Error(`mkfs.ext4 failed: ${mkfs.stderr.trim()}`)
    return mkfs.seconds
  } finally {
    await loop.detach()
  }
}
