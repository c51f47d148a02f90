/**
 * LevelChunkStore: the ChunkStore of a local storage system — one LevelDB
 * directory, one 4 KiB value per chunk under its chunk address. A chunk never
 * written (or deleted) has no key, so the store is sparse: it costs disk
 * only for data. The only ClassicLevel in vvfs besides the relay's MapStore
 * and the migration worker (which opens this store by its path).
 *
 * Owns: its directory and the identity record in it (a store made for one
 * storage system refuses to open as another). Never: space accounting,
 * placement or the bookkeeping of which writes a sync covers (StorageSystem).
 *
 * Fast paths (patches/: classic-level), behind the capabilities:
 * `readOneSync` is getSync (syncRead), a run of chunks is one getChunks into
 * the caller's buffer, a batch whose data is views of one buffer in order is
 * one batchChunks (three buffers, no object per chunk), `unlogged` batches
 * skip the log, and `sync({flushUnlogged})` writes the memtable to a synced
 * table (flushMemTable) before its sync write.
 *
 * Concurrency: LevelDB orders writes; callers keep writers of one chunk
 * apart. Opened with `multithreading: true` so the migration worker can open
 * the same directory (classic-level shares the one LevelDB instance).
 *
 * Failure modes: a LevelDB error becomes IO_ERROR (STORAGE_FULL when the
 * disk is full); after close every call is SHUTTING_DOWN. A batch with
 * clears writes the deletions of the cleared ranges in the same batch as its
 * puts — every key of a range up to a slot, the stored chunks (listed first)
 * of a larger one: atomic, as long as nobody writes into a cleared range
 * meanwhile (the caller's locks).
 */
import { ClassicLevel } from 'classic-level'
import { mkdir } from 'node:fs/promises'
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../layout.js'
import { checkBatch, checkRead, type ChunkBatch, type ChunkStore, type ChunkStoreCapabilities, type ChunkWrite, type CompactionControl, type StoreIdentity } from './chunk-store.js'
import type { BudgetedStore, MemoryBudget, MemoryShare } from './memory-budget.js'
import { openLevelDurably } from '../durable-file.js'

const DATA = 0x64 // 'd'
const IDENTITY_KEY = Buffer.from('m/identity')
const SYNC_KEY = Buffer.from('m/sync')
const KEY_SIZE = 7
/**
 * A compaction merges the data keys this many chunk addresses (64 MiB of
 * chunks) at a time, so that it can stop between steps (writes resumed,
 * shutdown) and report progress. A step merges the lower levels' tables of
 * its range only; level 0's tables span the whole store when writes were
 * random, so the first step merges all of them (LevelDB takes every level-0
 * table overlapping the range).
 */
export const COMPACT_STEP_CHUNKS = 16384
/** Clears of up to this many chunks (a slot) delete every key without listing the stored ones (apply). */
const BLIND_CLEAR_CHUNKS = EXTENT_CHUNKS

/**
 * LevelDB options. 64 MiB files keep the table count low for multi-GiB stores;
 * 16 KiB blocks keep a random 4 KiB read from decoding much more than it
 * returns; compression is off (chunk data is mostly incompressible and snappy
 * only costs CPU then). A 64 MiB write buffer: 10 s of sequential writes
 * through vvfs ran at 686 MB/s against 560 with 32 MiB and 670 with 128 MiB
 * (medians of three), for up to 128 MiB of memtables per store. A store
 * opened under a daemon's MemoryBudget (memory-budget.ts) takes its write
 * buffer and cache sizes from there instead, capped at these.
 */
export const STORE_OPTIONS = {
  writeBufferSize: 64 * 1024 * 1024,
  maxFileSize: 64 * 1024 * 1024,
  blockSize: 16 * 1024,
  cacheSize: 16 * 1024 * 1024,
  compression: false,
  maxOpenFiles: 500,
}

/** The methods patches/: classic-level adds. */
interface PatchedLevel {
  flushMemTable(): Promise<void>
  batchChunks(keys: Buffer, values: Buffer, present: Buffer, options: object): Promise<void>
  batchDirect(ops: object[], options: object): Promise<void>
  getChunks(keys: Buffer, keySize: number, into: Buffer, stride: number): Promise<void>
  setMemory(writeBufferSize: number, cacheSize: number): void
}

type Level = ClassicLevel<Buffer, Buffer>

/** Writes the key of chunk `pca` at `at` in `into`: 'd' and the 6-byte address. */
function putDataKey(into: Buffer, at: number, pca: number): void {
  // Byte by byte: writeUIntBE's checks were 7% of a storage server's main thread in a remote
  // sequential read (perf, bench/remote.js seqread: 256 keys per 1 MiB extent). pca < 2^48 (checkRead).
  const high = Math.floor(pca / 0x1_0000_0000)
  const low = pca >>> 0
  into[at] = DATA
  into[at + 1] = high >>> 8
  into[at + 2] = high & 0xff
  into[at + 3] = low >>> 24
  into[at + 4] = (low >>> 16) & 0xff
  into[at + 5] = (low >>> 8) & 0xff
  into[at + 6] = low & 0xff
}

export function dataKey(pca: number): Buffer {
  const key = Buffer.allocUnsafe(KEY_SIZE)
  putDataKey(key, 0, pca)
  return key
}

export function pcaOfKey(key: Buffer): number {
  return key.readUIntBE(1, 6)
}

/** `count` consecutive chunk keys from `first`, as one buffer. */
function runKeys(first: number, count: number): Buffer {
  const keys = Buffer.allocUnsafe(count * KEY_SIZE)
  for (let i = 0; i < count; i++) putDataKey(keys, i * KEY_SIZE, first + i)
  return keys
}

/**
 * One batch that writes chunk i of `values` at `pcas[i]` where `present[i]`
 * is 1 and deletes the chunk at `pcas[i]` where it is 0 (patches/:
 * classic-level batchChunks: three buffers instead of an object per chunk).
 */
export function writeChunkRun(db: Level, pcas: number[], values: Buffer, present: Buffer, options: { sync?: boolean; unlogged?: boolean } = {}): Promise<void> {
  const keys = Buffer.allocUnsafe(pcas.length * KEY_SIZE)
  for (let i = 0; i < pcas.length; i++) putDataKey(keys, i * KEY_SIZE, pcas[i]!)
  return (db as unknown as PatchedLevel).batchChunks(keys, values, present, options)
}

/**
 * The writes as batchChunks' values and present bytes when every chunk of
 * data is the i-th CHUNK_SIZE of one span of memory (deletions may sit in
 * between: the copier's zero chunks), else null.
 */
function chunkRun(writes: ChunkWrite[]): { values: Buffer; present: Buffer } | null {
  const k = writes.findIndex((w) => w.data !== null)
  if (k < 0) return null
  const first = writes[k]!.data!
  const base = first.byteOffset - k * CHUNK_SIZE
  const span = writes.length * CHUNK_SIZE
  if (base < 0 || base + span > first.buffer.byteLength) return null
  const present = Buffer.allocUnsafe(writes.length)
  for (let i = 0; i < writes.length; i++) {
    const d = writes[i]!.data
    if (d === null) {
      present[i] = 0
      continue
    }
    if (d.buffer !== first.buffer || d.byteOffset !== base + i * CHUNK_SIZE || d.length !== CHUNK_SIZE) return null
    present[i] = 1
  }
  return { values: Buffer.from(first.buffer, base, span), present }
}

/** LevelDB's open options for a share of the memory budget. */
function sizesOf(share: MemoryShare): { writeBufferSize: number; cacheSize: number } {
  return { writeBufferSize: share.writeBufferSize, cacheSize: share.cacheSize }
}

function ioError(what: string, err: unknown): VvfsError {
  if (err instanceof VvfsError) return err
  const message = (err as Error).message
  const code = /no space left|ENOSPC/i.test(message) ? 'STORAGE_FULL' : 'IO_ERROR'
  return new VvfsError(code, `${what}: ${message}`, { cause: err })
}

export class LevelChunkStore implements ChunkStore, BudgetedStore {
  readonly capabilities: ChunkStoreCapabilities
  private closed = false

  private constructor(
    readonly identity: StoreIdentity,
    readonly path: string,
    private readonly db: Level,
    /** The daemon-wide budget the store's memtables and cache are part of (none: STORE_OPTIONS). */
    private readonly memory: MemoryBudget | null,
  ) {
    this.capabilities = { syncRead: true, unlogged: true, localPath: path, fencing: false, location: 'local', compaction: true }
  }

  /**
   * Opens (or, with `create`, creates) the store at `path`. A store made for
   * another storage system is refused, so two systems never share a directory.
   */
  static async open(opts: { sid: number; name: string; path: string; create: boolean; memory?: MemoryBudget }): Promise<LevelChunkStore> {
    if (opts.create) await mkdir(opts.path, { recursive: true })
    const db = new ClassicLevel<Buffer, Buffer>(opts.path, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: opts.create,
      multithreading: true,
      ...STORE_OPTIONS,
      ...(opts.memory ? sizesOf(opts.memory.nextShare()) : {}),
    } as never)
    try {
      await openLevelDurably(db, opts.path)
    } catch (err) {
      throw new VvfsError('IO_ERROR', `cannot open storage system ${opts.name} at ${opts.path}: ${(err as Error).message}`, { cause: err })
    }
    try {
      const store = new LevelChunkStore(await LevelChunkStore.identify(db, opts), opts.path, db, opts.memory ?? null)
      opts.memory?.join(store)
      return store
    } catch (err) {
      await db.close()
      throw err
    }
  }

  private static async identify(db: Level, opts: { sid: number; name: string; path: string; create: boolean }): Promise<StoreIdentity> {
    const raw = await db.get(IDENTITY_KEY)
    if (raw === undefined) {
      if (!opts.create) throw new VvfsError('STATE_CORRUPT', `storage system ${opts.name}: ${opts.path} holds no vvfs storage system`)
      // Nothing but our own identity may be in a new store.
      const stray = await db.keys({ limit: 1 }).all()
      if (stray.length > 0) throw new VvfsError('STORAGE_PATH_IN_USE', `${opts.path} already holds a LevelDB store that is not a new vvfs storage system`)
      const identity: StoreIdentity = { sid: opts.sid, name: opts.name, format: 1, chunkSize: CHUNK_SIZE }
      await db.put(IDENTITY_KEY, Buffer.from(JSON.stringify(identity)), { sync: true })
      return identity
    }
    const identity = JSON.parse(raw.toString()) as StoreIdentity
    if (identity.sid !== opts.sid || identity.chunkSize !== CHUNK_SIZE) {
      const code = opts.create ? 'STORAGE_PATH_IN_USE' : 'STATE_CORRUPT'
      throw new VvfsError(code, `${opts.path} belongs to storage system ${identity.name} (id ${identity.sid}), not ${opts.name} (id ${opts.sid})`)
    }
    return identity
  }

  /**
   * Into the caller's buffer (patches/: classic-level getChunks): LevelDB
   * copies each value straight into place, zeros for missing ones, on its
   * thread, and the JS thread neither walks an array of keys nor waits for
   * the DB mutex to take a snapshot (the volume's range locks keep writers
   * of these chunks away instead). One trip to the thread pool beat a range
   * iterator both for 128 KiB (115 vs 129 µs at queue depth 1) and for a
   * whole extent (1474 vs 1411 MB/s): `node dist/bench/leveldb-options.js`.
   */
  async readRun(first: number, count: number, into: Buffer, offset = 0): Promise<void> {
    this.checkOpen()
    checkRead(first, count, into, offset)
    if (count === 0) return
    try {
      await (this.db as unknown as PatchedLevel).getChunks(runKeys(first, count), KEY_SIZE, into.subarray(offset, offset + count * CHUNK_SIZE), CHUNK_SIZE)
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: read failed`, err)
    }
  }

  /**
   * One chunk on the calling thread: microseconds from the block or page
   * cache, saving the two thread hand-offs of an asynchronous read, which at
   * queue depth 1 are most of a random 4 KiB read's time.
   */
  readOneSync(pca: number, into: Buffer, offset: number): void {
    this.checkOpen()
    checkRead(pca, 1, into, offset)
    let v: Buffer | undefined
    try {
      v = this.db.getSync(dataKey(pca))
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: read failed`, err)
    }
    if (v === undefined) into.fill(0, offset, offset + CHUNK_SIZE)
    else v.copy(into, offset)
  }

  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    this.checkOpen()
    try {
      return await this.db.getMany(pcas.map(dataKey))
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: read failed`, err)
    }
  }

  /**
   * One LevelDB batch, past abstract-level's per-operation cloning
   * (patches/: classic-level): as three buffers (keys, values, put-or-delete
   * bytes) when the data is views of one buffer in order, the usual case (24
   * vs 79 µs on the main thread for 32 chunks), else as operation objects.
   */
  async apply(batch: ChunkBatch): Promise<void> {
    this.checkOpen()
    checkBatch(batch)
    const writes = batch.writes ?? []
    const options = { sync: batch.sync === true, unlogged: batch.unlogged === true && batch.sync !== true }
    const db = this.db as unknown as PatchedLevel
    try {
      if (!batch.clears?.length) {
        if (writes.length === 0) return
        const run = chunkRun(writes)
        if (run) return await writeChunkRun(this.db, writes.map((w) => w.pca), run.values, run.present, options)
        return await db.batchDirect(writes.map(op), options)
      }
      const dels: object[] = []
      for (const c of batch.clears) {
        if (c.count <= 0) continue
        // Up to an extent: every key deleted unread (a deletion of a chunk
        // never stored changes nothing). Listing the stored ones read the
        // slot's values: 4.1 of a 14.2 s migration of 683 MiB went to
        // clearing its sources.
        if (c.count <= BLIND_CLEAR_CHUNKS) for (let pca = c.first; pca < c.first + c.count; pca++) dels.push({ type: 'del', key: dataKey(pca) })
        else for (const key of await this.db.keys({ gte: dataKey(c.first), lt: dataKey(c.first + c.count) }).all()) dels.push({ type: 'del', key })
      }
      const ops = dels.concat(writes.map(op))
      if (ops.length > 0) await db.batchDirect(ops, options)
      else if (options.sync) await this.syncWrite()
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: write failed`, err)
    }
  }

  async stored(first: number, count: number, limit?: number): Promise<number[]> {
    this.checkOpen()
    if (count <= 0) return []
    try {
      const keys = await this.db.keys({ gte: dataKey(first), lt: dataKey(first + count), ...(limit === undefined ? {} : { limit }) }).all()
      return keys.map(pcaOfKey)
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: read failed`, err)
    }
  }

  /**
   * A sync write syncs the log that holds every logged batch before it
   * (patches/: classic-level also syncs the old log at a memtable switch);
   * flushMemTable writes the memtable, with any unlogged batches in it, to a
   * synced table. Only the memtable: a compaction of a range (which used to
   * do the same) first waited for any compaction already running, seconds
   * during a burst of writes (a migration's first sync waited 1.5 s).
   */
  async sync(opts: { flushUnlogged?: boolean; token?: number } = {}): Promise<void> {
    this.checkOpen()
    try {
      if (opts.flushUnlogged) await (this.db as unknown as PatchedLevel).flushMemTable()
      await this.syncWrite()
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: sync failed`, err)
    }
  }

  /**
   * LevelDB's manual compaction of the data keys, in steps of
   * COMPACT_STEP_CHUNKS addresses: the memtable is written to a table first
   * (flushMemTable), then, range by range, every level overlapping it is
   * merged down, so one version of each chunk remains and deleted chunks
   * leave no tombstones behind. The flush comes first because LevelDB's
   * compactRange picks the levels to merge before it writes the memtable
   * out, and a memtable written straight to a lower level keeps every
   * version it held: one compactRange over everything left a store of 8 MiB
   * live data at 12.1 bytes on disk per live byte
   * (test/storage/compaction.test.ts). Runs on LevelDB's background
   * thread; writes proceed meanwhile (slower while it merges), which is why
   * the idle policy starts it only when no writes have come for a while and
   * stops it at the next step when they resume (lib/manager/compaction.ts).
   * A crash during it leaves the old tables in the manifest until the new
   * ones are recorded: nothing durable is lost (test/storage/compaction.test.ts
   * kills a compaction after each step; test/system/compact.test.ts).
   */
  async compact(control: CompactionControl = {}): Promise<{ completed: boolean }> {
    this.checkOpen()
    try {
      const db = this.db as unknown as PatchedLevel
      await db.flushMemTable()
      const [first] = await this.db.keys({ gte: dataKey(0), lt: Buffer.from([DATA + 1]), limit: 1 }).all()
      const [last] = await this.db.keys({ gte: dataKey(0), lt: Buffer.from([DATA + 1]), limit: 1, reverse: true }).all()
      const from = first ? pcaOfKey(first) : 0
      const steps = last ? Math.max(1, Math.ceil((pcaOfKey(last) + 1 - from) / COMPACT_STEP_CHUNKS)) : 1
      for (let step = 0; step < steps; step++) {
        if (control.shouldStop?.()) return { completed: false }
        this.checkOpen()
        // The first and last steps reach to the ends of the data keys: tombstones of chunks deleted outside the stored span go too.
        const start = step === 0 ? dataKey(0) : dataKey(from + step * COMPACT_STEP_CHUNKS)
        const end = step === steps - 1 ? Buffer.from([DATA + 1]) : dataKey(from + (step + 1) * COMPACT_STEP_CHUNKS)
        await this.db.compactRange(start, end)
        control.progress?.(step + 1, steps)
      }
      return { completed: true }
    } catch (err) {
      throw ioError(`storage system ${this.identity.name}: compaction failed`, err)
    }
  }

  /** Takes a new share of the daemon's memory budget (MemoryBudget, when it re-divides). */
  setMemory(share: MemoryShare): void {
    if (this.closed) return
    const db = this.db as unknown as PatchedLevel
    db.setMemory(share.writeBufferSize, share.cacheSize)
  }

  /** LevelDB's estimate of what its memtables and block cache hold (a synchronous property read, microseconds). */
  heldMemory(): number {
    if (this.closed) return 0
    return Number(this.db.getProperty('leveldb.approximate-memory-usage')) || 0
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.memory?.leave(this)
    this.closed = true
    await this.db.close()
  }

  private syncWrite(): Promise<void> {
    return this.db.put(SYNC_KEY, Buffer.from(String(Date.now())), { sync: true })
  }

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `storage system ${this.identity.name} is closed`)
  }
}

function op(w: ChunkWrite): object {
  return w.data === null ? { type: 'del', key: dataKey(w.pca) } : { type: 'put', key: dataKey(w.pca), value: w.data }
}
