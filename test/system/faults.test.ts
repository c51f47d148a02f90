/**
 * Durability under storage faults, through FUSE and a real daemon started
 * with --allow-faults: injected read, write and sync errors reach the right
 * file and only it, a failed write leaves nothing half-mapped, a migration
 * copy error stops the job with the volume whole, and a slow storage system
 * does not stall volumes on the others.
 *
 * Layout: s1 (256M) takes every new allocation (most free space); volume b
 * is migrated to s2 at the start, so it lives (and allocates) there.
 */
import { closeSync, constants, fsyncSync, openSync, readSync, writeSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ControlClient } from '../../lib/control/client.js'
import type { JobInfo, VvfsEvent } from '../../lib/control/schema.js'
import { cleanupAll, removeDir, sh, startDaemon, VVFS, type DaemonHandle } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'

const KiB = 1024
const MiB = 1024 * KiB
let d: DaemonHandle
const events: VvfsEvent[] = []
let watcher: ControlClient

function fill(byte: number, length = MiB): Buffer {
  return Buffer.alloc(length, byte)
}

function writeAt(name: string, offset: number, data: Buffer): void {
  const fd = openSync(d.file(name), constants.O_RDWR)
  try {
    writeSync(fd, data, 0, data.length, offset)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** What the daemon holds (O_DIRECT: past the page cache). */
function readAt(name: string, offset: number, length: number): Buffer {
  const fd = openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(length)
    expect(readSync(fd, buf, 0, length, offset)).toBe(length)
    return buf
  } finally {
    closeSync(fd)
  }
}

function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn()
    return undefined
  } catch (err) {
    return (err as NodeJS.ErrnoException).code
  }
}

async function jobUntil(id: number, done: (j: JobInfo) => boolean): Promise<JobInfo> {
  const until = Date.now() + 30_000
  for (;;) {
    const j = await d.client.call('job.show', { id })
    if (done(j)) return j
    if (Date.now() > until) throw new Error(`job ${id} still ${j.status}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

beforeAll(async () => {
  d = await startDaemon({ extraArgs: ['--allow-faults'] })
  await d.client.call('storage.add', { name: 's1', capacity: '256M' })
  await d.client.call('storage.add', { name: 's2', capacity: '64M' })
  for (const name of ['a', 'b', 'm']) await d.client.call('volume.create', { name, size: '16M' })
  writeAt('a', 0, fill(0xa1, 2 * MiB))
  writeAt('b', 0, fill(0xb1, 2 * MiB))
  const job = await d.client.call('migrate.start', { volume: 'b', to: 's2' })
  expect((await jobUntil(job.id, (j) => j.status === 'concluded')).result).toBe('completed')
  writeAt('m', 0, fill(0xc1, 3 * MiB))
  watcher = await ControlClient.connect(d.socket)
  watcher.onEvent((e) => events.push(e))
  await watcher.call('events.subscribe', { types: ['fault.injected'] })
}, 60_000)

afterAll(async () => {
  watcher?.close()
  await cleanupAll()
  if (d) removeDir(d.dir)
})

describe('fault injection', () => {
  it('is refused with FAULTS_DISABLED by a daemon started without --allow-faults', async () => {
    const plain = await startDaemon()
    try {
      await plain.client.call('storage.add', { name: 's1', capacity: '8M' })
      expect(await codeOf(plain.client.call('fault.add', { storage: 's1', op: 'read', error: 'EIO' }))).toBe('FAULTS_DISABLED')
      expect(await codeOf(plain.client.call('fault.list', {}))).toBe('FAULTS_DISABLED')
      expect(await codeOf(plain.client.call('fault.clear', {}))).toBe('FAULTS_DISABLED')
    } finally {
      await plain.stop()
      removeDir(plain.dir)
    }
  })

  it('adds, lists and clears rules from the CLI, and checks its arguments', async () => {
    const cli = (...args: string[]) => sh(process.execPath, [VVFS, ...args, '--socket', d.socket])
    expect(cli('fault', 'add', '--storage', 's2', '--op', 'write', '--error', 'delay', '--delay', '5ms', '--count', '3', '--seed', '42')).toMatch(/^fault \d+: delay 5ms on write of storage system s2 \(seed 42\)/)
    const listed = JSON.parse(cli('fault', 'list', '--json')) as { faults: { id: number; storage: string; delayMs: number; count: number; seed: number; active: boolean }[] }
    expect(listed.faults).toMatchObject([{ storage: 's2', delayMs: 5, count: 3, seed: 42, active: true }])
    expect(cli('fault', 'clear', String(listed.faults[0]!.id))).toMatch(/^cleared fault \d+/)
    expect(await codeOf(d.client.call('fault.clear', { id: 999 }))).toBe('FAULT_NOT_FOUND')
    expect(await codeOf(d.client.call('fault.add', { storage: 'nope', op: 'read', error: 'EIO' }))).toBe('STORAGE_NOT_FOUND')
    expect(await codeOf(d.client.call('fault.add', { storage: 's1', op: 'read', error: 'EIO', delay: '1s' }))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(d.client.call('fault.add', { storage: 's1', op: 'read', error: 'EIO', probability: 2 }))).toBe('INVALID_ARGUMENT')
    expect((await d.client.call('fault.list', {})).faults).toEqual([])
  })

  it('a read error reaches the reader as EIO while other volumes keep serving; every injection is logged and evented', async () => {
    const rule = await d.client.call('fault.add', { storage: 's1', op: 'read', error: 'EIO' })
    try {
      expect(errnoOf(() => readAt('a', 0, 64 * KiB))).toBe('EIO')
      expect(readAt('b', 0, 2 * MiB).equals(fill(0xb1, 2 * MiB))).toBe(true)
      writeAt('b', 4 * MiB, fill(0xb2))
      expect(readAt('b', 4 * MiB, MiB).equals(fill(0xb2))).toBe(true)
    } finally {
      await d.client.call('fault.clear', { id: rule.id })
    }
    expect(readAt('a', 0, 2 * MiB).equals(fill(0xa1, 2 * MiB))).toBe(true)
    // Events come on another connection: give them a moment to arrive.
    for (let i = 0; i < 50 && !events.some((e) => e.fault === rule.id); i++) await new Promise((r) => setTimeout(r, 20))
    expect(events.find((e) => e.fault === rule.id)).toMatchObject({ type: 'fault.injected', storage: 's1', op: 'read', error: 'EIO' })
    expect(d.log()).toMatch(new RegExp(`"event":"fault.injected".*"fault":${rule.id}.*"code":"IO_ERROR"`))
    expect(d.log()).toMatch(/"event":"fuse.error".*"op":"read".*"code":"IO_ERROR"/)
  })

  it('a failed background write is reported once per volume, to whoever flushes first — no more', async () => {
    const block = 4 * KiB
    const writer = openSync(d.file('a'), constants.O_RDWR)
    // A read-only open and close by another process (blkid, md5sum) while the writes fail.
    const reader = openSync(d.file('a'), constants.O_RDONLY)
    // The first 16 of 64 block writes are stored, the other 48 fail after they were answered.
    const rule = await d.client.call('fault.add', { storage: 's1', op: 'write', error: 'EIO', after: 16 })
    try {
      for (let i = 0; i < 64; i++) expect(writeSync(writer, fill(0xa2, block), 0, block, i * block)).toBe(block)
      readSync(reader, Buffer.alloc(block), 0, block, 0)
      // Each description open while the writes failed learns of it, once.
      expect(errnoOf(() => closeSync(reader))).toBe('EIO')
      expect(errnoOf(() => fsyncSync(writer))).toBe('EIO')
      expect(errnoOf(() => fsyncSync(writer))).toBeUndefined()
      // One opened afterwards did not see it happen.
      const later = openSync(d.file('a'), constants.O_RDWR)
      expect(errnoOf(() => fsyncSync(later))).toBeUndefined()
      closeSync(later)
    } finally {
      await d.client.call('fault.clear', { id: rule.id })
      errnoOf(() => closeSync(writer))
    }
    const back = readAt('a', 0, 64 * block)
    const right = Array.from({ length: 64 }, (_, i) => back.subarray(i * block, (i + 1) * block).equals(fill(0xa2, block))).filter(Boolean).length
    expect(right).toBe(16)
  })

  it('after a failed write, the extent stays mapped in memory with no record', async () => {
    // a's extent 8 is new: its fragment goes to s1, whose next write fails for want of space.
    const offset = 8 * MiB
    const data = fill(0xa3, 4 * KiB)
    const rule = await d.client.call('fault.add', { storage: 's1', op: 'write', error: 'ENOSPC', count: 1 })
    expect(errnoOf(() => writeAt('a', offset, data))).toBe('ENOSPC')
    expect((await d.client.call('fault.list', {})).faults.find((f) => f.id === rule.id)).toMatchObject({ injected: 1, active: false })
    expect(await d.client.call('volume.mapOf', { name: 'a', offset })).toMatchObject({ state: 'unallocated' })
    // The space problem is gone: a rewrite is stored, recorded, and survives a restart.
    writeAt('a', offset, data)
    expect(readAt('a', offset, data.length).equals(data)).toBe(true)
    expect(await d.client.call('volume.mapOf', { name: 'a', offset })).toMatchObject({ state: 'fragment', storage: 's1', stored: true })
    await d.restart()
    expect(await d.client.call('volume.mapOf', { name: 'a', offset })).toMatchObject({ state: 'fragment', stored: true })
    expect(readAt('a', offset, data.length).equals(data)).toBe(true)
    // Rules live in memory only: none after the restart.
    expect((await d.client.call('fault.list', {})).faults).toEqual([])
  })

  it('a sync error makes fsync fail, never succeed, until the storage recovers', async () => {
    const rule = await d.client.call('fault.add', { storage: 's1', op: 'sync', error: 'EIO' })
    const fd = openSync(d.file('a'), constants.O_RDWR)
    try {
      writeSync(fd, fill(0xa4, 4 * KiB), 0, 4 * KiB, 0)
      expect(errnoOf(() => fsyncSync(fd))).toBe('EIO')
      expect(errnoOf(() => fsyncSync(fd))).toBe('EIO')
      await d.client.call('fault.clear', { id: rule.id })
      expect(errnoOf(() => fsyncSync(fd))).toBeUndefined()
    } finally {
      await d.client.call('fault.clear', {})
      closeSync(fd)
    }
  })

  it('a migration copy error pauses the job with the volume whole; it completes after fault clear and job resume', async () => {
    // With a rule armed on s2 the copy runs on the main thread, through s2’s fault gate: its writes fail.
    const rule = await d.client.call('fault.add', { storage: 's2', op: 'write', error: 'EIO' })
    const job = await d.client.call('migrate.start', { volume: 'm', to: 's2' })
    const stopped = await jobUntil(job.id, (j) => j.status === 'paused' || j.status === 'concluded')
    expect(stopped).toMatchObject({ status: 'paused', error: { code: 'IO_ERROR' } })
    expect(readAt('m', 0, 3 * MiB).equals(fill(0xc1, 3 * MiB))).toBe(true)
    expect(d.log()).toMatch(/"event":"job.copy_failed".*"code":"IO_ERROR"/)
    await d.client.call('fault.clear', { id: rule.id })
    await d.client.call('job.resume', { id: job.id })
    const done = await jobUntil(job.id, (j) => j.status === 'concluded')
    expect(done.result).toBe('completed')
    expect(done.error).toBeUndefined()
    expect((await d.client.call('volume.show', { name: 'm' })).allocatedBySystem).toEqual([{ storage: 's2', allocated: 3 * MiB }])
    expect(readAt('m', 0, 3 * MiB).equals(fill(0xc1, 3 * MiB))).toBe(true)
  })

  it('a 2 s delay on one storage system does not stall volumes on the others', async () => {
    await d.client.call('fault.add', { storage: 's1', op: 'any', error: 'delay', delay: '2s' })
    try {
      const started = Date.now()
      // A reader of a (on s1) in the thread pool, and a control request that reads s1, wait out the delay...
      const slowRead = open(d.file('a'), constants.O_RDONLY | constants.O_DIRECT).then(async (fh) => {
        await fh.read(Buffer.alloc(64 * KiB), 0, 64 * KiB, MiB).finally(() => fh.close())
        return Date.now() - started
      })
      const slowMapOf = d.client.call('volume.mapOf', { name: 'a', offset: 0 }).then(() => Date.now() - started)
      await new Promise((r) => setTimeout(r, 100))
      // ...while b (on s2) is read, written, fsynced and closed at once.
      const t0 = Date.now()
      expect(readAt('b', 0, MiB).equals(fill(0xb1))).toBe(true)
      writeAt('b', 5 * MiB, fill(0xb3))
      expect(readAt('b', 5 * MiB, MiB).equals(fill(0xb3))).toBe(true)
      expect(Date.now() - t0).toBeLessThan(1500)
      expect(await slowRead).toBeGreaterThanOrEqual(1900)
      expect(await slowMapOf).toBeGreaterThanOrEqual(1900)
    } finally {
      await d.client.call('fault.clear', {})
    }
  })

  it('no injected error crashed the daemon or went unhandled, and every storage failure was logged with its code', async () => {
    expect(d.proc.exitCode).toBeNull()
    expect((await d.client.call('status', {})).volumes).toBe(3)
    const log = d.log()
    expect(log).not.toContain('daemon.unhandled')
    expect(log).toMatch(/"event":"volume.write_failed".*"code":"STORAGE_FULL"/)
    expect(log).toMatch(/"event":"fuse.error".*"op":"fsync".*"code":"IO_ERROR"/)
  })
})
