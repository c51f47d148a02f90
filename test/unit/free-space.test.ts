import { describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../../lib/layout.js'
import { FreeSpaceTable } from '../../lib/storage/free-space.js'

function rng(seed: number) {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return seed / 0x7fffffff
  }
}

describe('the free-space table of a storage system', () => {
  it('holds capacity = allocated + free through any sequence of allocations and releases', () => {
    const rand = rng(7)
    const t = new FreeSpaceTable(64 * EXTENT_SIZE)
    const wholes = new Set<number>()
    const frags = new Set<number>()
    for (let i = 0; i < 5000; i++) {
      const r = rand()
      if (r < 0.3) {
        const s = t.allocateSlot()
        if (s !== undefined) {
          expect(wholes.has(s)).toBe(false)
          wholes.add(s)
        }
      } else if (r < 0.6) {
        const p = t.allocateFragment()
        if (p !== undefined) {
          expect(frags.has(p)).toBe(false)
          expect(wholes.has(Math.floor(p / EXTENT_CHUNKS))).toBe(false)
          frags.add(p)
        }
      } else if (r < 0.8 && wholes.size) {
        const s = [...wholes][Math.floor(rand() * wholes.size)]!
        t.releaseSlot(s)
        wholes.delete(s)
      } else if (frags.size) {
        const p = [...frags][Math.floor(rand() * frags.size)]!
        t.releaseFragment(p)
        frags.delete(p)
      }
      expect(t.allocated).toBe(wholes.size * EXTENT_SIZE + frags.size * CHUNK_SIZE)
      expect(t.capacity).toBe(t.allocated + t.free)
    }
  })

  it('rebuilds the same figures from the records it is given at start', () => {
    const t = new FreeSpaceTable(8 * EXTENT_SIZE)
    const a = t.allocateSlot()!
    const f1 = t.allocateFragment()!
    const f2 = t.allocateFragment()!
    const r = new FreeSpaceTable(8 * EXTENT_SIZE)
    r.markWhole(a)
    r.markFragment(f1)
    r.markFragment(f2)
    expect(r.figures()).toEqual(t.figures())
  })

  it('refuses a slot referenced twice (a corrupt map must not double-allocate)', () => {
    const t = new FreeSpaceTable(8 * EXTENT_SIZE)
    t.markWhole(3)
    expect(() => t.markWhole(3)).toThrow(/twice/)
    expect(() => t.markFragment(3 * EXTENT_CHUNKS + 1)).toThrow()
  })

  it('reports the largest run of free slots', () => {
    const t = new FreeSpaceTable(10 * EXTENT_SIZE)
    for (let i = 0; i < 10; i++) t.allocateSlot()
    for (const s of [1, 2, 5, 6, 7]) t.releaseSlot(s)
    expect(t.figures().largestFreeRun).toBe(3 * EXTENT_SIZE)
    expect(t.freeRuns()).toEqual([2, 3])
  })

  it('has no space for a whole extent when the capacity is smaller than one', () => {
    const t = new FreeSpaceTable(EXTENT_SIZE - 1)
    expect(t.allocateSlot()).toBeUndefined()
    expect(t.allocateFragment()).toBeUndefined()
  })
})
