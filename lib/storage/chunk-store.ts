/**
 * ChunkStore: the one interface of a storage system's store — what keeps
 * chunks by address and nothing else (s3backer's block store, nbdkit's
 * plugin). Implementations: the LevelDB store (level-store.ts, today's
 * fast paths behind capabilities), an in-memory store (memory-store.ts, for
 * tests), the fault-injecting wrapper (faulty-store.ts), and a store on a
 * storage server reached over the peer wire (remote/).
 *
 * Addresses are chunk addresses (pca: slot * EXTENT_CHUNKS + position);
 * every value is one CHUNK_SIZE chunk. A chunk never written, or deleted,
 * reads as zeros and is not listed by `stored`.
 *
 * Never in a store: space accounting, placement, volumes, or the durability
 * bookkeeping of who wrote what since which sync (StorageSystem keeps the
 * FreeSpaceTable, the placement flags and WriteGenerations over a store).
 *
 * Durability: `apply` returns once the batch is visible to reads; a logged
 * batch is durable after a later `sync({})` (or at once with `sync: true`),
 * an unlogged one only after `sync({ flushUnlogged: true })`. A store with
 * `capabilities.unlogged` false treats every batch as logged.
 *
 * Fencing: every mutating call may carry `token`; a store with
 * `capabilities.fencing` refuses a token lower than the highest it has seen
 * (code FENCED) and stores nothing of that call. Local stores ignore it.
 *
 * Errors are VvfsErrors: IO_ERROR for a failed read/write/sync,
 * STORAGE_FULL for ENOSPC, FENCED, TIMEOUT (remote), SHUTTING_DOWN after close,
 * INVALID_ARGUMENT for a bad address or a value that is not one chunk
 * (checkRead, checkBatch: every store makes the same checks).
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE } from '../layout.js'

export interface StoreIdentity {
  /** The storage system id the store was created for (a store refuses to open as another). */
  sid: number
  name: string
  format: number
  chunkSize: number
}

export interface ChunkStoreCapabilities {
  /** `readOneSync` answers from memory or the page cache on the calling thread (LevelDB getSync). */
  readonly syncRead: boolean
  /** Batches may skip the log (`unlogged`): durable only at a flushing sync. */
  readonly unlogged: boolean
  /** A directory a worker thread may open itself (classic-level multithreading) to copy chunks off the main thread; null: none. */
  readonly localPath: string | null
  /** Mutations carry and check a fencing token. */
  readonly fencing: boolean
  /** Where the store lives, for `storage list`: 'local', 'memory', or 'ADDR:PORT'. */
  readonly location: string
  /** `compact` rewrites the store's files to drop overwritten and deleted chunks (absent: false; issue 17). */
  readonly compaction?: boolean
}

/** One chunk of a batch: data to store, or null to delete (reads as zeros). */
export interface ChunkWrite {
  pca: number
  data: Buffer | null
}

export interface ChunkBatch {
  /** Puts and deletes, applied in order (a later one for the same pca wins). */
  writes?: ChunkWrite[]
  /** Whole ranges dropped, before `writes`. */
  clears?: { first: number; count: number }[]
  /** Skip the log (a store without the capability logs anyway). */
  unlogged?: boolean
  /** Durable before it returns. */
  sync?: boolean
  /** Fencing token of the caller. */
  token?: number
}

export interface ChunkStore {
  readonly identity: StoreIdentity
  readonly capabilities: ChunkStoreCapabilities
  /** Fills `into` from `offset` with chunks [first, first + count): zeros where none is stored. */
  readRun(first: number, count: number, into: Buffer, offset?: number): Promise<void>
  /** One chunk, synchronously (only when capabilities.syncRead). */
  readOneSync?(pca: number, into: Buffer, offset: number): void
  /** Scattered chunks; undefined where none is stored. */
  readMany(pcas: number[]): Promise<(Buffer | undefined)[]>
  /** Applies the batch atomically: all of it or none of it. Keeps no reference to the batch's data once settled (callers reuse those buffers). */
  apply(batch: ChunkBatch): Promise<void>
  /** Addresses of stored chunks in [first, first + count), ascending, at most `limit`. */
  stored(first: number, count: number, limit?: number): Promise<number[]>
  /** Makes every logged batch completed before the call durable; with flushUnlogged also the unlogged ones. */
  sync(opts?: { flushUnlogged?: boolean; token?: number }): Promise<void>
  /**
   * How many times batches this store acknowledged and no sync had covered
   * may have been lost while the store itself lives on (a storage server
   * whose machine restarted); absent: never. A sync does not report such a
   * loss: it is the writer's to hear, as Linux's errseq_t gives a failed
   * write-back to each file that wrote — the writer notes this count before
   * its first write since its own last sync and, after syncing, fails if it
   * moved (StorageSystem.lossesSince).
   */
  readonly writeLosses?: number
  /**
   * Only when capabilities.compaction: rewrites the files holding chunk data
   * so that space taken by overwritten and deleted chunks is given back to
   * the file system. Changes no chunk's contents and makes nothing less
   * durable (it may make unlogged batches durable early). In steps: between
   * two, `control.shouldStop` may end it (what was merged stays merged);
   * `completed` says whether it went through every step.
   */
  compact?(control?: CompactionControl): Promise<{ completed: boolean }>
  close(): Promise<void>
}

/** What a caller of ChunkStore.compact may say and hear between its steps (issue 17). */
export interface CompactionControl {
  /** Asked before each step: true ends the compaction there. */
  shouldStop?(): boolean
  /** After each step: steps done, of how many. */
  progress?(done: number, total: number): void
}

/** Chunk addresses fit in 6 bytes (the LevelDB store's keys; the wire's). */
export const MAX_PCA = 2 ** 48

function checkAddress(pca: number, what: string): void {
  if (!Number.isSafeInteger(pca) || pca < 0 || pca >= MAX_PCA) throw new VvfsError('INVALID_ARGUMENT', `${what}: ${pca} is not a chunk address`)
}

/** The checks every store makes of a read: INVALID_ARGUMENT for a bad address, count or a buffer too small. */
export function checkRead(first: number, count: number, into: Buffer, offset: number): void {
  checkAddress(first, 'read')
  if (!Number.isSafeInteger(count) || count < 0 || first + count > MAX_PCA) throw new VvfsError('INVALID_ARGUMENT', `read: ${count} is not a chunk count`)
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + count * CHUNK_SIZE > into.length) {
    throw new VvfsError('INVALID_ARGUMENT', `read: ${count} chunks do not fit at ${offset} in a buffer of ${into.length} bytes`)
  }
}

/** The checks every store makes of a batch before it applies any of it: INVALID_ARGUMENT for a bad address or a value not one chunk. */
export function checkBatch(batch: ChunkBatch): void {
  for (const c of batch.clears ?? []) {
    checkAddress(c.first, 'clear')
    if (!Number.isSafeInteger(c.count) || c.count < 0 || c.first + c.count > MAX_PCA) throw new VvfsError('INVALID_ARGUMENT', `clear: ${c.count} is not a chunk count`)
  }
  for (const w of batch.writes ?? []) {
    checkAddress(w.pca, 'write')
    if (w.data !== null && w.data.length !== CHUNK_SIZE) throw new VvfsError('INVALID_ARGUMENT', `write: chunk ${w.pca} has ${w.data.length} bytes, not ${CHUNK_SIZE}`)
  }
}
