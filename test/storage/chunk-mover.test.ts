/**
 * Where the daemon's chunk mover copies: in its worker thread only between
 * two stores with a local path (the worker opens them itself, by path and
 * identity), on the main thread through the ChunkStore interface for any
 * other pair — a memory store, or a system with a fault rule armed (whose
 * gate the worker would pass by). Runs the built mover (dist/, as the
 * daemon does: the worker is a compiled file); rebuild before running.
 */
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import type { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'
import { chunkData } from './chunk-store.suite.js'

type Built = typeof import('../../lib/storage/chunk-mover.js') &
  typeof import('../../lib/storage/storage-system.js') &
  typeof import('../../lib/storage/memory-store.js') &
  typeof import('../../lib/storage/fault-injector.js')

async function built(): Promise<Built> {
  const at = (file: string) => new URL(`../../dist/lib/storage/${file}`, import.meta.url).href
  const modules = await Promise.all(['chunk-mover.js', 'storage-system.js', 'memory-store.js', 'fault-injector.js'].map((f) => import(at(f))))
  return Object.assign({}, ...modules) as Built
}

const MiB = 1024 * 1024
const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  vi.restoreAllMocks()
  for (const c of cleanups.splice(0).reverse()) await c()
})

describe('the daemon’s chunk mover', () => {
  it('copies between two local stores in its worker, and on the main thread where a store is in memory or has a fault rule armed', async () => {
    const b = await built()
    const dir = tempDir('vvfs-mover-')
    const systems = new Map<number, StorageSystem>()
    for (const sid of [1, 2]) systems.set(sid, await b.StorageSystem.open({ sid, name: `l${sid}`, path: join(dir, `l${sid}`), capacity: 16 * MiB, create: true }))
    systems.set(3, b.StorageSystem.over(b.MemoryChunkStore.create({ sid: 3, name: 'm3' }), { capacity: 16 * MiB }))
    const mover = b.WorkerChunkMover.create((sid) => systems.get(sid)!)
    cleanups.push(async () => {
      await mover.close()
      for (const s of systems.values()) await s.close()
      removeDir(dir)
    })
    expect(mover).toBeInstanceOf(b.WorkerChunkMover)
    const inline = vi.spyOn(b.InlineChunkMover.prototype, 'copy')
    const data = Buffer.concat(Array.from({ length: 40 }, (_, i) => chunkData(i)))
    await systems.get(1)!.write(Array.from({ length: 40 }, (_, i) => ({ pca: i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })))
    const pcas = Array.from({ length: 40 }, (_, i) => i)
    const copy = (fromSid: number, toSid: number, to: number) => mover.copy({ fromSid, fromPcas: pcas, toSid, toPcas: pcas.map((p) => p + to), style: 'stream' })
    const back = async (sid: number, first: number) => {
      const buf = Buffer.alloc(40 * CHUNK_SIZE)
      await systems.get(sid)!.readRun(first, 40, buf)
      return buf.equals(data)
    }

    expect(await copy(1, 2, 256)).toBe(40 * CHUNK_SIZE)
    expect(inline).not.toHaveBeenCalled()
    expect(await back(2, 256)).toBe(true)
    // The worker's writes count for the destination's next sync.
    expect(systems.get(2)!.loggedPending).toBe(true)

    expect(await copy(1, 3, 0)).toBe(40 * CHUNK_SIZE)
    expect(inline).toHaveBeenCalledTimes(1)
    expect(await back(3, 0)).toBe(true)

    const injector = new b.FaultInjector(() => {})
    const rule = injector.add(systems.get(2)!, { op: 'write', error: 'EIO' })
    expect(await codeOf(copy(1, 2, 512))).toBe('IO_ERROR')
    expect(inline).toHaveBeenCalledTimes(2)
    expect(await systems.get(2)!.storedChunks(512, 40)).toEqual([])
    injector.clear(rule.id)
    expect(await copy(1, 2, 512)).toBe(40 * CHUNK_SIZE)
    expect(inline).toHaveBeenCalledTimes(2)
    expect(await back(2, 512)).toBe(true)
  })
})
