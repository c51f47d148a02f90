/**
 * BufferPool (lib/buffer-pool.ts): buffers reused by size class, so messages
 * of varying lengths reuse each other's memory, within an idle bound, and
 * nothing it did not hand out is ever reused.
 */
import { describe, expect, it } from 'vitest'
import { BufferPool, sizeClass } from '../../lib/buffer-pool.js'

describe('size classes', () => {
  it('round up by at most an eighth, and keep powers of two and 64 KiB multiples up to 1 MiB exact', () => {
    for (let n = 1; n <= 4 * 1024 * 1024; n = Math.ceil(n * 1.07) + 1) {
      const c = sizeClass(n)
      expect(c).toBeGreaterThanOrEqual(n)
      expect(c).toBeLessThanOrEqual(n * 1.125)
      expect(sizeClass(c)).toBe(c)
    }
    for (let k = 1; k <= 16; k++) expect(sizeClass(k * 64 * 1024)).toBe(k * 64 * 1024)
    for (let p = 3; p <= 24; p++) expect(sizeClass(2 ** p)).toBe(2 ** p)
  })
})

describe('a BufferPool', () => {
  it('hands out exactly the length asked for, and a length of the same class reuses the memory given back', () => {
    const pool = new BufferPool(64 * 1024, 4 * 1024 * 1024)
    const a = pool.take(1_000_000)
    expect(a.length).toBe(1_000_000)
    pool.give(a)
    expect(pool.held).toBe(sizeClass(1_000_000))
    const b = pool.take(1_020_000)
    expect(b.length).toBe(1_020_000)
    expect(b.buffer).toBe(a.buffer)
    expect(pool.held).toBe(0)
    const c = pool.take(1_020_000) // none idle: a new one
    expect(c.buffer).not.toBe(b.buffer)
  })

  it('ignores what it did not hand out (a view of a socket chunk, a small buffer), and a second give of one buffer', () => {
    const pool = new BufferPool(64 * 1024, 4 * 1024 * 1024)
    pool.give(Buffer.alloc(128 * 1024))
    const small = pool.take(1000)
    expect(small.length).toBe(1000)
    pool.give(small)
    expect(pool.held).toBe(0)
    const a = pool.take(128 * 1024)
    pool.give(a.subarray(0, 1024)) // a view of it is not it
    expect(pool.held).toBe(0)
    pool.give(a)
    pool.give(a)
    expect(pool.held).toBe(128 * 1024)
    expect(pool.take(128 * 1024).buffer).toBe(a.buffer)
    expect(pool.take(128 * 1024).buffer).not.toBe(a.buffer) // given back twice, handed out once
  })

  it('left full of one size by a burst, still keeps and reuses a buffer of another size given back', () => {
    const pool = new BufferPool(4096, 64 * 1024)
    const small = Array.from({ length: 16 }, () => pool.take(4096))
    for (const b of small) pool.give(b)
    expect(pool.held).toBe(64 * 1024)
    const big = pool.take(32 * 1024)
    pool.give(big)
    expect(pool.held).toBe(64 * 1024) // room made from the 4 KiB ones
    expect(pool.take(32 * 1024).buffer).toBe(big.buffer)
    expect(pool.take(4096).length).toBe(4096) // eight 4 KiB buffers are still idle
    expect(pool.held).toBe(28 * 1024)
  })

  it('keeps at most its idle bound', () => {
    const pool = new BufferPool(64 * 1024, 256 * 1024)
    const taken = [pool.take(128 * 1024), pool.take(128 * 1024), pool.take(128 * 1024)]
    for (const b of taken) pool.give(b)
    expect(pool.held).toBe(256 * 1024)
  })
})
