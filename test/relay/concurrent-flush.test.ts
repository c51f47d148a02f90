/**
 * Two fsyncs of one volume at once: the second must not return before the
 * storage systems holding the volume's writes are synced, even though the
 * first fsync is the one syncing them. (A flush that emptied its set of
 * written systems before syncing them let a concurrent flush sync only the
 * map store and return: the records durable, the data they point at not.)
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { FaultInjector } from '../../lib/storage/fault-injector.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openStack } from '../helpers/stack.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

describe('concurrent fsyncs of one volume', () => {
  it('a second fsync during a running one waits for the storage sync that covers its writes', async () => {
    const dir = tempDir('vvfs-concurrent-flush-')
    dirs.push(dir)
    const stack = await openStack({ dir, systems: 1, capacity: 8 * EXTENT_SIZE, size: 4 * EXTENT_SIZE }, true)
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
})
