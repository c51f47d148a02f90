/**
 * PrimaryPair: the primary's side of one replication pair — the volume's
 * Journal (attached to its JournalLayer), the peer-wire stream to the
 * secondary daemon, and the loop that creates the pair there, copies what
 * the journal cannot ship (the initial sync of allocated extents, a resync
 * after the journal limit), ships durable entries in order and trims.
 *
 * States (events on every change): syncing (initial copy) → replicating ⇄
 * behind (the journal reached its limit: changes are dirty marks) →
 * resyncing (copying the marked extents) → replicating; paused; stopped.
 * Whether the peer answers is `link` (up/down), not a state.
 *
 * Order on the wire: one loop does everything, in order, so the secondary
 * sees copies and entries in the order they were read (requests in flight
 * together — a resync's copies, the batches of a backlog — are answered in
 * the order sent: the secondary's Applier is serial); during a copy nothing
 * is shipped. A copy reads an extent under the shared range
 * lock (every numbered change to it is stored), so entries numbered before
 * the read are in it and later ones are shipped after it; the image is
 * consistent once entries through the number accepted at the end of the copy
 * are applied (RESYNC_END consistentAt).
 *
 * A copy's data is written straight into the secondary's volumes (not its
 * redo log: the secondary is marked inconsistent until RESYNC_END), so an
 * extent's dirty mark is cleared only after a RESYNC_FLUSH that followed its
 * data was answered by the same incarnation of the secondary daemon as the
 * data (applier.ts): one every FLUSH_EVERY_BYTES and one before RESYNC_END.
 * A kill or power cut of either side leaves the unflushed extents marked;
 * they are copied again (test/replication/initial-sync-crash.test.ts).
 *
 * Durability: an entry is acknowledged to the host once logged (the
 * journal's segment log, journal-log.ts: it survives a crash of the process, as the
 * volume's own data does until a flush), synced at the host's flush, and
 * synced before it is read for shipping — only synced entries ship.
 *
 * Trim: through min(secondary applied, primary data durable) — the
 * JournalLayer flushes the stack below and says through which number the
 * data is durable (at most every TRIM_EVERY_MS).
 *
 * Crash order: the journal (entries, marks, trim point) is durable in its
 * own segment log; the pair's record (the job) holds the address, chain and
 * settings. At open the retained entries are replayed into the volume
 * (JournalLayer.replay) before any host I/O; the loop then asks the
 * secondary where it is (CREATE is idempotent) and resumes: a resync whose
 * marks remain continues with them (resumable initial sync), shipping
 * resumes after the secondary's applied number.
 *
 * Handoff (claims 1–7, journal-chain.ts): when the volume's home changes
 * (a migration A → B), handoff() seals A's journal and B's numbers on; the
 * loop ships A's remainder, then B's entries, as the new epoch's sender
 * (a new stream: its hello carries the new chain). If A's entries can no
 * longer be shipped (its log lost), the loop resyncs the extents the
 * handoff recorded (bounded), saying so (event replication.handoff_resync,
 * state resyncing with the reason).
 *
 * Failure modes: an unreachable peer → link down, retried with backoff;
 * host I/O never waits for the peer (only for the journal's own commit).
 * A refused batch (the secondary's rules) stops shipping with the refusal
 * in `lastError` and the loop retries after a pause.
 */
import { VvfsError, asVvfsError, type WireError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_SIZE } from '../layout.js'
import type { Logger } from '../log.js'
import type { Ack } from './applier.js'
import type { PeerKey } from '../wire/auth.js'
import { WireClient } from '../wire/client.js'
import { SIZE_MARK, WHOLE_MARK, markKey, type DirtyMark } from './durable-log.js'
import { MAX_ENTRY_DATA, type JournalEntry } from './entry.js'
import { takenOverAfter, type EpochChain, type Sender } from './epoch.js'
import { ReplicationStream } from './endpoint.js'
import { DEFAULT_JOURNAL_SETTINGS, type Journal, type JournalSettings, type ModeChange } from './journal.js'
import { JournalChain, segmentJournalLogs, takeOverJournal, type ChainCommit, type HandoffLayer, type HandoffPending } from './journal-chain.js'
import type { JournalLayer } from './journal-layer.js'
import { entriesThatFit, MAX_MESSAGE_BYTES, REPLICATION_SERVICE } from './messages.js'

export const PAIR_STATES = ['syncing', 'replicating', 'behind', 'resyncing', 'paused', 'stopped'] as const
export type PairState = (typeof PAIR_STATES)[number]

/** How often the primary flushes its data to trim what the secondary applied. */
const TRIM_EVERY_MS = 500
/** Retry delay after the peer failed, doubling to the max. */
const RETRY_MS = { initial: 100, max: 2000 }
/** Resync data per request: three 256 KiB pieces fit one 1 MiB frame. */
const PIECES_PER_REQUEST = 3
/**
 * Extents a resync copies at once. One at a time, the initial sync ran at
 * 15.5 MB/s against a migration's 83.6 MB/s copy of the same GiB
 * (bench/replication.ts): each request waited for the secondary's synced
 * apply. With the data written straight into the secondary's volumes
 * (RESYNC_FLUSH below), BENCH_ONLY=sync on a noisy shared 2-core machine:
 * 8 in flight 0.55, 0.36, 0.30, 0.44, 0.47 of the migration copy; 4 in
 * flight 0.56, 0.44, 0.40 (before, through the redo log: 0.25). Not clearly
 * apart; 8 kept.
 */
const RESYNC_WINDOW = 8
/**
 * Copied bytes between two RESYNC_FLUSHes: an extent's dirty mark is
 * cleared only once a flush after its data was answered (by the same
 * incarnation of the secondary). A synced commit of its own per resync
 * request (~45 ms each) bounded the initial sync at 0.25 of a migration's
 * copy; one flush per 64 MiB costs about as much as one such commit per 64
 * extents. A crash loses at most this much copying.
 */
const FLUSH_EVERY_BYTES = 64 * 1024 * 1024
/**
 * ENTRIES batches in flight while a backlog lasts (ship()). Stop-and-wait,
 * the secondary sat idle while the primary read and sent each next batch:
 * after a 30 s outage at 4,600 writes/s it applied 4,900–8,400 entries/s
 * with 0.61 CPU-seconds per second (BENCH_ONLY=outage, 2026-12-06).
 */
const SHIP_WINDOW = 2

/** One volume of a pair: a pair is one volume, or a consistency group of several sharing the journal's sequence. */
export interface PairMember {
  volNo: number
  name: string
  size(): number
  layer: JournalLayer
  /** Allocated extents of the volume (the initial sync copies only those). */
  allocatedExtents(): number[]
}

export interface PrimaryPairSpec {
  pair: string
  /** The consistency group's name (issue 13.6); null for a pair of one volume. */
  group: string | null
  /** In the order the secondary names them; at least one. */
  members: PairMember[]
  /** The journal's log directory (epoch 1's; later epochs' beside it, journal-chain.ts). */
  journalDir: string
  host: string
  port: number
  key: PeerKey
  /** Copy rate limit of the initial sync and resyncs, bytes/s (0: none). */
  rate: number
  chain: EpochChain
  journal?: Partial<JournalSettings>
  log: Logger
  onState(from: PairState, to: PairState, reason: string): void
  onProgress?(copied: number, total: number): void
  /** Commits a handoff's new chain (and management information) durably, in one write. */
  commitChain?(c: ChainCommit): Promise<void>
  /** The management information of the last handoff, as committed. */
  handoffPending?(): HandoffPending | undefined
}

export interface PairStatus {
  pair: string
  /** The member volumes' names, comma-separated. */
  volume: string
  group: string | null
  peer: string
  state: PairState
  link: 'up' | 'down'
  epoch: number
  lastWritten: number
  lastDurable: number
  lastShipped: number
  lastApplied: number
  consistent: boolean
  lag: { entries: number; bytes: number; seconds: number }
  journal: { mode: string; usedBytes: number; limitBytes: number; entries: number; dirtyExtents: number }
  rate: number
  sync: { copied: number; total: number }
  lastError: WireError | null
  /** Issue 13.7: bytes sent since the pair opened here — journal records shipped plus extent data copied (a reverse's cost). */
  bytesShipped: number
  /** The journal's home and the epochs whose journals are kept (journal-chain.ts). */
  home?: { name: string; keptEpochs: number[] }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** The members' journal layers as one (a group's members share the journal chain). */
function membersLayer(members: PairMember[]): HandoffLayer {
  return {
    attach: (journal, retained) => members.forEach((m) => m.layer.attach(journal, retained)),
    replay: async (journal) => {
      let n = 0
      for (const m of members) n += await m.layer.replay(journal)
      return n
    },
    holdChanges: () => {
      const releases = members.map((m) => m.layer.holdChanges())
      return () => releases.forEach((release) => release())
    },
  }
}

/** Marks for a full copy: every allocated extent of every member, and each member's size. */
function everyAllocatedExtent(members: PairMember[]): DirtyMark[] {
  return members.flatMap((m) => [...m.allocatedExtents().map((extent) => ({ volume: m.volNo, extent })), { volume: m.volNo, extent: SIZE_MARK }])
}

/**
 * What a secondary may differ in after a takeover: anything. Each member's
 * size, and WHOLE_MARK — the resync zeroes the volume there, then marks the
 * extents allocated at that moment (the journal is attached by then: a
 * later change is an entry after the resync's base) and copies them.
 */
function everythingAfterTakeover(members: PairMember[]): DirtyMark[] {
  return members.flatMap((m) => [
    { volume: m.volNo, extent: SIZE_MARK },
    { volume: m.volNo, extent: WHOLE_MARK },
  ])
}

/** The order a resync copies marks in: each size first (extents past the old end are refused before it), then the whole-volume zeroes, then the extents. */
function copyRank(m: DirtyMark): number {
  return m.extent === SIZE_MARK ? 0 : m.extent === WHOLE_MARK ? 1 : 2
}

export class PrimaryPair {
  private stateNow: PairState
  private link: 'up' | 'down' = 'down'
  private applied = 0
  private shipped = 0
  private consistent = false
  private lastError: WireError | null = null
  private running = false
  private loop: Promise<void> = Promise.resolve()
  private client: WireClient | null = null
  private lastTrimAt = 0
  private copied = 0
  private copyTotal = 0
  private readonly shippedSamples: { t: number; bytes: number }[] = []
  private shippedBytes = 0
  /** Data bytes of copied extents sent (initial sync, resyncs) since open. */
  private copiedBytes = 0
  private pausedFlag = false
  private closed = false
  /** Handoffs run one at a time. */
  private handoffs: Promise<unknown> = Promise.resolve()

  private constructor(
    private readonly spec: PrimaryPairSpec,
    private readonly journals: JournalChain,
    private readonly settings: JournalSettings,
    initial: PairState,
  ) {
    this.stateNow = initial
  }

  /** The current home's journal (it numbers every change). */
  get journal(): Journal {
    return this.journals.current
  }

  /** The epoch chain as this primary holds it (the last record is the journal's home). */
  get chain(): EpochChain {
    return this.journals.chain
  }

  /** The volume whose home is the journal's home: a group's first member. */
  get volNo(): number {
    return this.spec.members[0]!.volNo
  }

  /**
   * Opens the pair's journals; replay() then replays them into the volume
   * and attaches the current one (before the volume serves host I/O, after
   * every job's held space is marked). A new pair's journal marks every
   * allocated extent (the initial sync).
   */
  /**
   * Issue 15 meets 13: this relay took the pair's volume over and has none
   * of its journal (it stayed with the old owner), or this daemon lost it.
   * Writes a new epoch's log here whose resync covers everything the
   * secondary may lack (journal-chain.ts, takeOverJournal) and answers the
   * chain the caller must commit before open(). `journalDir`: where this
   * daemon keeps the pair's logs.
   */
  static takeOver(spec: Pick<PrimaryPairSpec, 'members' | 'journalDir' | 'chain' | 'journal'>, home: string, handedOverAt?: number): Promise<EpochChain> {
    // Handed over caught up (settle): the secondary lacks nothing, the new epoch numbers on from there.
    const marks = handedOverAt === undefined ? everythingAfterTakeover(spec.members) : []
    return takeOverJournal({ logs: segmentJournalLogs(spec.journalDir), chain: spec.chain, home, marks, journal: { settings: spec.journal, syncEveryCommit: false }, lastSeq: handedOverAt })
  }

  /**
   * Before the volume is handed to another relay (`volume move`, its I/O
   * already drained): syncs the journal and waits up to `timeoutMs` for the
   * secondary to apply every entry. Answers the last number when it did (the
   * next relay numbers on from it, takeOver), null when it did not (paused,
   * link down, a resync under way: the next relay resyncs).
   */
  async settle(timeoutMs: number): Promise<number | null> {
    await this.journal.drain()
    await this.journal.sync()
    const end = Date.now() + timeoutMs
    for (;;) {
      const p = this.journal.positions
      if (p.mode === 'journaling' && this.journal.dirtyMarks().length === 0 && this.consistent && this.link === 'up' && this.applied >= p.lastAccepted) return p.lastAccepted
      if (Date.now() > end || !this.running || this.pausedFlag) return null
      await sleep(20)
    }
  }

  static async open(spec: PrimaryPairSpec, isNew: boolean): Promise<PrimaryPair> {
    const ref: { pair?: PrimaryPair } = {}
    const onModeChange = (c: ModeChange) => ref.pair?.modeChanged(c)
    // Entries are acknowledged once logged (a process crash keeps them, as it keeps the volume's own unlogged data) and synced before they are shipped.
    const journals = await JournalChain.open({
      logs: segmentJournalLogs(spec.journalDir),
      layer: membersLayer(spec.members),
      chain: spec.chain,
      journal: { settings: spec.journal, onModeChange, syncEveryCommit: false },
      everything: () => everyAllocatedExtent(spec.members),
      commit: (c) => {
        if (!spec.commitChain) return Promise.reject(new VvfsError('NOT_SUPPORTED', `pair ${spec.pair} cannot record a handoff`))
        return spec.commitChain(c)
      },
      log: spec.log,
      pair: spec.pair,
    })
    const journal = journals.current
    const settings = { ...DEFAULT_JOURNAL_SETTINGS, ...spec.journal }
    if (isNew) {
      // Synced before the pair exists anywhere: a power cut must not leave a pair that believes there is nothing to copy.
      await journal.addMarks(everyAllocatedExtent(spec.members))
      await journal.sync()
    }
    const p = journal.positions
    const initial: PairState = p.mode === 'bitmap' ? 'behind' : journal.dirtyMarks().length > 0 ? (isNew || p.trimmedThrough === 0 ? 'syncing' : 'resyncing') : 'replicating'
    ref.pair = new PrimaryPair(spec, journals, settings, initial)
    return ref.pair
  }

  /** The redo at start (journal-chain.ts replay): call before the volume serves host I/O and before start(). */
  replay(): Promise<void> {
    return this.journals.replay()
  }

  get state(): PairState {
    return this.stateNow
  }

  start(): void {
    if (this.running) return
    this.running = true
    this.client = new WireClient({ host: this.spec.host, port: this.spec.port, key: this.spec.key, service: REPLICATION_SERVICE, log: this.spec.log, backoff: { initialMs: 100, maxMs: 1000 } })
    this.client.start()
    this.loop = this.run()
  }

  pause(): void {
    this.pausedFlag = true
    this.setState('paused', 'paused by request')
  }

  resume(): void {
    if (!this.pausedFlag) return
    this.pausedFlag = false
    const mode = this.journal.positions.mode
    this.setState(mode === 'journaling' ? (this.journal.dirtyMarks().length ? 'resyncing' : 'replicating') : 'behind', 'resumed')
  }

  /** Stops the loop and the link; the journal stays attached until close(). */
  async halt(): Promise<void> {
    this.running = false
    await this.client?.close()
    await this.loop
  }

  /** Halts, detaches the journal from the volume and closes it; `remove` drops the pair for good (stop). */
  async close(): Promise<void> {
    await this.halt()
    if (this.closed) return
    this.closed = true
    // A handoff under way finishes (committed or undone) before its journals close.
    await this.handoffs
    for (const m of this.spec.members) m.layer.detach()
    await this.journals.close()
  }

  status(): PairStatus {
    const p = this.journal.positions
    const applied = Math.min(this.applied, p.lastAccepted)
    const now = Date.now()
    while (this.shippedSamples.length > 1 && this.shippedSamples[0]!.t < now - 5000) this.shippedSamples.shift()
    const first = this.shippedSamples[0]
    const rate = first && now - first.t > 0 ? Math.round(((this.shippedBytes - first.bytes) * 1000) / Math.max(1000, now - first.t)) : 0
    return {
      pair: this.spec.pair,
      volume: this.spec.members.map((m) => m.name).join(','),
      group: this.spec.group,
      peer: `${this.spec.host}:${this.spec.port}`,
      state: this.stateNow,
      link: this.link,
      epoch: p.epoch,
      lastWritten: p.lastAccepted,
      lastDurable: p.lastDurable,
      lastShipped: Math.max(this.shipped, applied),
      lastApplied: applied,
      consistent: this.consistent,
      lag: {
        // After a takeover the numbers between what the secondary applied and the new epoch's first were never all given out: not counted.
        entries: Math.max(0, p.lastAccepted - Math.max(applied, takenOverAfter(this.journals.chain))),
        bytes: Math.max(0, this.journals.bytesAfter(applied)),
        seconds: Math.round(Math.max(...this.spec.members.map((m) => m.layer.lagSeconds(applied))) * 1000) / 1000,
      },
      journal: { mode: p.mode, usedBytes: p.retainedBytes, limitBytes: this.settings.limitBytes, entries: p.retainedEntries, dirtyExtents: p.dirtyMarks },
      rate,
      sync: { copied: this.copied, total: this.copyTotal },
      lastError: this.lastError,
      bytesShipped: this.shippedBytes + this.copiedBytes,
      home: { name: this.journals.home.home, keptEpochs: this.journals.epochs },
    }
  }

  // --- the loop ---------------------------------------------------------------

  private modeChanged(c: ModeChange): void {
    if (c.mode === 'bitmap' || c.mode === 'broken') this.setState('behind', `journal ${c.mode}: ${c.reason}`)
  }

  private setState(to: PairState, reason: string): void {
    const from = this.stateNow
    if (from === to) return
    if (from === 'paused' && to !== 'stopped' && this.pausedFlag) return
    this.stateNow = to
    this.spec.log.info({ event: 'replication.state', pair: this.spec.pair, from, to, reason }, `replication ${this.spec.pair}: ${from} → ${to}`)
    this.spec.onState(from, to, reason)
  }

  private get sender(): Sender {
    const last = this.journals.home
    return { epoch: last.epoch, home: last.home }
  }

  /**
   * Hands the journal over to `home` (the volume's new home after a
   * migration): see journal-chain.ts. Resolves once the epoch record is
   * committed (or at once when the journal is already there); the loop then
   * ships as the new epoch.
   */
  handoff(home: string): Promise<void> {
    const run = this.handoffs.then(async () => {
      if (this.closed) throw new VvfsError('SHUTTING_DOWN', `pair ${this.spec.pair} is closed`)
      await this.journals.handoff(home, this.applied)
    })
    this.handoffs = run.catch(() => undefined)
    return run
  }

  /** handoff(home), its failure logged (event replication.handoff_failed) instead of thrown: tried again at the next home change or start. */
  async followHome(home: string): Promise<void> {
    try {
      await this.handoff(home)
    } catch (err) {
      const e = asVvfsError(err)
      this.spec.log.error({ event: 'replication.handoff_failed', pair: this.spec.pair, home, code: e.code, err: e.message }, `handing the journal of ${this.spec.pair} over to ${home} failed: ${e.message}`)
    }
  }

  private async run(): Promise<void> {
    let retry = RETRY_MS.initial
    while (this.running) {
      if (this.pausedFlag) {
        await sleep(100)
        continue
      }
      try {
        await this.client!.ready(2000)
        // Paused while connecting (a paused pair's start: start() then pause()): nothing is sent until resumed.
        if (this.pausedFlag) continue
        const stream = new ReplicationStream(this.client!, this.spec.pair, this.sender)
        const ack = await stream.create({ group: this.spec.group, volumes: this.spec.members.map((m) => ({ no: m.volNo, name: m.name, size: m.size() })), chain: [...this.journals.chain] })
        this.link = 'up'
        this.applied = ack.appliedSeq
        this.consistent = ack.consistent
        this.lastError = null
        retry = RETRY_MS.initial
        const remote = await stream.status()
        // Entries the secondary lacks are gone from every log: a handoff's lost entries are resent by a bounded resync, anything else by a full one.
        if (remote.appliedSeq < this.journals.retainedFrom && !remote.resyncing && this.journal.dirtyMarks().length === 0 && !(await this.resendHandedOver(remote.appliedSeq))) {
          // The secondary lost what we trimmed (its pair was removed and made anew): copy everything allocated again.
          this.spec.log.warn({ event: 'replication.full_resync', pair: this.spec.pair, applied: remote.appliedSeq, trimmed: this.journal.positions.trimmedThrough }, 'the secondary is behind the trimmed journal: full resync')
          await this.journal.addMarks(everyAllocatedExtent(this.spec.members))
        }
        if (this.journal.positions.mode !== 'journaling' || this.journal.dirtyMarks().length > 0 || remote.resyncing) await this.resync(stream, remote.appliedSeq)
        await this.ship(stream)
      } catch (err) {
        if (!this.running) break
        const e = asVvfsError(err)
        if (this.link === 'up' || this.lastError?.code !== e.code) this.spec.log.warn({ event: 'replication.link', pair: this.spec.pair, code: e.code, err: e.message }, `replication ${this.spec.pair}: ${e.message}`)
        this.link = 'down'
        this.lastError = e.toWire()
        await sleep(retry)
        retry = Math.min(RETRY_MS.max, retry * 2)
      }
    }
  }

  /**
   * The secondary lacks entries of an earlier home that can no longer be
   * shipped (journals.lost): marks the extents the handoff recorded — a
   * bounded resync — when they cover what the secondary lacks, and says so.
   * False when they do not (the caller resyncs everything allocated).
   */
  private async resendHandedOver(remoteApplied: number): Promise<boolean> {
    const pending = this.spec.handoffPending?.()
    const lost = this.journals.lost
    const home = this.journals.home
    if (!pending || pending.epoch !== home.epoch || pending.marks === null || remoteApplied < pending.since || lost?.all) return false
    const why = `entries ${remoteApplied + 1}..${home.firstSeq - 1} of ${home.predecessor?.home ?? 'the old home'} can no longer be shipped${lost ? ` (${lost.reason})` : ''}: resync of the ${pending.marks.length} extents they touched`
    this.spec.log.warn({ event: 'replication.handoff_resync', pair: this.spec.pair, epoch: home.epoch, applied: remoteApplied, extents: pending.marks.length }, why)
    await this.journal.addMarks(pending.marks)
    this.setState('resyncing', why)
    return true
  }

  /** Copies the marked extents (initial sync or resync), then tells the secondary from which number it is consistent. */
  private async resync(stream: ReplicationStream, remoteApplied: number): Promise<void> {
    // The resync's base is past every earlier epoch's entries: their extents join the copy.
    const absorbed = await this.journals.absorbPredecessors()
    if (absorbed > 0) this.spec.log.info({ event: 'replication.handoff_absorbed', pair: this.spec.pair, extents: absorbed }, 'entries of an earlier home join the resync as dirty extents')
    const initial = this.stateNow === 'syncing'
    let base: number
    if (this.journal.positions.mode === 'bitmap') {
      base = (await this.journal.beginResync()).baseSeq
    } else {
      base = Math.max(remoteApplied, this.journal.positions.trimmedThrough)
    }
    this.setState(initial ? 'syncing' : 'resyncing', 'copying dirty extents')
    // The marks synced before the secondary gives up its image: entries are logged unsynced (syncEveryCommit false), and marks
    // lost to a power cut here would end the resync "consistent" without their copies (initial-sync-crash.test.ts).
    await this.journal.sync()
    const ack = await stream.beginResync(base)
    this.applied = ack.appliedSeq
    this.consistent = false
    // The size first, alone: extents past the secondary's old end (a grow while behind) would be refused OUT_OF_RANGE before it (grow-while-behind.test.ts).
    // Then a takeover's zeroing of the whole volume, flushed before any extent is copied over it.
    const marks = this.journal.dirtyMarks().sort((a, b) => copyRank(a) - copyRank(b) || a.extent - b.extent)
    this.copied = 0
    this.copyTotal = marks.filter((m) => copyRank(m) === 2).length * EXTENT_SIZE
    const started = Date.now()
    // Up to RESYNC_WINDOW extents in flight. The secondary writes the data straight into its volumes: a mark is cleared only once
    // a RESYNC_FLUSH after its data was answered by the same incarnation of the secondary (a restart between the two may have lost it).
    const inFlight = new Set<Promise<void>>()
    let failed: unknown = null
    let handedOff = false
    let incarnation: string | null = null
    /** Copies answered but not yet flushed, each with the marks' generation when it began (clearMarks leaves marks set again since). */
    let unflushed: { mark: DirtyMark; generation: number }[] = []
    let unflushedBytes = 0
    const queued = new Set(marks.map(markKey))
    const answeredBy = (ack: { refused: WireError | null; incarnation?: string }) => {
      this.check(ack)
      const by = ack.incarnation ?? ''
      incarnation ??= by
      if (by !== incarnation)
        throw new VvfsError('PEER_UNAVAILABLE', `the secondary restarted during the copy (incarnation ${incarnation} → ${by}): its unflushed copies are sent again`, { details: { reason: 'other-incarnation' } })
    }
    const flush = async () => {
      const covered = unflushed
      unflushed = []
      unflushedBytes = 0
      if (covered.length === 0 || incarnation === null) return
      answeredBy(await stream.resyncFlush(incarnation))
      // A handoff during the copy moved the marks to the new home's journal (its own generations): copy them again as the new epoch.
      if (stream.sender.epoch !== this.sender.epoch) {
        handedOff = true
        return
      }
      for (const g of new Set(covered.map((c) => c.generation)))
        await this.journal.clearMarks(
          covered.filter((c) => c.generation === g).map((c) => c.mark),
          g,
        )
    }
    const copyOne = async (mark: DirtyMark) => {
      const generation = this.journal.markGeneration
      await this.copyExtent(stream, mark, answeredBy)
      if (stream.sender.epoch !== this.sender.epoch) {
        handedOff = true
        return
      }
      if (mark.extent === SIZE_MARK) {
        // A resize is applied through the secondary's synced batches: durable once answered.
        await this.journal.clearMarks([mark], generation)
      } else if (mark.extent === WHOLE_MARK) {
        // Zeroed there: now the extents allocated here are copied over it (marked before the zeroing's mark is cleared).
        const member = this.spec.members.find((m) => m.volNo === mark.volume)
        const added = (member?.allocatedExtents() ?? []).map((extent) => ({ volume: mark.volume, extent })).filter((m) => !queued.has(markKey(m)))
        await this.journal.addMarks(added)
        for (const m of added) queued.add(markKey(m))
        marks.push(...added)
        this.copyTotal += added.length * EXTENT_SIZE
        // Nothing was sent for an empty volume (no answer, no incarnation): nothing to flush.
        if (incarnation === null) await this.journal.clearMarks([mark], generation)
        else unflushed.push({ mark, generation })
      } else {
        unflushed.push({ mark, generation })
        unflushedBytes += EXTENT_SIZE
        this.copied += EXTENT_SIZE
      }
      this.spec.onProgress?.(this.copied, this.copyTotal)
    }
    for (const mark of marks) {
      if (failed || handedOff) break
      if (!this.running || this.pausedFlag) {
        failed = new VvfsError('SHUTTING_DOWN', 'resync interrupted')
        break
      }
      const one = copyOne(mark).catch((err: unknown) => {
        failed ??= err
      })
      if (mark.extent === SIZE_MARK) {
        await one
        continue
      }
      if (mark.extent === WHOLE_MARK) {
        // Durable on the secondary (and cleared) before any extent is copied: a copy must never be zeroed after it.
        await one
        if (!failed) await flush().catch((err: unknown) => {
          failed ??= err
        })
        continue
      }
      inFlight.add(one)
      void one.finally(() => inFlight.delete(one))
      if (inFlight.size >= RESYNC_WINDOW) await Promise.race(inFlight)
      if (unflushedBytes >= FLUSH_EVERY_BYTES && !failed) await flush().catch((err: unknown) => {
        failed ??= err
      })
      if (this.spec.rate > 0) {
        const due = started + ((this.copied + inFlight.size * EXTENT_SIZE) * 1000) / this.spec.rate
        if (due > Date.now()) await sleep(due - Date.now())
      }
    }
    await Promise.all(inFlight)
    if (failed) throw failed
    if (handedOff) return
    // Everything copied is durable on the secondary before the copy is declared done.
    await flush()
    if (handedOff) return
    await this.journal.drain()
    const consistentAt = this.journal.positions.lastAccepted
    const end = await stream.endResync(consistentAt)
    this.applied = end.appliedSeq
    this.consistent = end.consistent
    if (this.journal.positions.mode === 'journaling' && this.journal.dirtyMarks().length === 0) this.setState('replicating', `copy done; consistent once ${consistentAt} is applied`)
  }

  /** Sends one extent's data (or the size); `answered` checks each answer (refusal, the secondary's incarnation). */
  private async copyExtent(stream: ReplicationStream, mark: DirtyMark, answered: (ack: Ack) => void): Promise<void> {
    const member = this.spec.members.find((m) => m.volNo === mark.volume)
    // A mark of a volume no longer in the pair (the journal outlived a member's removal) has nothing to copy.
    if (!member) return
    const size = member.size()
    const resize = (): JournalEntry => ({ seq: 1, epoch: this.sender.epoch, volume: member.volNo, kind: 'resize', offset: 0, length: size, data: null })
    if (mark.extent === SIZE_MARK) {
      answered(await stream.resyncData([resize()]))
      return
    }
    if (mark.extent === WHOLE_MARK) {
      if (size > 0) answered(await stream.resyncData([{ seq: 1, epoch: this.sender.epoch, volume: member.volNo, kind: 'zero', offset: 0, length: size, data: null }]))
      return
    }
    const start = mark.extent * EXTENT_SIZE
    const end = Math.min(size, start + EXTENT_SIZE)
    let batch: JournalEntry[] = []
    for (let at = start; at < end; at += MAX_ENTRY_DATA) {
      const len = Math.min(MAX_ENTRY_DATA, end - at)
      const chunks = Math.ceil(len / CHUNK_SIZE)
      const buf = Buffer.alloc(chunks * CHUNK_SIZE)
      await member.layer.readBelow(at / CHUNK_SIZE, chunks, buf)
      const data = buf.subarray(0, len)
      const zero = data.every((b) => b === 0)
      batch.push({ seq: 1, epoch: this.sender.epoch, volume: member.volNo, kind: zero ? 'zero' : 'write', offset: at, length: len, data: zero ? null : data })
      if (!zero) this.copiedBytes += len
      if (batch.length === PIECES_PER_REQUEST) {
        answered(await stream.resyncData(batch))
        batch = []
      }
    }
    if (batch.length) answered(await stream.resyncData(batch))
  }

  private check(ack: { refused: WireError | null }): void {
    if (ack.refused) throw new VvfsError(ack.refused.code, ack.refused.message, { details: ack.refused.details })
  }

  /**
   * Ships durable entries from the secondary's applied number on, trimming
   * behind it; returns when a resync is needed. A batch goes out before the
   * one ahead of it is answered only while the journal holds more than a
   * message (a backlog: the catch-up after an outage), at most SHIP_WINDOW in
   * flight; otherwise the entries wait for the answer and go as one batch.
   */
  private async ship(stream: ReplicationStream): Promise<void> {
    const inFlight: { last: number; bytes: number; ack: Promise<Ack> }[] = []
    let next = this.applied + 1
    let backlog = false
    const answered = async () => {
      const sent = inFlight.shift()!
      const ack = await sent.ack
      this.check(ack)
      this.shipped = sent.last
      this.shippedBytes += sent.bytes
      this.shippedSamples.push({ t: Date.now(), bytes: this.shippedBytes })
      this.applied = ack.appliedSeq
      this.consistent = ack.consistent
    }
    try {
      while (this.running && !this.pausedFlag) {
        // A handoff: the stream speaks for the old epoch; the loop opens one for the new (its hello carries the new chain).
        if (stream.sender.epoch !== this.sender.epoch) return
        const p = this.journal.positions
        if (p.mode !== 'journaling') return
        if (this.stateNow !== 'replicating' && this.journal.dirtyMarks().length === 0) this.setState('replicating', 'shipping')
        if (inFlight.length > 0 && !(backlog && inFlight.length < SHIP_WINDOW)) {
          await answered()
          await this.maybeTrim()
          continue
        }
        // Only synced entries ship: the secondary must never hold a write a power cut at the primary lost.
        if (p.lastLogged > p.lastDurable && p.lastDurable < next) await this.journal.sync()
        const records = await this.journals.readRecords(next, MAX_MESSAGE_BYTES)
        if (records.length === 0) {
          backlog = false
          if (inFlight.length > 0) continue
          await this.maybeTrim()
          await Promise.race(this.spec.members.map((m) => m.layer.nextDurable(200)))
          continue
        }
        const n = Math.max(1, entriesThatFit(this.spec.pair, this.sender, records.map((r) => r.record.length)))
        backlog = n < records.length
        const batch = records.slice(0, n)
        const ack = stream.ship(batch.map((r) => r.record))
        // Answered in order by the secondary; one not awaited because the loop ended is not an unhandled rejection.
        ack.catch(() => undefined)
        inFlight.push({ last: batch[batch.length - 1]!.seq, bytes: batch.reduce((a, r) => a + r.record.length, 0), ack })
        next = batch[batch.length - 1]!.seq + 1
      }
    } finally {
      // The loop ends with batches unanswered (a pause, a handoff, a failure): the next ship() resends from the applied number; duplicates are acknowledged, not applied again.
      await Promise.allSettled(inFlight.map((f) => f.ack))
    }
  }

  private async maybeTrim(): Promise<void> {
    if (Date.now() - this.lastTrimAt < TRIM_EVERY_MS) return
    this.lastTrimAt = Date.now()
    // Each member's layer answers through which number its own changes are stored; the group's is the least.
    const stored = await Promise.all(this.spec.members.map((m) => m.layer.dataDurableThrough()))
    const through = Math.min(this.applied, ...stored, this.journal.positions.lastDurable)
    await this.journals.trim(through)
  }
}
