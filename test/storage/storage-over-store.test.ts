/**
 * StorageSystem over any ChunkStore: the durability bookkeeping (which
 * writes a sync covers, when it flushes unlogged batches, copies reported by
 * the mover) shown on the in-memory store, whose crash and power cut drop
 * exactly what no sync covered; the fault gate wrapping and unwrapping a
 * system's store; and chunk copies between any two stores.
 */
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../../lib/layout.js'
import type { ChunkStore } from '../../lib/storage/chunk-store.js'
import { copyChunks } from '../../lib/storage/chunk-copy.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import { FaultInjector, type InjectedFault } from '../../lib/storage/fault-injector.js'
import { FaultyStore } from '../../lib/storage/faulty-store.js'
import { LevelChunkStore } from '../../lib/storage/level-store.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { BULK_CHUNKS, StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'
import { chunkData } from './chunk-store.suite.js'

const MiB = 1024 * 1024
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close()
})

/** A system over a memory store; closed after the test unless the test crashes its store (`crashes`). */
function memorySystem(sid = 1, crashes = false): { system: StorageSystem; store: MemoryChunkStore } {
  const store = MemoryChunkStore.create({ sid, name: `m${sid}` })
  const system = StorageSystem.over(store, { capacity: 16 * MiB })
  if (!crashes) closers.push(() => system.close())
  return { system, store }
}

async function levelSystem(sid: number): Promise<StorageSystem> {
  const dir = tempDir('vvfs-over-')
  const system = await StorageSystem.open({ sid, name: `l${sid}`, path: join(dir, `l${sid}`), capacity: 16 * MiB, create: true })
  closers.push(async () => {
    await system.close()
    removeDir(dir)
  })
  return system
}

/** `count` chunks from `first` as views of one buffer (the relay's batches). */
function chunks(first: number, count: number, version = 1) {
  const data = Buffer.concat(Array.from({ length: count }, (_, i) => chunkData(first + i, version)))
  return Array.from({ length: count }, (_, i) => ({ pca: first + i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) }))
}

async function read(s: { readRun(first: number, count: number, into: Buffer): Promise<void> }, first: number, count: number): Promise<Buffer> {
  const buf = Buffer.alloc(count * CHUNK_SIZE)
  await s.readRun(first, count, buf)
  return buf
}

const dataOf = (cs: { data: Buffer }[]) => Buffer.concat(cs.map((c) => c.data))

describe('a storage system over the in-memory store', () => {
  it('is named by its store, and says where the store is', async () => {
    const { system } = memorySystem(7)
    expect({ sid: system.sid, name: system.name, path: system.path, capacity: system.capacity }).toEqual({ sid: 7, name: 'm7', path: 'memory', capacity: 16 * MiB })
    expect(system.table.slotCount).toBe(16)
    const level = await levelSystem(3)
    expect(level.path).toMatch(/\/l3$/)
  })

  it('writes bulk data unlogged: a crash before a sync loses the batch whole, sync() flushes it so a crash keeps it', async () => {
    const { system, store } = memorySystem(1, true)
    await system.write(chunks(0, BULK_CHUNKS), { unlogged: true })
    expect(system.holdsUnsyncedUnlogged).toBe(true)
    store.crash()
    const lost = StorageSystem.over(store.reopen(), { capacity: 16 * MiB })
    expect(await lost.storedChunks(0, EXTENT_CHUNKS)).toEqual([])
    await lost.write(chunks(0, BULK_CHUNKS), { unlogged: true })
    await lost.sync()
    expect(lost.holdsUnsyncedUnlogged).toBe(false)
    ;(lost.chunkStore as MemoryChunkStore).crash()
    const kept = StorageSystem.over((lost.chunkStore as MemoryChunkStore).reopen(), { capacity: 16 * MiB })
    closers.push(() => kept.close())
    expect((await read(kept, 0, BULK_CHUNKS)).equals(dataOf(chunks(0, BULK_CHUNKS)))).toBe(true)
  })

  it('keeps small writes logged even when asked for unlogged: a crash keeps them, a power cut only once synced', async () => {
    const { system, store } = memorySystem(1, true)
    await system.write(chunks(0, BULK_CHUNKS - 1), { unlogged: true })
    expect(system.holdsUnsyncedUnlogged).toBe(false)
    expect(system.loggedPending).toBe(true)
    await system.syncLogged()
    expect(system.loggedPending).toBe(false)
    await system.write(chunks(100, 2))
    store.powerCut()
    const after = StorageSystem.over(store.reopen(), { capacity: 16 * MiB })
    closers.push(() => after.close())
    expect(await after.storedChunks(0, 200)).toEqual(chunks(0, BULK_CHUNKS - 1).map((c) => c.pca))
  })

  it('syncLogged leaves unlogged batches unflushed (a crash loses them) while it makes the logged ones durable', async () => {
    const { system, store } = memorySystem(1, true)
    await system.write(chunks(0, BULK_CHUNKS), { unlogged: true })
    await system.clearRange(EXTENT_CHUNKS, EXTENT_CHUNKS)
    await system.write(chunks(EXTENT_CHUNKS, 1))
    await system.syncLogged()
    expect(system.holdsUnsyncedUnlogged).toBe(true)
    store.powerCut()
    const after = StorageSystem.over(store.reopen(), { capacity: 16 * MiB })
    closers.push(() => after.close())
    expect(await after.storedChunks(0, 2 * EXTENT_CHUNKS)).toEqual([EXTENT_CHUNKS])
  })

  it('a copy the mover made is covered by the destination’s next sync (it reports the copy: wroteElsewhere)', async () => {
    const from = memorySystem(1)
    const to = memorySystem(2, true)
    await from.system.write(chunks(0, 8))
    const mover = new InlineChunkMover((sid) => (sid === 1 ? from.system : to.system))
    await mover.copy({ fromSid: 1, fromPcas: chunks(0, 8).map((c) => c.pca), toSid: 2, toPcas: chunks(300, 8).map((c) => c.pca), style: 'stream' })
    expect(to.system.loggedPending).toBe(true)
    await to.system.sync()
    to.store.powerCut()
    const after = await read(to.store.reopen(), 300, 8)
    expect(after.equals(dataOf(chunks(0, 8)))).toBe(true)
  })

  it('closes its store after a last sync: unlogged writes survive a close', async () => {
    const store = MemoryChunkStore.create({ sid: 1, name: 'm1' })
    const system = StorageSystem.over(store, { capacity: 16 * MiB })
    await system.write(chunks(0, BULK_CHUNKS), { unlogged: true })
    await system.close()
    expect(await codeOf(system.write(chunks(0, 1)))).toBe('SHUTTING_DOWN')
    expect(await codeOf(store.stored(0, 1))).toBe('SHUTTING_DOWN')
    expect((await read(store.reopen(), 0, BULK_CHUNKS)).equals(dataOf(chunks(0, BULK_CHUNKS)))).toBe(true)
  })
})

describe('an injected fault', () => {
  function armed(sid = 1) {
    const { system } = memorySystem(sid)
    const injected: InjectedFault[] = []
    return { system, injected, injector: new FaultInjector((f) => injected.push(f)) }
  }

  it('wraps the system’s store while a rule is armed, and unwraps it when the last rule is cleared', async () => {
    const { system, injector } = armed()
    const base = system.chunkStore
    const a = injector.add(system, { op: 'read', error: 'EIO' })
    const b = injector.add(system, { op: 'sync', error: 'EIO' })
    expect(system.chunkStore).toBeInstanceOf(FaultyStore)
    injector.clear(a.id)
    expect(system.chunkStore).toBeInstanceOf(FaultyStore)
    injector.clear(b.id)
    expect(system.chunkStore).toBe(base)
  })

  it('fails a one-chunk read too: the synchronous fast path does not pass the gate by', async () => {
    const { system, injector, injected } = armed()
    await system.write(chunks(5, 1))
    const one = Buffer.alloc(CHUNK_SIZE)
    const rule = injector.add(system, { op: 'read', error: 'EIO' })
    expect(await codeOf(system.readRun(5, 1, one))).toBe('IO_ERROR')
    expect(await codeOf(system.readRun(5, 2, Buffer.alloc(2 * CHUNK_SIZE)))).toBe('IO_ERROR')
    expect(await codeOf(system.readMany([5]))).toBe('IO_ERROR')
    expect(await codeOf(system.hasData(0, 10))).toBe('IO_ERROR')
    expect(injected).toHaveLength(4)
    injector.clear(rule.id)
    await system.readRun(5, 1, one)
    expect(one.equals(chunkData(5))).toBe(true)
  })

  it('fails writes, clears and syncs by their class, storing nothing of a failed write; a spent rule lets the next through', async () => {
    const { system, injector } = armed()
    injector.add(system, { op: 'write', error: 'ENOSPC', count: 2 })
    expect(await codeOf(system.write(chunks(0, 4)))).toBe('STORAGE_FULL')
    expect(await codeOf(system.clearSlot(0).then(() => system.clearRange(0, 4)))).toBe('STORAGE_FULL')
    await system.write(chunks(0, 4))
    expect(await system.storedChunks(0, 10)).toEqual([0, 1, 2, 3])
    injector.add(system, { op: 'sync', error: 'EIO' })
    expect(await codeOf(system.sync())).toBe('IO_ERROR')
    // Its writes stay pending: the next sync tries again.
    expect(system.loggedPending).toBe(true)
    injector.clear()
    await system.sync()
    expect(system.loggedPending).toBe(false)
  })

  it('fails a migration copy at the destination’s write gate, before anything is stored there', async () => {
    const { system: from } = memorySystem(1)
    const { system: to, injector } = armed(2)
    await from.write(chunks(0, 40))
    injector.add(to, { op: 'write', error: 'EIO' })
    const mover = new InlineChunkMover((sid) => (sid === from.sid ? from : to))
    const pcas = chunks(0, 40).map((c) => c.pca)
    expect(await codeOf(mover.copy({ fromSid: 1, fromPcas: pcas, toSid: to.sid, toPcas: pcas.map((p) => p + 1000), style: 'stream' }))).toBe('IO_ERROR')
    injector.clear()
    expect(await to.storedChunks(0, 2000)).toEqual([])
  })
})

describe('a chunk copy', () => {
  /** Both directions between a LevelDB and a memory store, and memory to memory. */
  async function pairs(): Promise<[string, ChunkStore, ChunkStore][]> {
    const level = (await levelSystem(9)).chunkStore
    const m1 = memorySystem(1).system.chunkStore
    const m2 = memorySystem(2).system.chunkStore
    return [
      ['memory → LevelDB', m1, level],
      ['LevelDB → memory', level, m2],
      ['memory → memory', m1, m2],
    ]
  }

  for (const style of ['stream', 'whole'] as const) {
    it(`(${style}) makes the destination an exact copy: runs and scattered chunks, zeros and missing chunks deleted there`, async () => {
      for (const [what, from, to] of await pairs()) {
        // 70 chunks (two and a bit stream batches) at 0.., one a chunk of zeros, two missing.
        const src = chunks(0, 70).map((c) => (c.pca === 3 ? { pca: 3, data: Buffer.alloc(CHUNK_SIZE) } : c)).filter((c) => c.pca !== 10 && c.pca !== 40)
        await from.apply({ writes: src })
        // Stale data at the destination, which the copy must overwrite or delete.
        await to.apply({ writes: chunks(1000, 70, 9) })
        const fromRun = Array.from({ length: 70 }, (_, i) => i)
        const bytes = await copyChunks(from, to, fromRun, fromRun.map((p) => p + 1000), style)
        expect(bytes, what).toBe(67 * CHUNK_SIZE)
        const want = Buffer.alloc(70 * CHUNK_SIZE)
        for (const c of src) c.data.copy(want, c.pca * CHUNK_SIZE)
        expect((await read(to, 1000, 70)).equals(want), what).toBe(true)
        expect(await to.stored(1000, 70), what).toEqual(fromRun.filter((p) => p !== 3 && p !== 10 && p !== 40).map((p) => p + 1000))
        // Scattered fragments (readMany) onto scattered places.
        const frags = [69, 2, 40, 17]
        await copyChunks(from, to, frags, [5000, 5003, 5001, 7000], style)
        expect(await to.stored(5000, 3000), what).toEqual([5000, 5003, 7000])
        expect((await read(to, 5003, 1)).equals(chunkData(2)), what).toBe(true)
        expect((await read(to, 7000, 1)).equals(chunkData(17)), what).toBe(true)
      }
    })
  }

  it('refuses source and destination lists of different lengths with INVALID_ARGUMENT', async () => {
    const [[, from, to]] = await pairs()
    expect(await codeOf(copyChunks(from!, to!, [1, 2], [1], 'stream'))).toBe('INVALID_ARGUMENT')
  })
})

/** A regression guard for the LevelDB store's fast write path: a copy's views with deletions between them reach LevelDB as one batch. */
describe('the LevelDB store', () => {
  it('stores a run with deletions between its chunks through one patched batchChunks call', async () => {
    const dir = tempDir('vvfs-level-run-')
    const store = await LevelChunkStore.open({ sid: 1, name: 'l1', path: join(dir, 'l1'), create: true })
    closers.push(async () => {
      await store.close()
      removeDir(dir)
    })
    const db = (store as unknown as { db: { batchChunks(...a: unknown[]): Promise<void>; batchDirect(...a: unknown[]): Promise<void> } }).db
    const calls: string[] = []
    for (const name of ['batchChunks', 'batchDirect'] as const) {
      const f = db[name].bind(db)
      db[name] = (...a: unknown[]) => {
        calls.push(name)
        return f(...a)
      }
    }
    await store.apply({ writes: chunks(0, 32).map((c, i) => (i % 4 === 0 ? { pca: c.pca, data: null } : c)) })
    await store.apply({ writes: [{ pca: 100, data: chunkData(100) }, { pca: 101, data: chunkData(101) }] })
    expect(calls).toEqual(['batchChunks', 'batchDirect'])
    expect(await store.stored(0, 200)).toHaveLength(24 + 2)
  })
})
