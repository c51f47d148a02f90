/**
 * The reference systems fio runs against beside vvfs: the null FUSE daemon
 * (the ceiling), qemu-storage-daemon's FUSE export of a qcow2 image, and a
 * plain file on the local disk.
 *
 * Owns: starting and stopping them, each with its undo registered before it
 * can leave anything behind. Must never: report a reference that did not
 * really serve the file — each start ends with a check that the file is on
 * the mount it should be on.
 */
import { createWriteStream } from 'node:fs'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fusermountUz, isFuseMountAt } from './mounts.js'
import { must, run, sleep, startService, stopService, waitFor, type Cleanup, type Service } from './proc.js'

export const GiB = 1024 ** 3

/** A file fio can run against, and how to give it back. */
export interface Served {
  file: string
  /** Throws if the file is no longer served as it should be. */
  check(): Promise<void>
  /** Stops the server now (and drops its cleanup step). */
  stop(): Promise<void>
  /** The serving process, for its CPU time (none for a plain file: the kernel serves it). */
  pid?: number
}

async function tail(path: string, lines = 5): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '')
  return text.trim().split('\n').slice(-lines).join(' | ') || '(no output)'
}

/** Waits for `ready`, failing early if the process exits and late after `ms`. */
async function untilReady(svc: Service, ready: Promise<unknown>, logPath: string, what: string, ms: number): Promise<void> {
  const exited = svc.exited.then(async (code) => {
    throw new Error(`${what} exited (${code}): ${await tail(logPath)}`)
  })
  const timeout = sleep(ms).then(async () => {
    throw new Error(`${what} not ready after ${ms / 1000}s: ${await tail(logPath)}`)
  })
  await Promise.race([ready, exited, timeout])
  // The losers of the race must not become unhandled rejections later.
  exited.catch(() => {})
  timeout.catch(() => {})
}

export interface NullFuse extends Served {
  /** Requests answered, by kind (known once stopped). */
  stats(): Promise<Record<string, number>>
}

/** The null FUSE daemon (bench/null-fuse.ts) as its own node process. */
export async function startNullFuse(dir: string, cleanup: Cleanup): Promise<NullFuse> {
  const script = fileURLToPath(new URL('./null-fuse.js', import.meta.url))
  const mnt = join(dir, 'null-mnt')
  const statsPath = join(dir, 'null-fuse.stats.json')
  const logPath = join(dir, 'null-fuse.log')
  let onReady: (file: string) => void = () => {}
  const ready = new Promise<string>((r) => (onReady = r))
  const svc = startService(process.execPath, [script, '--mount', mnt, '--size', String(4 * GiB), '--name', 'null', '--stats', statsPath], {
    logFile: createWriteStream(logPath),
    onStdoutLine: (line) => {
      try {
        const msg = JSON.parse(line) as { ready?: boolean; file?: string }
        if (msg.ready && msg.file) onReady(msg.file)
      } catch {
        // not the ready line
      }
    },
  })
  const stop = cleanup.add(`stop null FUSE (pid ${svc.pid})`, async () => {
    await stopService(svc, 'SIGTERM', 15_000)
    await fusermountUz(mnt)
  })
  await untilReady(svc, ready, logPath, 'null FUSE daemon', 30_000)
  const file = await ready
  const check = async () => {
    if (!(await isFuseMountAt(mnt))) throw new Error(`${mnt} is not a FUSE mount any more`)
  }
  await check()
  return {
    file,
    check,
    stop,
    pid: svc.pid,
    stats: async () => JSON.parse(await readFile(statsPath, 'utf8').catch(() => '{}')) as Record<string, number>,
  }
}

/**
 * qemu-storage-daemon exporting a qcow2 image over FUSE on `mountFile` (a
 * regular file it mounts over), as in bench-anchors.md.
 */
export async function startQsdExport(image: string, mountFile: string, logPath: string, cleanup: Cleanup): Promise<Served> {
  // qemu's option syntax splits on commas; a path with one would be misread.
  if (image.includes(',') || mountFile.includes(',')) throw new Error('paths for qemu-storage-daemon must not contain commas')
  await writeFile(mountFile, '')
  const svc = startService(
    'qemu-storage-daemon',
    [
      '--blockdev', `driver=file,node-name=f,filename=${image}`,
      '--blockdev', 'driver=qcow2,node-name=q,file=f',
      '--export', `type=fuse,id=e,node-name=q,mountpoint=${mountFile},writable=on`,
    ],
    { logFile: createWriteStream(logPath) },
  )
  const stop = cleanup.add(`stop qemu-storage-daemon (pid ${svc.pid})`, async () => {
    await stopService(svc, 'SIGTERM', 30_000)
    await fusermountUz(mountFile)
  })
  const mounted = waitFor(`qemu-storage-daemon's FUSE export on ${mountFile}`, 30_000, async () => ((await isFuseMountAt(mountFile)) ? true : undefined))
  mounted.catch(() => {})
  await untilReady(svc, mounted, logPath, 'qemu-storage-daemon', 31_000)
  const check = async () => {
    if (!(await isFuseMountAt(mountFile))) throw new Error(`${mountFile} is not a FUSE mount any more`)
  }
  return { file: mountFile, check, stop, pid: svc.pid }
}

export async function startQcow2(dir: string, cleanup: Cleanup): Promise<Served> {
  const image = join(dir, 'ref-4g.qcow2')
  await must('qemu-img', ['create', '-q', '-f', 'qcow2', image, '4G'])
  const served = await startQsdExport(image, join(dir, 'ref-4g.export'), join(dir, 'qsd-4g.log'), cleanup)
  return {
    ...served,
    stop: async () => {
      await served.stop()
      await rm(image, { force: true })
    },
  }
}

/** A 4 GiB file on the local disk, allocated up front like a thick volume. */
export async function startPlainFile(dir: string, cleanup: Cleanup): Promise<Served> {
  const file = join(dir, 'plain-4g.img')
  const drop = cleanup.add(`rm ${file}`, () => rm(file, { force: true }))
  const r = await run('fallocate', ['-l', String(4 * GiB), file])
  if (r.code !== 0) await must('truncate', ['-s', String(4 * GiB), file])
  return { file, check: async () => {}, stop: drop }
}
