/**
 * Model-based random test through the mount: thousands of random reads,
 * writes (unaligned, across chunk and extent boundaries, all-zero and partly
 * zero), resizes (ftruncate), discards (fallocate punch) and fsyncs on a
 * volume file agree with an in-memory model — content, size, and the
 * allocation the daemon reports (per extent: allocated iff it holds data).
 */
import { closeSync, constants, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { cleanupAll, removeDir, sh, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  for (const name of ['s1', 's2', 's3']) await d.client.call('storage.add', { name, capacity: '32M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

/** The daemon's view of allocation must match the content, once background releases settle. */
async function checkAllocation(name: string, model: VolumeModel): Promise<void> {
  let last = ''
  for (let attempt = 0; attempt < 40; attempt++) {
    const v = await d.client.call('volume.show', { name })
    const whole = new Set<number>()
    const frag = new Set<number>()
    for (const run of v.map) {
      for (let e = run.offset / EXTENT_SIZE; e < (run.offset + run.length) / EXTENT_SIZE; e++) (run.kind === 'fragments' ? frag : whole).add(e)
    }
    let expected = 0
    const problems: string[] = []
    const extents = Math.ceil(model.size / EXTENT_SIZE)
    for (let e = 0; e < extents; e++) {
      const n = model.nonZeroChunks(e)
      const allocated = whole.has(e) || frag.has(e)
      if ((n > 0) !== allocated) problems.push(`extent ${e}: ${n} non-zero chunks, allocated=${allocated}`)
      expected += whole.has(e) ? EXTENT_SIZE : frag.has(e) ? n * CHUNK_SIZE : 0
    }
    for (const e of [...whole, ...frag]) if (e >= extents) problems.push(`extent ${e} past the end is allocated`)
    if (v.allocated !== expected) problems.push(`allocated ${v.allocated}, model says ${expected}`)
    if (problems.length === 0) return
    last = problems.join('; ')
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`allocation does not match the model: ${last}`)
}

describe('a volume file through the mount against an in-memory model', () => {
  for (const seed of [11, 12]) {
    it(`agrees over 2500 random file operations (seed ${seed})`, async () => {
      const name = `model${seed}`
      const size0 = 5 * EXTENT_SIZE + 777
      await d.client.call('volume.create', { name, size: size0 })
      const model = new VolumeModel(size0)
      const r = rng(seed)
      const path = d.file(name)
      let fd = openSync(path, 'r+')
      const counts: Record<string, number> = {}
      try {
        for (let i = 0; i < 2500; i++) {
          const k = r.next()
          const size = model.size
          let op: string
          if (k < 0.4) {
            op = 'write'
            const [offset, len] = range(r, size, 300 * 1024)
            const data = payload(r, len)
            expect(writeSync(fd, data, 0, len, offset)).toBe(len)
            model.write(offset, data)
          } else if (k < 0.7) {
            op = 'read'
            const [offset, len] = range(r, size, 300 * 1024)
            const buf = Buffer.alloc(len)
            const n = readSync(fd, buf, 0, len, offset)
            const want = model.read(offset, len)
            expect(n).toBe(want.length)
            if (!buf.subarray(0, n).equals(want)) throw new Error(`op ${i}: read of ${len} at ${offset} differs from the model`)
          } else if (k < 0.78) {
            op = 'resize'
            const next = r.next() < 0.5 ? r.int(1, 9 * EXTENT_SIZE) : r.pick([EXTENT_SIZE, 3 * EXTENT_SIZE + 4096, 6 * EXTENT_SIZE - 1])
            ftruncateSync(fd, next)
            model.resize(next)
          } else if (k < 0.86) {
            op = 'discard'
            const [offset, len] = range(r, size, 2 * EXTENT_SIZE)
            sh('fallocate', ['--punch-hole', '--keep-size', '-o', String(offset), '-l', String(len), path])
            model.discard(offset, len)
          } else if (k < 0.93) {
            op = 'fsync'
            fsyncSync(fd)
          } else if (k < 0.96) {
            op = 'direct-read'
            // O_DIRECT bypasses the page cache, so this read is the daemon's.
            const dfd = openSync(path, constants.O_RDONLY | constants.O_DIRECT)
            try {
              const len = Math.min(128 * 1024, Math.floor(size / 512) * 512)
              if (len > 0) {
                const offset = Math.floor(r.int(0, size - len) / 512) * 512
                const buf = Buffer.alloc(len)
                const n = readSync(dfd, buf, 0, len, offset)
                if (!buf.subarray(0, n).equals(model.read(offset, len))) throw new Error(`op ${i}: O_DIRECT read of ${len} at ${offset} differs`)
              }
            } finally {
              closeSync(dfd)
            }
          } else {
            op = 'reopen'
            closeSync(fd)
            fd = openSync(path, 'r+')
            expect(fstatSync(fd).size).toBe(model.size)
          }
          counts[op] = (counts[op] ?? 0) + 1
          if (i % 250 === 249) await checkAllocation(name, model)
        }
        expect(fstatSync(fd).size).toBe(model.size)
      } finally {
        closeSync(fd)
      }
      // The whole file, read back through a fresh O_DIRECT descriptor.
      const dfd = openSync(path, constants.O_RDONLY | constants.O_DIRECT)
      try {
        const all = Buffer.alloc(Math.ceil(model.size / 4096) * 4096)
        const n = readSync(dfd, all, 0, all.length, 0)
        expect(n).toBe(model.size)
        expect(all.subarray(0, n).equals(model.data)).toBe(true)
      } finally {
        closeSync(dfd)
      }
      await checkAllocation(name, model)
      expect(counts.write).toBeGreaterThan(800)
      expect(counts.discard).toBeGreaterThan(100)
      expect(counts.resize).toBeGreaterThan(100)
    })
  }
})
