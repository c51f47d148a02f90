/**
 * JournalLayer: the replication journal in a volume's stack, between Volume
 * and ReadAhead (lib/relay/stack.ts). While a pair is attached every change
 * that reaches it — write, discard, truncate (a resize), flush — is numbered
 * by the pair's Journal and its `accepted` waits for the entry to be durable;
 * without a pair it passes everything through untouched.
 *
 * Concurrency: Volume calls write/discard/truncate while it holds the
 * changed chunks' exclusive locks, and Journal.append numbers synchronously,
 * so overlapping changes are numbered in the order they are applied and
 * acknowledged (acknowledgement waits for `durable`, which resolves in
 * sequence order). Reads are untouched. `readBelow` takes the shared range
 * lock itself (the initial sync and resync copy read through it).
 *
 * What the primary may trim: an entry is trimmed only once the secondary
 * applied it AND the primary's data holds it durably (journal.ts). This layer
 * tracks the changes still on their way down (`pending`), and
 * `dataDurableThrough()` flushes the layers below and answers the highest
 * number whose change, and every earlier one, was stored before that flush.
 *
 * Crash order: a change is acknowledged once its entry is logged (it
 * survives a crash of the process; a host's flush syncs it); it goes below
 * only once the entry is synced — write-ahead, so the data never holds a
 * change its journal lacks, after a kill -9 or a power cut. At open (`replay`) the retained entries are applied again,
 * in order, to the layers below and flushed before any host I/O, so the
 * primary holds everything the secondary may hold (write-ahead redo). An
 * entry touching an extent marked dirty is skipped: that extent changed later
 * without an entry, and the resync copies it from the primary's data. The
 * same redo runs while the volume is in use when a flush below finds that a
 * storage server's machine restart may have taken stored writes (dataLost),
 * under an exclusive lock of the whole volume, before anything is trimmed.
 *
 * Handoff (journal-chain.ts, claims 1–7): `holdChanges()` holds every new
 * change at the door — it is numbered only after the hold is released, still
 * under its chunk locks (Volume releases them when the change is stored), so
 * the journal being sealed numbers nothing more while the epoch record is
 * committed, and the next journal (`attach`) numbers from where it ended.
 * Reads and changes already numbered go on; a held change waits one handoff
 * (a sync and a catalog commit), as a host write to an extent being copied
 * waits for that one copy.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_SIZE } from '../layout.js'
import { writeAfter, type ChunkLayer, type Write } from '../relay/chunk-layer.js'
import type { RangeLock } from '../relay/range-lock.js'
import { markKey } from './durable-log.js'
import { MAX_ENTRY_DATA, type Change } from './entry.js'
import type { Journal } from './journal.js'

/**
 * A redo that failed (a journal closed under it by a handoff, a store not
 * answering) is tried again after this long, doubling up to REDO_RETRY_MAX_MS
 * while it keeps failing: each try locks the whole volume until it fails.
 */
const REDO_RETRY_MS = 1000
const REDO_RETRY_MAX_MS = 60_000
/** Lag is kept per this many milliseconds of accepted changes (acceptedAt): at most this much too high, never too low. */
const LAG_BUCKET_MS = 10

export class JournalLayer implements ChunkLayer {
  private journal: Journal | null = null
  /** Numbers whose change has not settled below yet. */
  private readonly pending = new Set<number>()
  /**
   * When unapplied numbers were accepted (lag in seconds), oldest first, in
   * buckets of LAG_BUCKET_MS: `at` is when the bucket's first number was
   * accepted, `seq` its last. One object per write was young-generation work
   * on every 4 KiB write, and with the peer away a million of them per
   * 4 GiB journaled; the price is a lag up to LAG_BUCKET_MS too high.
   */
  private readonly acceptedAt: { seq: number; at: number }[] = []
  private wake: (() => void) | null = null
  /** The last commit promise the shipper's wake-up hangs on (one per journal batch, not one per change). */
  private wakeOn: Promise<void> | null = null
  private readonly wakeShipper = (): void => this.wake?.()
  /** Set while a handoff holds new changes (holdChanges); resolves when it lets them go. */
  private held: Promise<void> | null = null
  /** Changes of this volume (not flushes) given a number so far, and that count when the last flush entry was numbered. */
  private numbered = 0
  private flushMarkedAt = 0
  /** Writes below may have been lost (dataLost): the retained entries are to be applied again before anything is trimmed. */
  private redoNeeded = false
  /** Losses reported so far (dataLost): a redo clears redoNeeded only if none came while it ran. */
  private losses = 0
  private redoing: Promise<void> | null = null
  private retained: (() => Journal[]) | null = null
  /** The pause before the next try after a failed redo (backoff). */
  private redoRetryMs = REDO_RETRY_MS

  constructor(
    private readonly lower: ChunkLayer,
    readonly volNo: number,
    private readonly locks: RangeLock,
  ) {}

  /**
   * Starts journaling into `journal` (the caller replayed it first).
   * `retained`: every journal still holding entries of the volume, oldest
   * first (a handoff's predecessors, then `journal`) — what a redo replays;
   * by default `journal` alone.
   */
  attach(journal: Journal, retained?: () => Journal[]): void {
    this.journal = journal
    this.retained = retained ?? null
  }

  detach(): void {
    this.journal = null
    this.retained = null
    this.redoNeeded = false
    this.pending.clear()
    this.acceptedAt.length = 0
    this.wakeOn = null
  }

  get attached(): Journal | null {
    return this.journal
  }

  /**
   * Holds every change that arrives from now on until the returned release
   * is called (a handoff: see the file comment). Changes already numbered are
   * not held. Only one hold at a time; its release may be called more than
   * once (only the first lets go, so it never ends a later hold).
   */
  holdChanges(): () => void {
    if (this.held) throw new VvfsError('JOB_STATE', `changes of volume #${this.volNo} are already held (a handoff is under way)`)
    let release!: () => void
    const held = new Promise<void>((r) => (release = r))
    this.held = held
    return () => {
      if (this.held === held) this.held = null
      release()
    }
  }

  /** Resolves at the next durable entry (or after `ms`): the shipper's wait for work. */
  nextDurable(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = null
        resolve()
      }, ms)
      this.wake = () => {
        clearTimeout(t)
        this.wake = null
        resolve()
      }
    })
  }

  /** Seconds since the oldest entry after `applied` was accepted; 0 when none. */
  lagSeconds(applied: number): number {
    while (this.acceptedAt.length > 0 && this.acceptedAt[0]!.seq <= applied) this.acceptedAt.shift()
    return this.acceptedAt.length === 0 ? 0 : Math.max(0, (Date.now() - this.acceptedAt[0]!.at) / 1000)
  }

  read(first: number, count: number, into: Buffer): Promise<void> {
    return this.lower.read(first, count, into)
  }

  write(first: number, data: Buffer): Write {
    if (this.held) return writeAfter(this.held, () => this.write(first, data))
    const journal = this.journal
    if (!journal) return this.lower.write(first, data)
    const durable: Promise<void>[] = []
    const seqs: number[] = []
    for (let at = 0; at < data.length; at += MAX_ENTRY_DATA) {
      const a = journal.append({ kind: 'write', volume: this.volNo, offset: first * CHUNK_SIZE + at, data: data.subarray(at, Math.min(data.length, at + MAX_ENTRY_DATA)) })
      this.numbered++
      this.noted(a.seq, a.durable)
      durable.push(a.durable)
      if (a.seq !== null) seqs.push(a.seq)
    }
    // Answered once logged and its space is taken (a write-back cache: the
    // host's flush makes it durable); the data reaches storage only once the
    // entry (or dirty mark) is synced — write-ahead. Issued together, a kill -9 could keep the data
    // and lose the entry; after the entry was only logged, a power cut could
    // (a sync of the store for anyone else's write takes the data along).
    // Either way the primary would hold a write no entry describes, which
    // the secondary never gets (tests: "never lets a change reach the data
    // before its entry is synced", prefix-kills). Many writes share one sync
    // (the journal's group commit). The caller holds the chunks' lock until
    // stored, so later reads and writes of them see this one.
    const logged = durable.length === 1 ? durable[0]! : Promise.all(durable).then(() => undefined)
    // Space is taken now (in order, under the caller's locks); the data waits for the sync below.
    const synced = logged.then(() => journal.syncLogged())
    synced.catch(() => undefined) // the layer below reports it (a write refused first never waits for it)
    const below = this.lower.write(first, data, synced)
    const accepted = Promise.all([below.accepted, logged]).then(() => undefined)
    accepted.catch(() => undefined)
    // Handled below once the entry is logged; a refusal below (POOL_FULL) can come first and was an unhandled rejection until then.
    below.stored.catch(() => undefined)
    // Settles only after the entry is logged: the log may still be reading the caller's buffer until then (no copy).
    const stored = logged
      .then(() => Promise.all([below.stored, accepted]))
      .then(
        () => this.settled(seqs),
        (err: unknown) => {
          this.settled(seqs)
          // The entry stands (it may ship) but the data below did not change: the extent must be copied again.
          void this.remark(journal, first, data.length)
          throw err
        },
      )
    return { accepted, stored }
  }

  /** Marks the extents of a change that failed below dirty: the secondary may have it, the primary's data does not. */
  private remark(journal: Journal, first: number, bytes: number): Promise<void> {
    const marks: { volume: number; extent: number }[] = []
    for (let x = Math.floor((first * CHUNK_SIZE) / EXTENT_SIZE); x <= Math.floor((first * CHUNK_SIZE + Math.max(1, bytes) - 1) / EXTENT_SIZE); x++) marks.push({ volume: this.volNo, extent: x })
    return journal.addMarks(marks).catch(() => undefined)
  }

  async discard(first: number, count: number): Promise<void> {
    await this.change({ kind: 'discard', volume: this.volNo, offset: first * CHUNK_SIZE, length: count * CHUNK_SIZE }, () => this.lower.discard(first, count))
  }

  async truncate(chunkCount: number): Promise<void> {
    await this.change({ kind: 'resize', volume: this.volNo, size: chunkCount * CHUNK_SIZE }, () => this.lower.truncate(chunkCount))
  }

  /** A grow (or the exact size after a shrink): a resize entry; nothing below changes. */
  async resized(bytes: number): Promise<void> {
    await this.change({ kind: 'resize', volume: this.volNo, size: bytes }, async () => undefined)
  }

  /**
   * A host's flush: the flush entry synced with every entry before it, then
   * the data below. A flush with no change of this volume numbered since the
   * last flush entry gets no entry of its own (the same sync, then the same
   * flush below): its marker would say nothing the last one did not, and it
   * would count as a change in the epoch chain's comparison — a promoted
   * volume that was only read (each close is a flush) showed split-brain
   * against an old primary that had been ahead (group-promote.test.ts, one
   * fresh-clone CI run in two).
   */
  async flush(): Promise<void> {
    while (this.held) await this.held
    const journal = this.journal
    if (journal && this.numbered === this.flushMarkedAt) {
      await journal.syncLogged()
      return this.lower.flush()
    }
    this.flushMarkedAt = this.numbered
    await this.change({ kind: 'flush', volume: this.volNo }, () => this.lower.flush())
  }

  observe(first: number, count: number): void {
    this.lower.observe?.(first, count)
  }

  /** Reads chunks under the shared range lock: every numbered change to them is stored (the initial sync's and resync's copy). */
  async readBelow(first: number, count: number, into: Buffer): Promise<void> {
    const release = await this.locks.acquire(first, first + count, 'shared')
    try {
      await this.lower.read(first, count, into)
    } finally {
      release()
    }
  }

  /**
   * Flushes the layers below; answers the number through which every change
   * was stored before the flush (so is durable now). Trim no further.
   */
  async dataDurableThrough(): Promise<number> {
    const journal = this.journal
    if (!journal) return 0
    const last = journal.positions.lastAccepted
    let through = last
    for (const s of this.pending) if (s - 1 < through) through = s - 1
    try {
      await this.lower.flush()
    } catch (err) {
      // A loss below (dataLost, called before the flush throws) is redone here; anything else refuses the trim.
      if (!this.redoNeeded) throw err
    }
    // A redo under way (a host's fsync met the loss first) is waited for: its entries must not be trimmed before it applied them.
    while (this.redoNeeded || this.redoing) await (this.redoing ?? this.redo())
    return through
  }

  /**
   * Writes of this volume may be gone from its data (a flush below found that
   * a storage server's machine restarted before they were synced: the thin
   * layer's errseq, wired in lib/relay/stack.ts). Their entries are still in
   * the journal — nothing is trimmed before the data holds it — so they are
   * applied again (redo, as at open) at once, and before anything is trimmed.
   * The hosts are told all the same (their next fsync fails, once).
   */
  dataLost(): void {
    if (!this.journal) return
    this.redoNeeded = true
    this.losses++
    // Not awaited: it may be called from inside a flush that the redo's lock would wait for. A failure is retried and
    // reported by the next trim round (dataDurableThrough); none starts if a trim round's redo already did it.
    this.redoLater(0)
  }

  /** A redo in `ms` unless none is needed by then (a trim round's did it); joins one under way. */
  private redoLater(ms: number): void {
    setTimeout(() => {
      if (this.redoNeeded && this.journal) this.redo().catch(() => undefined)
    }, ms).unref()
  }

  /**
   * The redo: with the whole volume locked exclusive (no host change or
   * read, no migration copy, is under way, and every change numbered so far
   * has been stored — Volume holds its locks until then), the retained
   * entries are applied again in order, skipping extents marked dirty, and
   * flushed (replay). One at a time; a loss met by its own flush makes it
   * needed again.
   */
  private redo(): Promise<void> {
    this.redoing ??= (async () => {
      const release = await this.locks.acquire(0, Number.MAX_SAFE_INTEGER, 'exclusive')
      let failed = false
      try {
        const losses = this.losses
        const journal = this.journal
        if (journal) for (const j of this.retained?.() ?? [journal]) await this.replay(j)
        // Done only if no loss was reported meanwhile (its flush, or a host's, may have met another restart).
        if (this.losses === losses || !this.journal) this.redoNeeded = false
        this.redoRetryMs = REDO_RETRY_MS
      } catch (err) {
        failed = true
        throw err
      } finally {
        release()
        this.redoing = null
        // Another loss came meanwhile, or this one failed (a journal closed under it, a store not answering): again, at once or after a pause.
        if (this.redoNeeded && this.journal) {
          this.redoLater(failed ? this.redoRetryMs : 0)
          if (failed) this.redoRetryMs = Math.min(2 * this.redoRetryMs, REDO_RETRY_MAX_MS)
        }
      }
    })()
    return this.redoing
  }

  /**
   * Redo at open: applies the journal's retained entries to the layers below
   * in order (skipping extents marked dirty), then flushes. Call before the
   * volume serves I/O and before attach().
   */
  async replay(journal: Journal): Promise<number> {
    const marked = new Set(journal.dirtyMarks().map(markKey))
    const touchesMark = (offset: number, length: number): boolean => {
      for (let x = Math.floor(offset / EXTENT_SIZE); x <= Math.floor((offset + Math.max(1, length) - 1) / EXTENT_SIZE); x++) if (marked.has(markKey({ volume: this.volNo, extent: x }))) return true
      return false
    }
    let replayed = 0
    const p = journal.positions
    for (let from = p.trimmedThrough + 1; from <= p.lastDurable; ) {
      let entries: Awaited<ReturnType<Journal['read']>>
      try {
        entries = await journal.read(from, 16 * 1024 * 1024)
      } catch (err) {
        // Trimmed meanwhile (a redo while the primary trims what a flush without a loss made durable): on from what is left.
        if (!(err instanceof VvfsError && err.code === 'OUT_OF_RANGE') || journal.positions.trimmedThrough < from) throw err
        from = journal.positions.trimmedThrough + 1
        continue
      }
      if (entries.length === 0) break
      for (const e of entries) {
        from = e.seq + 1
        if (e.volume !== this.volNo) continue
        if (e.kind === 'flush') continue
        if (e.kind === 'resize') {
          await this.lower.truncate(Math.ceil(e.length / CHUNK_SIZE))
          continue
        }
        if (touchesMark(e.offset, e.length)) continue
        if (e.kind === 'write' && e.data) await this.lower.write(e.offset / CHUNK_SIZE, e.data).stored
        else await this.lower.discard(e.offset / CHUNK_SIZE, e.length / CHUNK_SIZE)
        replayed++
      }
    }
    await this.lower.flush()
    return replayed
  }

  private async change(change: Change, below: () => Promise<void>): Promise<void> {
    while (this.held) await this.held
    const journal = this.journal
    if (!journal) return below()
    const a = journal.append(change)
    if (change.kind !== 'flush') this.numbered++
    try {
      // Write-ahead, as for writes: the change below only once its entry is synced.
      this.noted(a.seq, a.durable)
      await a.durable
      await journal.syncLogged()
      await below()
    } finally {
      this.settled(a.seq === null ? [] : [a.seq])
    }
  }

  /** Records a new number as pending, and has the shipper woken when it is durable. */
  private noted(seq: number | null, durable: Promise<void>): void {
    if (seq === null) return
    this.pending.add(seq)
    const now = Date.now()
    const last = this.acceptedAt[this.acceptedAt.length - 1]
    if (last && now - last.at < LAG_BUCKET_MS) last.seq = seq
    else this.acceptedAt.push({ seq, at: now })
    if (durable !== this.wakeOn) {
      this.wakeOn = durable
      void durable.then(this.wakeShipper)
    }
  }

  private settled(seqs: number[]): void {
    for (const s of seqs) this.pending.delete(s)
  }
}
