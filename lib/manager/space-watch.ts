/**
 * SpaceWatch: what happens when the pool fills. It raises `pool.threshold`
 * once each time usage crosses the warning threshold upward (re-armed when
 * usage falls back below it), and decides what a writer that finds the pool
 * full does: fail at once (`error`, the default) or wait up to a timeout for
 * space (`queue`, like dm-thin's no_space_timeout) — space that a release or
 * a newly added storage system brings wakes the waiters at once.
 */
import type { Pool } from '../storage/pool.js'
import type { SpacePolicy } from '../relay/thin.js'
import type { PoolSettings } from './catalog.js'

export interface ThresholdCrossing {
  usedPercent: number
  warnPercent: number
  allocated: number
  capacity: number
}

export class SpaceWatch implements SpacePolicy {
  private above = false
  private waiters = new Set<(retry: boolean) => void>()
  private closed = false
  private lastFree = 0

  constructor(
    private readonly pool: Pool,
    private readonly settings: () => PoolSettings,
    private readonly crossed: (c: ThresholdCrossing) => void,
  ) {
    this.above = this.usedPercent() >= settings().warnPercent
    this.lastFree = pool.totals().free
  }

  get queued(): number {
    return this.waiters.size
  }

  /** Called after every allocation and release. */
  changed(): void {
    const { warnPercent } = this.settings()
    const used = this.usedPercent()
    if (!this.above && used >= warnPercent) {
      this.above = true
      const t = this.pool.totals()
      this.crossed({ usedPercent: used, warnPercent, allocated: t.allocated, capacity: t.capacity })
    } else if (this.above && used < warnPercent) {
      this.above = false
    }
    const free = this.pool.totals().free
    if (free > this.lastFree) for (const wake of [...this.waiters]) wake(true)
    this.lastFree = free
  }

  /** Re-evaluates the threshold after a settings change without raising an event for the past. */
  rearm(): void {
    this.above = this.usedPercent() >= this.settings().warnPercent
  }

  waitForSpace(): Promise<boolean> {
    const { fullMode, queueTimeoutMs } = this.settings()
    if (fullMode !== 'queue' || this.closed) return Promise.resolve(false)
    return new Promise<boolean>((resolve) => {
      const wake = (retry: boolean) => {
        clearTimeout(timer)
        this.waiters.delete(wake)
        resolve(retry)
      }
      const timer = setTimeout(() => {
        this.waiters.delete(wake)
        resolve(false)
      }, queueTimeoutMs)
      this.waiters.add(wake)
    })
  }

  /** Wakes every waiter with "give up" (shutdown). */
  close(): void {
    this.closed = true
    for (const wake of [...this.waiters]) wake(false)
  }

  private usedPercent(): number {
    const t = this.pool.totals()
    return t.capacity === 0 ? 0 : (100 * t.allocated) / t.capacity
  }
}
