/**
 * MapStore: the relay's own LevelDB (STATE/maps) — the persisted volume maps
 * (one record per volume extent) and the relay's other per-extent state
 * (migration bitmaps); every key and record format is in key-space.ts. The
 * relay is its only writer.
 *
 * Writes are group-committed: `put` marks a key dirty and resolves once a
 * batch holding its latest value is written; one batch is in flight at a
 * time, so a later value of a key can never be overtaken by an earlier one.
 * A value is read from its producer when the batch is built, so the batch
 * carries the newest state, not the state at the time of the call.
 *
 * Durability: batches are logged but not synced; sync() syncs the log and
 * covers every batch that had completed when it began, waiting for a running
 * sync that covers the caller's batches rather than returning early
 * (WriteGenerations).
 *
 * Power-loss order (issue 11), enforced here for every record: a record that
 * points at data becomes durable only after the logged writes it depends on
 * are durable. A batch can become durable without any sync of ours (another
 * volume's fsync syncs this store, a memtable switch syncs the old log, a
 * table is written), so the rule holds for every batch, not only before
 * sync(): a put names the storage systems its record points at
 * (`dependsOn`, read when the batch is built, like the value), and before
 * the batch is written each of them with a logged write not yet durable is
 * synced (DataLog.syncLogged, one sync per system per batch; none when its
 * logged writes are durable already). A log sync covers every logged write
 * before it, so this also covers the clear of a slot and the deletions made
 * before its space was freed by an earlier owner. Unlogged bulk writes are
 * not waited for: losing them shows the slot's own earlier data or its
 * durable clear (ThinLayer's WritePlan.inPlace). Before the batch, not just
 * before a sync of this store: the kernel writes unsynced log pages back on
 * its own, in any order across files. A dependency's failed sync fails the
 * whole batch (none of its records is written). Cost and the measurements:
 * DESIGN.md, "Persistence and crash safety".
 *
 * Issue 15, the map log (`mirror`, lib/relay/map-log.ts): in a cluster
 * every batch is appended to the storage servers that keep the map logs of
 * its volumes after its dependencies are durable and before it is written
 * here (a failed append fails the batch: none of its records is written,
 * its writes are not acknowledged); deleteNow() is appended too; sync()
 * syncs the logs as well as this store. The servers' logs are then the
 * map, and this store a cache another relay rebuilds from them
 * (replaceCached). A log that lost records (its server's machine restarted
 * before a sync) is rewritten from this store (mirror.relog) before any
 * sync succeeds again, with no batch in flight; deleteNow and a relog run
 * one at a time, so a rewrite never races a deletion.
 *
 * Opening it takes LevelDB's lock: a second daemon on the same state
 * directory fails here, before it touches anything else.
 */
import { ClassicLevel } from 'classic-level'
import { VvfsError } from '../errors.js'
import type { DataLog } from '../storage/storage-system.js'
import { WriteGenerations } from '../storage/write-generations.js'
import { SYNC_KEY } from './key-space.js'
import { openLevelDurably } from '../durable-file.js'

type Producer = () => Buffer | null
/** The stores whose logged writes the record points at (read with the value). */
type Dependencies = () => Iterable<DataLog>

export interface MapPut {
  key: Buffer
  produce: Producer
  dependsOn?: Dependencies
}

/** Issue 15: where batches are logged besides this store (lib/relay/map-log.ts). */
export interface MapMirror {
  append(records: { key: Buffer; value: Buffer | null }[]): Promise<void>
  sync(): Promise<void>
  /** Some log lost records (its server's machine restarted): it is to be rewritten from this store before it counts as durable again. */
  readonly relogPending: boolean
  /** Rewrites what relogPending names from this store's records (`scan`); runs while nothing else appends. */
  relog(scan: (prefix: Buffer) => AsyncIterable<[Buffer, Buffer]>): Promise<void>
}

interface Waiter {
  resolve: () => void
  reject: (err: unknown) => void
}

export class MapStore {
  private pending = new Map<string, MapPut>()
  private waiters: Waiter[] = []
  private flushing = false
  private scheduled = false
  private readonly writes = new WriteGenerations()
  /** deleteNow and relog, one at a time (outsideBatches). */
  private unbatched: Promise<void> = Promise.resolve()
  private seq = 0
  /** Issue 15: the map log, in a cluster (set before anything is written). */
  mirror: MapMirror | null = null

  private constructor(private readonly db: ClassicLevel<Buffer, Buffer>) {}

  static async open(path: string): Promise<MapStore> {
    const db = new ClassicLevel<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer', writeBufferSize: 4 * 1024 * 1024 })
    try {
      await openLevelDurably(db, path)
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if ((err as { code?: string }).code === 'LEVEL_LOCKED' || cause?.code === 'LEVEL_LOCKED' || /lock/i.test(String(err))) {
        throw new VvfsError('STATE_LOCKED', `another vvfs daemon is using this state directory (${path} is locked)`, { cause: err })
      }
      throw new VvfsError('IO_ERROR', `cannot open the volume map store at ${path}: ${(err as Error).message}`, { cause: err })
    }
    return new MapStore(db)
  }

  /** The next change sequence number (records carry it as their version). */
  nextSeq(): number {
    return ++this.seq
  }

  noteSeq(seq: number): void {
    if (seq > this.seq) this.seq = seq
  }

  /** Writes the value `produce()` returns at flush time (null deletes), once `dependsOn()`'s logged writes are durable. */
  put(key: Buffer, produce: Producer, dependsOn?: Dependencies): Promise<void> {
    return this.putMany([{ key, produce, dependsOn }])
  }

  /**
   * Writes several keys in one LevelDB batch, so they change together or not
   * at all (a migration's switch: the map record, the retained source and the
   * bitmap page). Puts made in the same tick share a batch: the flush starts
   * on the next microtask.
   */
  putMany(items: MapPut[]): Promise<void> {
    for (const item of items) this.pending.set(item.key.toString('latin1'), item)
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject })
      if (!this.flushing && !this.scheduled) {
        this.scheduled = true
        queueMicrotask(() => {
          this.scheduled = false
          if (!this.flushing) void this.flush()
        })
      }
    })
  }

  async get(key: Buffer): Promise<Buffer | undefined> {
    return this.db.get(key)
  }

  async *scan(prefix: Buffer): AsyncGenerator<[Buffer, Buffer]> {
    const upper = Buffer.from(prefix)
    upper[upper.length - 1]!++
    for await (const entry of this.db.iterator({ gte: prefix, lt: upper })) yield entry as [Buffer, Buffer]
  }

  async deleteNow(keys: Buffer[]): Promise<void> {
    if (!keys.length) return
    await this.outsideBatches(async () => {
      await this.mirror?.append(keys.map((key) => ({ key, value: null })))
      try {
        await this.db.batch(keys.map((key) => ({ type: 'del' as const, key })))
      } finally {
        this.writes.complete()
      }
    })
  }

  /**
   * Makes every record put before the call durable. A map log that lost
   * records is rewritten first (relog): until that has succeeded, no sync
   * does.
   */
  async sync(): Promise<void> {
    while (this.flushing || this.pending.size > 0) await this.flush()
    while (this.mirror?.relogPending) await this.relogAlone()
    // Both to their end before an error is thrown: a caller that may treat it as another volume's (writes-lost) must not return before the local sync did.
    const results = await Promise.allSettled([this.mirror?.sync(), this.syncLocal()])
    for (const r of results) if (r.status === 'rejected') throw r.reason
  }

  /** Runs `fn` after the deleteNow / relog before it has ended: a relog's scan never races a deletion's append. */
  private outsideBatches<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.unbatched.then(fn)
    this.unbatched = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }

  /** The relog, with no batch in flight and none starting until it ends (puts meanwhile wait in `pending`). */
  private async relogAlone(): Promise<void> {
    while (this.flushing) await this.flush()
    this.flushing = true
    try {
      await this.outsideBatches(() => this.mirror!.relog((prefix) => this.scan(prefix)))
    } finally {
      this.flushing = false
      if (this.pending.size > 0 || this.waiters.length > 0) void this.flush()
    }
  }

  /**
   * Issue 15: rebuilds cached records from the map log (a relay that took a
   * volume over): deletes `drop`, writes `put`, here only — never logged.
   */
  async replaceCached(drop: Buffer[], put: { key: Buffer; value: Buffer }[]): Promise<void> {
    try {
      await this.db.batch([...drop.map((key) => ({ type: 'del' as const, key })), ...put.map(({ key, value }) => ({ type: 'put' as const, key, value }))])
    } finally {
      this.writes.complete()
    }
  }

  private async syncLocal(): Promise<void> {
    await this.writes.sync(async () => {
      try {
        await this.db.put(SYNC_KEY, Buffer.from(String(Date.now())), { sync: true })
      } catch (err) {
        throw new VvfsError('IO_ERROR', `volume map sync failed: ${(err as Error).message}`, { cause: err })
      }
    })
  }

  /** Flushes and syncs this store, then closes it (the map log is synced by whoever closes the storage systems under it: Manager.close, before them). */
  async close(): Promise<void> {
    while (this.flushing || this.pending.size > 0) await this.flush()
    await this.syncLocal()
    await this.db.close()
  }

  private async flush(): Promise<void> {
    if (this.flushing) {
      // The running flush loops until nothing is pending.
      await new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }))
      return
    }
    this.flushing = true
    try {
      while (this.pending.size > 0) {
        const batch = this.pending
        const waiters = this.waiters
        this.pending = new Map()
        this.waiters = []
        const dependencies = new Set<DataLog>()
        const ops = [...batch.values()].map(({ key, produce, dependsOn }) => {
          const v = produce()
          if (dependsOn) for (const d of dependsOn()) dependencies.add(d)
          return v === null ? { type: 'del' as const, key } : { type: 'put' as const, key, value: v }
        })
        try {
          await this.syncDependencies(dependencies)
          await this.mirror?.append(ops.map((op) => ({ key: op.key, value: op.type === 'put' ? op.value : null })))
          await this.db.batch(ops)
          this.writes.complete()
          for (const w of waiters) w.resolve()
        } catch (err) {
          this.writes.complete()
          const wrapped = err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `volume map write failed: ${(err as Error).message}`, { cause: err })
          for (const w of waiters) w.reject(wrapped)
        }
      }
      for (const w of this.waiters.splice(0)) w.resolve()
    } finally {
      this.flushing = false
    }
  }

  /** The power-loss order: the logged writes a batch's records depend on are durable before it is written. */
  private async syncDependencies(dependencies: Set<DataLog>): Promise<void> {
    const syncs: Promise<void>[] = []
    for (const d of dependencies) if (d.loggedPending) syncs.push(d.syncLogged())
    if (syncs.length) await Promise.all(syncs)
  }
}
