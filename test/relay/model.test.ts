/**
 * Model-based random test of the relay (volume → thin → storage) in-process:
 * thousands of random writes (unaligned, across chunk and extent boundaries,
 * all-zero and partly zero), reads, discards, resizes and flushes agree with
 * an in-memory model, and so does what is allocated — also after the stack
 * is closed and reopened from disk.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'
import { openStack, type Stack } from '../helpers/stack.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

async function run(seed: number, ops: number) {
  const dir = tempDir('vvfs-model-')
  dirs.push(dir)
  const opts = { dir, systems: 3, capacity: 16 * EXTENT_SIZE, size: 6 * EXTENT_SIZE + 1234 }
  let stack: Stack = await openStack(opts, true)
  const model = new VolumeModel(opts.size)
  const r = rng(seed)
  const counts: Record<string, number> = {}
  for (let i = 0; i < ops; i++) {
    const k = r.next()
    const size = model.size
    let op: string
    if (k < 0.4) {
      op = 'write'
      const [offset, len] = range(r, size, 3 * 128 * 1024)
      const data = payload(r, len)
      await stack.volume.write(offset, data)
      model.write(offset, data)
    } else if (k < 0.7) {
      op = 'read'
      const [offset, len] = range(r, size, 3 * 128 * 1024)
      const into = Buffer.alloc(len)
      const n = await stack.volume.read(offset, len, into)
      const want = model.read(offset, len)
      expect(n).toBe(want.length)
      if (!into.subarray(0, n).equals(want)) throw new Error(`op ${i}: read ${len} at ${offset} differs from the model`)
    } else if (k < 0.82) {
      op = 'discard'
      const [offset, len] = range(r, size, 3 * EXTENT_SIZE)
      await stack.volume.discard(offset, len)
      model.discard(offset, len)
    } else if (k < 0.9) {
      op = 'resize'
      const next = r.next() < 0.5 ? r.int(1, 10 * EXTENT_SIZE) : r.pick([EXTENT_SIZE, 4 * EXTENT_SIZE + 4096, 8 * EXTENT_SIZE - 1])
      await stack.volume.resize(next)
      model.resize(next)
    } else if (k < 0.97) {
      op = 'flush'
      await stack.volume.flush()
    } else {
      op = 'reopen'
      await stack.volume.flush()
      await stack.close()
      stack = await openStack({ ...opts, size: model.size }, false)
    }
    counts[op] = (counts[op] ?? 0) + 1
    if (i % 100 === 99 || op === 'reopen') {
      await stack.volume.drain()
      await stack.thin.settle()
      model.checkAllocation(stack.map)
      expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
    }
  }
  // Whole-volume comparison at the end, then once more after a reopen.
  const check = async (s: Stack) => {
    const all = Buffer.alloc(model.size)
    await s.volume.read(0, model.size, all)
    expect(all.equals(model.data)).toBe(true)
    await s.volume.drain()
    await s.thin.settle()
    model.checkAllocation(s.map)
  }
  await check(stack)
  await stack.volume.flush()
  await stack.close()
  stack = await openStack({ ...opts, size: model.size }, false)
  await check(stack)
  expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
  await stack.close()
  return counts
}

describe('the relay against an in-memory model', () => {
  for (const seed of [1, 2, 3]) {
    it(`agrees on content and allocation over 1500 random operations (seed ${seed})`, async () => {
      const counts = await run(seed, 1500)
      expect(counts.write).toBeGreaterThan(400)
      expect(counts.read).toBeGreaterThan(300)
      expect(counts.reopen).toBeGreaterThan(10)
    })
  }

  it('reads zeros and allocates nothing where nothing was written', async () => {
    const dir = tempDir('vvfs-model-')
    dirs.push(dir)
    const stack = await openStack({ dir, systems: 2, capacity: 8 * EXTENT_SIZE, size: 4 * EXTENT_SIZE }, true)
    const buf = Buffer.alloc(4 * EXTENT_SIZE, 0xaa)
    await stack.volume.read(0, buf.length, buf)
    expect(buf.equals(Buffer.alloc(buf.length))).toBe(true)
    await stack.volume.write(0, Buffer.alloc(2 * EXTENT_SIZE))
    expect(stack.pool.totals().allocated).toBe(0)
    await stack.close()
  })

  it('gives a small scattered write a fragment, and a large one a whole extent', async () => {
    const dir = tempDir('vvfs-model-')
    dirs.push(dir)
    const stack = await openStack({ dir, systems: 2, capacity: 8 * EXTENT_SIZE, size: 4 * EXTENT_SIZE }, true)
    await stack.volume.write(100, Buffer.from('superblock'))
    expect(stack.map.get(0)?.kind).toBe('fragments')
    expect(stack.map.allocatedBytes).toBe(CHUNK_SIZE)
    await stack.volume.write(EXTENT_SIZE, Buffer.alloc(128 * 1024, 1))
    expect(stack.map.get(1)?.kind).toBe('whole')
    await stack.close()
  })

  it('places new extents on the storage system with the most free space, so a volume spans several', async () => {
    const dir = tempDir('vvfs-model-')
    dirs.push(dir)
    const stack = await openStack({ dir, systems: 3, capacity: 8 * EXTENT_SIZE, size: 6 * EXTENT_SIZE }, true)
    await stack.volume.write(0, Buffer.alloc(6 * EXTENT_SIZE, 7))
    const used = stack.pool.list().map((s) => s.table.allocated)
    expect(used).toEqual([2 * EXTENT_SIZE, 2 * EXTENT_SIZE, 2 * EXTENT_SIZE])
    await stack.close()
  })
})
