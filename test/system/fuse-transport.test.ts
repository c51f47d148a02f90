/**
 * The FUSE transport under many requests at once. fuse-native answers each
 * request on one of libfuse's worker threads, which waits until JavaScript
 * answers; with libfuse 3's asynchronous direct I/O every O_DIRECT request
 * is also one of the kernel's background requests. libfuse 3.12+ starts at
 * most 10 workers and the kernel sends 12 background requests at a time
 * unless told otherwise (patches/fuse-native): one host mount serves every
 * volume of its host, so requests held up by one slow storage system would
 * hold up every other volume's I/O. And the workers started for a burst
 * stay: one that ended and started again set up new thread locals and a
 * uv_async handle on the JavaScript thread, never freed, which libuv then
 * looked at on every wake-up (random 4 KiB I/O on the null FUSE file fell
 * from 21,153 to 5,641 IOPS within one bench run).
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { exitWithin, removeDir, tempDir, unmountUnder } from '../helpers/daemon.js'

const HELD = join(import.meta.dirname, '../helpers/fuse-held-requests.mjs')

describe('the FUSE transport', () => {
  // Without raising them the helper saw 12 (the kernel's background requests) and 10 (libfuse's workers);
  // with workers ending past 10 idle, 12 threads were left after three bursts.
  it('lets 32 O_DIRECT reads wait in JavaScript at once, beyond libfuse 3\'s and the kernel\'s defaults, and keeps the workers', async () => {
    const dir = tempDir()
    const proc = spawn(process.execPath, [HELD, join(dir, 'mnt'), '32', '3'], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()))
    try {
      expect(await exitWithin(proc, 60_000), out).toBe(0)
      const seen = JSON.parse(out) as { maxWaiting: number; threadsAdded: number }
      expect(seen.maxWaiting).toBe(32)
      expect(seen.threadsAdded).toBeGreaterThanOrEqual(32)
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL')
      unmountUnder(dir)
      removeDir(dir)
    }
  }, 90_000)
})
