/**
 * StorageSystem: one LevelDB store with a declared capacity. It keeps the
 * chunks of the extent slots allocated in it, one 4 KiB value per chunk under
 * its chunk address (slot * EXTENT_CHUNKS + position), and the free-space
 * table of those slots.
 *
 * A chunk that was never written (or was written with zeros) has no key, so
 * the store is sparse: it costs disk only for data.
 *
 * Owns: its LevelDB directory. Never: knows volumes, chooses placement, or
 * decides what is allocated (the relay does, through the FreeSpaceTable).
 *
 * Concurrency: LevelDB orders writes; callers keep writers of one chunk
 * apart (the volume layer's locks). The store is opened with
 * `multithreading: true` so migration workers can open the same location.
 */
import { ClassicLevel } from 'classic-level'
import { mkdir } from 'node:fs/promises'
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../layout.js'
import { FreeSpaceTable } from './free-space.js'

const DATA = 0x64 // 'd'
const IDENTITY_KEY = Buffer.from('m/identity')
const SYNC_KEY = Buffer.from('m/sync')

/**
 * LevelDB options. 64 MiB files keep the table count low for multi-GiB stores;
 * 16 KiB blocks keep a random 4 KiB read from decoding much more than it
 * returns; compression is off (chunk data is mostly incompressible and snappy
 * only costs CPU then). Write buffers of 8, 32 and 128 MiB ingest the same
 * within noise (`node dist/bench/leveldb-options.js`); 32 MiB bounds memory
 * at 64 MiB per store.
 */
export const STORE_OPTIONS = {
  writeBufferSize: 32 * 1024 * 1024,
  maxFileSize: 64 * 1024 * 1024,
  blockSize: 16 * 1024,
  cacheSize: 16 * 1024 * 1024,
  compression: false,
  maxOpenFiles: 500,
}

export function dataKey(pca: number): Buffer {
  const key = Buffer.allocUnsafe(7)
  key[0] = DATA
  key.writeUIntBE(pca, 1, 6)
  return key
}

export function pcaOfKey(key: Buffer): number {
  return key.readUIntBE(1, 6)
}

export interface StorageIdentity {
  sid: number
  name: string
  format: number
  chunkSize: number
}

export interface ChunkWrite {
  pca: number
  /** A chunk of data, or null to drop the chunk (it reads as zeros). */
  data: Buffer | null
}

export class StorageSystem {
  readonly table: FreeSpaceTable
  /** Reserve systems (for staged transfers) and draining ones take no new allocations unless asked by name. */
  reserve = false
  draining = false
  private dirty = false
  private closed = false

  private constructor(
    readonly sid: number,
    readonly name: string,
    readonly path: string,
    readonly capacity: number,
    private readonly db: ClassicLevel<Buffer, Buffer>,
  ) {
    this.table = new FreeSpaceTable(capacity)
  }

  /** The store itself, for the chunk copier (lib/storage only). */
  get store(): ClassicLevel<Buffer, Buffer> {
    return this.db
  }

  /**
   * Opens (or, with `create`, creates) the store at `path`. A store made for
   * another storage system is refused, so two systems never share a directory.
   */
  static async open(opts: { sid: number; name: string; path: string; capacity: number; create: boolean }): Promise<StorageSystem> {
    if (opts.create) await mkdir(opts.path, { recursive: true })
    const db = new ClassicLevel<Buffer, Buffer>(opts.path, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: opts.create,
      multithreading: true,
      ...STORE_OPTIONS,
    } as never)
    try {
      await db.open()
    } catch (err) {
      throw new VvfsError('IO_ERROR', `cannot open storage system ${opts.name} at ${opts.path}: ${(err as Error).message}`, { cause: err })
    }
    const system = new StorageSystem(opts.sid, opts.name, opts.path, opts.capacity, db)
    const raw = await db.get(IDENTITY_KEY)
    if (raw === undefined) {
      if (!opts.create) {
        await db.close()
        throw new VvfsError('STATE_CORRUPT', `storage system ${opts.name}: ${opts.path} holds no vvfs storage system`)
      }
      // Nothing but our own identity may be in a new store.
      const stray = await db.keys({ limit: 1 }).all()
      if (stray.length > 0) {
        await db.close()
        throw new VvfsError('STORAGE_PATH_IN_USE', `${opts.path} already holds a LevelDB store that is not a new vvfs storage system`)
      }
      const identity: StorageIdentity = { sid: opts.sid, name: opts.name, format: 1, chunkSize: CHUNK_SIZE }
      await db.put(IDENTITY_KEY, Buffer.from(JSON.stringify(identity)), { sync: true })
    } else {
      const identity = JSON.parse(raw.toString()) as StorageIdentity
      if (identity.sid !== opts.sid || identity.chunkSize !== CHUNK_SIZE) {
        await db.close()
        const code = opts.create ? 'STORAGE_PATH_IN_USE' : 'STATE_CORRUPT'
        throw new VvfsError(code, `${opts.path} belongs to storage system ${identity.name} (id ${identity.sid}), not ${opts.name} (id ${opts.sid})`)
      }
    }
    return system
  }

  /**
   * Reads `count` consecutive chunks into `into` (zeros where none is stored).
   * One getMany is one trip to the thread pool; it beat a range iterator both
   * for 128 KiB (115 vs 129 µs at queue depth 1) and for a whole extent
   * (1474 vs 1411 MB/s): `node dist/bench/leveldb-options.js`.
   */
  async readRun(firstPca: number, count: number, into: Buffer, offset = 0): Promise<void> {
    if (count === 1) {
      // One chunk: a synchronous lookup (microseconds from the block or page
      // cache) saves the two thread hand-offs of an asynchronous one, which
      // at queue depth 1 are most of a random 4 KiB read's time.
      const v = this.db.getSync(dataKey(firstPca))
      if (v === undefined) into.fill(0, offset, offset + CHUNK_SIZE)
      else v.copy(into, offset)
      return
    }
    const keys = new Array<Buffer>(count)
    for (let i = 0; i < count; i++) keys[i] = dataKey(firstPca + i)
    // getMany into the caller's buffer (patches/: classic-level): LevelDB copies
    // each value straight into place, zeros for missing ones, on its thread.
    await this.db.getMany(keys, { into: into.subarray(offset, offset + count * CHUNK_SIZE), stride: CHUNK_SIZE } as never)
  }

  /** Reads scattered chunks; a missing one is returned as undefined. */
  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    return this.db.getMany(pcas.map(dataKey))
  }

  async write(chunks: ChunkWrite[], sync = false): Promise<void> {
    if (chunks.length === 0) return
    this.checkOpen()
    const ops = chunks.map((c) =>
      c.data === null ? { type: 'del' as const, key: dataKey(c.pca) } : { type: 'put' as const, key: dataKey(c.pca), value: c.data },
    )
    this.dirty = true
    try {
      await this.db.batch(ops, { sync })
    } catch (err) {
      throw new VvfsError('IO_ERROR', `storage system ${this.name}: write failed: ${(err as Error).message}`, { cause: err })
    }
  }

  /** Whether any chunk of [firstPca, firstPca + count) is stored. */
  async hasData(firstPca: number, count: number): Promise<boolean> {
    const keys = await this.db.keys({ gte: dataKey(firstPca), lt: dataKey(firstPca + count), limit: 1 }).all()
    return keys.length > 0
  }

  /** Addresses of the stored chunks in [firstPca, firstPca + count). */
  async storedChunks(firstPca: number, count: number): Promise<number[]> {
    const keys = await this.db.keys({ gte: dataKey(firstPca), lt: dataKey(firstPca + count) }).all()
    return keys.map(pcaOfKey)
  }

  /** Drops every chunk of [firstPca, firstPca + count). */
  async clearRange(firstPca: number, count: number): Promise<void> {
    this.checkOpen()
    this.dirty = true
    await this.db.clear({ gte: dataKey(firstPca), lt: dataKey(firstPca + count) })
  }

  async clearSlot(slot: number): Promise<void> {
    // Skip the clear's write when the slot is already empty (the usual case).
    if (await this.hasData(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)) await this.clearRange(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)
  }

  /** Makes every write so far durable (LevelDB syncs its log on a sync write). */
  async sync(): Promise<void> {
    if (!this.dirty || this.closed) return
    this.dirty = false
    await this.db.put(SYNC_KEY, Buffer.from(String(Date.now())), { sync: true })
  }

  get allocatable(): boolean {
    return !this.reserve && !this.draining
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.sync()
    this.closed = true
    await this.db.close()
  }

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `storage system ${this.name} is closed`)
  }
}
