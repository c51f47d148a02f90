/**
 * File-system-aware reclaim: with no discard from the host, `vvfs volume
 * reclaim` reads the ext4 on an unmounted volume and frees the space of a
 * deleted file; e2fsck stays clean and every other file intact. While the
 * volume is loop-attached it refuses and frees nothing.
 */
import { randomBytes } from 'node:crypto'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, cleanupAll, detachLoop, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { verifyTree, writeTree, type Tree } from '../helpers/files.js'
import { codeOf } from '../helpers/errors.js'

const MiB = 1024 * 1024
const BIG = 96 * MiB
let d: DaemonHandle
let tree: Tree
const at = () => join(d.dir, 'ext4')

beforeAll(async () => {
  d = await startDaemon()
  for (const name of ['s1', 's2']) await d.client.call('storage.add', { name, capacity: '512M' })
  await d.client.call('volume.create', { name: 'fs', size: '384M' })
  const dev = attachLoop(d.file('fs'))
  try {
    sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', dev])
    mountExt4(dev, at(), ['nodiscard'])
    tree = writeTree(join(at(), 'keep'), { files: 40, maxSize: 256 * 1024 })
    writeFileSync(join(at(), 'big.bin'), randomBytes(BIG))
    sh('sync', [])
    rmSync(join(at(), 'big.bin'))
    sh('sync', [])
    umount(at())
  } finally {
    detachLoop(dev)
  }
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

const allocated = async () => (await d.client.call('volume.show', { name: 'fs' })).allocated

describe('vvfs volume reclaim', () => {
  it('refuses while the volume is loop-attached, and frees nothing', async () => {
    const before = await allocated()
    const dev = attachLoop(d.file('fs'))
    try {
      expect(await codeOf(d.client.call('volume.reclaim', { name: 'fs' }))).toBe('VOLUME_BUSY')
    } finally {
      detachLoop(dev)
    }
    expect(await allocated()).toBe(before)
  })

  it('reports what it would free with --dry-run, freeing nothing', async () => {
    const before = await allocated()
    const r = await d.client.call('volume.reclaim', { name: 'fs', dryRun: true })
    expect(r.dryRun).toBe(true)
    expect(r.releasedBytes).toBeGreaterThanOrEqual(0.9 * BIG)
    expect(await allocated()).toBe(before)
  })

  it('frees at least 90% of a deleted file, and ext4 stays clean with every file intact', async () => {
    const before = await allocated()
    const r = await d.client.call('volume.reclaim', { name: 'fs' })
    expect(r.filesystem).toBe('ext4')
    expect(r.journal.clean).toBe(true)
    expect(r.releasedBytes).toBeGreaterThanOrEqual(0.9 * BIG)
    expect(before - (await allocated())).toBe(r.releasedBytes)
    const dev = attachLoop(d.file('fs'))
    try {
      expect(() => sh('e2fsck', ['-fn', dev])).not.toThrow()
      mountExt4(dev, at())
      try {
        expect(verifyTree(join(at(), 'keep'), tree)).toEqual([])
      } finally {
        umount(at())
      }
    } finally {
      detachLoop(dev)
    }
  })

  it('with --force, reclaims a mounted file system the user has frozen', async () => {
    const dev = attachLoop(d.file('fs'))
    try {
      mountExt4(dev, at(), ['nodiscard'])
      writeFileSync(join(at(), 'big2.bin'), randomBytes(BIG / 2))
      sh('sync', [])
      rmSync(join(at(), 'big2.bin'))
      sh('fsfreeze', ['-f', at()])
      const before = await allocated()
      try {
        expect(await codeOf(d.client.call('volume.reclaim', { name: 'fs' }))).toBe('VOLUME_BUSY')
        const r = await d.client.call('volume.reclaim', { name: 'fs', force: true })
        expect(r.releasedBytes).toBeGreaterThanOrEqual(0.9 * (BIG / 2))
        expect(before - (await allocated())).toBe(r.releasedBytes)
      } finally {
        sh('fsfreeze', ['-u', at()])
      }
      expect(verifyTree(join(at(), 'keep'), tree)).toEqual([])
      writeFileSync(join(at(), 'after.bin'), Buffer.alloc(MiB, 3))
      umount(at())
      expect(() => sh('e2fsck', ['-fn', dev])).not.toThrow()
    } finally {
      umount(at())
      detachLoop(dev)
    }
  })

  it('refuses a volume that holds no ext4, freeing nothing', async () => {
    await d.client.call('volume.create', { name: 'junk', size: '16M' })
    const { openSync, writeSync, closeSync } = await import('node:fs')
    const fd = openSync(d.file('junk'), 'r+')
    writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, 0)
    closeSync(fd)
    await new Promise((r) => setTimeout(r, 100))
    const before = (await d.client.call('volume.show', { name: 'junk' })).allocated
    expect(await codeOf(d.client.call('volume.reclaim', { name: 'junk' }))).toBe('FS_UNKNOWN')
    expect((await d.client.call('volume.show', { name: 'junk' })).allocated).toBe(before)
  })
})
