/**
 * The allocator's settings (lib/malloc-tuning.ts): the daemon caps glibc's
 * malloc arenas at start, so that memory freed on one thread is reused by
 * the others instead of staying resident per thread.
 */
import { describe, expect, it } from 'vitest'
import { loadNativeAddon } from '../../lib/native-addon.js'
import { MAX_ARENAS, tuneMalloc } from '../../lib/malloc-tuning.js'

interface MallocAddon {
  limitArenas(n: number): boolean
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

  it('names the addon and how to build it when it is missing', () => {
    expect(() => loadNativeAddon('no-such-addon', 'the thing')).toThrow(/the thing native\/no-such-addon is not built/)
  })
})
