/**
 * The ChunkStore conformance suite: one set of claims every implementation
 * of lib/storage/chunk-store.ts must meet, gated by its capabilities (as
 * abstract-level's test suite is run by classic-level, memory-level...).
 *
 * Use, from a *.test.ts file:
 *
 *   chunkStoreSuite('my store', async ({ sid, name }) => {
 *     const store = await openMyStore(sid, name)          // a fresh, empty store
 *     return {
 *       store,
 *       reopen: async () => openMyStoreAgain(sid, name), // a new handle on the same data,
 *                                                        // called after the suite closed `store`
 *       crash: async () => ...,                          // kill -9 the open handle, reopen
 *       powerCut: async () => ...,                       // cut the power under it, reopen
 *       cleanup: async () => { ... },                    // closes what is open, removes what it made
 *     }
 *   }, { syncRead: true, unlogged: true, fencing: false, reopen: true })
 *
 * The factory is called once per test with a fresh sid/name and must give
 * an empty store; cleanup is always called, after failures too. The claims
 * say which gated tests apply: persistence when `reopen` (the factory must
 * then give `reopen`), `crash`/`powerCut` likewise, unlogged loss when
 * `unlogged`, readOneSync when `syncRead`, token refusals when `fencing`.
 * The first test checks the store's capabilities say what the claims say,
 * so a gate cannot silently drop tests.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { CHUNK_SIZE } from '../../lib/layout.js'
import type { ChunkStore, ChunkWrite } from '../../lib/storage/chunk-store.js'

export interface StoreUnderTest {
  store: ChunkStore
  /** A new handle on the same data; the suite has closed `store` (and any earlier reopened handle) before it calls this. */
  reopen?: () => Promise<ChunkStore>
  /** Kills the open handle as a kill -9 would, and returns a new handle on what survived. */
  crash?: () => Promise<ChunkStore>
  /** Cuts the power under the open handle, and returns a new handle on what survived. */
  powerCut?: () => Promise<ChunkStore>
  cleanup: () => Promise<void>
}

export type ChunkStoreFactory = (opts: { sid: number; name: string }) => Promise<StoreUnderTest>

/** What the store claims: its capabilities, and which of the optional hooks its factory gives. */
export interface SuiteClaims {
  syncRead: boolean
  unlogged: boolean
  fencing: boolean
  reopen: boolean
  crash?: boolean
  powerCut?: boolean
}

/** Chunk data that names its address and a version: no two chunks of a test alike. */
export function chunkData(pca: number, version = 1): Buffer {
  const buf = Buffer.alloc(CHUNK_SIZE)
  for (let at = 0; at < CHUNK_SIZE; at += 16) {
    buf.writeUInt32LE(pca % 0x1_0000_0000, at)
    buf.writeUInt32LE(Math.floor(pca / 0x1_0000_0000), at + 4)
    buf.writeUInt32LE(version, at + 8)
    buf.writeUInt32LE(at, at + 12)
  }
  return buf
}

/** Puts of `pcas`, each its own buffer. */
function puts(pcas: number[], version = 1): ChunkWrite[] {
  return pcas.map((pca) => ({ pca, data: chunkData(pca, version) }))
}

/** Puts of `count` chunks from `first` as views of one buffer, in order (the relay's usual batch). */
function runOf(first: number, count: number, version = 1): { writes: ChunkWrite[]; data: Buffer } {
  const data = Buffer.concat(Array.from({ length: count }, (_, i) => chunkData(first + i, version)))
  return { data, writes: Array.from({ length: count }, (_, i) => ({ pca: first + i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })) }
}

async function readOne(store: ChunkStore, pca: number): Promise<Buffer> {
  const buf = Buffer.alloc(CHUNK_SIZE, 0xee)
  await store.readRun(pca, 1, buf)
  return buf
}

/** The code of the VvfsError `p` rejects (or `fn` throws) with; fails the test for anything else. */
async function vvfsCode(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (err) {
    expect(err, String(err)).toBeInstanceOf(VvfsError)
    return (err as VvfsError).code
  }
  return 'no error'
}

const ZERO = Buffer.alloc(CHUNK_SIZE)
let nextSid = 1

export function chunkStoreSuite(name: string, factory: ChunkStoreFactory, claims: SuiteClaims): void {
  describe(`ChunkStore conformance: ${name}`, () => {
    let t: StoreUnderTest | undefined
    /** The handle the test uses now (reopen and crash replace it). */
    let store: ChunkStore

    async function open(): Promise<StoreUnderTest> {
      const sid = nextSid++
      t = await factory({ sid, name: `cs${sid}` })
      store = t.store
      return t
    }

    async function reopened(): Promise<ChunkStore> {
      await store.close()
      store = await t!.reopen!()
      return store
    }

    afterEach(async () => {
      const u = t
      t = undefined
      await u?.cleanup()
    })

    it('names the storage system it was opened for, with the chunk size, and has the capabilities and hooks it claims', async () => {
      const sid = nextSid
      const u = await open()
      expect(store.identity).toMatchObject({ sid, name: `cs${sid}`, chunkSize: CHUNK_SIZE })
      const { syncRead, unlogged, fencing, location } = store.capabilities
      expect({ syncRead, unlogged, fencing }).toEqual({ syncRead: claims.syncRead, unlogged: claims.unlogged, fencing: claims.fencing })
      expect(location).toMatch(/./)
      expect({ reopen: !!u.reopen, crash: !!u.crash, powerCut: !!u.powerCut }).toEqual({ reopen: claims.reopen, crash: !!claims.crash, powerCut: !!claims.powerCut })
    })

    it('reads zeros where nothing was ever written, and lists nothing', async () => {
      await open()
      const buf = Buffer.alloc(8 * CHUNK_SIZE, 0xaa)
      await store.readRun(1000, 8, buf)
      expect(buf.equals(Buffer.alloc(8 * CHUNK_SIZE))).toBe(true)
      expect(await store.readMany([0, 5, 2 ** 40])).toEqual([undefined, undefined, undefined])
      expect(await store.stored(0, 2 ** 47)).toEqual([])
      expect((await readOne(store, 7)).equals(ZERO)).toBe(true)
    })

    it('reads back what a batch stored: readRun, readMany and readOneSync agree, zeros where none is stored', async () => {
      await open()
      const { writes } = runOf(100, 5)
      await store.apply({ writes: writes.concat(puts([107, 2 ** 40 + 3])) })
      const run = Buffer.alloc(9 * CHUNK_SIZE)
      await store.readRun(100, 9, run)
      for (let i = 0; i < 9; i++) {
        const pca = 100 + i
        const want = i < 5 || i === 7 ? chunkData(pca) : ZERO
        expect(run.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(want), `chunk ${pca} of the run`).toBe(true)
      }
      const many = await store.readMany([104, 105, 107, 2 ** 40 + 3, 100])
      expect(many.map((b) => b && b.equals(chunkData(b.readUInt32LE(0) + b.readUInt32LE(4) * 0x1_0000_0000)))).toEqual([true, undefined, true, true, true])
      expect(many[3]!.equals(chunkData(2 ** 40 + 3))).toBe(true)
      if (claims.syncRead) {
        const one = Buffer.alloc(3 * CHUNK_SIZE, 0xcc)
        store.readOneSync!(102, one, CHUNK_SIZE)
        expect(one.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE).equals(chunkData(102))).toBe(true)
        expect(one.subarray(0, CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE, 0xcc)), 'bytes before the chunk untouched').toBe(true)
        expect(one.subarray(2 * CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE, 0xcc)), 'bytes after the chunk untouched').toBe(true)
        store.readOneSync!(106, one, 0)
        expect(one.subarray(0, CHUNK_SIZE).equals(ZERO)).toBe(true)
      } else {
        expect(store.readOneSync).toBeUndefined()
      }
    })

    it('reads a run into the buffer at the offset given, leaving the rest of the buffer alone', async () => {
      await open()
      await store.apply({ writes: puts([10, 11]) })
      const buf = Buffer.alloc(5 * CHUNK_SIZE, 0x77)
      await store.readRun(10, 3, buf, CHUNK_SIZE)
      expect(buf.subarray(0, CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE, 0x77))).toBe(true)
      expect(buf.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE).equals(chunkData(10))).toBe(true)
      expect(buf.subarray(2 * CHUNK_SIZE, 3 * CHUNK_SIZE).equals(chunkData(11))).toBe(true)
      expect(buf.subarray(3 * CHUNK_SIZE, 4 * CHUNK_SIZE).equals(ZERO)).toBe(true)
      expect(buf.subarray(4 * CHUNK_SIZE).equals(Buffer.alloc(CHUNK_SIZE, 0x77))).toBe(true)
    })

    it('stores a whole extent of views of one buffer, and a run with deletions between its chunks', async () => {
      await open()
      const { writes, data } = runOf(256, 256)
      await store.apply({ writes })
      const back = Buffer.alloc(256 * CHUNK_SIZE)
      await store.readRun(256, 256, back)
      expect(back.equals(data)).toBe(true)
      // The copier's shape: views of one buffer, every third chunk a deletion.
      const next = runOf(256, 256, 2)
      await store.apply({ writes: next.writes.map((w, i) => (i % 3 === 0 ? { pca: w.pca, data: null } : w)) })
      await store.readRun(256, 256, back)
      for (let i = 0; i < 256; i++) {
        const want = i % 3 === 0 ? ZERO : chunkData(256 + i, 2)
        expect(back.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(want), `chunk ${256 + i}`).toBe(true)
      }
      expect((await store.stored(256, 256)).length).toBe(256 - Math.ceil(256 / 3))
    })

    it('keeps its own copy: the caller may reuse its buffer once apply has returned, and a read buffer is the caller’s', async () => {
      await open()
      const data = chunkData(3)
      await store.apply({ writes: [{ pca: 3, data }] })
      data.fill(0x55)
      expect((await readOne(store, 3)).equals(chunkData(3))).toBe(true)
      const [got] = await store.readMany([3])
      got!.fill(0x66)
      expect((await readOne(store, 3)).equals(chunkData(3))).toBe(true)
    })

    it('applies a batch in order: a later write of the same chunk wins, a delete after a put leaves zeros', async () => {
      await open()
      await store.apply({
        writes: [
          { pca: 1, data: chunkData(1, 1) },
          { pca: 2, data: chunkData(2, 1) },
          { pca: 1, data: chunkData(1, 2) },
          { pca: 2, data: null },
          { pca: 3, data: null },
          { pca: 3, data: chunkData(3, 3) },
        ],
      })
      expect((await readOne(store, 1)).equals(chunkData(1, 2))).toBe(true)
      expect((await readOne(store, 2)).equals(ZERO)).toBe(true)
      expect((await readOne(store, 3)).equals(chunkData(3, 3))).toBe(true)
      expect(await store.stored(0, 10)).toEqual([1, 3])
    })

    it('applies clears before the batch’s writes, and only inside their ranges', async () => {
      await open()
      await store.apply({ writes: puts([9, 10, 11, 15, 19, 20]) })
      await store.apply({ clears: [{ first: 10, count: 10 }], writes: puts([12], 2) })
      expect(await store.stored(0, 100)).toEqual([9, 12, 20])
      expect((await readOne(store, 12)).equals(chunkData(12, 2))).toBe(true)
      expect((await readOne(store, 15)).equals(ZERO)).toBe(true)
      // Several ranges, an empty one, and a range with nothing stored.
      await store.apply({ clears: [{ first: 0, count: 10 }, { first: 30, count: 0 }, { first: 50, count: 5 }] })
      expect(await store.stored(0, 100)).toEqual([12, 20])
      // Clears alone of what is not stored: nothing changes, no error.
      await store.apply({ clears: [{ first: 1000, count: 256 }] })
      expect(await store.stored(0, 2000)).toEqual([12, 20])
      // A range larger than a slot (the LevelDB store lists it; up to a slot it deletes every key unread).
      await store.apply({ writes: puts([300, 700, 900]) })
      await store.apply({ clears: [{ first: 256, count: 600 }] })
      expect(await store.stored(0, 2000)).toEqual([12, 20, 900])
    })

    it('stores a chunk of zeros as a chunk (zero detection is the caller’s), and a deletion as none', async () => {
      await open()
      await store.apply({ writes: [{ pca: 4, data: Buffer.alloc(CHUNK_SIZE) }, ...puts([5])] })
      expect(await store.stored(0, 10)).toEqual([4, 5])
      expect((await readOne(store, 4)).equals(ZERO)).toBe(true)
      await store.apply({ writes: [{ pca: 4, data: null }, { pca: 5, data: null }] })
      expect(await store.stored(0, 10)).toEqual([])
      expect((await readOne(store, 5)).equals(ZERO)).toBe(true)
    })

    it('lists stored chunks ascending, within the range asked, at most the limit', async () => {
      await open()
      const pcas = [2 ** 40, 700, 3, 256, 255, 511, 512, 2 ** 40 - 1, 0]
      for (const pca of pcas) await store.apply({ writes: puts([pca]) })
      expect(await store.stored(0, 2 ** 47)).toEqual([...pcas].sort((a, b) => a - b))
      expect(await store.stored(256, 256)).toEqual([256, 511])
      expect(await store.stored(255, 258)).toEqual([255, 256, 511, 512])
      expect(await store.stored(0, 2 ** 47, 3)).toEqual([0, 3, 255])
      expect(await store.stored(256, 1000, 1)).toEqual([256])
      expect(await store.stored(2 ** 40 - 1, 1)).toEqual([2 ** 40 - 1])
      expect(await store.stored(701, 2 ** 40 - 702)).toEqual([])
      expect(await store.stored(5, 0)).toEqual([])
    })

    it('stores nothing of a batch it refuses: one bad chunk fails all of it with INVALID_ARGUMENT', async () => {
      await open()
      await store.apply({ writes: puts([1]) })
      const bad = [...puts([2, 3], 2), { pca: 4, data: Buffer.alloc(100) }]
      expect(await vvfsCode(store.apply({ clears: [{ first: 0, count: 2 }], writes: bad }))).toBe('INVALID_ARGUMENT')
      expect(await vvfsCode(store.apply({ writes: [...puts([2]), { pca: -1, data: chunkData(0) }] }))).toBe('INVALID_ARGUMENT')
      expect(await vvfsCode(store.apply({ writes: [...puts([2]), { pca: 1.5, data: chunkData(0) }] }))).toBe('INVALID_ARGUMENT')
      expect(await store.stored(0, 10)).toEqual([1])
      expect((await readOne(store, 1)).equals(chunkData(1))).toBe(true)
    })

    it('refuses reads that do not fit the buffer or name no chunk, with INVALID_ARGUMENT', async () => {
      await open()
      expect(await vvfsCode(store.readRun(0, 2, Buffer.alloc(CHUNK_SIZE)))).toBe('INVALID_ARGUMENT')
      expect(await vvfsCode(store.readRun(0, 1, Buffer.alloc(2 * CHUNK_SIZE), CHUNK_SIZE + 1))).toBe('INVALID_ARGUMENT')
      expect(await vvfsCode(store.readRun(-1, 1, Buffer.alloc(CHUNK_SIZE)))).toBe('INVALID_ARGUMENT')
      if (store.capabilities.syncRead) expect(await vvfsCode(() => store.readOneSync!(0, Buffer.alloc(10), 0))).toBe('INVALID_ARGUMENT')
    })

    it('serves concurrent batches and reads of different chunks', async () => {
      await open()
      await Promise.all(Array.from({ length: 20 }, (_, i) => store.apply({ writes: runOf(i * 8, 8, i + 1).writes, unlogged: i % 2 === 0 })))
      const reads = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const buf = Buffer.alloc(8 * CHUNK_SIZE)
          await store.readRun(i * 8, 8, buf)
          return buf.equals(runOf(i * 8, 8, i + 1).data)
        }),
      )
      expect(reads.every(Boolean)).toBe(true)
      expect((await store.stored(0, 1000)).length).toBe(160)
    })

    it('shows an unlogged batch to reads at once, and syncs with and without flushing', async () => {
      await open()
      await store.apply({ writes: runOf(0, 16).writes, unlogged: true })
      await store.apply({ writes: puts([20]), sync: true })
      const buf = Buffer.alloc(16 * CHUNK_SIZE)
      await store.readRun(0, 16, buf)
      expect(buf.equals(runOf(0, 16).data)).toBe(true)
      await store.sync()
      await store.sync({ flushUnlogged: true })
      await store.sync({ flushUnlogged: true })
      expect(await store.stored(0, 100)).toHaveLength(17)
    })

    it('refuses every call after close with SHUTTING_DOWN; a second close is harmless', async () => {
      await open()
      await store.apply({ writes: puts([1]) })
      await store.sync({ flushUnlogged: true })
      await store.close()
      expect(await vvfsCode(store.readRun(0, 1, Buffer.alloc(CHUNK_SIZE)))).toBe('SHUTTING_DOWN')
      expect(await vvfsCode(store.readMany([1]))).toBe('SHUTTING_DOWN')
      expect(await vvfsCode(store.apply({ writes: puts([2]) }))).toBe('SHUTTING_DOWN')
      expect(await vvfsCode(store.stored(0, 10))).toBe('SHUTTING_DOWN')
      expect(await vvfsCode(store.sync())).toBe('SHUTTING_DOWN')
      if (store.capabilities.syncRead) expect(await vvfsCode(() => store.readOneSync!(1, Buffer.alloc(CHUNK_SIZE), 0))).toBe('SHUTTING_DOWN')
      await store.close()
    })

    if (claims.reopen || claims.crash || claims.powerCut)
    describe('persistence', () => {
      if (claims.reopen)
      it('keeps synced data, deletions and clears across a close and reopen, under the same identity', async () => {
        await open()
        const identity = store.identity
        await store.apply({ writes: runOf(0, 32).writes, unlogged: store.capabilities.unlogged })
        await store.apply({ writes: puts([40, 41, 42, 300]) })
        await store.apply({ writes: [{ pca: 41, data: null }], clears: [{ first: 300, count: 1 }] })
        await store.sync({ flushUnlogged: true })
        await reopened()
        expect(store.identity).toEqual(identity)
        const buf = Buffer.alloc(32 * CHUNK_SIZE)
        await store.readRun(0, 32, buf)
        expect(buf.equals(runOf(0, 32).data)).toBe(true)
        expect(await store.stored(32, 1000)).toEqual([40, 42])
        // And again, after more writes on the reopened handle.
        await store.apply({ writes: puts([40], 2), sync: true })
        await reopened()
        expect((await readOne(store, 40)).equals(chunkData(40, 2))).toBe(true)
      })

      if (claims.reopen)
      it('keeps logged batches across a close and reopen (a close is not a power cut)', async () => {
        await open()
        await store.apply({ writes: puts([5, 6]) })
        await reopened()
        expect(await store.stored(0, 10)).toEqual([5, 6])
      })

      if (claims.crash && claims.unlogged)
      it('after a crash (kill -9): logged batches kept, unlogged ones only if a flushing sync covered them, never half a batch', async () => {
        const u = await open()
        await store.apply({ writes: runOf(0, 16, 1).writes, unlogged: true })
        await store.sync({ flushUnlogged: true })
        await store.apply({ writes: runOf(0, 16, 2).writes, unlogged: true })
        await store.apply({ writes: puts([100]) })
        await store.apply({ writes: runOf(200, 16).writes, unlogged: true })
        await store.sync()
        store = await u.crash!()
        const buf = Buffer.alloc(16 * CHUNK_SIZE)
        await store.readRun(0, 16, buf)
        // The second version was never flushed: the whole batch is gone, the flushed first one is back.
        expect(buf.equals(runOf(0, 16, 1).data)).toBe(true)
        expect(await store.stored(100, 200)).toEqual([100])
      })

      if (claims.powerCut)
      it('after a power cut: only what a sync covered is kept, in the order it was applied', async () => {
        const u = await open()
        await store.apply({ writes: puts([1, 2]) })
        await store.sync()
        await store.apply({ writes: [{ pca: 1, data: null }, ...puts([2], 2), ...puts([3])] })
        store = await u.powerCut!()
        expect(await store.stored(0, 10)).toEqual([1, 2])
        expect((await readOne(store, 2)).equals(chunkData(2, 1))).toBe(true)
        // A sync write covers the batches before it.
        await store.apply({ writes: puts([4]) })
        await store.apply({ writes: puts([5]), sync: true })
        store = await u.powerCut!()
        expect(await store.stored(0, 10)).toEqual([1, 2, 4, 5])
      })
    })

    if (claims.fencing)
    describe('fencing', () => {
      it('refuses a mutation carrying a token below the highest seen, with FENCED, and stores nothing of it', async () => {
        await open()
        await store.apply({ writes: puts([1]), token: 5 })
        await store.apply({ writes: puts([2]), token: 5 })
        expect(await vvfsCode(store.apply({ writes: puts([3]), clears: [{ first: 0, count: 3 }], token: 4 }))).toBe('FENCED')
        expect(await vvfsCode(store.sync({ token: 4 }))).toBe('FENCED')
        expect(await store.stored(0, 10)).toEqual([1, 2])
        await store.apply({ writes: puts([3]), token: 7 })
        expect(await vvfsCode(store.apply({ writes: puts([4]), token: 5 }))).toBe('FENCED')
        await store.sync({ token: 7 })
        expect(await store.stored(0, 10)).toEqual([1, 2, 3])
      })

      if (claims.fencing && claims.reopen)
      it('remembers the highest token across a reopen', async () => {
        await open()
        await store.apply({ writes: puts([1]), token: 9, sync: true })
        await reopened()
        expect(await vvfsCode(store.apply({ writes: puts([2]), token: 8 }))).toBe('FENCED')
        expect(await store.stored(0, 10)).toEqual([1])
      })
    })
  })
}
