import { describe, expect, it } from 'vitest'
import { RangeLock } from '../../lib/relay/range-lock.js'

const tick = () => new Promise((r) => setImmediate(r))

describe('the per-chunk locks of a volume', () => {
  it('lets disjoint ranges and overlapping readers proceed together', async () => {
    const l = new RangeLock()
    const a = await l.acquire(0, 10, 'exclusive')
    const b = await l.acquire(10, 20, 'exclusive')
    const c = await l.acquire(20, 30, 'shared')
    const d = await l.acquire(25, 35, 'shared')
    for (const r of [a, b, c, d]) r()
    expect(l.size).toBe(0)
  })

  it('makes a write wait for an overlapping read and a read for an overlapping write', async () => {
    const l = new RangeLock()
    const order: string[] = []
    const r1 = await l.acquire(0, 10, 'shared')
    const w = l.acquire(5, 6, 'exclusive').then((rel) => {
      order.push('write')
      return rel
    })
    const r2 = l.acquire(0, 1, 'shared').then((rel) => {
      order.push('read2')
      rel()
    })
    await tick()
    expect(order).toEqual(['read2'])
    r1()
    const rel = await w
    expect(order).toEqual(['read2', 'write'])
    const r3 = l.acquire(5, 6, 'shared').then((x) => {
      order.push('read3')
      x()
    })
    await tick()
    expect(order).toEqual(['read2', 'write'])
    rel()
    await r2
    await r3
    expect(order).toEqual(['read2', 'write', 'read3'])
  })

  it('is FIFO among overlapping requests, so readers cannot starve an extent copy', async () => {
    const l = new RangeLock()
    const order: string[] = []
    const first = await l.acquire(0, 4, 'shared')
    const copy = l.acquire(0, 256, 'exclusive').then((r) => {
      order.push('copy')
      r()
    })
    const later = l.acquire(1, 2, 'shared').then((r) => {
      order.push('later-read')
      r()
    })
    await tick()
    expect(order).toEqual([])
    first()
    await copy
    await later
    expect(order).toEqual(['copy', 'later-read'])
  })
})
