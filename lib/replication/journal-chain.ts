/**
 * JournalChain: a replicated volume's journals across the epochs of its
 * chain (lib/replication/epoch.ts) — the journal of the current home, which
 * numbers every change, and the sealed journals of earlier homes that still
 * hold entries the secondary has not applied. This is the handoff of claims
 * 1–7: when the primary volume migrates from storage system A to B, A's
 * journal is sealed at its last number, B's journal numbers from the next
 * one, and the pair ships A's remainder and then B's entries in one order.
 *
 * Handoff, in order (handoff()):
 *   1. hold new changes at the journal layer (JournalLayer.holdChanges);
 *   2. drain and sync A's journal: lastA = its last number, all durable;
 *   3. create B's log (a leftover of a handoff that never committed is
 *      deleted first) starting after lastA; if A could not ship its entries
 *      in order (mode bitmap or broken, or dirty marks of a sync under way),
 *      B gets marks for every extent A's retained entries and marks touch —
 *      the bounded resync — and A is dropped after the commit;
 *   4. commit the epoch record {epoch, home B, firstSeq lastA + 1,
 *      predecessor (epoch, A, lastA)} together with the management
 *      information (the extents of A's entries not yet acknowledged) — one
 *      durable write (the pair's job record, one catalog update);
 *   5. B becomes current (attached to the layer), A a predecessor; release.
 * Crash order: before 4 the chain ends at A, and open() deletes B's
 * uncommitted log (fully A); after 4 the chain ends at B, both logs exist
 * (B's was synced before the commit), and open() replays A's retained
 * entries then B's and ships A's remainder first (fully B). A failed commit
 * (which may or may not have landed) is undone by committing the old chain
 * again; if that fails too the error is reported and the held changes go on
 * at A — the catalog may then say B: the next open follows the catalog.
 *
 * Reads for shipping go to the journal whose epoch owns the number; trims go
 * to every journal in turn, and a predecessor trimmed through its last
 * number is closed and its log deleted.
 *
 * When entries can no longer be shipped (a predecessor's log unreadable at
 * open, or absorbed by a resync), the chain says so (`lost`) and the pair
 * falls back to a resync of the extents named by the handoff's management
 * information (bounded), or of everything allocated if that is unknown.
 *
 * Concurrency: one handoff at a time (the caller serializes), host changes
 * held during it; reads and trims run on the event loop beside appends as
 * with one journal. Only the pair's loop reads and trims.
 */
import { rm, readdir } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { crashPoint } from '../crash-points.js'
import { VvfsError, asVvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import { markKey, type DirtyMark, type DurableLog, type LogRecord } from './durable-log.js'
import { handoff, rangeOf, storageOfHome, takeover, type EpochChain, type EpochRecord } from './epoch.js'
import { Journal, marksOf, type JournalOptions } from './journal.js'
import { SegmentDurableLog } from './journal-log.js'

/** Where the logs of a pair's epochs are kept. */
export interface JournalLogs {
  /** Opens the log of `epoch` (an empty one if it has none). */
  open(epoch: number): Promise<DurableLog>
  exists(epoch: number): Promise<boolean>
  /** Deletes the (closed) log of `epoch`. */
  remove(epoch: number): Promise<void>
  /** The epochs that have a log. */
  epochs(): Promise<number[]>
}

/** Epoch 1's log is `base` itself (pairs made before handoffs existed); epoch e > 1's is `base.e<e>`. */
export function journalDirOf(base: string, epoch: number): string {
  return epoch === 1 ? base : `${base}.e${epoch}`
}

/** Deletes every epoch's log of a pair (replicate stop). */
export async function removeJournalDirs(base: string): Promise<void> {
  const logs = segmentJournalLogs(base)
  for (const e of await logs.epochs()) await logs.remove(e)
}

/** Segment logs (journal-log.ts) in directories beside each other (STATE/journals/job-<id>[.e<epoch>]). */
export function segmentJournalLogs(base: string): JournalLogs {
  const exists = async (epoch: number) => (await epochsOf(base)).includes(epoch)
  return {
    open: (epoch) => SegmentDurableLog.open(journalDirOf(base, epoch)),
    exists,
    remove: (epoch) => rm(journalDirOf(base, epoch), { recursive: true, force: true }),
    epochs: () => epochsOf(base),
  }
}

async function epochsOf(base: string): Promise<number[]> {
  const name = basename(base)
  let names: string[]
  try {
    names = await readdir(dirname(base))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: number[] = []
  for (const n of names) {
    if (n === name) out.push(1)
    else if (n.startsWith(`${name}.e`) && /^\d+$/.test(n.slice(name.length + 2))) out.push(Number(n.slice(name.length + 2)))
  }
  return out.sort((a, b) => a - b)
}

/**
 * A relay that took a replicated volume over (issue 15) has none of the old
 * owner's journal: it was in the old owner's state directory. This starts
 * the pair over here, before JournalChain.open: deletes any log of the pair
 * left here by an earlier ownership, writes the log of a new epoch
 * (epoch.ts, takeover: numbered past anything the old owner gave out) with
 * `marks` — what the secondary may lack — synced, and answers the
 * chain to commit. Crash order: the log is written before the chain is
 * committed; a crash between leaves a log of an epoch the chain lacks,
 * which the next open deletes (as a handoff that never committed) before
 * starting over again.
 */
export async function takeOverJournal(p: {
  logs: JournalLogs
  chain: EpochChain
  /** The volume's home storage system here. */
  home: string
  marks: DirtyMark[]
  journal: Omit<JournalOptions, 'epoch' | 'firstSeq'>
  /** The old owner's last number, when known (epoch.ts, takeover). */
  lastSeq?: number
}): Promise<EpochChain> {
  const record = takeover(p.chain, p.home, p.lastSeq)
  for (const e of await p.logs.epochs()) await p.logs.remove(e)
  const log = await p.logs.open(record.epoch)
  try {
    const journal = await Journal.open(log, { ...p.journal, epoch: record.epoch, firstSeq: record.firstSeq })
    await journal.addMarks(p.marks)
    await journal.sync()
    await journal.close()
  } finally {
    await log.close()
  }
  return [...p.chain, record]
}

/** What of the journal layer a chain uses (JournalLayer). */
export interface HandoffLayer {
  attach(journal: Journal, retained?: () => Journal[]): void
  replay(journal: Journal): Promise<number>
  holdChanges(): () => void
}

/** Management information of a handoff: what the new home must resend if the old home's entries are lost. */
export interface HandoffPending {
  /** The epoch the handoff made. */
  epoch: number
  /** The secondary had applied through this when the handoff began: the marks cover what comes after. */
  since: number
  /** The extents of the old home's entries after `since`; null when too many to list (resend everything allocated). */
  marks: DirtyMark[] | null
}

/** The one durable write of a handoff: the chain and its management information (null: leave what is recorded). */
export interface ChainCommit {
  chain: EpochChain
  pending: HandoffPending | null
}

export interface JournalChainSpec {
  logs: JournalLogs
  layer: HandoffLayer
  /** The chain as committed (the pair's job record). */
  chain: EpochChain
  /** Options of every journal (settings, mode changes, sync policy). */
  journal: Omit<JournalOptions, 'epoch' | 'firstSeq'>
  /** Commits the new chain and management information durably and atomically. */
  commit(c: ChainCommit): Promise<void>
  /** Every extent of the volume (and its size): what a handoff marks when it cannot list what the old home's journal lacks. */
  everything?(): DirtyMark[]
  log: Logger
  pair: string
}

/** Entries that can no longer be shipped, and why. */
export interface LostEntries {
  epoch: number
  reason: string
  /** The current epoch's own entries are lost too: only a resync of everything allocated is sure. */
  all: boolean
}

/**
 * Above this many retained bytes of A, the handoff does not read A's entries
 * to list their extents (the list then says "everything allocated"): reading
 * 64 MiB of entries took ~0.1 s on this machine (LevelDB; a segment log reads them in 4 MiB spans), paid while host
 * changes are held.
 */
const PENDING_READ_MAX_BYTES = 64 * 1024 * 1024
/** The most extents the management information lists (1 MiB extents: 64 GiB of changes). */
const PENDING_MAX_MARKS = 65536

interface Link {
  epoch: number
  journal: Journal
  log: DurableLog
  /** The epoch's last number (Infinity for the current one). */
  lastSeq: number
}

export class JournalChain {
  private links: Link[]
  private chainNow: EpochChain
  /** Listings of the links' entries under way (handoff, absorbPredecessors): a trim then leaves a spent predecessor open for the next trim to drop. */
  private listing = 0
  /** Entries of an earlier epoch this chain could not keep (its log lost); the pair resyncs. */
  lost: LostEntries | null

  private constructor(
    private readonly spec: JournalChainSpec,
    links: Link[],
    lost: LostEntries | null,
  ) {
    this.links = links
    this.chainNow = spec.chain
    this.lost = lost
  }

  /**
   * Opens the journals of the chain: deletes logs of epochs the chain does
   * not have (a handoff that never committed), opens the current one and the
   * predecessors that still hold entries. replay() then brings the volume up
   * to date and attaches the current one.
   */
  static async open(spec: JournalChainSpec): Promise<JournalChain> {
    const chain = spec.chain
    const current = chain[chain.length - 1]!
    const links: Link[] = []
    let lost: LostEntries | null = null
    const closeAll = async () => {
      for (const l of links) await l.log.close().catch(() => undefined)
    }
    try {
      for (const epoch of await spec.logs.epochs()) {
        if (epoch > current.epoch) {
          await spec.logs.remove(epoch)
          spec.log.warn({ event: 'replication.handoff_abandoned', pair: spec.pair, epoch }, `a handoff to epoch ${epoch} did not commit before a crash: its log is deleted, the journal stays at ${current.home}`)
          continue
        }
        if (epoch === current.epoch) continue
        const range = rangeOf(chain, epoch)
        if (!range) {
          // Older than the chain keeps (it cannot be): nothing there can be shipped.
          await spec.logs.remove(epoch)
          continue
        }
        try {
          const log = await spec.logs.open(epoch)
          const journal = await Journal.open(log, { ...spec.journal, epoch })
          const p = journal.positions
          if (p.trimmedThrough >= range.lastSeq) {
            await journal.close()
            await log.close()
            await spec.logs.remove(epoch)
            continue
          }
          if (p.lastDurable < range.lastSeq || p.mode !== 'journaling') throw new VvfsError('STATE_CORRUPT', `the log of epoch ${epoch} ends at ${p.lastDurable} (mode ${p.mode}), its epoch at ${range.lastSeq}`)
          links.push({ epoch, journal, log, lastSeq: range.lastSeq })
        } catch (err) {
          const e = asVvfsError(err)
          lost = { epoch, reason: e.message, all: false }
          spec.log.error({ event: 'replication.handoff_lost', pair: spec.pair, epoch, code: e.code, err: e.message }, `the entries of epoch ${epoch} can no longer be shipped: ${e.message}`)
          for (const l of links.splice(0)) await l.log.close().catch(() => undefined)
          await spec.logs.remove(epoch).catch(() => undefined)
        }
      }
      if (lost) {
        // Entries after a lost epoch would ship across a gap: they are absorbed into the resync too.
        for (const l of links.splice(0)) {
          await l.log.close().catch(() => undefined)
          await spec.logs.remove(l.epoch)
        }
      }
      if (current.epoch > 1 && !(await spec.logs.exists(current.epoch))) {
        lost = { epoch: current.epoch, reason: `the log of epoch ${current.epoch} is missing`, all: true }
        spec.log.error({ event: 'replication.handoff_lost', pair: spec.pair, epoch: current.epoch }, lost.reason)
      }
      const log = await spec.logs.open(current.epoch)
      const journal = await Journal.open(log, { ...spec.journal, epoch: current.epoch, firstSeq: current.firstSeq })
      links.push({ epoch: current.epoch, journal, log, lastSeq: Infinity })
    } catch (err) {
      await closeAll()
      throw err
    }
    return new JournalChain(spec, links, lost)
  }

  /**
   * Redo: replays the retained entries of every epoch, oldest first, into
   * the volume and attaches the current journal. Call before the volume
   * serves I/O, once the space every job holds is marked (a replay
   * allocates: JobDriver.prepare).
   */
  async replay(): Promise<void> {
    for (const l of this.links) {
      const n = await this.spec.layer.replay(l.journal)
      if (n > 0) this.spec.log.info({ event: 'replication.replayed', pair: this.spec.pair, epoch: l.epoch, entries: n }, 'journal replayed into the volume')
    }
    this.spec.layer.attach(this.current, () => this.links.map((l) => l.journal))
  }

  /** The current home's journal (it numbers every change). */
  get current(): Journal {
    return this.links[this.links.length - 1]!.journal
  }

  get chain(): EpochChain {
    return this.chainNow
  }

  get home(): EpochRecord {
    return this.chainNow[this.chainNow.length - 1]!
  }

  /** The number after which every entry is still in a log (what can be shipped starts after it). */
  get retainedFrom(): number {
    return this.links[0]!.journal.positions.trimmedThrough
  }

  /** Epochs whose journals are still open, oldest first (the current one last). */
  get epochs(): number[] {
    return this.links.map((l) => l.epoch)
  }

  /** Durable entries from `fromSeq` on, from the journal of the epoch that owns it (see Journal.readRecords). */
  readRecords(fromSeq: number, maxBytes: number): Promise<LogRecord[]> {
    const link = this.links.find((l) => fromSeq <= l.lastSeq) ?? this.links[this.links.length - 1]!
    return link.journal.readRecords(fromSeq, maxBytes)
  }

  /** Bytes of the retained entries after `seq`, every epoch. */
  bytesAfter(seq: number): number {
    return this.links.reduce((a, l) => a + (seq < l.lastSeq ? l.journal.bytesAfter(seq) : 0), 0)
  }

  /**
   * Trims every journal through `seq` (min(secondary applied, primary data
   * durable)); a predecessor trimmed through its last number is closed and
   * its log deleted.
   */
  async trim(seq: number): Promise<void> {
    while (this.links.length > 1) {
      const first = this.links[0]!
      const through = Math.min(seq, first.lastSeq)
      if (through > first.journal.positions.trimmedThrough) await first.journal.trim(through)
      if (first.journal.positions.trimmedThrough < first.lastSeq || this.listing > 0) return
      await this.drop(first)
      this.spec.log.info({ event: 'replication.handoff_done', pair: this.spec.pair, epoch: first.epoch }, `every entry of epoch ${first.epoch} is applied: its journal is deleted`)
    }
    const cur = this.links[0]!.journal
    if (seq > cur.positions.trimmedThrough) await cur.trim(seq)
  }

  /**
   * Before a resync: entries of earlier epochs will not be shipped (the
   * resync's base is past them), so their extents join the current
   * journal's marks and their journals are dropped. Returns how many marks.
   */
  async absorbPredecessors(): Promise<number> {
    let n = 0
    while (this.links.length > 1) {
      const first = this.links[0]!
      const marks = await this.whileListing(() => marksOfEntries(first.journal, first.journal.positions.trimmedThrough, Infinity))
      if (marks === null) throw new VvfsError('INTERNAL', 'reading a journal without a byte limit returned no list')
      await this.current.addMarks([...marks, ...first.journal.dirtyMarks()])
      n += marks.length
      await this.drop(first)
    }
    return n
  }

  /**
   * Hands the journal over to `home` (see the file comment). `acknowledged`:
   * what the secondary is known to have applied (the management
   * information lists the extents of entries after it). Answers the new
   * epoch record, or null if the journal is already there.
   */
  async handoff(home: string, acknowledged: number): Promise<EpochRecord | null> {
    // A promote's epoch (failover.ts) names its home `SYSTEM@promote-eN`: it is on SYSTEM.
    if (home === storageOfHome(this.home.home)) return null
    const release = this.spec.layer.holdChanges()
    let made: { log: DurableLog; journal: Journal } | null = null
    try {
      const a = this.links[this.links.length - 1]!
      await a.journal.drain()
      await a.journal.sync()
      const pa = a.journal.positions
      const lastA = pa.lastAccepted
      if (pa.lastDurable !== lastA) throw new VvfsError('IO_ERROR', `the journal of epoch ${a.epoch} could not be made durable through ${lastA} (durable through ${pa.lastDurable})`)
      const record = handoff(this.chainNow, home, lastA)
      // A in order: B numbers after it, A ships its remainder. Otherwise (A not journaling, or a copy under way) B resyncs A's extents.
      const inOrder = pa.mode === 'journaling' && a.journal.dirtyMarks().length === 0
      const since = Math.max(acknowledged, this.retainedFrom)
      const retained = this.links.reduce((n, l) => n + l.journal.positions.retainedBytes, 0)
      let pending: DirtyMark[] | null = null
      if (pa.mode !== 'broken' && retained <= PENDING_READ_MAX_BYTES) pending = await this.whileListing(() => marksOfLinks(this.links, since, PENDING_MAX_MARKS))
      const marks = inOrder ? [] : [...(pending ?? this.spec.everything?.() ?? []), ...this.links.flatMap((l) => l.journal.dirtyMarks())]
      if (!inOrder && pending === null && !this.spec.everything)
        throw new VvfsError('JOB_STATE', `the journal of epoch ${a.epoch} cannot be handed over: its changes since ${since} cannot be listed (mode ${pa.mode}, ${retained} bytes retained)`)
      if (await this.spec.logs.exists(record.epoch)) await this.spec.logs.remove(record.epoch)
      const log = await this.spec.logs.open(record.epoch)
      const journal = await Journal.open(log, { ...this.spec.journal, epoch: record.epoch, firstSeq: record.firstSeq })
      made = { log, journal }
      if (!inOrder) await journal.addMarks(marks)
      await journal.sync()
      crashPoint('replication.handoff.prepared')
      const chain = [...this.chainNow, record]
      await this.commitOrUndo({ chain, pending: { epoch: record.epoch, since, marks: pending } })
      crashPoint('replication.handoff.committed')
      this.chainNow = chain
      this.links[this.links.length - 1]!.lastSeq = lastA
      this.links.push({ epoch: record.epoch, journal, log, lastSeq: Infinity })
      made = null
      this.spec.layer.attach(journal, () => this.links.map((l) => l.journal))
      if (!inOrder) while (this.links.length > 1) await this.drop(this.links[0]!)
      this.spec.log.info(
        { event: 'replication.handoff', pair: this.spec.pair, epoch: record.epoch, from: a.epoch, home, firstSeq: record.firstSeq, inOrder },
        inOrder ? `journal handed over to ${home}: epoch ${record.epoch} numbers from ${record.firstSeq}` : `journal handed over to ${home} with a resync of ${marks.length} extents (the journal at ${record.predecessor!.home} was not in order)`,
      )
      return record
    } finally {
      if (made) {
        await made.journal.close().catch(() => undefined)
        await made.log.close().catch(() => undefined)
        const epoch = this.home.epoch + 1
        await this.spec.logs.remove(epoch).catch(() => undefined)
      }
      release()
    }
  }

  async close(): Promise<void> {
    for (const l of this.links) {
      await l.journal.close()
      await l.log.close()
    }
  }

  private async whileListing<T>(list: () => Promise<T>): Promise<T> {
    this.listing++
    try {
      return await list()
    } finally {
      this.listing--
    }
  }

  private async commitOrUndo(c: ChainCommit): Promise<void> {
    try {
      await this.spec.commit(c)
    } catch (err) {
      // It may or may not have landed: say A again, durably, before A numbers anything more.
      try {
        await this.spec.commit({ chain: this.chainNow, pending: null })
      } catch (undo) {
        this.spec.log.error({ event: 'replication.handoff_undo_failed', pair: this.spec.pair, err: String(undo) }, 'a failed handoff could not be undone in the catalog: the next start follows whatever the catalog holds')
      }
      throw err
    }
  }

  private async drop(link: Link): Promise<void> {
    this.links = this.links.filter((l) => l !== link)
    await link.journal.close()
    await link.log.close()
    await this.spec.logs.remove(link.epoch)
  }
}

/** The extents touched by the retained entries after `after` of several journals (null when more than `max`). */
async function marksOfLinks(links: readonly Link[], after: number, max: number): Promise<DirtyMark[] | null> {
  const seen = new Map<string, DirtyMark>()
  for (const l of links) {
    const marks = await marksOfEntries(l.journal, after, max)
    if (marks === null) return null
    for (const m of marks) seen.set(markKey(m), m)
    if (seen.size > max) return null
  }
  return [...seen.values()]
}

/** The extents touched by a journal's retained entries after `after` (null when more than `max`). */
async function marksOfEntries(journal: Journal, after: number, max: number): Promise<DirtyMark[] | null> {
  const seen = new Map<string, DirtyMark>()
  for await (const e of journal.entriesAfter(after)) {
    const change = e.kind === 'resize' ? { kind: 'resize' as const, volume: e.volume, size: e.length } : e.kind === 'flush' ? { kind: 'flush' as const, volume: e.volume } : { kind: 'discard' as const, volume: e.volume, offset: e.offset, length: e.length }
    for (const m of marksOf(change)) seen.set(markKey(m), m)
    if (seen.size > max) return null
  }
  return [...seen.values()]
}

