/**
 * The read cache (lib/fuse/read-cache.ts): a sequential reader is answered
 * from read-ahead data in the FUSE threads, and never with data older than
 * the last write, discard or shrink that was answered before its read.
 *
 * Model-based: sequential O_DIRECT readers (which fill the cache) interleave
 * with writes aimed just ahead of them (into extents the cache holds),
 * discards, resizes, jumps and random reads, and every read agrees with an
 * in-memory model. The daemon's count of reads served from the cache shows
 * the cache was in play.
 */
import { closeSync, constants, ftruncateSync, openSync, readSync, writeSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { cleanupAll, removeDir, sh, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'

const READ = 128 * 1024

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  for (const name of ['s1', 's2', 's3']) await d.client.call('storage.add', { name, capacity: '64M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

async function served(): Promise<number> {
  return (await d.client.call('status', {})).readCache.served
}

/** An O_DIRECT read of [offset, offset + len) checked against the model. */
function directRead(dfd: number, model: VolumeModel, offset: number, len: number, what: string): void {
  const buf = Buffer.alloc(len)
  const n = readSync(dfd, buf, 0, len, offset)
  const want = model.read(offset, len)
  if (n !== want.length) throw new Error(`${what}: read ${n} bytes at ${offset}, the model has ${want.length}`)
  if (!buf.subarray(0, n).equals(want)) throw new Error(`${what}: ${len} bytes at ${offset} differ from the model`)
}

describe('the read cache', () => {
  it('serves a sequential reader and never returns data a later write, discard or shrink replaced', async () => {
    const size0 = 12 * EXTENT_SIZE + 777
    await d.client.call('volume.create', { name: 'rc', size: size0 })
    const path = d.file('rc')
    const model = new VolumeModel(size0)
    const r = rng(21)
    const fd = openSync(path, 'r+')
    const dfd = openSync(path, constants.O_RDONLY | constants.O_DIRECT)
    const before = await served()
    const counts: Record<string, number> = {}
    try {
      // Data everywhere, so that stale data cannot pass for new zeros.
      for (let off = 0; off < size0; off += EXTENT_SIZE) {
        const data = payload(r, Math.min(EXTENT_SIZE, size0 - off))
        writeSync(fd, data, 0, data.length, off)
        model.write(off, data)
      }
      let cursor = 0
      for (let i = 0; i < 3000; i++) {
        const size = model.size
        const k = r.next()
        let op: string
        if (k < 0.5) {
          op = 'sequential'
          if (cursor >= size) cursor = 0
          const len = Math.min(READ, Math.floor((size - cursor) / 512) * 512)
          if (len === 0) {
            cursor = 0
            continue
          }
          directRead(dfd, model, cursor, len, `op ${i}: sequential read`)
          cursor += len
        } else if (k < 0.68) {
          op = 'write-ahead'
          // Into the extents in front of the reader: the ones it has fetched.
          const offset = Math.min(cursor + r.int(0, 3 * EXTENT_SIZE), size - 1)
          const data = payload(r, Math.min(r.int(1, 64 * 1024), size - offset))
          writeSync(fd, data, 0, data.length, offset)
          model.write(offset, data)
        } else if (k < 0.76) {
          op = 'write'
          const [offset, len] = range(r, size, 300 * 1024)
          const data = payload(r, len)
          writeSync(fd, data, 0, len, offset)
          model.write(offset, data)
        } else if (k < 0.84) {
          op = 'discard-ahead'
          const offset = Math.min(cursor + r.int(0, 2 * EXTENT_SIZE), size - 1)
          const len = Math.min(r.int(1, EXTENT_SIZE), size - offset)
          sh('fallocate', ['--punch-hole', '--keep-size', '-o', String(offset), '-l', String(len), path])
          model.discard(offset, len)
        } else if (k < 0.88) {
          op = 'resize'
          const next = r.pick([cursor + EXTENT_SIZE + 4096, 8 * EXTENT_SIZE - 1, 12 * EXTENT_SIZE + 777, r.int(EXTENT_SIZE, 14 * EXTENT_SIZE)])
          ftruncateSync(fd, next)
          model.resize(next)
        } else if (k < 0.93) {
          op = 'jump'
          cursor = Math.floor(r.int(0, size) / READ) * READ
        } else {
          op = 'random-read'
          const [offset, len] = range(r, size, 600 * 1024)
          const from = Math.floor(offset / 512) * 512
          directRead(dfd, model, from, Math.max(512, Math.floor(len / 512) * 512), `op ${i}: random read`)
        }
        counts[op] = (counts[op] ?? 0) + 1
      }
      // The whole volume at the end, read sequentially.
      for (let off = 0; off < model.size; off += READ) directRead(dfd, model, off, READ, 'final pass')
    } finally {
      closeSync(dfd)
      closeSync(fd)
    }
    expect(counts['write-ahead']).toBeGreaterThan(300)
    expect(counts['discard-ahead']).toBeGreaterThan(100)
    expect(counts.resize).toBeGreaterThan(50)
    // The cache was in play: many of the sequential reads were its.
    expect((await served()) - before).toBeGreaterThan(300)
  })

  it('answers each file with its own volume', async () => {
    const size = 8 * EXTENT_SIZE
    const models = ['rc-a', 'rc-b'].map((name) => ({ name, model: new VolumeModel(size) }))
    const r = rng(22)
    for (const { name, model } of models) {
      await d.client.call('volume.create', { name, size })
      const fd = openSync(d.file(name), 'r+')
      const data = payload(r, size)
      writeSync(fd, data, 0, size, 0)
      model.write(0, data)
      closeSync(fd)
    }
    const before = await served()
    const fds = models.map(({ name }) => openSync(d.file(name), constants.O_RDONLY | constants.O_DIRECT))
    try {
      for (let pass = 0; pass < 2; pass++) {
        for (let off = 0; off < size; off += READ) {
          models.forEach(({ name, model }, i) => directRead(fds[i]!, model, off, READ, `${name} pass ${pass}`))
        }
      }
    } finally {
      fds.forEach((fd) => closeSync(fd))
    }
    expect((await served()) - before).toBeGreaterThan(100)
  })
})
