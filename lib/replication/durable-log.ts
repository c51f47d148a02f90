/**
 * DurableLog: where a journal (lib/replication/journal.ts) keeps what must
 * survive a crash of the primary — its entries by sequence number, the
 * number it trimmed through (so numbering resumes past it even when every
 * entry is trimmed), its mode, and its dirty-extent marks (the `bitmap`
 * policy's record of changes that got no entry). The real one is a segment
 * log on the volume's home storage system (journal-log.ts); MemoryDurableLog
 * below is the model the tests kill at will. The secondary's redo log
 * (secondary.ts) is a segment log too, its state kept as the batches' `meta`.
 *
 * Contract: `commit` applies one batch atomically and resolves only once it
 * is durable (synced); batches become durable in commit order (a later batch
 * never survives a crash that loses an earlier one — a sequential log).
 * Everything `load` returns is durable. The journal commits one batch at a
 * time (group commit), so an implementation need not order concurrent ones.
 *
 * Failure modes: a failed commit rejects (IO_ERROR) and may or may not have
 * landed — the journal treats its entries as lost-or-not and marks their
 * extents dirty. After close() every call rejects with SHUTTING_DOWN.
 */
import { VvfsError } from '../errors.js'

/** `journaling`: every change gets an entry. `bitmap`: the journal stopped (limit, failure); changes are dirty-extent marks until a resync. */
export type JournalMode = 'journaling' | 'bitmap'

/** An extent (EXTENT_SIZE unit) of a volume changed without an entry; extent SIZE_MARK means the volume's size changed. */
export interface DirtyMark {
  volume: number
  extent: number
}
export const SIZE_MARK = 0xffffffff
/**
 * Extent WHOLE_MARK: any byte of the volume may differ on the secondary,
 * released ones included (a takeover: the old owner's journal is gone). The
 * resync zeroes the whole secondary volume, durably, before it copies the
 * extents marked beside it (the allocated ones).
 */
export const WHOLE_MARK = 0xfffffffe

export interface LogRecord {
  seq: number
  record: Buffer
}

/** An entry on its way into the log: its record in pieces (entry.ts encodeEntryParts — a write's data is the caller's buffer, not a copy; it must not change until commit returns). */
export interface NewRecord {
  seq: number
  parts: Buffer[]
}

export interface LogBatch {
  entries?: NewRecord[]
  /** Drops entries with seq ≤ this and remembers the number. */
  trimThrough?: number
  addDirty?: DirtyMark[]
  removeDirty?: DirtyMark[]
  mode?: JournalMode
  /** The owner's own state, kept whole and atomically with the batch (the secondary's SecondaryState); load() gives the last one committed. */
  meta?: Buffer
}

export interface LogContents {
  /** null for a log never committed to. */
  mode: JournalMode | null
  trimmedThrough: number
  /** Retained entries' sequence numbers and encoded sizes, ascending. */
  retained: { seq: number; bytes: number }[]
  dirty: DirtyMark[]
  /** The last `meta` committed; null when none was. */
  meta: Buffer | null
}

export interface DurableLog {
  load(): Promise<LogContents>
  /** `sync` false: logged, not synced — it survives a process crash, not a power cut, until a later synced commit (the log is sequential). */
  commit(batch: LogBatch, sync?: boolean): Promise<void>
  /** Retained entries with from ≤ seq ≤ through, ascending, stopping after the first that reaches maxBytes in total. */
  read(from: number, through: number, maxBytes: number): Promise<LogRecord[]>
  /** Makes every batch committed before the call durable, without holding up commits made meanwhile. */
  syncLogged(): Promise<void>
  close(): Promise<void>
}

export function markKey(m: DirtyMark): string {
  return `${m.volume}:${m.extent}`
}

interface ModelState {
  mode: JournalMode | null
  trimmedThrough: number
  entries: Map<number, Buffer>
  dirty: Map<string, DirtyMark>
  meta: Buffer | null
}

function cloneState(s: ModelState): ModelState {
  return { mode: s.mode, trimmedThrough: s.trimmedThrough, entries: new Map(s.entries), dirty: new Map(s.dirty), meta: s.meta }
}

function applyBatch(s: ModelState, b: LogBatch): void {
  if (b.trimThrough !== undefined && b.trimThrough > s.trimmedThrough) {
    s.trimmedThrough = b.trimThrough
    for (const seq of [...s.entries.keys()]) if (seq <= b.trimThrough) s.entries.delete(seq)
  }
  for (const e of b.entries ?? []) if (e.seq > s.trimmedThrough) s.entries.set(e.seq, Buffer.concat(e.parts))
  for (const m of b.addDirty ?? []) s.dirty.set(markKey(m), m)
  for (const m of b.removeDirty ?? []) s.dirty.delete(markKey(m))
  if (b.mode) s.mode = b.mode
  if (b.meta) s.meta = Buffer.from(b.meta)
}

/**
 * The in-memory model with honest power-cut semantics: a commit is visible
 * at once and durable when its sync completes (on the next turn of the
 * event loop, or when the test releases held syncs); `powerCut()` leaves
 * exactly the synced batches, and commits still in flight never answer (the
 * process that made them is dead). `failNext()` makes the next commit fail.
 */
export class MemoryDurableLog implements DurableLog {
  private durable: ModelState = { mode: null, trimmedThrough: 0, entries: new Map(), dirty: new Map(), meta: null }
  private visible: ModelState = cloneState(this.durable)
  private pending: { batch: LogBatch; resolve: () => void }[] = []
  /** Logged batches no sync covered yet (a power cut drops them). */
  private loggedOnly: LogBatch[] = []
  private holding = false
  private failures: { error: VvfsError; landed: boolean }[] = []
  private closed = false
  /** Commits completed (synced): for tests that count syncs. */
  syncs = 0

  /** Keeps commits pending until release() (or a power cut drops them). */
  hold(): void {
    this.holding = true
  }

  release(): void {
    this.holding = false
    this.settle()
  }

  /** Commits waiting for their sync. */
  get unsynced(): number {
    return this.pending.length
  }

  /** The next commit rejects with IO_ERROR; `landed` says whether it reached the log anyway (it is then durable). */
  failNext(landed = false): void {
    this.failures.push({ error: new VvfsError('IO_ERROR', 'injected journal write failure'), landed })
  }

  /**
   * The power fails: the log keeps what was synced. Returns the log the
   * restarted process opens (this object, reset to its durable state); the
   * commits in flight at the cut never answer.
   */
  powerCut(): this {
    this.pending = []
    this.loggedOnly = []
    this.holding = false
    this.failures = []
    this.visible = cloneState(this.durable)
    this.closed = false
    return this
  }

  async load(): Promise<LogContents> {
    this.check()
    const s = this.durable
    // After a restart visible === durable; before one, load reads what is durable only.
    return {
      mode: s.mode,
      trimmedThrough: s.trimmedThrough,
      retained: [...s.entries].sort((a, b) => a[0] - b[0]).map(([seq, record]) => ({ seq, bytes: record.length })),
      dirty: [...s.dirty.values()],
      meta: s.meta,
    }
  }

  commit(batch: LogBatch, sync = true): Promise<void> {
    this.check()
    if (!sync) {
      // Written to the log, not synced: visible at once, durable with the next synced commit.
      applyBatch(this.visible, batch)
      this.loggedOnly.push(batch)
      return new Promise((resolve) => setImmediate(resolve))
    }
    const failure = this.failures.shift()
    if (failure) {
      if (failure.landed) {
        applyBatch(this.visible, batch)
        applyBatch(this.durable, batch)
      }
      return Promise.reject(failure.error)
    }
    applyBatch(this.visible, batch)
    return new Promise((resolve) => {
      this.pending.push({ batch, resolve })
      if (!this.holding) setImmediate(() => this.settle())
    })
  }

  async read(from: number, through: number, maxBytes: number): Promise<LogRecord[]> {
    this.check()
    const out: LogRecord[] = []
    let bytes = 0
    for (const seq of [...this.visible.entries.keys()].sort((a, b) => a - b)) {
      if (seq < from || seq > through) continue
      const record = this.visible.entries.get(seq) as Buffer
      out.push({ seq, record })
      bytes += record.length
      if (bytes >= maxBytes) break
    }
    return out
  }

  /** The batches logged before the call become durable (after release() while held). */
  async syncLogged(): Promise<void> {
    this.check()
    // The batches themselves, not a count: a synced commit meanwhile may make them durable and others be logged after.
    const covered = new Set(this.loggedOnly)
    while (this.holding) await new Promise((r) => setTimeout(r, 5))
    await new Promise((r) => setImmediate(r))
    // A power cut meanwhile dropped them: nothing to make durable.
    while (this.loggedOnly.length > 0 && covered.has(this.loggedOnly[0]!)) applyBatch(this.durable, this.loggedOnly.shift()!)
    this.syncs++
  }

  async close(): Promise<void> {
    this.closed = true
  }

  /** The durable state, for assertions. */
  durableEntries(): Map<number, Buffer> {
    return new Map(this.durable.entries)
  }

  private settle(): void {
    if (this.holding) return
    for (const p of this.pending.splice(0)) {
      for (const u of this.loggedOnly.splice(0)) applyBatch(this.durable, u)
      applyBatch(this.durable, p.batch)
      this.syncs++
      p.resolve()
    }
  }

  private check(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', 'the journal log is closed')
  }
}
