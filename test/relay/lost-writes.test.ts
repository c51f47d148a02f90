/**
 * A storage server whose machine restarts while the relay lives loses the
 * writes it acknowledged that no sync had covered (RemoteChunkStore counts
 * such a restart: ChunkStore.writeLosses). Claims, as Linux's errseq_t gives
 * a failed write-back to every file that wrote: each volume that wrote there
 * since its own last flush hears of it at its next fsync — not only the
 * first volume to sync the store after the restart — and hears it once; a
 * volume whose writes were all synced before the restart, or that wrote only
 * after it, does not. A migration never switches an extent to a copy the
 * restart may have taken: the job stops on the error and, resumed, ends with
 * every byte in place.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { MapStore } from '../../lib/relay/map-store.js'
import { buildVolumeStack } from '../../lib/relay/stack.js'
import type { ChunkBatch, ChunkStore } from '../../lib/storage/chunk-store.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { Pool } from '../../lib/storage/pool.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { openStack, type Stack } from '../helpers/stack.js'
import { join } from 'node:path'

/**
 * A store on a "server machine" that can restart under a live relay: what no
 * sync covered is gone (MemoryChunkStore's power cut), the store answers
 * again at once, and writeLosses counts the restart — what RemoteChunkStore
 * does when a new session shows another boot id.
 */
class RestartingStore implements ChunkStore {
  writeLosses = 0
  /** Called at the start of every sync (a test restarts the machine there: the sync's reconnect meets the new boot). */
  beforeSync: (() => void) | null = null
  constructor(private inner: MemoryChunkStore) {}
  get identity() {
    return this.inner.identity
  }
  get capabilities() {
    return { ...this.inner.capabilities, syncRead: false, localPath: null }
  }
  restartMachine(): void {
    this.inner.powerCut()
    this.inner = this.inner.reopen()
    this.writeLosses++
  }
  readRun(first: number, count: number, into: Buffer, offset?: number) {
    return this.inner.readRun(first, count, into, offset)
  }
  readMany(pcas: number[]) {
    return this.inner.readMany(pcas)
  }
  apply(batch: ChunkBatch) {
    return this.inner.apply(batch)
  }
  stored(first: number, count: number, limit?: number) {
    return this.inner.stored(first, count, limit)
  }
  sync(opts?: { flushUnlogged?: boolean; token?: number }) {
    this.beforeSync?.()
    return this.inner.sync(opts)
  }
  close() {
    return this.inner.close()
  }
}

const dirs: string[] = []
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of closers.splice(0)) await c()
  dirs.splice(0).forEach(removeDir)
})

/** Three volumes over one storage system on a restartable server. */
async function threeVolumes() {
  const dir = tempDir('vvfs-lost-writes-')
  dirs.push(dir)
  const store = new RestartingStore(MemoryChunkStore.create({ sid: 1, name: 's1' }))
  const pool = new Pool()
  pool.add(StorageSystem.over(store, { capacity: 16 * EXTENT_SIZE }))
  const maps = await MapStore.open(join(dir, 'maps'))
  const volumes = [1, 2, 3].map((volNo) => buildVolumeStack({ volNo, size: 4 * EXTENT_SIZE, pool, maps, mover: new InlineChunkMover((sid) => pool.get(sid)), readAhead: false }))
  closers.push(async () => {
    for (const v of volumes) {
      await v.volume.drain()
      await v.thin.settle()
      v.thin.close()
    }
    for (const s of pool.list()) await s.close()
    await maps.close()
  })
  return { store, volumes: volumes.map((v) => v.volume) }
}

describe('writes a restart of a storage server\'s machine may have taken', () => {
  it('fail the next fsync of every volume that wrote them, once each; a volume synced before, or writing after, is not told', async () => {
    const { store, volumes } = await threeVolumes()
    const [a, b, c] = volumes as [(typeof volumes)[0], (typeof volumes)[0], (typeof volumes)[0]]
    await c.write(0, Buffer.alloc(CHUNK_SIZE, 0xcc))
    await c.flush()
    await a.write(0, Buffer.alloc(CHUNK_SIZE, 0xaa))
    await b.write(0, Buffer.alloc(CHUNK_SIZE, 0xbb))
    await a.drain()
    await b.drain()
    store.restartMachine()

    await expect(a.flush()).rejects.toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    // The bug: the first fsync after the restart took the error, and every other volume's fsync then succeeded.
    await expect(b.flush()).rejects.toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    await c.flush() // everything it wrote was synced before the restart

    // Reported once, as Linux does; what is written after the restart is synced as usual.
    await a.flush()
    await b.write(CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, 0xb2))
    await b.flush()
    await c.write(CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, 0xc2))
    await c.flush()
  })

  it('a migration never switches to a copy the restart may have taken: it stops on the error and, resumed, ends whole', async () => {
    const dir = tempDir('vvfs-lost-copy-')
    dirs.push(dir)
    const stores = new Map<number, RestartingStore>()
    const stack: Stack = await openStack(
      {
        dir,
        systems: 2,
        capacity: 64 * EXTENT_SIZE,
        size: 16 * EXTENT_SIZE,
        systemsFrom: async (o) => {
          const store = new RestartingStore(MemoryChunkStore.create({ sid: o.sid, name: o.name }))
          stores.set(o.sid, store)
          return StorageSystem.over(store, { capacity: o.capacity })
        },
      },
      true,
    )
    closers.push(() => stack.close())
    // Everything on system 1, synced there.
    stack.thin.placement = () => ({ only: 1 })
    const model = await fill(stack, 16 * EXTENT_SIZE)
    await stack.volume.flush()
    stack.thin.placement = () => ({})
    // The destination's machine restarts as the first sync of copies reaches it.
    const destination = stores.get(2)!
    destination.beforeSync = () => {
      destination.beforeSync = null
      destination.restartMachine()
    }
    let pausedWith: unknown = null
    const job = await runJob(stack, 2, 'direct', async (runner) => {
      // Without the check the job switches to the lost copies and completes without pausing.
      const until = Date.now() + 10_000
      while (runner.job.status !== 'paused' && runner.job.status !== 'concluded' && Date.now() < until) await new Promise((r) => setTimeout(r, 5))
      pausedWith = runner.job.error ?? null
      if (runner.job.status === 'paused') runner.resume()
    })
    expect(pausedWith).toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    expect(job).toMatchObject({ status: 'concluded', result: 'completed' })
    expect([...stack.map.allocationBySystem().keys()]).toEqual([2])
    await expectContent(stack, model)
  })
})
