/**
 * StorageSystem: one storage system — a ChunkStore (chunk-store.ts: the
 * LevelDB store of level-store.ts, a memory store in tests, later a remote
 * one) with a declared capacity, and what vvfs keeps about it that no store
 * does: the free-space table of its extent slots, the placement flags
 * (reserve, draining), and the durability bookkeeping of which writes a sync
 * must cover.
 *
 * Owns: the store it was opened over (close closes it). Never: knows
 * volumes, chooses placement, or decides what is allocated (the relay does,
 * through the FreeSpaceTable).
 *
 * Concurrency: the store orders batches; callers keep writers of one chunk
 * apart (the volume layer's locks). Writes into the store by another handle
 * (the migration worker's, which opens a local store's directory itself)
 * count for sync() once the caller reports them (wroteElsewhere).
 *
 * Durability: sync() covers every write that had completed when it began
 * and returns only after a sync that began after the caller's writes
 * completed (WriteGenerations); it flushes unlogged batches only when one
 * is pending. Logged writes are also counted on their own (`logged`): a map
 * record depends on them (a slot's clear, a fragment's data, a deletion
 * before the space was freed), and the MapStore syncs them (syncLogged)
 * before it writes such a record — never the unlogged bulk data, whose loss
 * leaves the slot's own earlier data or its clear (DataLog,
 * lib/relay/map-store.ts).
 *
 * Injected faults (lib/storage/fault-injector.ts, `vvfs fault`): while a
 * rule is armed for the system, its store is wrapped in a FaultyStore
 * (faulty-store.ts) that checks each call first; with no rule, no wrapper.
 */
import { VvfsError } from '../errors.js'
import { EXTENT_CHUNKS } from '../layout.js'
import type { ChunkStore, ChunkWrite, CompactionControl } from './chunk-store.js'
import type { FaultGate } from './fault-injector.js'
import { diskUsage } from './disk-usage.js'
import { FaultyStore } from './faulty-store.js'
import { FreeSpaceTable } from './free-space.js'
import { LevelChunkStore } from './level-store.js'
import type { MemoryBudget } from './memory-budget.js'
import { WriteGenerations } from './write-generations.js'

export type { ChunkWrite } from './chunk-store.js'

/** How long unlogged writes may wait for a sync before syncIfStale makes them durable. */
export const UNLOGGED_MAX_AGE_MS = 5000
/** Writes of this many chunks or more skip the store's log (see write()). */
export const BULK_CHUNKS = 16

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

export class StorageSystem implements DataLog {
  readonly table: FreeSpaceTable
  readonly sid: number
  readonly name: string
  /** Reserve systems (for staged transfers) and draining ones take no new allocations unless asked by name. */
  reserve = false
  draining = false
  /** The store every call goes to: `base`, or `base` behind the fault gate while rules are armed. */
  private store: ChunkStore
  private gate: FaultGate | null = null
  private readonly writes = new WriteGenerations()
  /** The logged writes only: what syncLogged covers (a sync() covers them too). */
  private readonly logged = new WriteGenerations()
  /** The generation of the newest unlogged write (until a sync covers it, it lives only in a memtable). */
  private lastUnlogged = 0
  /** When the oldest unlogged write no sync has covered completed (0: none). */
  private unloggedAt = 0
  private closed = false
  /** When the last write through this system (or reported by wroteElsewhere) completed; 0: none since open. */
  private lastWriteAt = 0
  /** When the system was opened: what idleMs counts from before the first write. */
  private readonly openedAt = Date.now()
  /** The running compaction, if any: one at a time per system. */
  private compacting: Promise<{ completed: boolean }> | null = null
  /** Set by close: a running compaction ends at its next step. */
  private closing = false

  private constructor(
    private readonly base: ChunkStore,
    readonly capacity: number,
  ) {
    this.store = base
    this.sid = base.identity.sid
    this.name = base.identity.name
    this.table = new FreeSpaceTable(capacity)
  }

  /** A storage system over any store (its identity names the system); closing the system closes the store. */
  static over(store: ChunkStore, opts: { capacity: number }): StorageSystem {
    return new StorageSystem(store, opts.capacity)
  }

  /**
   * Opens (or, with `create`, creates) the LevelDB store at `path`. A store
   * made for another storage system is refused, so two systems never share
   * a directory (LevelChunkStore.open).
   */
  static async open(opts: { sid: number; name: string; path: string; capacity: number; create: boolean; memory?: MemoryBudget }): Promise<StorageSystem> {
    return StorageSystem.over(await LevelChunkStore.open(opts), { capacity: opts.capacity })
  }

  /** Where the store is: its directory when local, else its location ('memory', 'ADDR:PORT'). */
  get path(): string {
    return this.base.capabilities.localPath ?? this.base.capabilities.location
  }

  /**
   * The store calls go to, for the chunk mover (which reports its writes
   * with wroteElsewhere) and tests. Writes through it bypass the sync
   * bookkeeping.
   */
  get chunkStore(): ChunkStore {
    return this.store
  }

  /** Injected faults (`--allow-faults`, set by the FaultInjector); null: none, and no check. */
  get faults(): FaultGate | null {
    return this.gate
  }

  set faults(gate: FaultGate | null) {
    this.gate = gate
    this.store = gate ? new FaultyStore(this.base, gate) : this.base
  }

  /**
   * Reads `count` consecutive chunks into `into` (zeros where none is stored).
   * One chunk, when the store can: a synchronous lookup (microseconds from
   * the block or page cache) saves the two thread hand-offs of an
   * asynchronous one, which at queue depth 1 are most of a random 4 KiB
   * read's time.
   */
  async readRun(firstPca: number, count: number, into: Buffer, offset = 0): Promise<void> {
    const store = this.store
    if (count === 1 && store.capabilities.syncRead && store.readOneSync) return store.readOneSync(firstPca, into, offset)
    return store.readRun(firstPca, count, into, offset)
  }

  /** Reads scattered chunks; a missing one is returned as undefined. */
  readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    return this.store.readMany(pcas)
  }

  /**
   * Writes chunks (null: dropped, reads as zeros) in one atomic batch.
   *
   * A bulk write (BULK_CHUNKS or more) may skip the store's log when the
   * caller allows it (`unlogged`: data whose loss leaves every record
   * pointing at valid data, see ThinVolume's WritePlan.inPlace): the log is a
   * third of the bytes LevelDB writes per byte stored (patches/: classic-level
   * `unlogged`). Such a write is durable once sync() has flushed it; a crash
   * before loses it, as a crash loses a disk's write cache — never a write
   * acknowledged by fsync. Small writes stay logged, so an fsync after them
   * is a log sync, not a memtable flush.
   */
  async write(chunks: ChunkWrite[], opts: { sync?: boolean; unlogged?: boolean } = {}): Promise<void> {
    if (chunks.length === 0) return
    this.checkOpen()
    const sync = opts.sync === true
    const unlogged = opts.unlogged === true && !sync && chunks.length >= BULK_CHUNKS && this.base.capabilities.unlogged
    try {
      await this.store.apply({ writes: chunks, sync, unlogged })
    } finally {
      // Counted once it has completed (or failed: a sync too many is harmless).
      this.wrote(unlogged)
    }
  }

  /**
   * Another handle on this store (the migration worker's) or the chunk mover
   * through chunkStore completed writes: the next sync covers them. Without
   * this a sync saw nothing new and skipped a destination full of copies
   * (issue 11).
   */
  wroteElsewhere(opts: { unlogged?: boolean } = {}): void {
    this.wrote(opts.unlogged === true)
  }

  /** Whether a logged write has completed that no sync has made durable yet (a power cut would lose it). */
  get loggedPending(): boolean {
    return this.logged.pending
  }

  /**
   * errseq (ChunkStore.writeLosses): the store's count of possible losses of
   * acknowledged, unsynced writes. A writer notes it before its first write
   * since its own last sync; after its sync, lossesSince says whether what
   * it wrote in between may be gone.
   */
  get writeLosses(): number {
    return this.store.writeLosses ?? 0
  }

  /** IO_ERROR when writes made after `seen` (a writeLosses noted before them) may have been lost; call after the sync that was to make them durable. */
  lossesSince(seen: number, what: string): void {
    if (this.writeLosses > seen) throw new VvfsError('IO_ERROR', `storage system ${this.name}: ${what} may have been lost (the storage server's machine restarted before a sync covered them)`, { details: { reason: 'writes-lost', storage: this.name } })
  }

  /** Whether unlogged writes no sync has covered yet sit in a memtable (a kill -9 would lose them). */
  get holdsUnsyncedUnlogged(): boolean {
    return this.lastUnlogged > this.writes.durable
  }

  /** Whether any chunk of [firstPca, firstPca + count) is stored. */
  async hasData(firstPca: number, count: number): Promise<boolean> {
    return (await this.store.stored(firstPca, count, 1)).length > 0
  }

  /** Addresses of the stored chunks in [firstPca, firstPca + count). */
  storedChunks(firstPca: number, count: number): Promise<number[]> {
    return this.store.stored(firstPca, count)
  }

  /** Drops every chunk of [firstPca, firstPca + count). */
  async clearRange(firstPca: number, count: number): Promise<void> {
    this.checkOpen()
    try {
      await this.store.apply({ clears: [{ first: firstPca, count }] })
    } finally {
      this.wrote(false)
    }
  }

  async clearSlot(slot: number): Promise<void> {
    // Skip the clear's write when the slot is already empty (the usual case).
    if (await this.hasData(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)) await this.clearRange(slot * EXTENT_CHUNKS, EXTENT_CHUNKS)
  }

  /**
   * Makes every write completed before the call durable: the store syncs its
   * log, and flushes the unlogged batches when there are any. A sync already
   * running that covers them is waited for, never returned early
   * (WriteGenerations).
   */
  async sync(): Promise<void> {
    if (this.closed) return
    await this.writes.sync(async (covers) => {
      const flushUnlogged = this.lastUnlogged > this.writes.durable
      const logged = this.logged.newest
      // A failed sync (an injected fault too) fails this sync only: its writes stay pending.
      await this.store.sync({ flushUnlogged })
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
    await this.logged.sync(() => this.store.sync())
  }

  /**
   * Syncs when unlogged writes have waited UNLOGGED_MAX_AGE_MS: the bound on
   * what a crash can take of writes nobody fsynced (ext4 commits every 5 s).
   */
  async syncIfStale(now = Date.now()): Promise<void> {
    if (this.holdsUnsyncedUnlogged && this.unloggedAt > 0 && now - this.unloggedAt >= UNLOGGED_MAX_AGE_MS) await this.sync()
  }

  /** Milliseconds since the last write completed (or, before the first, since the system was opened). */
  idleMs(now = Date.now()): number {
    return now - (this.lastWriteAt || this.openedAt)
  }

  /** When the last write completed (ms since the epoch; 0: none since open). */
  get lastWrite(): number {
    return this.lastWriteAt
  }

  /** Whether the store can give back the space of overwritten and deleted chunks (ChunkStore.compact). */
  get compactable(): boolean {
    return this.base.capabilities.compaction === true && this.base.compact !== undefined
  }

  get isCompacting(): boolean {
    return this.compacting !== null
  }

  /**
   * Bytes the store's directory takes on disk (allocated blocks, as `du`);
   * null for a store without a local directory (remote, memory).
   */
  async diskBytes(): Promise<number | null> {
    const dir = this.base.capabilities.localPath
    return dir === null ? null : diskUsage(dir)
  }

  /**
   * Compacts the store (ChunkStore.compact): NOT_SUPPORTED without the
   * capability. A call while one runs joins it. Goes to the store itself,
   * past any fault gate: compaction changes no chunk, and the injected
   * faults are of reads, writes and syncs. `control` may end it between
   * steps (a call that joins a running one shares that one's control);
   * close ends it at its next step.
   */
  compact(control: CompactionControl = {}): Promise<{ completed: boolean }> {
    this.checkOpen()
    if (!this.compactable) return Promise.reject(new VvfsError('NOT_SUPPORTED', `storage system ${this.name} (${this.base.capabilities.location}) cannot be compacted`))
    this.compacting ??= this.base
      .compact!({ shouldStop: () => this.closing || control.shouldStop?.() === true, progress: control.progress })
      .finally(() => {
        this.compacting = null
      })
    return this.compacting
  }

  get allocatable(): boolean {
    return !this.reserve && !this.draining
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closing = true
    await this.compacting?.catch(() => {})
    try {
      await this.sync()
    } finally {
      // A refused last sync (FENCED: another relay owns the server now; the server gone) still closes the
      // store: a remote store's connection left open kept a stopped relay's process from exiting (issue 15).
      this.closed = true
      await this.base.close()
    }
  }

  private wrote(unlogged: boolean): void {
    this.lastWriteAt = Date.now()
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

/**
 * Runs `write` (writes to `systems`), then makes what it wrote durable there
 * with a log sync of each; IO_ERROR (writes-lost) if a restart of a storage
 * server's machine may have taken it meanwhile (errseq: the counts are noted
 * before `write` starts). For copies that a record will point at only once
 * they are durable: a migration's, a promotion's.
 */
export async function writeDurably<T>(systems: StorageSystem[], what: string, write: () => Promise<T>): Promise<T> {
  const losses = systems.map((s) => s.writeLosses)
  const result = await write()
  await Promise.all(systems.map((s) => s.syncLogged()))
  systems.forEach((s, i) => s.lossesSince(losses[i]!, what))
  return result
}
