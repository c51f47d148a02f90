/**
 * The ChunkLayer suite: what every layer under Volume promises, run against
 * each layer the stack builder makes (test/relay/layers.test.ts). A layer
 * is used as Volume uses it — every call holds its chunks in the volume's
 * RangeLock (shared to read, exclusive to write) — and checked against a
 * plain byte array: what was written reads back, zeros where nothing was
 * (or a discard or shrink dropped it), a write is accepted no later than
 * stored, and a refused write rejects both with the same coded error.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../../lib/layout.js'
import type { ChunkLayer, Write } from '../../lib/relay/chunk-layer.js'
import type { RangeLock } from '../../lib/relay/range-lock.js'
import { payload, rng } from '../helpers/model.js'

/** A layer built for one test, over a pool of `capacity` bytes, for a volume of `chunks` chunks. */
export interface LayerUnderTest {
  layer: ChunkLayer
  locks: RangeLock
  chunks: number
  /** Waits for the stack's background work (releases, promotions). */
  settle(): Promise<void>
  close(): Promise<void>
}

export interface LayerSetup {
  /** Volume size in extents. */
  extents: number
  /** Pool capacity in extents (per storage system). */
  capacity: number
}

export type LayerFactory = (setup: LayerSetup) => Promise<LayerUnderTest>

/** Chunks of a recognisable non-zero pattern. */
function pattern(mark: number, chunks: number): Buffer {
  const buf = Buffer.alloc(chunks * CHUNK_SIZE, mark)
  for (let c = 0; c < chunks; c++) buf.writeUInt32LE(c + 1, c * CHUNK_SIZE)
  return buf
}

/** Volume's use of a layer: each call under its chunks' range lock. */
class Caller {
  readonly model: Buffer

  constructor(private readonly t: LayerUnderTest) {
    this.model = Buffer.alloc(t.chunks * CHUNK_SIZE)
  }

  async read(first: number, count: number): Promise<Buffer> {
    const into = Buffer.alloc(count * CHUNK_SIZE, 0xee)
    await this.t.locks.with(first, first + count, 'shared', () => this.t.layer.read(first, count, into))
    return into
  }

  /** Writes and waits until stored; resolves to the order in which its two outcomes settled. */
  async write(first: number, data: Buffer): Promise<string[]> {
    const order: string[] = []
    await this.t.locks.with(first, first + data.length / CHUNK_SIZE, 'exclusive', async () => {
      const w: Write = this.t.layer.write(first, data)
      const accepted = w.accepted.then(() => void order.push('accepted'))
      await w.stored
      order.push('stored')
      await accepted
    })
    data.copy(this.model, first * CHUNK_SIZE)
    return order
  }

  async discard(first: number, count: number): Promise<void> {
    await this.t.locks.with(first, first + count, 'exclusive', () => this.t.layer.discard(first, count))
    this.model.fill(0, first * CHUNK_SIZE, (first + count) * CHUNK_SIZE)
  }

  async truncate(chunkCount: number): Promise<void> {
    await this.t.locks.with(chunkCount, Number.MAX_SAFE_INTEGER, 'exclusive', () => this.t.layer.truncate(chunkCount))
    this.model.fill(0, chunkCount * CHUNK_SIZE)
  }

  /** The whole volume, read sequentially in 128 KiB requests (as a host would: a read-ahead layer follows it). */
  async readAll(): Promise<Buffer> {
    const out = Buffer.alloc(this.t.chunks * CHUNK_SIZE)
    const step = 32
    for (let c = 0; c < this.t.chunks; c += step) (await this.read(c, Math.min(step, this.t.chunks - c))).copy(out, c * CHUNK_SIZE)
    return out
  }

  async expectModel(): Promise<void> {
    const all = await this.readAll()
    for (let c = 0; c < this.t.chunks; c++) {
      const got = all.subarray(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE)
      if (!got.equals(this.model.subarray(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE))) expect.fail(`chunk ${c} differs from what was written`)
    }
  }
}

export function layerSuite(name: string, make: LayerFactory): void {
  describe(`${name} (the ChunkLayer suite)`, () => {
    let t: LayerUnderTest | undefined
    afterEach(async () => {
      await t?.close()
      t = undefined
    })
    const open = async (setup: LayerSetup = { extents: 4, capacity: 8 }): Promise<Caller> => {
      t = await make(setup)
      return new Caller(t)
    }

    it('reads zeros where nothing was written', async () => {
      const io = await open()
      expect((await io.read(0, 4 * EXTENT_CHUNKS)).equals(Buffer.alloc(4 * EXTENT_SIZE))).toBe(true)
    })

    it('reads back what was written: one chunk, a whole extent, a span across extents', async () => {
      const io = await open()
      await io.write(3, pattern(1, 1))
      await io.write(EXTENT_CHUNKS, pattern(2, EXTENT_CHUNKS))
      await io.write(3 * EXTENT_CHUNKS - 5, pattern(3, 10))
      expect((await io.read(3, 1)).equals(pattern(1, 1))).toBe(true)
      expect((await io.read(3 * EXTENT_CHUNKS - 5, 10)).equals(pattern(3, 10))).toBe(true)
      await io.expectModel()
    })

    it('accepts a write no later than it stores it', async () => {
      const io = await open()
      expect(await io.write(0, pattern(4, EXTENT_CHUNKS))).toEqual(['accepted', 'stored'])
      expect(await io.write(EXTENT_CHUNKS + 7, pattern(5, 1))).toEqual(['accepted', 'stored'])
      expect(await io.write(0, Buffer.alloc(CHUNK_SIZE))).toEqual(['accepted', 'stored'])
    })

    it('refuses a write the pool cannot hold: accepted and stored reject with the same coded error, and nothing of it is written', async () => {
      const io = await open({ extents: 4, capacity: 2 })
      await io.write(0, pattern(6, 2 * EXTENT_CHUNKS))
      let w: Write | undefined
      await t!.locks.with(2 * EXTENT_CHUNKS, 4 * EXTENT_CHUNKS, 'exclusive', async () => {
        w = t!.layer.write(2 * EXTENT_CHUNKS, pattern(7, 2 * EXTENT_CHUNKS))
        await w.stored.catch(() => {})
      })
      const [accepted, stored] = await Promise.allSettled([w!.accepted, w!.stored])
      expect(accepted).toMatchObject({ status: 'rejected', reason: { code: 'POOL_FULL' } })
      expect(stored).toMatchObject({ status: 'rejected', reason: { code: 'POOL_FULL' } })
      await io.expectModel()
    })

    it('a write of zeros makes chunks read as zeros', async () => {
      const io = await open()
      await io.write(0, pattern(8, EXTENT_CHUNKS + 4))
      await io.write(2, Buffer.alloc(3 * CHUNK_SIZE))
      await io.write(0, Buffer.alloc(EXTENT_SIZE))
      await t!.settle()
      await io.expectModel()
    })

    it('discard makes the chunks read as zeros and leaves their neighbours', async () => {
      const io = await open()
      await io.write(0, pattern(9, 3 * EXTENT_CHUNKS))
      await io.discard(5, 10)
      await io.discard(EXTENT_CHUNKS, EXTENT_CHUNKS)
      await t!.settle()
      await io.expectModel()
    })

    it('truncate drops every chunk at or past the new end and keeps those before', async () => {
      const io = await open()
      await io.write(0, pattern(10, 4 * EXTENT_CHUNKS))
      await io.truncate(EXTENT_CHUNKS + 17)
      await t!.settle()
      await io.expectModel()
    })

    it('flush resolves once earlier writes are done, and they still read back', async () => {
      const io = await open()
      await io.write(11, pattern(11, 40))
      await t!.layer.flush()
      await io.expectModel()
    })

    it('concurrent writes to different chunks all land', async () => {
      const io = await open()
      await Promise.all(Array.from({ length: 24 }, (_, i) => io.write(i * 37, pattern(20 + i, 1 + (i % 5)))))
      await io.expectModel()
    })

    it('a reader that read ahead sees later writes and discards (random writes, discards and sequential reads against the model)', async () => {
      const io = await open()
      const r = rng(41)
      const chunks = 4 * EXTENT_CHUNKS
      for (let step = 0; step < 40; step++) {
        const first = r.int(0, chunks - 1)
        const count = Math.min(r.int(1, 80), chunks - first)
        if (r.next() < 0.75) await io.write(first, payload(r, count * CHUNK_SIZE))
        else await io.discard(first, count)
        if (step % 8 === 7) await io.expectModel()
      }
      await t!.settle()
      await io.expectModel()
    })
  })
}
