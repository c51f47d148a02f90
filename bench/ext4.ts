/**
 * ext4 on a loop device over a served file: a 256 MiB sequential file write
 * through ext4 (`dd ... conv=fsync`), and the space a fresh 64 GiB mkfs.ext4
 * takes. The loop device writes to its file buffered, so this is the path a
 * VM or container image on vvfs takes, unlike fio's direct I/O.
 *
 * Owns: its loop devices and ext4 mounts, always undone (umount, then
 * losetup -d) before the section returns or fails. Must never: measure the
 * random source — the dd input is prepared beforehand in memory.
 */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { attachLoop, mountDev } from './mounts.js'
import { must, run, type Cleanup } from './proc.js'

export const DD_BYTES = 256 * 1024 * 1024

/** Prepares the dd source (random, so nothing below can compress it or skip zeros). */
export async function prepareDdSource(dir: string, cleanup: Cleanup): Promise<string> {
  const shm = await run('sh', ['-c', `test -d /dev/shm && test $(df -k --output=avail /dev/shm | tail -1) -gt ${(DD_BYTES / 1024) * 2}`])
  const src = join(shm.code === 0 ? '/dev/shm' : dir, `vvfs-bench-dd-${process.pid}.bin`)
  cleanup.add(`rm ${src}`, () => rm(src, { force: true }))
  await must('dd', ['if=/dev/urandom', `of=${src}`, 'bs=1M', `count=${DD_BYTES / (1024 * 1024)}`, 'status=none'])
  return src
}

export interface DdResult {
  ok: boolean
  error?: string
  bytes: number
  seconds: number
  /** 1e6 bytes per second. */
  mbps: number
  mkfsSeconds: number
}

/** mkfs.ext4 (defaults) on a loop device over `file`, mount, write `src` with dd conv=fsync. */
export async function ddOnExt4(file: string, src: string, mnt: string, cleanup: Cleanup): Promise<DdResult> {
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
    return { ok: true, bytes, seconds, mbps: bytes / seconds / 1e6, mkfsSeconds: mkfs.seconds }
  } finally {
    if (umount) await umount()
    await loop.detach()
  }
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
