/**
 * Read-ahead must never serve data older than the last write: a sequential
 * reader racing a writer that rewrites the extents just ahead of it (and
 * discards some) always sees what the model says.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
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
      const ahead = (v.volume as unknown as { lower: { stats: { hits: number } } }).lower.stats
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
})
