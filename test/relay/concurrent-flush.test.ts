/**
 * Two fsyncs of one volume at once: the second must not return before the
 * storage systems holding the volume's writes are synced, even though the
 * first fsync is the one syncing them. (A flush that emptied its set of
 * written systems before syncing them let a concurrent flush sync only the
 * map store and return: the records durable, the data they point at not.)
 *
 * And a flush that runs while a write is still on its way into a storage
 * system must leave that system to the next flush: a flush that forgot it
 * (its mark was taken when the write was issued, not when it completed) let
 * the writer's own fsync skip the system, and a power cut took an fsynced
 * file's data (test/system/powerloss-ext4.test.ts, about one run in eight).
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { FaultInjector } from '../../lib/storage/fault-injector.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openStack } from '../helpers/stack.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

/** A 4 MiB volume over one LevelDB storage system. */
async function oneSystemStack() {
  const dir = tempDir('vvfs-concurrent-flush-')
  dirs.push(dir)
  return openStack({ dir, systems: 1, capacity: 8 * EXTENT_SIZE, size: 4 * EXTENT_SIZE }, true)
}

describe('concurrent fsyncs of one volume', () => {
  it('a second fsync during a running one waits for the storage sync that covers its writes', async () => {
    const stack = await oneSystemStack()
    try {
      const system = stack.pool.list()[0]!
      await stack.volume.write(0, Buffer.alloc(CHUNK_SIZE, 0x11))
      // The storage system's sync takes 300 ms; the map store's does not.
      new FaultInjector(() => {}).add(system, { op: 'sync', error: 'delay', delayMs: 300, count: 1 })
      const started = Date.now()
      const first = stack.volume.flush()
      await new Promise((r) => setTimeout(r, 20))
      await stack.volume.flush()
      const secondDone = Date.now()
      await first
      expect(secondDone - started).toBeGreaterThanOrEqual(290)
    } finally {
      await stack.close()
    }
  })

  it('a flush during a write still on its way leaves the system to the next flush, which syncs it', async () => {
    const stack = await oneSystemStack()
    try {
      const system = stack.pool.list()[0]!
      // A whole slot, recorded and durable: the next 1 MiB write to it is an unlogged in-place write.
      await stack.volume.write(0, Buffer.alloc(EXTENT_SIZE, 0x11))
      await stack.volume.flush()
      expect(system.holdsUnsyncedUnlogged).toBe(false)
      // The write takes 200 ms to complete in the store; a flush (another
      // file's fsync, a journal commit) starts and ends meanwhile.
      new FaultInjector(() => {}).add(system, { op: 'write', error: 'delay', delayMs: 200, count: 1 })
      const write = stack.thin.write(0, Buffer.alloc(EXTENT_SIZE, 0x22))
      await write.accepted
      await stack.thin.flush()
      await write.stored
      expect(system.holdsUnsyncedUnlogged).toBe(true)
      // The writer's fsync.
      await stack.volume.flush()
      expect(system.holdsUnsyncedUnlogged).toBe(false)
    } finally {
      await stack.close()
    }
  })
})
