/**
 * fuse-native as vvfs builds it (patches/, scripts/build-native.mjs): linked
 * against libfuse 3, whose protocol lets the kernel send a file's direct I/O
 * asynchronously. A stock or prebuilt binary (libfuse 2) sends O_DIRECT
 * requests one at a time, and HostMount refuses to mount with it.
 */
import Fuse from 'fuse-native'
import { describe, expect, it } from 'vitest'

describe('the FUSE binding', () => {
  it('runs with libfuse 3', () => {
    expect(typeof Fuse.libfuseVersion).toBe('function')
    expect(Fuse.libfuseVersion()).toBeGreaterThanOrEqual(300)
    expect(Fuse.libfuseVersion()).toBeLessThan(400)
  })
})
