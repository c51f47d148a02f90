/**
 * A rollback after a kill -9 never returns a volume to a source older than
 * what the volume showed after the crash: an unlogged host write to an extent
 * not yet copied lives only in its source's memtable; the job copies it
 * (logged, synced at the destination) and switches; a kill -9 takes it from
 * the source, not from the copy. The rollback must copy such an extent back
 * rather than switch back to the stale source.
 */
import { closeSync, constants, fsyncSync, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { JobInfo } from '../../lib/control/schema.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const MiB = 1024 * 1024
let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

/** 1 MiB whose every byte is `fill`. */
function extentOf(fill: number): Buffer {
  return Buffer.alloc(MiB, fill)
}

function readExtent(name: string, e: number): Buffer {
  const fd = openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(MiB)
    expect(readSync(fd, buf, 0, MiB, e * MiB)).toBe(MiB)
    return buf
  } finally {
    closeSync(fd)
  }
}

async function until(id: number, done: (j: JobInfo) => boolean): Promise<JobInfo> {
  for (let i = 0; i < 600; i++) {
    const j = await d.client.call('job.show', { id })
    if (done(j)) return j
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`job ${id} never got there`)
}

describe('rollback after a kill -9', () => {
  it('rollback after a kill -9 can revert data that survived: an unlogged write copied before the crash is kept by the rollback', async () => {
    const name = 'rb'
    await d.client.call('storage.add', { name: 'src', capacity: '64M' })
    await d.client.call('volume.create', { name, size: '16M' })
    // Every extent on src, synced: the state the job starts from.
    let fd = openSync(d.file(name), constants.O_RDWR | constants.O_DIRECT)
    for (let e = 0; e < 16; e++) writeSync(fd, extentOf(0x10 + e), 0, MiB, e * MiB)
    fsyncSync(fd)
    closeSync(fd)
    await d.client.call('storage.add', { name: 'dst', capacity: '64M' })
    // Killed right after the switch of extent 13 (the 14th).
    await d.restart({ VVFS_CRASH_AT: 'migration.switch:14' })
    const job = await d.client.call('migrate.start', { volume: name, to: 'dst', keep: '10m', rate: '8M' })
    await until(job.id, (j) => j.progress.current > 0)
    // After the job's start-sync, before extent 12 is copied: a whole-extent
    // O_DIRECT overwrite, no fsync and no close (a close syncs) — unlogged,
    // only in src's memtable.
    fd = openSync(d.file(name), constants.O_RDWR | constants.O_DIRECT)
    try {
      writeSync(fd, extentOf(0xee), 0, MiB, 12 * MiB)
      expect(await d.exited()).not.toBe(0)
    } finally {
      try {
        closeSync(fd)
      } catch {
        // the daemon that served this descriptor is gone
      }
    }
    await d.restart({})
    await until(job.id, (j) => j.status === 'ready')
    // The write survived the crash: the copy at dst kept it.
    expect(readExtent(name, 12).equals(extentOf(0xee))).toBe(true)
    await d.client.call('migrate.rollback', { id: job.id })
    const done = await until(job.id, (j) => j.status === 'concluded')
    expect(done.result).toBe('rolled-back')
    expect((await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => s.storage)).toEqual(['src'])
    // Read from the stores, not from the read cache of the daemon that had served 0xee.
    await d.restart({})
    expect(readExtent(name, 12).equals(extentOf(0xee)), 'extent 12 after the rollback').toBe(true)
    expect(readExtent(name, 11).equals(extentOf(0x10 + 11))).toBe(true)
  })
})
