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
import type { ChunkBatch } from '../../lib/storage/chunk-store.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { Pool } from '../../lib/storage/pool.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { openStack, type Stack } from '../helpers/stack.js'
import { RestartingStore } from '../helpers/restarting-store.js'
import { join } from 'node:path'

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
      await v.volume.drain().catch(() => undefined) // a loss the test's own cursors heard
      await v.thin.settle()
      v.thin.close()
    }
    for (const s of pool.list()) await s.close()
    await maps.close()
  })
  return { store, stacks: volumes, volumes: volumes.map((v) => v.volume) }
}

/** Restarts the store's machine at the next sync after `arm` returned true for a batch. */
function restartAtSyncAfter(store: RestartingStore, arm: (batch: ChunkBatch) => boolean): void {
  store.onApply = (batch) => {
    if (!arm(batch)) return
    store.onApply = null
    store.beforeSync = () => {
      store.beforeSync = null
      store.restartMachine()
    }
  }
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

  it('the writer hears it at its fsync even when another description\'s close, or a flush below the volume (a journal trim), met the loss first', async () => {
    const { store, stacks } = await threeVolumes()
    const { volume, thin } = stacks[0]!
    const writer = { seen: 0 }
    const reader = { seen: 0 }
    const trimmed = { seen: 0 }
    await volume.write(0, Buffer.alloc(CHUNK_SIZE, 0xaa))
    await volume.drain()
    store.restartMachine()
    // A reader's close (FUSE flush) comes first: it is told too (it shares the file), and it must not take the error from the writer.
    await expect(volume.flush(reader)).rejects.toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    await expect(volume.flush(writer)).rejects.toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    // Once to each.
    await volume.flush(writer)
    await volume.flush(reader)

    // A flush below the volume (the journal's dataDurableThrough) meets the next loss first.
    await volume.write(0, Buffer.alloc(CHUNK_SIZE, 0xab))
    await volume.drain(writer)
    store.restartMachine()
    await expect(thin.flush()).rejects.toMatchObject({ code: 'IO_ERROR' })
    await expect(volume.flush(writer)).rejects.toMatchObject({ code: 'IO_ERROR', details: { reason: 'writes-lost' } })
    await expect(volume.flush(trimmed)).rejects.toMatchObject({ code: 'IO_ERROR' }) // a description that never looked hears the latest once
    await volume.flush(trimmed)
    await volume.flush(writer)
  })

  it('an extent\'s promotion into a whole slot is not switched to a copy the restart may have taken: the fragments stay mapped', async () => {
    const { store, stacks } = await threeVolumes()
    const { volume, thin, map } = stacks[0]!
    const failures: { what: string; err: unknown }[] = []
    thin.onFailure = (f) => failures.push(f)
    // 64 single-chunk writes make the extent due for promotion; the machine restarts as the promotion's copy (one batch of 64 chunks) is synced.
    restartAtSyncAfter(store, (batch) => (batch.writes?.length ?? 0) >= 64)
    for (let c = 0; c < 64; c++) await volume.write(c * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, c + 1))
    await volume.flush().catch(() => undefined) // the host's fsync may meet the restart too
    await thin.settle()
    expect(failures.map((f) => [f.what, (f.err as { details?: { reason?: string } }).details?.reason])).toEqual([['promote', 'writes-lost']])
    expect(map.get(0)?.kind).toBe('fragments')
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
