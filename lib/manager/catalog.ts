/**
 * Catalog: the settings the manager holds (the claims' "first information") —
 * storage systems, hosts, volumes, pool settings and jobs — behind one
 * interface, `CatalogStore`, with revisions: `read()` gives the committed
 * data and its revision, `update(fn)` is the only way to change it, `watch`
 * reports commits. The file-backed store (`FileCatalog`, STATE/catalog.json)
 * is the default; an etcd store (several relays, one catalog) implements the
 * same interface: `update` is a transaction comparing the revision, `watch`
 * is etcd's watch.
 *
 * update(fn): `fn` gets a draft (a deep copy of the committed data) and
 * changes it; if it throws, nothing changes. The draft is then committed at
 * revision rev+1, atomically or not at all. `fn` is synchronous and may be
 * run more than once (after a lost race, on the fresher data), so it must
 * only read and change the draft: side effects (opening a store, mounting)
 * happen before or after, and in-memory state derived from the catalog is
 * updated once the commit succeeded.
 *
 * Concurrency: updates of one store run one at a time in call order. Across
 * processes (two daemons on one state directory, or a test's two stores) a
 * commit is a compare-and-swap on the revision stored in the file: under an
 * exclusive flock(2) on STATE/catalog.lock (native/flock), the file is read
 * again and written only if its revision is still the one `fn` saw; if not,
 * `fn` runs again on the file's data, at most UPDATE_ATTEMPTS times, then
 * the update fails with CATALOG_CONFLICT. flock, not O_EXCL lock files: the
 * kernel drops the lock when its holder dies (kill -9 included), so there
 * is no stale lock to detect, and each open file description is its own
 * holder, so two stores in one process exclude each other too. The lock is
 * held only for the read-compare-write (never while `fn` runs or a caller
 * waits), and taken without blocking the event loop (polled, LOCK_NB).
 *
 * Crash order of a commit: write STATE/catalog.json.tmp, fsync it, rename
 * it over catalog.json, fsync the directory. After kill -9 or a power cut the
 * file is the old revision or the new one, never a mix; a commit whose
 * promise resolved is durable. A failed write or rename leaves the old
 * revision (IO_ERROR, nothing changed); a failed directory fsync after the
 * rename reports IO_ERROR although the new revision may be visible (the next
 * update reads it from the file).
 *
 * read() answers from memory: the data as of this store's last commit or
 * read of the file. Another process's commits are seen at the next update
 * (which always compares with the file); an etcd store would keep it fresh
 * through its watch.
 *
 * Owns: STATE/catalog.json, STATE/catalog.lock. Never: holds volume maps
 * (the relay's MapStore).
 */
import type { RemoteRecord } from '../storage/remote/systems.js'
import { open, readFile, type FileHandle } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { writeFileDurably } from '../durable-file.js'
import { loadNativeAddon } from '../native-addon.js'
import { VvfsError } from '../errors.js'
import type { JobRecord } from '../migration/job.js'
import { DEFAULT_POLICY, type ConsolidationPolicy } from '../migration/planner.js'

export interface StorageRecord {
  sid: number
  name: string
  path: string
  capacity: number
  createdAt: string
  /** Designated for staged transfers: takes no ordinary allocations. */
  reserve?: boolean
  /** Being (or drained): takes no new allocations. */
  draining?: boolean
  /** Issue 14: a storage system on a storage server (`path` is then its ADDR:PORT). */
  remote?: RemoteRecord
  /** Issue 15: a local storage system made by this relay of a cluster: the others do not open it (its LevelDB is this relay's). */
  relay?: string
}

export interface HostRecord {
  name: string
  mount: string
  createdAt: string
}

export interface VolumeRecord {
  name: string
  id: string
  /** Small number that keys the volume's map records; never reused. */
  no: number
  size: number
  hosts: string[]
  createdAt: string
  /** 'deleting' survives a crash in the middle of a delete, which start finishes. */
  state: 'ready' | 'deleting'
  /** The storage system a migration consolidated the volume onto: new extents go there first. */
  home?: number
  /** Issue 13: a replication secondary of this pair — read-only for hosts. */
  replicaOf?: string
  /** Issue 15: the relay of a cluster that made the volume or took it over last (it claims it at start). */
  relay?: string
  /** Issue 15: the storage server (sid) that keeps the volume's map log (lib/relay/map-log.ts): any relay can take it over. */
  mapLog?: number
}

export type PoolFullMode = 'error' | 'queue'

export interface PoolSettings {
  warnPercent: number
  fullMode: PoolFullMode
  queueTimeoutMs: number
}

export interface CatalogData {
  format: 1
  nextVolumeNo: number
  nextSid: number
  storage: StorageRecord[]
  hosts: HostRecord[]
  volumes: VolumeRecord[]
  pool: PoolSettings
  consolidation: ConsolidationPolicy
  nextJobNo: number
  jobs: JobRecord[]
}

export const DEFAULT_POOL_SETTINGS: PoolSettings = { warnPercent: 80, fullMode: 'error', queueTimeoutMs: 60_000 }

export function emptyCatalog(): CatalogData {
  return {
    format: 1,
    nextVolumeNo: 1,
    nextSid: 1,
    nextJobNo: 1,
    storage: [],
    hosts: [],
    volumes: [],
    pool: { ...DEFAULT_POOL_SETTINGS },
    consolidation: { ...DEFAULT_POLICY },
    jobs: [],
  }
}

/** Data as committed: frozen at run time too, so a change outside update() throws. */
export type Committed<T> = T extends (infer E)[] ? readonly Committed<E>[] : T extends object ? { readonly [K in keyof T]: Committed<T[K]> } : T

export interface CatalogSnapshot {
  /** Revision of the data: 0 for a catalog written before revisions, +1 per commit. */
  rev: number
  data: Committed<CatalogData>
}

export interface CatalogStore {
  /** True when the store was created by this open (a new state directory). */
  readonly isNew: boolean
  read(): CatalogSnapshot
  /**
   * The only mutation: applies `fn` to a draft and commits it, or nothing
   * if `fn` throws or the commit fails. Resolves once durable.
   */
  update<T>(fn: (draft: CatalogData) => T): Promise<{ rev: number; result: T }>
  /**
   * Calls `listener` with each snapshot committed after `sinceRev` (the file
   * store: at once with the latest if it is newer, then at each commit or
   * newer revision this store reads; intermediate revisions of another
   * process may be collapsed into the latest). Returns the unsubscribe.
   */
  watch(sinceRev: number, listener: (snapshot: CatalogSnapshot) => void): () => void
  /** Lets go of what the store holds open (the etcd store's client and watch); the file store holds nothing. */
  close?(): Promise<void>
}

/**
 * What both stores share: the snapshot read() answers, updates run one at
 * a time in call order, and the watchers. A store implements `commit`.
 */
export abstract class SerialCatalog implements CatalogStore {
  private queue: Promise<unknown> = Promise.resolve()
  private readonly listeners = new Set<(s: CatalogSnapshot) => void>()

  protected constructor(
    protected snapshot: CatalogSnapshot,
    readonly isNew: boolean,
  ) {}

  read(): CatalogSnapshot {
    return this.snapshot
  }

  update<T>(fn: (draft: CatalogData) => T): Promise<{ rev: number; result: T }> {
    const next = this.queue.then(() => this.commit(fn))
    this.queue = next.catch(() => {})
    return next
  }

  watch(sinceRev: number, listener: (snapshot: CatalogSnapshot) => void): () => void {
    this.listeners.add(listener)
    if (this.snapshot.rev > sinceRev) listener(this.snapshot)
    return () => this.listeners.delete(listener)
  }

  /** Resolves once the updates called so far have settled. */
  protected settled(): Promise<unknown> {
    return this.queue
  }

  protected abstract commit<T>(fn: (draft: CatalogData) => T): Promise<{ rev: number; result: T }>

  /** A listener that throws does not undo the commit nor stop the others: its error becomes a process warning. */
  protected notify(): void {
    const s = this.snapshot
    for (const w of this.listeners) {
      try {
        w(s)
      } catch (err) {
        process.emitWarning(`a catalog watcher failed at revision ${s.rev}: ${(err as Error).message}`)
      }
    }
  }
}

/**
 * How often update() runs fn again after losing the compare-and-swap to
 * another process before CATALOG_CONFLICT. Catalog commits are management
 * operations and job status changes (a few per second at most), so losing
 * more than a few times in a row means a writer that never lets go.
 */
export const UPDATE_ATTEMPTS = 8

/**
 * The lock is held for one read, write, fsync and rename (a few ms; tens on
 * a loaded disk): a poll every LOCK_POLL_MS costs nothing, and a holder
 * that keeps it LOCK_WAIT_MS is stuck, not busy.
 */
const LOCK_POLL_MS = 2
const LOCK_WAIT_MS = 10_000

interface FlockAddon {
  tryLockExclusive(fd: number): boolean
  unlock(fd: number): void
}

let flock: FlockAddon | undefined

export function deepFreeze<T>(value: T): Committed<T> {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value as Committed<T>
}

/** A plain, mutable copy of committed data (a draft, or a record to keep beside the catalog). */
export function draftOf<T>(value: Committed<T>): T {
  return structuredClone(value) as T
}

/** The file-backed catalog store: STATE/catalog.json. */
export class FileCatalog extends SerialCatalog {
  private constructor(
    readonly path: string,
    snapshot: CatalogSnapshot,
    isNew: boolean,
  ) {
    super(snapshot, isNew)
  }

  static async open(stateDir: string): Promise<FileCatalog> {
    const path = join(stateDir, 'catalog.json')
    const found = await readCatalogFile(path)
    if (found) return new FileCatalog(path, found, false)
    // A new state directory: the empty catalog is its first commit.
    const catalog = new FileCatalog(path, { rev: 0, data: deepFreeze(emptyCatalog()) }, true)
    await catalog.update(() => {})
    return catalog
  }

  protected async commit<T>(fn: (draft: CatalogData) => T): Promise<{ rev: number; result: T }> {
    for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt++) {
      const base = this.snapshot
      const draft = draftOf<CatalogData>(base.data)
      const result = fn(draft)
      const rev = base.rev + 1
      const lock = await this.lock()
      let won: boolean
      try {
        const onDisk = await readCatalogFile(this.path)
        won = (onDisk?.rev ?? 0) === base.rev
        if (won) await this.write(JSON.stringify({ rev, ...draft }, null, 2) + '\n')
        else this.snapshot = onDisk!
      } finally {
        await this.unlock(lock)
      }
      if (won) this.snapshot = { rev, data: deepFreeze(draft) }
      this.notify()
      if (won) return { rev, result }
    }
    throw new VvfsError('CATALOG_CONFLICT', `${this.path}: another process committed first ${UPDATE_ATTEMPTS} times in a row; try again`)
  }

  private async lock(): Promise<FileHandle> {
    flock ??= loadNativeAddon<FlockAddon>('flock', 'the catalog lock')
    const file = await open(join(dirname(this.path), 'catalog.lock'), 'a', 0o600)
    const deadline = Date.now() + LOCK_WAIT_MS
    try {
      while (!flock.tryLockExclusive(file.fd)) {
        if (Date.now() > deadline) throw new VvfsError('CATALOG_CONFLICT', `${this.path}: another process has held the catalog lock for ${LOCK_WAIT_MS / 1000}s`)
        await new Promise((r) => setTimeout(r, LOCK_POLL_MS))
      }
      return file
    } catch (err) {
      await file.close()
      throw err
    }
  }

  private async unlock(file: FileHandle): Promise<void> {
    // Closing the only descriptor of the open file description releases the flock.
    await file.close()
  }

  private async write(text: string): Promise<void> {
    try {
      await writeFileDurably(this.path, text)
    } catch (err) {
      throw new VvfsError('IO_ERROR', `cannot write ${this.path}: ${(err as Error).message}`, { cause: err })
    }
  }
}

/** The catalog file as a snapshot (defaults filled in for fields added later), or undefined if there is none. */
async function readCatalogFile(path: string): Promise<CatalogSnapshot | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new VvfsError('IO_ERROR', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
  return parseCatalog(text, path)
}

/** A stored catalog (file text, or an etcd value: `where` names it) as a snapshot, defaults filled in for fields added later. */
export function parseCatalog(text: string, where: string): CatalogSnapshot {
  let parsed: CatalogData & { rev?: number }
  try {
    parsed = JSON.parse(text) as CatalogData & { rev?: number }
  } catch (err) {
    throw new VvfsError('STATE_CORRUPT', `${where} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
  const { rev, ...data } = parsed
  if (data.format !== 1) throw new VvfsError('STATE_CORRUPT', `${where} has unknown format ${String(data.format)}`)
  if (rev !== undefined && (!Number.isSafeInteger(rev) || rev < 0)) throw new VvfsError('STATE_CORRUPT', `${where} has revision ${String(rev)}`)
  data.pool = { ...DEFAULT_POOL_SETTINGS, ...(data.pool ?? {}) }
  data.consolidation = { ...DEFAULT_POLICY, ...(data.consolidation ?? {}) }
  data.jobs ??= []
  data.nextJobNo ??= 1
  // A catalog written before revisions is revision 0.
  return { rev: rev ?? 0, data: deepFreeze(data) }
}
