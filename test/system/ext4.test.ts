/**
 * A volume file used as a disk: loop-attached, mkfs.ext4'd, mounted, filled
 * with a tree of files that reads back by checksum, and clean under
 * `e2fsck -fn` — before and after the daemon restarts.
 */
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, cleanupAll, detachLoop, fsck, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { verifyTree, writeTree, type Tree } from '../helpers/files.js'

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  for (const name of ['s1', 's2', 's3']) await d.client.call('storage.add', { name, capacity: '1G' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

describe('ext4 on a loop-attached volume', () => {
  let tree: Tree
  const at = () => join(d.dir, 'ext4')

  it('formats, holds a tree of files that read back by checksum, and is clean under e2fsck', async () => {
    await d.client.call('volume.create', { name: 'disk', size: '512M' })
    const dev = attachLoop(d.file('disk'))
    try {
      sh('mkfs.ext4', ['-q', '-F', dev])
      mountExt4(dev, at())
      try {
        tree = writeTree(at(), { files: 120, maxSize: 512 * 1024 })
        sh('sync', [])
        expect(verifyTree(at(), tree)).toEqual([])
      } finally {
        umount(at())
      }
      const r = fsck(dev)
      expect(r.code, r.out).toBe(0)
    } finally {
      detachLoop(dev)
    }
    const show = await d.client.call('volume.show', { name: 'disk' })
    expect(show.allocated).toBeGreaterThan(0)
    expect(show.allocated).toBeLessThan(512 * 1024 * 1024)
  })

  it('is the same after the daemon restarts', async () => {
    await d.restart()
    const dev = attachLoop(d.file('disk'))
    try {
      const r = fsck(dev)
      expect(r.code, r.out).toBe(0)
      mountExt4(dev, at())
      try {
        expect(verifyTree(at(), tree)).toEqual([])
        // And it still takes new files after the restart.
        const more = writeTree(join(at(), 'after'), { files: 20, maxSize: 256 * 1024 })
        sh('sync', [])
        expect(verifyTree(join(at(), 'after'), more)).toEqual([])
      } finally {
        umount(at())
      }
      const r2 = fsck(dev)
      expect(r2.code, r2.out).toBe(0)
    } finally {
      detachLoop(dev)
    }
  })

  it('shows the allocated bytes in st_blocks and the volume facts in xattrs', async () => {
    const info = await d.client.call('volume.show', { name: 'disk' })
    const { statSync } = await import('node:fs')
    const st = statSync(d.file('disk'))
    expect(st.size).toBe(512 * 1024 * 1024)
    expect(st.blocks * 512).toBe(info.allocated)
    const attrs = sh('getfattr', ['-d', d.file('disk')])
    expect(attrs).toContain(`user.vvfs.id="${info.id}"`)
    expect(attrs).toContain(`user.vvfs.allocated="${info.allocated}"`)
    expect(attrs).toMatch(/user\.vvfs\.state="(ready|open)"/)
  })

  it('reports the pool in statfs, so df on the mount is the free-space table', async () => {
    const pool = await d.client.call('pool.status', {})
    const out = sh('df', ['-B1', '--output=size,avail', d.mount]).trim().split('\n')[1]!.trim().split(/\s+/).map(Number)
    expect(out[0]).toBe(pool.capacity)
    expect(Math.abs(out[1]! - pool.free)).toBeLessThan(4096 * 2)
  })
})
