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
 * `multithreading: true` so migration workers can open the same location;
 * their writes count for sync() once the caller reports them
 * (wroteElsewhere).
 *
 * Durability: sync() covers every write that had completed when it began
 * and returns only after a sync that began after the caller's writes
 * completed (WriteGenerations); a logged write is durable once a sync write
 * after it has synced the log (patches/: classic-level also syncs the old
 * log at a memtable switch), an unlogged one once its memtable is a table.
 * Logged writes are also counted on their own (`logged`): a map record
 * depends on them (a slot's clear, a fragment's data, a deletion before the
 * space was freed), and the MapStore syncs them (syncLogged) before it writes
 * such a record — never the unlogged bulk data, whose loss leaves the slot's
 * own earlier data or its clear (DataLog, lib/relay/map-store.ts).
 *
 * Injected faults (lib/storage/fault-injector.ts, `vvfs fault`): each
 * operation first passes `faults`, the system's gate, when it has one.
 */
import { ClassicLevel } from 'classic-level'
import { mkdir } from 'node:fs/promises'
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../layout.js'
import type { FaultGate } from './fault-injector.js'
import { FreeSpaceTable } from './free-space.js'
import { WriteGenerations } from './write-generations.js'

const DATA = 0x64 // 'd'
const IDENTITY_KEY = Buffer.from('m/identity')
const SYNC_KEY = Buffer.from('m/sync')
/** How long unlogged writes may wait for a sync before syncIfStale makes them durable. */
export const UNLOGGED_MAX_AGE_MS = 5000
/** Writes of this many chunks or more skip LevelDB's log (see write()). */
export const BULK_CHUNKS = 16

/**
 * LevelDB options. 64 MiB files keep the table count low for multi-GiB stores;
 * 16 KiB blocks keep a random 4 KiB read from decoding much more than it
 * returns; compression is off (chunk data is mostly incompressible and snappy
 * only costs CPU then). A 64 MiB write buffer: 10 s of sequential writes
 * through vvfs ran at 686 MB/s against 560 with 32 MiB and 670 with 128 MiB
 * (medians of three), for up to 128 MiB of memtables per store.
 */
export const STORE_OPTIONS = {
  writeBufferSize: 64 * 1024 * 1024,
  maxFileSize: 64 * 1024 * 1024,
  blockSize: 16 * 1024,
  cacheSize: 16 * 1024 * 1024,
  compression: false,
  maxOpenFiles: 500,
}

const KEY_SIZE = 7

/** The methods patches/: classic-level adds. */
interface PatchedLevel {
  flushMemTable(): Promise<void>
  batchChunks(keys: Buffer, values: Buffer, present: Buffer, options: object): Promise<void>
  batchDirect(ops: object[], options: object): Promise<void>
  getChunks(keys: Buffer, keySize: number, into: Buffer, stride: number): Promise<void>
}

/**
 * One batch that writes chunk i of `values` at `pcas[i]` where `present[i]`
 * is 1 and deletes the chunk at `pcas[i]` where it is 0 (patches/:
 * classic-level batchChunks: three buffers instead of an object per chunk).
 */
export function writeChunkRun(db: ClassicLevel<Buffer, Buffer>, pcas: number[], values: Buffer, present: Buffer, options: { sync?: boolean; unlogged?: boolean } = {}): Promise<void> {
  const keys = Buffer.allocUnsafe(pcas.length * KEY_SIZE)
  for (let i = 0; i < pcas.length; i++) putDataKey(keys, i * KEY_SIZE, pcas[i]!)
  return (db as unknown as PatchedLevel).batchChunks(keys, values, present, options)
}

/** The chunks' data as one buffer when each is the next CHUNK_SIZE of the same memory, else null. */
function contiguous(chunks: ChunkWrite[]): Buffer | null {
  const first = chunks[0]!.data
  if (first === null) return null
  for (let i = 1; i < chunks.length; i++) {
    const d = chunks[i]!.data
    if (d === null || d.buffer !== first.buffer || d.byteOffset !== first.byteOffset + i * CHUNK_SIZE || d.length !== CHUNK_SIZE) return null
  }
  return first.length === CHUNK_SIZE ? Buffer.from(first.buffer, first.byteOffset, chunks.length * CHUNK_SIZE) : null
}

/** Writes the key of chunk `pca` at `at` in `into`: 'd' and the 6-byte address. */
function putDataKey(into: Buffer, at: number, pca: number): void {
  into[at] = DATA
  into.writeUIntBE(pca, at + 1, 6)
}

export function dataKey(pca: number): Buffer {
  const key = Buffer.allocUnsafe(KEY_SIZE)
  putDataKey(key, 0, pca)
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

/**
 * What a map record can depend on: a store whose logged writes (a slot's
 * clear, a fragment's data, the deletions before space was freed) must be
 * durable before the record may be (MapStore). A StorageSystem.
 */
export interface DataLog {
  /** Whether a logged write has completed that no sync has made durable yet. */
  readonly loggedPending: boolean
  /** Makes every logged write completed before the call durable. */
  syncLogged(): Promise<void>
}

export interface ChunkWrite {
  pca: number
  /** A chunk of data, or null to drop the chunk (it reads as zeros). */
  data: Buffer | null
}

export class StorageSystem implements DataLog {
  readonly table: FreeSpaceTable
  /** Reserve systems (for staged transfers) and draining ones take no new allocations unless asked by name. */
  reserve = false
  draining = false
  /** Injected faults (`--allow-faults`); null: none, and no check. */
  faults: FaultGate | null = null
  private readonly writes = new WriteGenerations()
  /** The logged writes only: what syncLogged covers (a sync() covers them too). */
  private readonly logged = new WriteGenerations()
  /** The generation of the newest unlogged write (until a sync covers it, it lives only in a memtable). */
  private lastUnlogged = 0
  /** When the oldest unlogged write no sync has covered completed (0: none). */
  private unloggedAt = 0
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
    if (this.faults) await this.faults.check('read')
    if (count === 1) {
      // One chunk: a synchronous lookup (microseconds from the block or page
      // cache) saves the two thread hand-offs of an asynchronous one, which
      // at queue depth 1 are most of a random 4 KiB read's time.
      const v = this.db.getSync(dataKey(firstPca))
      if (v === undefined) into.fill(0, offset, offset + CHUNK_SIZE)
      else v.copy(into, offset)
      return
    }
    const keys = Buffer.allocUnsafe(count * KEY_SIZE)
    for (let i = 0; i < count; i++) putDataKey(keys, i * KEY_SIZE, firstPca + i)
    // Into the caller's buffer (patches/: classic-level getChunks): LevelDB
    // copies each value straight into place, zeros for missing ones, on its
    // thread, and the JS thread neither walks an array of keys nor waits for
    // the DB mutex to take a snapshot (the volume's range locks keep writers
    // of these chunks away instead).
    await (this.db as unknown as PatchedLevel).getChunks(keys, KEY_SIZE, into.subarray(offset, offset + count * CHUNK_SIZE), CHUNK_SIZE)
  }

  /** Reads scattered chunks; a missing one is returned as undefined. */
  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    if (this.faults) await this.faults.check('read')
    return this.db.getMany(pcas.map(dataKey))
  }

  /**
   * Writes chunks (null: dropped, reads as zeros) in one atomic batch.
   *
   * A bulk write (BULK_CHUNKS or more) may skip LevelDB's log when the
   * caller allows it (`unlogged`: data whose loss leaves every record
   * pointing at valid data, see ThinVolume's WritePlan.inPlace): the log is a
   * third of the bytes LevelDB writes per byte stored (patches/: classic-level
   * `unlogged`). Such a write is durable once sync() has written its memtable
   * to a table; a crash before loses it, as a crash loses a disk's write
   * cache — never a write acknowledged by fsync. Small writes stay logged, so
   * an fsync after them is a log sync, not a memtable flush.
   */
  async write(chunks: ChunkWrite[], opts: { sync?: boolean; unlogged?: boolean } = {}): Promise<void> {
    if (chunks.length === 0) return
    this.checkOpen()
    if (this.faults) await this.faults.check('write')
    const sync = opts.sync === true
    const unlogged = opts.unlogged === true && !sync && chunks.length >= BULK_CHUNKS
    try {
      await this.batch(chunks, { sync, unlogged })
    } catch (err) {
      throw new VvfsError('IO_ERROR', `storage system ${this.name}: write failed: ${(err as Error).message}`, { cause: err })
    } finally {
      // Counted once it has completed (or failed: a sync too many is harmless).
      this.wrote(unlogged)
    }
  }

  /**
   * Another handle on this store (the migration worker's) completed writes:
   * the next sync covers them. Without this a sync saw nothing new and
   * skipped a destination full of copies (issue 11).
   */
  wroteElsewhere(opts: { unlogged?: boolean } = {}): void {
    this.wrote(opts.unlogged === true)
  }

  /** Whether a logged write has completed that no sync has made durable yet (a power cut would lose it). */
  get loggedPending(): boolean {
    return this.logged.pending
  }

  /** Whether unlogged writes no sync has covered yet sit in a memtable (a kill -9 would lose them). */
  get holdsUnsyncedUnlogged(): boolean {
    return this.lastUnlogged > this.writes.durable
  }

  /** Whether any chunk of [firstPca, firstPca + count) is stored. */
  async hasData(firstPca: number, count: number): Promise<boolean> {
    if (this.faults) await this.faults.check('read')
    const keys = await this.db.keys({ gte: dataKey(firstPca), lt: dataKey(firstPca + count), limit: 1 }).all()
    return keys.length > 0
  }

  /** Addresses of the stored chunks in [firstPca, firstPca + count). */
  async storedChunks(firstPca: number, count: number): Promise<number[]> {
    if (this.faults) await this.faults.check('read')
    const keys = await this.db.keys({ gte: dataKey(firstPca), lt: dataKey(firstPca + count) }).all()
    return keys.map(pcaOfKey)
  }

  /** Drops every chunk of [firstPca, firstPca + count). */
  async clearRange(firstPca: number, count: number): Promise<void> {
    this.checkOpen()
    if (this.faults) await this.faults.check('write')
    try {
      await this.db.clear({ gte: dataKey(firstPca), lt: dataKey(firstPca + count) })
    } finally {
      this.wrote(false)
    }
  }

  async clearSlot(slot: number): Promise<void> {
    // Skip the clear's write when the slot is already empty (the usual case).
    if (await this.hasData(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)) await this.clearRange(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)
  }

  /**
   * Makes every write completed before the call durable: LevelDB syncs its
   * log on a sync write, and flushMemTable writes the memtable, with any
   * unlogged writes in it, to a synced table. A sync already running that
   * covers them is waited for, never returned early (WriteGenerations).
   */
  async sync(): Promise<void> {
    if (this.closed) return
    await this.writes.sync(async (covers) => {
      // An injected sync fault fails this sync only: its writes stay pending.
      if (this.faults) await this.faults.check('sync')
      const flush = this.lastUnlogged > this.writes.durable
      const logged = this.logged.newest
      try {
        // Only the memtable: a compaction of a range (which used to do the
        // same) first waited for any compaction already running, seconds
        // during a burst of writes (a migration's first sync waited 1.5 s).
        if (flush) await (this.db as unknown as PatchedLevel).flushMemTable()
        await this.db.put(SYNC_KEY, Buffer.from(String(Date.now())), { sync: true })
      } catch (err) {
        throw new VvfsError('IO_ERROR', `storage system ${this.name}: sync failed: ${(err as Error).message}`, { cause: err })
      }
      this.logged.noteDurable(logged)
      if (this.lastUnlogged <= covers) this.unloggedAt = 0
    })
  }

  /**
   * Makes the logged writes completed before the call durable, leaving the
   * memtable alone: what a migration's copy or a promotion (logged writes)
   * needs before its switch. A sync write syncs the log that holds every
   * write before it (and patches/: classic-level syncs the old log at a
   * memtable switch). sync() instead flushed the memtable whenever hosts had
   * written unlogged data there since the last sync — once per extent copied
   * while a host wrote to the destination, which slowed the jobs of
   * test/system/migration.test.ts until the host filled its file system.
   * Group-committed like sync() (WriteGenerations): nothing to do when every
   * logged write is durable, one sync write for all callers it covers.
   */
  async syncLogged(): Promise<void> {
    this.checkOpen()
    await this.logged.sync(async () => {
      if (this.faults) await this.faults.check('sync')
      try {
        await this.db.put(SYNC_KEY, Buffer.from(String(Date.now())), { sync: true })
      } catch (err) {
        throw new VvfsError('IO_ERROR', `storage system ${this.name}: sync failed: ${(err as Error).message}`, { cause: err })
      }
    })
  }

  /**
   * Syncs when unlogged writes have waited UNLOGGED_MAX_AGE_MS: the bound on
   * what a crash can take of writes nobody fsynced (ext4 commits every 5 s).
   */
  async syncIfStale(now = Date.now()): Promise<void> {
    if (this.holdsUnsyncedUnlogged && this.unloggedAt > 0 && now - this.unloggedAt >= UNLOGGED_MAX_AGE_MS) await this.sync()
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

  /**
   * One LevelDB batch for `chunks`, past abstract-level's per-operation
   * cloning (patches/: classic-level): as three buffers (keys, values,
   * put-or-delete bytes) when they are views of one buffer in order, the
   * usual case (24 vs 79 µs on the main thread for 32 chunks), else as
   * operation objects.
   */
  private batch(chunks: ChunkWrite[], options: { sync?: boolean; unlogged?: boolean }): Promise<void> {
    const db = this.db as unknown as PatchedLevel
    const values = contiguous(chunks)
    if (values) return writeChunkRun(this.db, chunks.map((c) => c.pca), values, Buffer.alloc(chunks.length, 1), options)
    const ops = chunks.map((c) => (c.data === null ? { type: 'del', key: dataKey(c.pca) } : { type: 'put', key: dataKey(c.pca), value: c.data }))
    return db.batchDirect(ops, options)
  }

  private wrote(unlogged: boolean): void {
    const gen = this.writes.complete()
    if (!unlogged) {
      this.logged.complete()
      return
    }
    this.lastUnlogged = gen
    if (this.unloggedAt === 0) this.unloggedAt = Date.now()
  }

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `storage system ${this.name} is closed`)
  }
}
