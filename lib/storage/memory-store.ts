/**
 * MemoryChunkStore: a ChunkStore in memory, for tests — a Map of chunk
 * address to a private copy of its data — with the durability of the
 * contract modelled, so model tests can cut the power under it:
 *
 * - a logged batch survives `crash()` (a kill -9: LevelDB's log is in the
 *   page cache) and survives `powerCut()` once a later `sync()` covered it;
 * - an unlogged batch survives either only once `sync({flushUnlogged})`
 *   covered it (it lived in a memtable);
 * - `close()` without a flushing sync is a crash (LevelDB does not write its
 *   memtable at close; StorageSystem syncs before it closes);
 * - `reopen()` opens what survived, as a fresh handle.
 *
 * What survives is always the batches that survive, replayed in the order
 * they were applied: a lost unlogged batch leaves the chunks' earlier data,
 * never half a batch.
 *
 * With `fencing`, mutating calls check their token against the highest seen
 * (kept across reopen, as a storage server keeps it): lower is FENCED and
 * stores nothing. Without `syncRead`, no readOneSync (the asynchronous read
 * paths of callers get exercised).
 *
 * Concurrency: everything happens on the calling thread at the call; a batch
 * is visible (and its validation done) before apply's promise resolves.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE } from '../layout.js'
import { checkBatch, checkRead, type ChunkBatch, type ChunkStore, type ChunkStoreCapabilities, type StoreIdentity } from './chunk-store.js'

type Chunks = Map<number, Buffer>

/** A batch applied since the last flushing sync, with what would keep it across a crash. */
interface Pending {
  clears: { first: number; count: number }[]
  writes: { pca: number; data: Buffer | null }[]
  logged: boolean
  /** A sync covered it (logged batches only: an unlogged one needs a flushing sync). */
  synced: boolean
}

/** What the store's "disk" holds between handles: every chunk a power cut keeps, the batches since, the highest fencing token. */
interface Medium {
  durable: Chunks
  pending: Pending[]
  highestToken: number
}

function replay(into: Chunks, p: Pending): void {
  for (const c of p.clears) {
    for (const pca of [...into.keys()]) if (pca >= c.first && pca < c.first + c.count) into.delete(pca)
  }
  for (const w of p.writes) {
    if (w.data === null) into.delete(w.pca)
    else into.set(w.pca, w.data)
  }
}

export interface MemoryStoreOptions {
  sid: number
  name: string
  /** Check fencing tokens (as a remote store does). Default false. */
  fencing?: boolean
  /** Offer readOneSync. Default true. */
  syncRead?: boolean
}

export class MemoryChunkStore implements ChunkStore {
  readonly identity: StoreIdentity
  readonly capabilities: ChunkStoreCapabilities
  /** What reads see: durable + every pending batch. */
  private readonly chunks: Chunks
  private closed = false

  private constructor(
    private readonly opts: MemoryStoreOptions,
    private readonly medium: Medium,
  ) {
    this.identity = { sid: opts.sid, name: opts.name, format: 1, chunkSize: CHUNK_SIZE }
    this.capabilities = { syncRead: opts.syncRead !== false, unlogged: true, localPath: null, fencing: opts.fencing === true, location: 'memory' }
    this.chunks = new Map(medium.durable)
    for (const p of medium.pending) replay(this.chunks, p)
    if (!this.capabilities.syncRead) Object.defineProperty(this, 'readOneSync', { value: undefined })
  }

  static create(opts: MemoryStoreOptions): MemoryChunkStore {
    return new MemoryChunkStore(opts, { durable: new Map(), pending: [], highestToken: 0 })
  }

  /** A new handle on what survived (the store must be closed, crashed or cut first). */
  reopen(): MemoryChunkStore {
    if (!this.closed) throw new VvfsError('INVALID_ARGUMENT', `memory store ${this.identity.name} is still open`)
    return new MemoryChunkStore(this.opts, this.medium)
  }

  /** A kill -9 of the process: unlogged batches no flushing sync covered are lost. */
  crash(): void {
    this.lose((p) => p.logged)
  }

  /** A power cut: every batch no sync covered (and every unlogged one no flushing sync covered) is lost. */
  powerCut(): void {
    this.lose((p) => p.logged && p.synced)
  }

  /**
   * What a power cut now would leave at each of `pcas` (undefined: no chunk),
   * without cutting: for tests that check what is durable at a given moment
   * (test/migration/group-copy.test.ts).
   */
  readAfterPowerCut(pcas: number[]): (Buffer | undefined)[] {
    const kept = new Map(this.medium.durable)
    for (const p of this.medium.pending) if (p.logged && p.synced) replay(kept, p)
    return pcas.map((pca) => kept.get(pca))
  }

  /** The stored chunks, for a test's inspection. */
  get size(): number {
    return this.chunks.size
  }

  async readRun(first: number, count: number, into: Buffer, offset = 0): Promise<void> {
    this.checkOpen()
    checkRead(first, count, into, offset)
    for (let i = 0; i < count; i++) this.copyOut(first + i, into, offset + i * CHUNK_SIZE)
  }

  readOneSync(pca: number, into: Buffer, offset: number): void {
    this.checkOpen()
    checkRead(pca, 1, into, offset)
    this.copyOut(pca, into, offset)
  }

  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    this.checkOpen()
    return pcas.map((pca) => {
      const v = this.chunks.get(pca)
      return v === undefined ? undefined : Buffer.from(v)
    })
  }

  async apply(batch: ChunkBatch): Promise<void> {
    this.checkOpen()
    checkBatch(batch)
    this.fence(batch.token)
    const p: Pending = {
      clears: (batch.clears ?? []).map((c) => ({ ...c })),
      // Copies: the caller may reuse its buffers once apply has returned.
      writes: (batch.writes ?? []).map((w) => ({ pca: w.pca, data: w.data === null ? null : Buffer.from(w.data) })),
      logged: batch.unlogged !== true || batch.sync === true,
      synced: false,
    }
    replay(this.chunks, p)
    this.medium.pending.push(p)
    if (batch.sync) this.syncNow(false)
  }

  async stored(first: number, count: number, limit = Infinity): Promise<number[]> {
    this.checkOpen()
    const found: number[] = []
    for (const pca of this.chunks.keys()) if (pca >= first && pca < first + count) found.push(pca)
    return found.sort((a, b) => a - b).slice(0, limit)
  }

  async sync(opts: { flushUnlogged?: boolean; token?: number } = {}): Promise<void> {
    this.checkOpen()
    this.fence(opts.token)
    this.syncNow(opts.flushUnlogged === true)
  }

  async close(): Promise<void> {
    if (!this.closed) this.crash()
  }

  private syncNow(flush: boolean): void {
    const m = this.medium
    if (flush) {
      m.durable = new Map(this.chunks)
      m.pending = []
      return
    }
    for (const p of m.pending) if (p.logged) p.synced = true
    // Batches no crash can lose any more, up to the first unlogged one, join the durable chunks.
    let n = 0
    while (n < m.pending.length && m.pending[n]!.synced) replay(m.durable, m.pending[n++]!)
    m.pending.splice(0, n)
  }

  private lose(survives: (p: Pending) => boolean): void {
    if (this.closed) return
    this.closed = true
    const m = this.medium
    for (const p of m.pending) if (survives(p)) replay(m.durable, p)
    m.pending = []
  }

  private fence(token: number | undefined): void {
    if (!this.capabilities.fencing || token === undefined) return
    if (token < this.medium.highestToken) {
      throw new VvfsError('FENCED', `memory store ${this.identity.name}: token ${token} is below ${this.medium.highestToken}`)
    }
    this.medium.highestToken = token
  }

  private copyOut(pca: number, into: Buffer, at: number): void {
    const v = this.chunks.get(pca)
    if (v === undefined) into.fill(0, at, at + CHUNK_SIZE)
    else v.copy(into, at)
  }

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `memory store ${this.identity.name} is closed`)
  }
}
