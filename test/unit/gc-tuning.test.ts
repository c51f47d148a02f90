/**
 * The garbage collector's settings (lib/gc-tuning.ts): a daemon's V8 heap
 * may grow 3× what a mark-compact keeps only while it replicates (where
 * that saved a quarter of its CPU), 2× otherwise (for memory); its young
 * generation is small unless the operator sized it.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { adaptHeapGrowth, HEAP_GROWING_PERCENT, HEAP_GROWING_PERCENT_LOCAL, SEMI_SPACE_MB, startFlags } from '../../lib/gc-tuning.js'

afterEach(() => {
  vi.useRealTimers()
})

describe('the heap growth follows replication', () => {
  it('2× at once without a pair, 3× within seconds of one starting, 2× again after it ends; set only on a change', () => {
    vi.useFakeTimers()
    let replicating = false
    const set: string[] = []
    const stop = adaptHeapGrowth(() => replicating, (flags) => set.push(flags))
    try {
      expect(set).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT_LOCAL}`])
      vi.advanceTimersByTime(10_000)
      expect(set).toHaveLength(1)
      replicating = true
      vi.advanceTimersByTime(2_000)
      expect(set.at(-1)).toBe(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`)
      vi.advanceTimersByTime(10_000)
      expect(set).toHaveLength(2)
      replicating = false
      vi.advanceTimersByTime(2_000)
      expect(set).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT_LOCAL}`, `--heap-growing-percent=${HEAP_GROWING_PERCENT}`, `--heap-growing-percent=${HEAP_GROWING_PERCENT_LOCAL}`])
    } finally {
      stop()
    }
    replicating = true
    vi.advanceTimersByTime(10_000)
    expect(set).toHaveLength(3)
  })
})

describe("the daemon's young generation", () => {
  it('is made small at start unless node was given one (command line or NODE_OPTIONS, either spelling) or the daemon is started for replication', () => {
    expect(startFlags(false, [], '')).toEqual([`--max-semi-space-size=${SEMI_SPACE_MB}`])
    expect(startFlags(false, ['--trace-gc'], '--max-old-space-size=512')).toEqual([`--max-semi-space-size=${SEMI_SPACE_MB}`])
    expect(startFlags(false, ['--max-semi-space-size=16'], '')).toEqual([])
    expect(startFlags(false, [], '--trace-gc --max_semi_space_size=8')).toEqual([])
    expect(startFlags(true, [], '')).toEqual([])
  })
})
