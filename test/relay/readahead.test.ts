/**
 * Read-ahead must never serve data older than the last write: a sequential
 * reader racing a writer that rewrites the extents just ahead of it (and
 * discards some) always sees what the model says — also when a mirror (the
 * FUSE read cache) serves the extents it publishes.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../../lib/layout.js'
import type { ChunkLayer } from '../../lib/relay/chunk-layer.js'
import { RangeLock } from '../../lib/relay/range-lock.js'
import { ReadAhead, type ExtentMirror } from '../../lib/relay/readahead.js'
import { Volume } from '../../lib/relay/volume.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openManager, withSystems } from '../helpers/manager.js'
import { payload, rng, VolumeModel } from '../helpers/model.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

describe('read-ahead', () => {
  it('serves a sequential reader from extents fetched ahead, never older than the last write', async () => {
    const dir = tempDir('vvfs-ra-')
    dirs.push(dir)
    const m = await openManager(dir)
    try {
      await withSystems(m, [['s1', '64M'], ['s2', '64M']])
      const size = 24 * EXTENT_SIZE
      await m.createVolume({ name: 'v', size })
      const v = m.volumeNamed('v')
      const model = new VolumeModel(size)
      const r = rng(21)
      const init = payload(r, size)
      await v.write(0, init)
      model.write(0, init)
      // Host steps take turns (a read, or a write, never both at once), so the
      // model is exact; the read-ahead's own fetches still race the writes.
      let turn: Promise<void> = Promise.resolve()
      const step = (fn: () => Promise<void>) => (turn = turn.then(fn))
      let readerExtent = 0
      for (let pass = 0; pass < 3; pass++) {
        const reader = (async () => {
          const buf = Buffer.alloc(128 * 1024)
          for (let off = 0; off < size; off += buf.length) {
            readerExtent = Math.floor(off / EXTENT_SIZE)
            await step(async () => {
              const n = await v.read(off, buf.length, buf)
              if (!buf.subarray(0, n).equals(model.read(off, buf.length))) throw new Error(`pass ${pass}: read at ${off} is stale`)
            })
            await new Promise((res) => setImmediate(res))
          }
        })()
        const writer = (async () => {
          for (let i = 0; i < 80; i++) {
            // Just ahead of the reader: where the read-ahead has fetched.
            const e = Math.min(23, readerExtent + r.int(1, 4))
            const off = e * EXTENT_SIZE + r.int(0, EXTENT_SIZE - 8192)
            const discard = r.next() < 0.2
            const data = payload(r, 8192)
            await step(async () => {
              if (discard) {
                await v.discard(off, 8192)
                model.discard(off, 8192)
              } else {
                await v.write(off, data)
                model.write(off, data)
              }
            })
            await new Promise((res) => setImmediate(res))
          }
        })()
        await Promise.all([reader, writer])
      }
      // Volume → JournalLayer (issue 13, passing through) → ReadAhead.
      const ahead = (v.journal as unknown as { lower: { stats: { hits: number } } }).lower.stats
      expect(ahead.hits).toBeGreaterThan(100)
    } finally {
      await m.close()
    }
  })

  it('does not deadlock when a write queues on the extent a sequential reader is in', async () => {
    const dir = tempDir('vvfs-ra-')
    dirs.push(dir)
    const m = await openManager(dir)
    try {
      await withSystems(m, [['s1', '64M']])
      const size = 8 * EXTENT_SIZE
      await m.createVolume({ name: 'v', size })
      const v = m.volumeNamed('v')
      const model = new VolumeModel(size)
      const r = rng(5)
      let stop = false
      // Readers and a writer at once, with no turn-taking: reads hold their
      // chunks shared while the writer queues exclusive requests on them.
      const readers = [0, 1].map(async (k) => {
        const buf = Buffer.alloc(64 * 1024)
        let reads = 0
        while (!stop) {
          for (let off = k * 4096; off + buf.length <= size && !stop; off += buf.length) {
            await v.read(off, buf.length, buf)
            reads++
          }
        }
        return reads
      })
      for (let i = 0; i < 400; i++) {
        const off = r.int(0, size - 20000)
        const data = payload(r, r.int(1, 20000))
        await v.write(off, data)
        model.write(off, data)
      }
      stop = true
      const reads = await Promise.all(readers)
      expect(reads[0]! + reads[1]!).toBeGreaterThan(100)
      const all = Buffer.alloc(size)
      await v.read(0, size, all)
      expect(all.equals(model.data)).toBe(true)
    } finally {
      await m.close()
    }
  }, 30_000)

  it('reads zeros where a volume grew past a partial last extent it had read ahead', async () => {
    const dir = tempDir('vvfs-ra-')
    dirs.push(dir)
    const m = await openManager(dir)
    try {
      await withSystems(m, [['s1', '64M']])
      const size = 2 * EXTENT_SIZE + 12 * 4096
      await m.createVolume({ name: 'v', size })
      const v = m.volumeNamed('v')
      await v.write(0, Buffer.alloc(size, 0x5a))
      const buf = Buffer.alloc(4096)
      for (let off = 0; off < size; off += 4096) await v.read(off, 4096, buf)
      await v.resize(3 * EXTENT_SIZE)
      const tail = Buffer.alloc(3 * EXTENT_SIZE - size)
      await v.read(size, tail.length, tail)
      expect(tail.equals(Buffer.alloc(tail.length))).toBe(true)
    } finally {
      await m.close()
    }
  })

  it('publishes to a mirror only what is current: withdrawn before any change goes below, never the last extent', async () => {
    const extents = 10
    const size = extents * EXTENT_SIZE - 1000
    // The storage below: a plain buffer whose every change checks the mirror first.
    const stored = Buffer.alloc(extents * EXTENT_SIZE)
    const mirrored = new Map<number, Buffer>()
    const problems: string[] = []
    const changing = (first: number, count: number, what: string) => {
      for (let e = Math.floor(first / EXTENT_CHUNKS); e <= Math.floor((first + count - 1) / EXTENT_CHUNKS); e++) {
        if (mirrored.has(e)) problems.push(`${what} of extent ${e} went below while the mirror still served it`)
      }
    }
    const lower: ChunkLayer = {
      read: async (first, count, into) => {
        await new Promise((res) => setImmediate(res))
        stored.copy(into, 0, first * CHUNK_SIZE, (first + count) * CHUNK_SIZE)
      },
      write: (first, data) => {
        changing(first, data.length / CHUNK_SIZE, 'a write')
        const stores = async () => {
          await new Promise((res) => setImmediate(res))
          data.copy(stored, first * CHUNK_SIZE)
        }
        return { accepted: Promise.resolve(), stored: stores() }
      },
      discard: async (first, count) => {
        changing(first, count, 'a discard')
        stored.fill(0, first * CHUNK_SIZE, (first + count) * CHUNK_SIZE)
      },
      truncate: async (chunkCount) => {
        changing(chunkCount, stored.length / CHUNK_SIZE - chunkCount, 'a shrink')
        stored.fill(0, chunkCount * CHUNK_SIZE)
      },
      flush: async () => {},
    }
    const mirror: ExtentMirror = {
      publish: (e, data) => {
        if (!data.subarray(0, EXTENT_SIZE).equals(stored.subarray(e * EXTENT_SIZE, (e + 1) * EXTENT_SIZE))) problems.push(`extent ${e} published with stale data`)
        if ((e + 1) * EXTENT_SIZE > volume.size) problems.push(`extent ${e} published though it reaches the end of the volume`)
        mirrored.set(e, data)
        return true
      },
      withdraw: (e) => {
        mirrored.delete(e)
      },
    }
    const ahead: ReadAhead = new ReadAhead(lower, new RangeLock(), () => Math.ceil(volume.size / CHUNK_SIZE), mirror)
    const volume: Volume = new Volume(ahead, size, undefined, 0)
    const model = new VolumeModel(size)
    const r = rng(31)
    const init = payload(r, size)
    await volume.write(0, init)
    model.write(0, init)
    let served = 0
    let cursor = 0
    for (let i = 0; i < 3000; i++) {
      const k = r.next()
      if (k < 0.6) {
        // The next 128 KiB of a sequential reader: from the mirror when it
        // holds all of it (then only reported), else through the volume.
        if (cursor >= volume.size) cursor = 0
        const len = Math.min(128 * 1024, volume.size - cursor)
        const e0 = Math.floor(cursor / EXTENT_SIZE)
        const e1 = Math.floor((cursor + len - 1) / EXTENT_SIZE)
        const buf = Buffer.alloc(len)
        if (mirrored.has(e0) && mirrored.has(e1)) {
          for (let at = 0; at < len; ) {
            const e = Math.floor((cursor + at) / EXTENT_SIZE)
            const n = Math.min(len - at, (e + 1) * EXTENT_SIZE - (cursor + at))
            mirrored.get(e)!.copy(buf, at, cursor + at - e * EXTENT_SIZE, cursor + at - e * EXTENT_SIZE + n)
            at += n
          }
          volume.readServed(cursor, len)
          served++
        } else {
          await volume.read(cursor, len, buf)
        }
        if (!buf.equals(model.read(cursor, len))) throw new Error(`op ${i}: read of ${len} at ${cursor} is stale`)
        cursor += len
      } else if (k < 0.8) {
        const off = Math.min(cursor + r.int(0, 3 * EXTENT_SIZE), volume.size - 1)
        const data = payload(r, Math.min(r.int(1, 40000), volume.size - off))
        await volume.write(off, data)
        model.write(off, data)
      } else if (k < 0.9) {
        const off = Math.min(cursor + r.int(0, 2 * EXTENT_SIZE), volume.size - 1)
        const len = Math.min(r.int(1, EXTENT_SIZE), volume.size - off)
        await volume.discard(off, len)
        model.discard(off, len)
      } else if (k < 0.95) {
        const next = r.int(2 * EXTENT_SIZE, extents * EXTENT_SIZE - 1000)
        await volume.resize(next)
        model.resize(next)
      } else {
        cursor = r.int(0, volume.size - 1)
      }
      if (problems.length > 0) throw new Error(`op ${i}: ${problems.join('; ')}`)
    }
    // The window kept moving on reads the mirror served.
    expect(served).toBeGreaterThan(300)
    expect(ahead.stats.mirrored).toBe(served)
  })
})
