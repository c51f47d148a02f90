/**
 * Regression: a write waiting for its chunks' locks behind a shrink was
 * checked against the size from before the shrink and then stored past the
 * new end, so growing the volume again showed its bytes instead of zeros.
 * A write queued behind a shrink now keeps only what lies below the new end
 * (as if it had come first and the shrink cut it).
 *
 * Deterministic: a held lock keeps the shrink and then the write queued, in
 * that order (RangeLock grants overlapping requests FIFO).
 */
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { memorySystems, openStack, type Stack } from '../helpers/stack.js'

const dirs: string[] = []
const stacks: Stack[] = []
afterEach(async () => {
  for (const s of stacks.splice(0)) await s.close()
  dirs.splice(0).forEach(removeDir)
})

describe('a write queued behind a shrink', () => {
  for (const [what, at] of [
    ['wholly past the new end', 3 * EXTENT_SIZE],
    ['across the new end, in the middle of a chunk', 2 * EXTENT_SIZE - 1000],
  ] as const) {
    it(`(${what}) leaves zeros past the new end for the next grow`, async () => {
      const dir = tempDir('vvfs-shrink-write-')
      dirs.push(dir)
      const size = 4 * EXTENT_SIZE
      const stack = await openStack({ dir, systems: 1, capacity: 8 * EXTENT_SIZE, size, systemsFrom: memorySystems }, true)
      stacks.push(stack)
      const { volume } = stack
      const cut = 2 * EXTENT_SIZE - CHUNK_SIZE / 2
      const data = Buffer.alloc(EXTENT_SIZE / 2, 0xa5)
      const hold = await volume.locks.acquire(0, Number.MAX_SAFE_INTEGER, 'exclusive')
      const shrink = volume.resize(cut)
      const write = volume.write(at, data)
      hold()
      await shrink
      await write
      await volume.drain()
      expect(volume.size).toBe(cut)
      await volume.resize(size)
      const back = Buffer.alloc(size)
      await volume.read(0, size, back)
      const expected = Buffer.alloc(size)
      data.subarray(0, Math.max(0, cut - at)).copy(expected, at)
      expect(back.equals(expected)).toBe(true)
    })
  }
})
