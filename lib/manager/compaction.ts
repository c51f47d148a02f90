/**
 * StoreCompaction: gives back the disk space a local store holds for
 * overwritten and deleted chunks (issue 17, target 5: ≤ 1.2 bytes on disk
 * per logical byte once idle). LevelDB keeps every version of a chunk until
 * a compaction merges the levels holding it; overwrites that land in the
 * upper levels (fio's random writes, a file system rewriting its journal)
 * left the stores at 1.97 bytes per logical byte, and an idle store never
 * compacts by itself (LevelDB compacts only when writes push a level over
 * its size).
 *
 * Two ways in: `vvfs storage compact NAME` (compactNow), and the idle
 * policy (tick, every second from the manager's timer): a local store that
 * has had no write for `idleMs` (since it was opened, when it has had none:
 * a store left bloated by an earlier run is looked at too), and whose directory
 * takes more than IDLE_RATIO × its allocated bytes (+ IDLE_SLACK), is
 * compacted once; it is looked at again only after new writes. The
 * allocated bytes of the free-space table are an upper bound of its live
 * chunk data (a chunk never written has no key), so the policy never
 * compacts a store already within the ratio of its allocations, and may
 * leave one whose allocated extents are only partly written above it; the
 * explicit command compacts regardless.
 *
 * Concurrency: at most one compaction per system (StorageSystem.compact
 * joins a running one) and, from the policy, one at a time in the daemon:
 * LevelDB merges on its own thread, but reads and writes the whole store
 * while it does, which is what host I/O must not meet. The policy does not
 * start while writes are recent, and a compaction it started ends at its
 * next step (COMPACT_STEP_CHUNKS of addresses, level-store.ts) once a write
 * reaches the store (the store is looked at again once idle again); close
 * ends any compaction at its next step. A step itself cannot be stopped
 * (LevelDB's manual compaction): writes that come during one run beside it.
 * Each step is reported (event storage.compact_progress).
 *
 * Crash order: compaction writes new tables and then records them in the
 * manifest, and only then deletes the old ones: a kill at any point leaves
 * either set readable with the same contents (test/system/compact.test.ts
 * kills the daemon right after a compaction and checks fsync'd data).
 * Failure: a failed compaction is logged (storage.compact_failed) and not
 * retried until new writes; the explicit command returns its error.
 */
import type { Logger } from '../log.js'
import { asVvfsError } from '../errors.js'
import type { Pool } from '../storage/pool.js'
import type { StorageSystem } from '../storage/storage-system.js'

/** Default idle time before the policy looks at a store (issue 17 asks for ≤ 1.2 after 60 s idle). */
export const DEFAULT_COMPACT_IDLE_MS = 30_000
/** The policy compacts a store taking more than this many bytes on disk per allocated byte. */
export const IDLE_RATIO = 1.2
/**
 * Plus this much: LevelDB's fixed overhead (the log, the manifest, the
 * identity record's table), which no compaction shrinks and which would make
 * an almost empty store look bloated forever.
 */
export const IDLE_SLACK = 8 * 1024 * 1024

export interface CompactionResult {
  storage: string
  beforeBytes: number
  afterBytes: number
  ms: number
  reason: 'command' | 'idle'
  /** False when it ended before its last step (writes resumed under the idle policy, or shutdown). */
  completed: boolean
}

export interface CompactionProgress {
  storage: string
  done: number
  total: number
}

export class StoreCompaction {
  /** Per system: the last write the policy has looked at (it waits for a newer one). */
  private readonly seen = new Map<number, number>()
  /** A compaction the policy started; it starts no other meanwhile. */
  private running: Promise<unknown> | null = null
  /** Set by stop (shutdown): every compaction ends at its next step. */
  private stopping = false

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
    private readonly idleMs: number,
    private readonly compacted: (r: CompactionResult) => void,
    private readonly progressed: (p: CompactionProgress) => void = () => {},
  ) {}

  /**
   * Compacts `system` now, measuring its directory before and after; under
   * the idle policy it ends at the next step once a write reaches the store.
   */
  async compactNow(system: StorageSystem, reason: CompactionResult['reason']): Promise<CompactionResult> {
    const started = Date.now()
    const lastWrite = system.lastWrite
    const beforeBytes = (await system.diskBytes()) ?? 0
    this.log.info({ event: 'storage.compacting', storage: system.name, reason, beforeBytes }, `compacting storage system ${system.name}`)
    const { completed } = await system.compact({
      shouldStop: () => this.stopping || (reason === 'idle' && system.lastWrite !== lastWrite),
      progress: (done, total) => this.progressed({ storage: system.name, done, total }),
    })
    const r: CompactionResult = { storage: system.name, beforeBytes, afterBytes: (await system.diskBytes()) ?? 0, ms: Date.now() - started, reason, completed }
    const how = completed ? 'compacted' : 'partly compacted (stopped between steps)'
    this.log.info({ event: 'storage.compacted', ...r }, `storage system ${system.name} ${how}: ${r.beforeBytes} → ${r.afterBytes} bytes on disk`)
    this.compacted(r)
    return r
  }

  /** Shutdown: every running compaction ends at its next step; the policy starts none. */
  stop(): void {
    this.stopping = true
  }

  /** The idle policy's look at the pool (the manager's timer, every second). */
  tick(now = Date.now()): void {
    if (this.idleMs <= 0 || this.running || this.stopping) return
    for (const system of this.pool.list()) {
      const last = system.lastWrite
      if (!system.compactable || system.isCompacting || this.seen.get(system.sid) === last) continue
      if (system.idleMs(now) < this.idleMs) continue
      this.seen.set(system.sid, last)
      this.running = this.compactIfBloated(system, last).finally(() => {
        this.running = null
      })
      return
    }
  }

  /** Waits for a compaction the policy started (close, tests). */
  async idle(): Promise<void> {
    await this.running
  }

  private async compactIfBloated(system: StorageSystem, last: number): Promise<void> {
    try {
      const disk = (await system.diskBytes()) ?? 0
      const allocated = system.table.allocated
      if (disk <= IDLE_RATIO * allocated + IDLE_SLACK) return
      // Writes resumed while du walked the directory: look again once they stop.
      if (system.lastWrite !== last) {
        this.seen.delete(system.sid)
        return
      }
      const r = await this.compactNow(system, 'idle')
      // Writes resumed and ended it early: look again once they stop.
      if (!r.completed) this.seen.delete(system.sid)
    } catch (err) {
      const e = asVvfsError(err)
      if (e.code === 'SHUTTING_DOWN') return
      this.log.error({ event: 'storage.compact_failed', storage: system.name, code: e.code, err: e.message }, `idle compaction of storage system ${system.name} failed`)
    }
  }
}
