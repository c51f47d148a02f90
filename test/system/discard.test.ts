/**
 * Discard reaches the relay: `fstrim` on an ext4 mounted from a loop-attached
 * volume releases the space of a deleted file, and what remains stays intact.
 */
import { randomBytes } from 'node:crypto'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, cleanupAll, detachLoop, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { verifyTree, writeTree } from '../helpers/files.js'

const MiB = 1024 * 1024
let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  for (const name of ['s1', 's2']) await d.client.call('storage.add', { name, capacity: '512M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

const allocated = async (name: string) => (await d.client.call('volume.show', { name })).allocated

describe('fstrim on ext4 over a volume', () => {
  it('releases at least 90% of a deleted file and keeps the rest intact', async () => {
    await d.client.call('volume.create', { name: 'trim', size: '512M' })
    const dev = attachLoop(d.file('trim'))
    const at = join(d.dir, 'trim')
    try {
      sh('mkfs.ext4', ['-q', '-F', dev])
      mountExt4(dev, at)
      const tree = writeTree(join(at, 'keep'), { files: 40, maxSize: 256 * 1024 })
      const big = 96 * MiB
      writeFileSync(join(at, 'big.bin'), randomBytes(big))
      sh('sync', [])
      const before = await allocated('trim')
      rmSync(join(at, 'big.bin'))
      sh('sync', [])
      sh('fstrim', [at])
      // Releases of emptied extents finish in the background.
      let after = await allocated('trim')
      for (let i = 0; i < 50 && before - after < 0.9 * big; i++) {
        await new Promise((r) => setTimeout(r, 100))
        after = await allocated('trim')
      }
      expect(before - after).toBeGreaterThanOrEqual(0.9 * big)
      expect(verifyTree(join(at, 'keep'), tree)).toEqual([])
      umount(at)
      expect(() => sh('e2fsck', ['-fn', dev])).not.toThrow()
      mountExt4(dev, at)
      expect(verifyTree(join(at, 'keep'), tree)).toEqual([])
    } finally {
      umount(at)
      detachLoop(dev)
    }
  })
})
