/**
 * StorageSystem durability: what an unlogged bulk write promises across a
 * kill -9, the ordering of concurrent syncs, which writes a sync covers, and
 * LevelDB's log sync at a memtable switch (patches/: classic-level).
 */
import { execFile } from 'node:child_process'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { blockData } from '../helpers/block-data.mjs'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))
const writer = fileURLToPath(new URL('../helpers/unlogged-writer.mjs', import.meta.url))
const tableWriter = fileURLToPath(new URL('../helpers/table-writer.mjs', import.meta.url))
const switchWriter = fileURLToPath(new URL('../helpers/log-switch-writer.mjs', import.meta.url))

async function fresh(): Promise<string> {
  const parent = tempDir('vvfs-store-')
  dirs.push(parent)
  const dir = join(parent, 's1')
  const s = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: true })
  await s.close()
  return dir
}

async function killedWriter(dir: string, mode: 'sync' | 'nosync'): Promise<Buffer> {
  await promisify(execFile)(process.execPath, [writer, dir, mode]).catch((err: { signal?: string }) => {
    if (err.signal !== 'SIGKILL') throw err
  })
  const s = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
  try {
    const buf = Buffer.alloc(32 * CHUNK_SIZE)
    await s.readRun(0, 32, buf)
    return buf
  } finally {
    await s.close()
  }
}

describe('a storage system', () => {
  it('keeps unlogged bulk writes across kill -9 once synced', async () => {
    const buf = await killedWriter(await fresh(), 'sync')
    for (let i = 0; i < 32; i++) expect(buf[i * CHUNK_SIZE], `chunk ${i}`).toBe(i + 1)
  })

  it('loses unlogged bulk writes that a kill -9 catches before a sync, whole (never half a batch)', async () => {
    const buf = await killedWriter(await fresh(), 'nosync')
    // The memtable is the only copy: all of the batch is gone, so the write is
    // lost like a disk's cache, not torn.
    expect(buf.equals(Buffer.alloc(32 * CHUNK_SIZE))).toBe(true)
  })

  // Tables go out with O_DIRECT in 1 MiB pieces and an unaligned tail, or
  // through the page cache where a file system refuses O_DIRECT writes
  // (patches/: classic-level PosixDirectTableFile). Each run becomes a table
  // of its own length, written by another process and read back here:
  // lengths under, around and over the 1 MiB O_DIRECT buffer.
  const runs = [1, 37, 300, 700].map((chunks, r) => ({ first: r * 1000, chunks }))
  for (const refused of [false, true]) {
    it(`reads back every chunk from its tables, whatever their lengths${refused ? ', when O_DIRECT writes are refused' : ''}`, async () => {
      const dir = await fresh()
      const env = { ...process.env, ...(refused ? { VVFS_LEVELDB_REFUSE_DIRECT: '1' } : {}) }
      await promisify(execFile)(process.execPath, [tableWriter, dir, JSON.stringify(runs)], { env, timeout: 60_000 })
      const tables = await Promise.all((await readdir(dir)).filter((f) => f.endsWith('.ldb')).map(async (f) => (await stat(join(dir, f))).size))
      expect(tables.some((size) => size % 4096 !== 0), `table sizes ${tables.join(', ')}`).toBe(true)
      expect(tables.some((size) => size > 2 * 1024 * 1024), `table sizes ${tables.join(', ')}`).toBe(true)
      const s = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
      try {
        for (const run of runs) {
          const got = Buffer.alloc(run.chunks * CHUNK_SIZE)
          await s.readRun(run.first, run.chunks, got)
          expect(got.equals(blockData(run.first, run.chunks * CHUNK_SIZE)), `chunks ${run.first}..`).toBe(true)
        }
      } finally {
        await s.close()
      }
    })
  }

  it('answers an fsync that arrives during another only after that one has ended', async () => {
    const dir = await fresh()
    const s = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
    try {
      const data = Buffer.alloc(32 * CHUNK_SIZE, 9)
      await s.write(Array.from({ length: 32 }, (_, i) => ({ pca: i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })), { unlogged: true })
      const order: string[] = []
      const first = s.sync().then(() => order.push('first'))
      const second = s.sync().then(() => order.push('second'))
      await Promise.all([first, second])
      expect(order).toEqual(['first', 'second'])
    } finally {
      await s.close()
    }
  })
})

describe('LevelDB at a memtable switch', () => {
  it('logged writes can miss the fsync across a memtable switch: the old log is synced before an fsync after the switch returns', async () => {
    const parent = tempDir('vvfs-logswitch-')
    dirs.push(parent)
    const dir = join(parent, 'db')
    const env = { ...process.env, VVFS_LEVELDB_TRACE_SYNC: '1' }
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
      execFile(process.execPath, [switchWriter, dir], { env, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err && err.signal !== 'SIGKILL') reject(new Error(`${err.message}\n${stderr}`))
        else resolve({ stdout, stderr })
      }),
    )
    const oldLog = stdout.trim()
    expect(oldLog).toMatch(/^\d+\.log$/)
    // What LevelDB synced before the fsync returned ("synced"), in order.
    const synced = stderr.split('\n').slice(0, stderr.split('\n').indexOf('synced'))
    expect(stderr.split('\n')).toContain('synced')
    expect(synced, stderr).toContain(`leveldb-sync ${join(dir, oldLog)}`)
  })
})

describe('which writes a sync covers', () => {
  it('dirty flags are cleared at the start of a sync: a write that enters LevelDB after a sync began is synced by its writer’s fsync', async () => {
    const dir = await fresh()
    const s = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
    try {
      // The thread-pool hand-off, made long: the write reaches the store only when let in.
      const store = s.chunkStore
      const apply = store.apply.bind(store)
      let letIn!: () => void
      const gate = new Promise<void>((resolve) => (letIn = resolve))
      store.apply = async (batch) => {
        await gate
        return apply(batch)
      }
      const events: string[] = []
      const sync = store.sync.bind(store)
      store.sync = async (opts) => {
        events.push('sync write')
        return sync(opts)
      }
      const data = Buffer.alloc(4 * CHUNK_SIZE, 5)
      const write = s.write(Array.from({ length: 4 }, (_, i) => ({ pca: i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })))
      // Another caller's fsync, begun while the write is queued.
      await s.sync()
      letIn()
      await write
      events.push('write done')
      // The writer's own fsync must sync the log its write went to.
      await s.sync()
      expect(events.slice(events.indexOf('write done'))).toContain('sync write')
    } finally {
      await s.close()
    }
  })
})
