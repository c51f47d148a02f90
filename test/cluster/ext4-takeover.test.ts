/**
 * Issue 15, ext4 across a takeover (real etcd, two storage servers, two
 * relays as processes): ext4 on a loop device over the owner's volume file;
 * a tree of files is written and synced (its checksums kept by the test),
 * then more files are written with fsync while the owner is killed with
 * kill -9. The standby takes the volume over; on its file the journal
 * replays at mount, `e2fsck -fn` finds the file system clean, and every
 * synced file reads back with its checksum.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { attachLoop, detachLoop, fsck, mountExt4, sh, umount } from '../helpers/daemon.js'
import { verifyTree, writeTree } from '../helpers/files.js'
import { relaysForFile } from './relays.js'

const TTL_MS = 3000
const { ownerAndStandby } = relaysForFile(TTL_MS)

describe('ext4 on a volume taken over after kill -9 of its owner', () => {
  it('is clean under e2fsck -fn after the journal replay on the new owner, and every synced file reads back', async () => {
    // Where the time goes, printed as it passes: a run that hits the timeout shows its last step.
    const t0 = Date.now()
    const step = (what: string) => console.log(`ext4-takeover: ${what} at ${Date.now() - t0} ms`)
    const { a, b } = await ownerAndStandby({ owner: 'ext4-owner', standby: 'ext4-standby', systems: 'fs', capacity: '128M', volume: 'disk', size: '128M' })

    const atA = join(a.dir, 'ext4')
    const devA = attachLoop(a.file('disk'))
    sh('mkfs.ext4', ['-q', '-F', devA])
    mountExt4(devA, atA)
    const tree = writeTree(atA, { files: 60, maxSize: 256 * 1024 })
    sh('sync', ['-f', atA])
    // More files, each fsynced, until the owner dies under them.
    const more = spawn('sh', ['-c', `i=0; while dd if=/dev/urandom of=${atA}/more$i bs=64k count=4 conv=fsync 2>/dev/null; do i=$((i+1)); done`], { stdio: 'ignore', detached: true })
    const moreExited = new Promise((r) => more.once('exit', r))
    await new Promise((r) => setTimeout(r, 1500 + Math.floor(Math.random() * 1000)))
    step('kill -9 of the owner')
    await a.kill9()
    try {
      process.kill(-more.pid!, 'SIGKILL')
    } catch {
      // the loop ended at dd's first failed write
    }
    await moreExited
    step('the writer ended')
    umount(atA)
    detachLoop(devA)
    step('unmounted on the dead owner')

    const end = Date.now() + 4 * TTL_MS
    while (!existsSync(b.file('disk')) && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
    expect(existsSync(b.file('disk'))).toBe(true)
    step('served by the standby')
    const atB = join(b.dir, 'ext4')
    const devB = attachLoop(b.file('disk'))
    try {
      mountExt4(devB, atB) // the journal replays here
      umount(atB)
      const r = fsck(devB)
      expect(r.code, r.out).toBe(0)
      mountExt4(devB, atB)
      try {
        expect(verifyTree(atB, tree)).toEqual([])
      } finally {
        umount(atB)
      }
    } finally {
      detachLoop(devB)
    }
    step('checked')
    expect(await b.stop()).toBe(0)
  })
})
