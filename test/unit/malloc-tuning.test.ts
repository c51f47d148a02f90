/**
 * The allocator's settings (lib/malloc-tuning.ts): the daemon caps glibc's
 * malloc arenas at start, so that memory freed on one thread is reused by
 * the others instead of staying resident per thread, and gives memory
 * freed during work back to the system once it has been idle a while.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { fileURLToPath } from 'node:url'
import { loadNativeAddon } from '../../lib/native-addon.js'
import { IDLE_CPU, IDLE_MS, IdleTrimPolicy, MAX_ARENAS, MIN_TRIM_GAP_MS, trimWhenIdle, tuneMalloc } from '../../lib/malloc-tuning.js'
import { silentLogger } from '../../lib/log.js'

const MiB = 1024 * 1024

interface MallocAddon {
  limitArenas(n: number): boolean
  reexec(nodeFlags?: unknown): never
}

describe('the allocator settings', () => {
  it('glibc takes the arena limit, and the daemon start applies it without error', () => {
    const addon = loadNativeAddon<MallocAddon>('malloc', 'test')
    expect(addon.limitArenas(MAX_ARENAS)).toBe(true)
    expect(() => tuneMalloc()).not.toThrow()
  })

  it('refuses a limit that is not a positive integer', () => {
    const addon = loadNativeAddon<MallocAddon>('malloc', 'test')
    for (const bad of [0, -1, 'two', undefined]) expect(() => addon.limitArenas(bad as number)).toThrow(/positive integer/)
  })

  it('refuses node flags that are not an array of plain strings, before it executes anything', () => {
    const addon = loadNativeAddon<MallocAddon>('malloc', 'test')
    for (const bad of ['--x', [1], ['--a', null], ['--a\0--b']]) expect(() => addon.reexec(bad)).toThrow(/array of strings/)
  })

  it('names the addon and how to build it when it is missing', () => {
    expect(() => loadNativeAddon('no-such-addon', 'the thing')).toThrow(/the thing native\/no-such-addon is not built/)
  })

  it('a trim gives freed memory in the middle of the heap back to the system', async () => {
    const child = fileURLToPath(new URL('../helpers/malloc-trim-child.mjs', import.meta.url))
    const addonFile = fileURLToPath(new URL('../../native/malloc/build/Release/malloc.node', import.meta.url))
    const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', child, addonFile])
    const r = JSON.parse(stdout) as { before: number; after: number; released: boolean }
    console.log(`RSS ${(r.before / MiB).toFixed(0)} MiB before the trim, ${(r.after / MiB).toFixed(0)} MiB after`)
    expect(r.released).toBe(true)
    expect(r.before - r.after).toBeGreaterThan(64 * MiB)
  }, 30_000)
})

describe('trimming when idle', () => {
  /** Seconds of CPU shares (fraction of one core) fed to the policy one second apart; the seconds at which it trims. */
  function trimsAt(load: number[]): number[] {
    const policy = new IdleTrimPolicy(0)
    const out: number[] = []
    load.forEach((share, i) => {
      const now = (i + 1) * 1000
      if (policy.observe(now, share * 1000, 1000)) {
        out.push(i + 1)
        policy.trimmed(now)
      }
    })
    return out
  }
  const idle = (s: number) => Array<number>(s).fill(0)
  const busy = (s: number) => Array<number>(s).fill(0.8)

  it('trims once after work followed by IDLE_MS of idleness, and not again while idle', () => {
    expect(IDLE_MS).toBe(3000)
    expect(trimsAt([...busy(5), ...idle(20)])).toEqual([5 + 3])
  })

  it('never trims a process that only idled, or one that stays busy', () => {
    expect(trimsAt(idle(120))).toEqual([])
    expect(trimsAt(busy(120))).toEqual([])
    expect(trimsAt(Array<number>(120).fill(IDLE_CPU * 0.9))).toEqual([])
  })

  it('trims at most once per MIN_TRIM_GAP_MS when work and idleness alternate', () => {
    const load = Array.from({ length: 20 }, () => [...busy(1), ...idle(4)]).flat()
    // Busy in seconds 1, 6, 11, …: the first trim 3 s after the first, then the first idle 3 s at least 30 s after the last trim.
    expect(MIN_TRIM_GAP_MS).toBe(30_000)
    expect(trimsAt(load)).toEqual([4, 34, 64, 94])
  })

  it('trimWhenIdle calls the trim after the process worked, then idled', async () => {
    let trims = 0
    const stop = trimWhenIdle(silentLogger(), async () => {
      trims++
      return true
    })
    try {
      const until = Date.now() + 1500
      while (Date.now() < until) Math.sqrt(Math.random()) // a second and a half of work
      await new Promise((r) => setTimeout(r, IDLE_MS + 2500))
      expect(trims).toBe(1)
    } finally {
      stop()
    }
  }, 20_000)
})

