/**
 * Stopping the daemon (SIGTERM) while a loop-mounted ext4 on one of its
 * volumes is still being written: it exits cleanly instead of crashing in
 * libfuse's threads, cuts the open file off (the file system sees I/O errors,
 * as if the disk went away), and everything written and fsync'ed before is
 * there after a restart.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, cleanupAll, detachLoop, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { sha } from '../helpers/files.js'

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  await d.client.call('storage.add', { name: 's1', capacity: '1G' })
  await d.client.call('volume.create', { name: 'v', size: '512M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

describe('stopping the daemon under a busy file system', () => {
  it('exits 0, cuts the open volume off, and keeps what was fsync\'ed', async () => {
    const at = join(d.dir, 'e')
    const dev = attachLoop(d.file('v'))
    const kept = randomBytes(8 * 1024 * 1024)
    sh('mkfs.ext4', ['-q', '-F', dev])
    mountExt4(dev, at)
    writeFileSync(join(at, 'kept.bin'), kept)
    sh('sync', [])
    const dd = spawn('dd', ['if=/dev/urandom', `of=${join(at, 'busy.bin')}`, 'bs=1M', 'count=300', 'conv=fsync'], { stdio: 'ignore' })
    await new Promise((r) => setTimeout(r, 1000))
    const code = await d.stop()
    dd.kill()
    umount(at)
    detachLoop(dev)
    expect(code).toBe(0)
    expect(d.log()).toMatch(/host\.cut_off/)

    await d.restart()
    const dev2 = attachLoop(d.file('v'))
    try {
      // The file system was cut off like a pulled disk: its journal replays.
      try {
        sh('e2fsck', ['-fy', dev2])
      } catch (err) {
        expect((err as { status: number }).status).toBeLessThan(4)
      }
      mountExt4(dev2, at)
      const { readFileSync } = await import('node:fs')
      expect(sha(readFileSync(join(at, 'kept.bin')))).toBe(sha(kept))
    } finally {
      umount(at)
      detachLoop(dev2)
    }
  })
})
