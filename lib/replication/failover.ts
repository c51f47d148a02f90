/**
 * Failover and failback of replication pairs (issue 13.7): promote, demote,
 * reverse, and split-brain seen from the epoch chain and resolved only by
 * the operator. One FailoverService per daemon, beside the pairs
 * (service.ts); the records are STATE/replication/failover.json.
 *
 * Promote (on the secondary): the pair's chain gets a new epoch whose home
 * is this side, numbering from applied+1 (epoch.ts handoff), its replica
 * store is checkpointed and dropped (a CREATE or entry from the old primary
 * is then refused, EPOCH_STALE), and a journal — STATE/replication/failover/
 * <pair>.journal, the new epoch, first number applied+1 — is attached to the
 * volume before it becomes writable: every write since the promote is a
 * numbered entry (or, past the journal's limit, a dirty extent). Refused
 * without --force while the secondary is inconsistent, or while its primary
 * reported itself a running primary in the last PEER_ALIVE_MS.
 *
 * A consistency group's pair (issue 13.6) is promoted as one: its volumes
 * share one promoted journal (one sequence, as on the primary) and become
 * writable at the one applied number of the group — the applier is fenced
 * and settled first, so that number is what every volume holds. Demote,
 * reverse and resolve take a group's volumes together too (TAKE_OVER names
 * each with the number it had at the old primary; its answer and REMARK
 * carry each volume's changed extents).
 *
 * Demote (on the old primary): writers must be closed (and new ones are
 * refused), the pair drains (bounded), the extents changed past what the
 * secondary applied are recorded, the volume turns read-only, and the
 * pair's job ends.
 *
 * Reverse (on the promoted side): the old primary becomes the replica of
 * this volume from the common number on (TAKE_OVER: it adopts our chain at
 * applied = common number and answers the extents it changed past it), and
 * a replication job starts from the promoted journal: what was written since
 * the promote ships as entries, and only the extents the old side changed
 * past the common point (none after an orderly demote) are copied. Never a
 * full copy.
 *
 * Split-brain: every second a side that knows the other's address (a
 * running primary, a demoted side) sends its history {role, chain, last
 * number} (HISTORY) and gets the other's back; both keep the last report and
 * compare (epoch.ts compareHistories): both sides hold numbers the other
 * lacks → split-brain, shown in status on both sides, event
 * `replication.failover` once; nothing is shipped either way (the promoted
 * side refuses the old epoch). `resolve --discard peer|local` on the
 * promoted side: peer = reverse, the old primary (running: it yields, as a
 * demote would) answering the extents it changed past the promote point,
 * which are copied over; local = this side becomes the replica again at the
 * common number, after the old primary recorded this side's changed extents
 * as dirty (REMARK) and resyncs them. A group's every volume, in one command.
 *
 * Concurrency: control requests and the peer's TAKE_OVER/REMARK run in the
 * manager's queue (host.exclusive); HISTORY only reads and records reports.
 *
 * Crash order: a record is written (atomically: temp file, fsync, rename)
 * before the step it describes; open() finishes what a record says
 * (promoted: store dropped, journal attached, volume writable; demoted: the
 * pair's job ended), so a crash mid-step ends in the step done. A group's
 * promote is one record for all its volumes, written once before the first
 * of them changes (nothing before it writes): a kill -9 before the rename
 * leaves every volume a replica (none promoted), after it open() — before
 * the mounts — makes every one writable (all promoted), never some
 * (test/replication/group-promote.test.ts, VVFS_CRASH_AT
 * replication.promote.before-record and replication.promote.member). A
 * demote's record goes before any volume turns read-only (writers are
 * blocked meanwhile): a crash before it leaves the pair running, every
 * volume writable — run demote again; after it open() finishes it (every
 * volume read-only, the job ended; group-promote-crash.test.ts,
 * replication.demote.member).
 *
 * A resolve is all or none for a group as well (group-resolve-crash.test.ts,
 * VVFS_CRASH_AT replication.resolve.* here, replication.take-over.* on the
 * old primary). Its record (`resolving` in the promoted record) is written
 * before any volume changes. --discard local: every volume turns read-only,
 * the old primary is told (REMARK, idempotent), then `told` is recorded:
 * a crash or a refusal before that turns every volume writable again (not
 * resolved: run it again), after it open() finishes (the journal dropped,
 * the replica adopted: resolved). --discard peer: our volumes never change
 * role; the old primary's do. A running old primary yields durably: its
 * demoted record (each volume's changes past the promote point) first, so
 * a crash leaves it the primary or demoted, whole; it writes its answer
 * (STATE/replication/failover/<pair>.taken.json) before it adopts our
 * replica, and answers it again to a repeated TAKE_OVER; we record the
 * answer (`told`) before using it. A crash of either side then: run resolve
 * again — the extents the old primary changed are copied either way. A
 * crash between the reverse job's start and the record's removal: open()
 * sees the job and drops the record. The same holds for one volume.
 */
import { mkdir, readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { FailoverView } from '../control/schema.js'
import { crashPoint } from '../crash-points.js'
import { removeDurably, writeFileDurably } from '../durable-file.js'
import { VvfsError, asVvfsError } from '../errors.js'
import { EXTENT_SIZE } from '../layout.js'
import type { Logger } from '../log.js'
import type { ReplicateJobRecord } from '../migration/job.js'
import { loadPeerKey } from '../wire/auth.js'
import { WireClient } from '../wire/client.js'
import { parseHostPort, type WireServer } from '../wire/server.js'
import type { SecondaryState } from './applier.js'
import { SIZE_MARK } from './durable-log.js'
import { compareHistories, handoff, refusal, sameRecord, type EpochChain } from './epoch.js'
import { PeerClients } from './peer-clients.js'
import {
  ExtentsReplyMessage,
  FailoverRequest,
  HistoryMessage,
  HistoryReplyMessage,
  RemarkMessage,
  TakeOverMessage,
  type MemberExtentList,
  type SideReport,
  type TakeOver,
} from './failover-messages.js'
import { Journal } from './journal.js'
import { journalDirOf } from './journal-chain.js'
import type { JournalLayer } from './journal-layer.js'
import { SegmentDurableLog } from './journal-log.js'
import { MESSAGE_FORMAT, REPLICATION_SERVICE } from './messages.js'
import type { PrimaryPair } from './primary.js'
import type { PairConfig, SecondaryPairs } from './secondary.js'

/** A peer that reported within this is reachable: three missed reports (sent every REPORT_EVERY_MS). */
export const PEER_ALIVE_MS = 3000
const REPORT_EVERY_MS = 1000
/** How long demote waits for the secondary to apply what was written (then it records the rest as changed extents). */
const DRAIN_MS = 10_000
/** How long demote and reverse wait for hosts to close the volume for writing (a FUSE release trails the close). */
const WRITERS_MS = 2000

export interface FailoverVolume {
  name: string
  no: number
  size: number
  layer: JournalLayer
  openForWrite(): boolean
  /** Refuses writable opens until the returned function is called. */
  blockWriters(why: string): () => void
}

export interface FailoverHost {
  failoverVolume(name: string): FailoverVolume | undefined
  /** Marks the volume read-only as a replica of `pair`, or writable (undefined), durably in the catalog. */
  setReplicaOf(name: string, pair: string | undefined): Promise<void>
  home(volNo: number): string
  /** The running primary side of `pair` here: its job and pair. */
  primaryOf(pair: string): { job: ReplicateJobRecord; pair: PrimaryPair } | undefined
  primaries(): { job: ReplicateJobRecord; pair: PrimaryPair }[]
  /** Ends a primary pair's job (its journal dropped). */
  stopPair(pair: string): Promise<void>
  /** Starts the reverse pair's job: `volumes` (a group's all, in order) to `to`, shipping from `journalDir` under `chain`. */
  startReverse(p: { volumes: string[]; group: string | null; to: string; pair: string; peerKey: string; chain: EpochChain; journalDir: string }): Promise<void>
  /** The daemon's --peer-key file. */
  peerKeyFile(): string | undefined
  emitFailover(body: FailoverEvent): void
  /** Runs fn in the daemon's queue of control changes. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>
}

export interface FailoverEvent {
  pair: string
  volume: string
  action: 'promoted' | 'demoted' | 'reversed' | 'resolved' | 'split-brain'
  epoch: number
  reason: string
}

interface PromotedRecord {
  pair: string
  role: 'promoted'
  /** The pair's volume here (a group's first). */
  volume: string
  /** Issue 13.6: every volume of a consistency group, promoted together (absent for one volume). */
  volumes?: string[]
  chain: EpochChain
  /** The applied number at the promote: the last number both sides hold alike, unless the old primary held more. */
  promotedAt: number
  journalDir: string
  /** The replica configuration before the promote (resolve --discard local restores it). */
  replica: PairConfig
  /** The old primary's listener as it last reported it before the promote: reverse's default after a restart here, before its next report. */
  peerListen?: string | null
  /** A resolve under way (written before any volume changes): see resolveLocal and takeOver. */
  resolving?: Resolving
  at: string
}

/**
 * A resolve's durable progress on the promoted side. `local`: until `told`
 * (the old primary recorded our changed extents) a restart turns every
 * volume writable again (not resolved); once told it finishes (every volume
 * the replica). `peer`: `answer` is what the old primary answered (its
 * changed extents, by our volume numbers) once it became our replica: a
 * re-run copies those (the peer answers none the second time).
 */
interface Resolving {
  discard: 'local' | 'peer'
  told: boolean
  answer?: { no: number; extents: number[] }[]
  at: string
}

/** What a side that became the replica answered (STATE/replication/failover/<pair>.taken.json): a take-over repeated for the same epoch answers it again. */
interface TakenRecord {
  /** The sender's last epoch record: the take-over this answered. */
  last: EpochChain[number]
  extents: number[]
  members?: MemberExtentList
}

interface DemotedRecord {
  pair: string
  role: 'demoted'
  volume: string
  chain: EpochChain
  /** The last number this side gave out. */
  lastSeq: number
  /** What the secondary had applied when this side stopped. */
  peerApplied: number
  /** Extents changed past peerApplied (SIZE_MARK: the size); a group's first volume's. */
  changed: number[]
  /** Issue 13.6: every volume of a consistency group, its number and extents changed past peerApplied (absent for one volume). */
  members?: { name: string; no: number; changed: number[] }[]
  /** Issue 13.6: the consistency group's name (with members). */
  group?: string | null
  peer: string
  peerKey: string
  at: string
}

type FailoverRecord = PromotedRecord | DemotedRecord

/** The volumes a promote made writable: a group's all, else the one. */
const promotedVolumes = (r: PromotedRecord): string[] => r.volumes ?? [r.volume]

/** Writes `value` as JSON atomically and durably (durable-file.ts). */
async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await mkdir(dirname(file), { recursive: true })
  await writeFileDurably(file, JSON.stringify(value, null, 1))
}

/** Extents to copy as dirty marks of the volumes named by number (SIZE_MARK entries dropped: the size is marked per volume apart). */
const marksOf = (members: { no: number; extents: number[] }[]) => members.flatMap((m) => m.extents.filter((x) => x !== SIZE_MARK).map((extent) => ({ volume: m.no, extent })))
const extentCount = (members: { extents: number[] }[]) => members.reduce((n, m) => n + m.extents.filter((x) => x !== SIZE_MARK).length, 0)

type Relation = FailoverView['relation']

interface PromotedRuntime {
  journal: Journal
  log: SegmentDurableLog
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** The extents an entry range touches. */
function extentsOf(offset: number, length: number): number[] {
  const out: number[] = []
  for (let x = Math.floor(offset / EXTENT_SIZE); x <= Math.floor((offset + Math.max(1, length) - 1) / EXTENT_SIZE); x++) out.push(x)
  return out
}

/** Extents of `volNo` changed by the journal's durable entries after `after`, and its dirty marks. */
export async function changedSince(journal: Journal, volNo: number, after: number): Promise<number[]> {
  await journal.sync()
  const out = new Set<number>()
  for (const m of journal.dirtyMarks()) if (m.volume === volNo) out.add(m.extent)
  for await (const e of journal.entriesAfter(after)) {
    if (e.volume !== volNo || e.kind === 'flush') continue
    if (e.kind === 'resize') out.add(SIZE_MARK)
    else for (const x of extentsOf(e.offset, e.length)) out.add(x)
  }
  return [...out].sort((a, b) => a - b)
}

/** A running primary pair's demoted record: each volume's extents changed past `peerApplied` (what the other side holds). */
async function demotedRecordOf(pair: string, p: { job: ReplicateJobRecord; pair: PrimaryPair }, volumes: FailoverVolume[], peerApplied: number): Promise<DemotedRecord> {
  const members: { name: string; no: number; changed: number[] }[] = []
  for (const v of volumes) members.push({ name: v.name, no: v.no, changed: await changedSince(p.pair.journal, v.no, peerApplied) })
  return {
    pair,
    role: 'demoted',
    volume: volumes[0]!.name,
    chain: p.job.chain,
    lastSeq: p.pair.journal.positions.lastAccepted,
    peerApplied,
    changed: members[0]!.changed,
    ...(volumes.length > 1 ? { members, group: p.pair.status().group } : {}),
    peer: p.job.peer,
    peerKey: p.job.peerKey,
    at: new Date().toISOString(),
  }
}

export class FailoverService {
  private records = new Map<string, FailoverRecord>()

  /** A promote's journal is the log of its epoch in a journal chain (journal-chain.ts) based here: the reverse pair's job opens it as such. */
  private promoteJournalBase(pair: string): string {
    return join(this.stateDir, 'replication', 'failover', `${pair}.journal`)
  }
  private readonly promoted = new Map<string, PromotedRuntime>()
  private readonly reports = new Map<string, { side: SideReport; at: number }>()
  private readonly clients: PeerClients
  private readonly splitSeen = new Set<string>()
  /** Pairs whose promote is under way (promote: fenced). */
  private readonly fenced = new Set<string>()
  private listenAddress: string | null = null
  private timer: NodeJS.Timeout | null = null
  private reporting = false
  private closed = false
  private readonly file: string

  constructor(
    private readonly stateDir: string,
    private readonly host: FailoverHost,
    private readonly secondaries: SecondaryPairs,
    private readonly log: Logger,
  ) {
    this.file = join(stateDir, 'replication', 'failover.json')
    this.clients = new PeerClients(log, { deadlineMs: REPORT_EVERY_MS })
  }

  /** Loads the records and finishes what they describe (before the mounts): promoted journals attached, demoted pairs ended. */
  async open(): Promise<void> {
    let raw: string | null = null
    try {
      raw = await readFile(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const list = raw ? (JSON.parse(raw) as FailoverRecord[]) : []
    this.records = new Map(list.map((r) => [r.pair, r]))
    for (const r of list) {
      if (r.role === 'promoted' && r.volumes) {
        // Issue 13.6: a group's volumes deleted since its promote leave it; the rest stay promoted.
        const left = r.volumes.filter((name) => this.host.failoverVolume(name))
        if (left.length > 0 && left.length < r.volumes.length) {
          r.volumes = left
          r.volume = left[0]!
          await this.save()
        }
      }
      if (!this.host.failoverVolume(r.volume)) {
        // Its volume was deleted: nothing is left to fail over.
        this.log.warn({ event: 'replication.failover_dropped', pair: r.pair, volume: r.volume, role: r.role }, `pair ${r.pair}: volume ${r.volume} is gone; its ${r.role} record is dropped`)
        this.records.delete(r.pair)
        if (r.role === 'promoted') await removeDurably(r.journalDir)
        await this.save()
        continue
      }
      if (r.role === 'promoted') {
        if (this.host.primaryOf(r.pair)?.job.journalDir === this.promoteJournalBase(r.pair)) {
          // The reverse job started before the record went: the promote is over.
          this.records.delete(r.pair)
          await this.save()
        } else if (r.resolving?.discard === 'local' && r.resolving.told) {
          // The old primary recorded our changes: the resolve finishes, every volume the replica.
          await this.finishResolveLocal(r)
          this.log.warn({ event: 'replication.resolve_finished', pair: r.pair, volume: promotedVolumes(r).join(',') }, `pair ${r.pair}: an interrupted resolve --discard local finished at restart`)
        } else {
          if (r.resolving && !r.resolving.told) {
            // Interrupted before the peer was told: not resolved; every volume stays promoted (finishPromote makes each writable again).
            this.log.warn({ event: 'replication.resolve_undone', pair: r.pair, discard: r.resolving.discard }, `pair ${r.pair}: an interrupted resolve --discard ${r.resolving.discard} did not happen; run it again`)
            delete r.resolving
            await this.save()
          }
          await this.finishPromote(r)
        }
      } else if (this.secondaries.lookup(r.pair) && this.secondaries.lookup(r.pair)!.status.chain.length > r.chain.length) {
        // The take-over adopted the promoted side's chain before the record went: this side is its replica.
        this.records.delete(r.pair)
        await this.save()
      } else {
        // Demoted (or yielding to a resolve): every volume read-only, the pair's job ended — finished here if a crash cut it.
        for (const name of r.members?.map((m) => m.name) ?? [r.volume]) if (this.host.failoverVolume(name)) await this.host.setReplicaOf(name, r.pair)
        if (this.host.primaryOf(r.pair)) await this.host.stopPair(r.pair)
      }
    }
    this.timer = setInterval(() => void this.report(), REPORT_EVERY_MS)
    this.timer.unref()
  }

  /** Where this daemon's replication listener is (sent in reports: the peer's default for reverse). */
  listening(address: string): void {
    this.listenAddress = address
  }

  async close(): Promise<void> {
    this.closed = true
    if (this.timer) clearInterval(this.timer)
    await this.clients.close()
    for (const [pair, rt] of this.promoted) {
      const r = this.promotedRecord(pair)
      for (const name of r ? promotedVolumes(r) : []) this.host.failoverVolume(name)?.layer.detach()
      await rt.journal.close().catch(() => undefined)
      await rt.log.close().catch(() => undefined)
    }
    this.promoted.clear()
  }

  /** Whether the pair was promoted here (the old primary's CREATE and entries are refused). */
  promotedRecord(pair: string): PromotedRecord | undefined {
    const r = this.records.get(pair)
    return r?.role === 'promoted' ? r : undefined
  }

  demotedRecord(pair: string): DemotedRecord | undefined {
    const r = this.records.get(pair)
    return r?.role === 'demoted' ? r : undefined
  }

  // --- the operator's verbs ------------------------------------------------------

  /**
   * `replicate promote PAIR [--force]` on the secondary; PAIR may be a
   * consistency group's (issue 13.6): its volumes are promoted together.
   * The pair is fenced first (the old primary's requests refused) and its
   * applier settled, so the applied number read is the one the volumes hold
   * — no batch lands between the number and the store's drop.
   */
  promote(pair: string, force: boolean): Promise<void> {
    return this.host.exclusive(async () => {
      if (this.promotedRecord(pair)) throw new VvfsError('FAILOVER_STATE', `pair ${pair} is already promoted here`, { details: { reason: 'promoted' } })
      const config = this.secondaries.config(pair)
      const applier = this.secondaries.lookup(pair)
      if (!config || !applier) throw new VvfsError('PAIR_NOT_FOUND', `no secondary pair named ${pair} here`)
      this.fenced.add(pair)
      try {
        await applier.settled()
        await this.promoteFenced(pair, config, applier.status, force)
      } finally {
        this.fenced.delete(pair)
      }
    })
  }

  /** Whether the pair is being promoted here: its old primary's requests are refused meanwhile. */
  promoting(pair: string): boolean {
    return this.fenced.has(pair)
  }

  private async promoteFenced(pair: string, config: PairConfig, s: Readonly<SecondaryState> & { consistent: boolean }, force: boolean): Promise<void> {
    if (!force) {
      if (!s.consistent)
        throw new VvfsError('PROMOTE_REFUSED', `pair ${pair} is not consistent here (a sync or resync is under way): its image is no point in time of the primary; --force to promote anyway`, {
          details: { reason: 'inconsistent' },
        })
      const peer = this.reports.get(pair)
      if (peer && peer.side.role === 'primary' && Date.now() - peer.at < PEER_ALIVE_MS)
        throw new VvfsError('PROMOTE_REFUSED', `the primary of pair ${pair} is reachable and the pair healthy (last report ${Date.now() - peer.at} ms ago): demote it first, or --force`, {
          details: { reason: 'primary-reachable' },
        })
    }
    const names = config.volumes.map((v) => v.name)
    const v = this.volume(names[0]!)
    const last = s.chain[s.chain.length - 1]!
    const record = handoff(s.chain, `${this.host.home(v.no)}@promote-e${last.epoch + 1}`, s.appliedSeq)
    const r: PromotedRecord = {
      pair,
      role: 'promoted',
      volume: v.name,
      ...(names.length > 1 ? { volumes: names } : {}),
      chain: [...s.chain, record],
      promotedAt: s.appliedSeq,
      journalDir: journalDirOf(this.promoteJournalBase(pair), record.epoch),
      replica: config,
      peerListen: this.reports.get(pair)?.side.listen ?? null,
      at: new Date().toISOString(),
    }
    crashPoint('replication.promote.before-record')
    // The one durable record of the promote, for every volume of a group: after it, open() finishes the promote.
    this.records.set(pair, r)
    await this.save()
    await this.finishPromote(r)
    const volume = names.join(',')
    this.log.warn({ event: 'replication.promoted', pair, volume, epoch: record.epoch, at: r.promotedAt, force }, `pair ${pair} promoted: ${volume} writable (epoch ${record.epoch} from ${record.firstSeq})`)
    this.host.emitFailover({ pair, volume, action: 'promoted', epoch: record.epoch, reason: force ? 'forced' : 'primary gone or demoted' })
  }

  /** `replicate demote PAIR` on the primary; a consistency group's volumes together (issue 13.6). */
  demote(pair: string): Promise<void> {
    return this.host.exclusive(async () => {
      if (this.demotedRecord(pair)) throw new VvfsError('FAILOVER_STATE', `pair ${pair} is already demoted here`, { details: { reason: 'demoted' } })
      const p = this.host.primaryOf(pair)
      if (!p) throw new VvfsError('PAIR_NOT_FOUND', `no replication pair named ${pair} runs from this daemon`)
      // The pair's volumes, comma-joined in status (names hold no comma).
      const volume = p.pair.status().volume
      const volumes = volume.split(',').map((name) => this.volume(name))
      const release = await this.withoutWritersAll(volumes, 'demoting')
      try {
        // No writer is open and none can open from here: the secondary drains; the volumes turn read-only only after the record, so a crash leaves
        // every one writable (not demoted: run it again) or, after the record, open() makes every one read-only (demoted) — never a part of a group.
        const end = Date.now() + DRAIN_MS
        let s = p.pair.status()
        while (!(s.link === 'up' && s.lastApplied >= s.lastWritten) && Date.now() < end) {
          await sleep(50)
          s = p.pair.status()
        }
        const r = await demotedRecordOf(pair, p, volumes, s.lastApplied)
        this.records.set(pair, r)
        await this.save()
        for (const v of volumes) {
          await this.host.setReplicaOf(v.name, pair)
          crashPoint('replication.demote.member')
        }
        await this.host.stopPair(pair)
        const drained = r.lastSeq <= r.peerApplied
        const changed = (r.members ?? [r]).reduce((n, m) => n + m.changed.length, 0)
        this.log.warn({ event: 'replication.demoted', pair, volume, lastSeq: r.lastSeq, peerApplied: r.peerApplied, changed }, `pair ${pair} demoted: ${volume} read-only`)
        this.host.emitFailover({ pair, volume, action: 'demoted', epoch: r.chain[r.chain.length - 1]!.epoch, reason: drained ? 'drained' : `the secondary applied ${r.peerApplied} of ${r.lastSeq}` })
      } finally {
        release()
      }
    })
  }

  /** `replicate reverse PAIR [--to ADDR:PORT]` on the promoted side: the old primary becomes our replica, shipping only what differs. */
  reverse(pair: string, opts: { to?: string; peerKey?: string }): Promise<void> {
    return this.host.exclusive(() => this.takeOver(pair, opts, false))
  }

  /** `replicate resolve PAIR --discard local|peer` on the promoted side. */
  resolve(pair: string, discard: 'local' | 'peer', opts: { to?: string; peerKey?: string }): Promise<void> {
    return this.host.exclusive(async () => {
      if (!this.promotedRecord(pair)) {
        const promotedThere = this.reports.get(pair)?.side.role === 'promoted'
        throw new VvfsError('FAILOVER_STATE', `pair ${pair} is not promoted here: run resolve on the promoted side${promotedThere ? ' (the peer)' : ''}`, { details: { reason: 'not-promoted' } })
      }
      if (discard === 'peer') await this.takeOver(pair, opts, true)
      else await this.resolveLocal(pair, opts)
    })
  }

  // --- status -----------------------------------------------------------------------

  /** This side's history of `pair`, if it takes part in it. */
  side(pair: string): SideReport | null {
    const r = this.records.get(pair)
    const listen = this.listenAddress
    if (r?.role === 'promoted') return { role: 'promoted', chain: [...r.chain], lastSeq: this.promoted.get(pair)?.journal.positions.lastAccepted ?? r.promotedAt, listen }
    if (r?.role === 'demoted') return { role: 'demoted', chain: [...r.chain], lastSeq: r.lastSeq, listen }
    const p = this.host.primaryOf(pair)
    if (p) return { role: 'primary', chain: [...p.job.chain], lastSeq: p.pair.journal.positions.lastAccepted, listen }
    const a = this.secondaries.lookup(pair)
    if (a) return { role: 'secondary', chain: [...a.status.chain], lastSeq: a.status.appliedSeq, listen }
    return null
  }

  view(pair: string): FailoverView | null {
    const me = this.side(pair)
    if (!me) return null
    const report = this.reports.get(pair)
    const peer = report
      ? { role: report.side.role, epoch: report.side.chain[report.side.chain.length - 1]!.epoch, lastSeq: report.side.lastSeq, seenSecondsAgo: Math.round((Date.now() - report.at) / 100) / 10, listen: report.side.listen }
      : null
    let relation: Relation = 'unknown'
    let commonSeq: number | null = null
    if (report) {
      const c = compareHistories(me, report.side)
      relation = c.relation === 'a-behind' ? 'local-behind' : c.relation === 'b-behind' ? 'peer-behind' : c.relation
      commonSeq = c.commonSeq
    }
    return { role: me.role, lastSeq: me.lastSeq, peer, relation, commonSeq }
  }

  /** Rows for pairs only failover knows here (promoted, demoted): the rest are the pairs' own. A promoted group's row names all its volumes. */
  extraPairs(): {
    pair: string
    role: 'promoted' | 'demoted'
    volume: string
    group: string | null
    epoch: number
    lastSeq: number
    promotedAt: number | null
    peer: string
    journal: Journal | null
  }[] {
    return [...this.records.values()].map((r) => ({
      pair: r.pair,
      role: r.role,
      volume: r.role === 'promoted' ? promotedVolumes(r).join(',') : (r.members?.map((m) => m.name).join(',') ?? r.volume),
      group: r.role === 'promoted' ? r.replica.group : (r.group ?? null),
      epoch: r.chain[r.chain.length - 1]!.epoch,
      lastSeq: r.role === 'promoted' ? (this.promoted.get(r.pair)?.journal.positions.lastAccepted ?? r.promotedAt) : r.lastSeq,
      promotedAt: r.role === 'promoted' ? r.promotedAt : null,
      peer: r.role === 'promoted' ? (this.reports.get(r.pair)?.side.listen ?? r.replica.peer) : r.peer,
      journal: this.promoted.get(r.pair)?.journal ?? null,
    }))
  }

  // --- the peer's requests --------------------------------------------------------

  /** Registers HISTORY, TAKE_OVER and REMARK on the replication listener. */
  serve(server: WireServer): void {
    const logged = (type: number, what: string, run: (body: Buffer, peer: string) => Promise<Buffer>) =>
      server.handle(type, async (body, ctx) => {
        try {
          return await run(body, ctx.peer)
        } catch (err) {
          const e = asVvfsError(err)
          this.log.warn({ event: 'replication.refused', request: what, peer: ctx.peer, code: e.code, reason: e.details?.reason, err: e.message }, `failover ${what} refused`)
          throw err
        }
      })
    logged(FailoverRequest.HISTORY, 'history', async (body) => {
      const h = HistoryMessage.decode(body)
      // Reports are kept only for pairs this side takes part in.
      if (this.side(h.pair)) this.noteReport(h.pair, h.side)
      return HistoryReplyMessage.encode({ format: MESSAGE_FORMAT, pair: h.pair, side: this.side(h.pair) })
    })
    logged(FailoverRequest.TAKE_OVER, 'take-over', async (body, peer) => {
      const t = TakeOverMessage.decode(body)
      return ExtentsReplyMessage.encode(await this.host.exclusive(() => this.becomeReplica(t, peer)))
    })
    logged(FailoverRequest.REMARK, 'remark', async (body) => {
      const m = RemarkMessage.decode(body)
      await this.host.exclusive(async () => {
        const p = this.host.primaryOf(m.pair)
        if (!p) throw new VvfsError('PAIR_NOT_FOUND', `pair ${m.pair} does not run from here as a primary`)
        // Issue 13.6: a group's marks name each volume by our number; one volume's are its.
        if ((p.job.volNos.length > 1) !== Boolean(m.members))
          throw new VvfsError('FAILOVER_STATE', `pair ${m.pair} here has ${p.job.volNos.length} volumes, the sender's ${m.members?.length ?? 1}: not the same pair`, { details: { reason: 'other-pair' } })
        const members = m.members ?? [{ no: p.job.volNos[0]!, extents: m.extents }]
        for (const x of members) if (!p.job.volNos.includes(x.no)) throw new VvfsError('FAILOVER_STATE', `pair ${m.pair}: volume ${x.no} is not one of this group's`, { details: { reason: 'other-pair' } })
        await p.pair.journal.addMarks(members.flatMap((x) => x.extents.map((extent) => ({ volume: x.no, extent }))))
        // The loop may be idle in shipping: restart it so it copies the marks first.
        await p.pair.halt()
        p.pair.start()
        const count = members.reduce((n, x) => n + x.extents.length, 0)
        this.log.warn({ event: 'replication.remarked', pair: m.pair, extents: count }, `pair ${m.pair}: the promoted side discarded its changes; ${count} extents to copy`)
        this.host.emitFailover({ pair: m.pair, volume: p.pair.status().volume, action: 'resolved', epoch: p.pair.status().epoch, reason: 'the peer discarded its changes' })
      })
      return ExtentsReplyMessage.encode({ format: MESSAGE_FORMAT, extents: [], lastSeq: 0 })
    })
  }

  // --- internals -----------------------------------------------------------------------

  private volume(name: string): FailoverVolume {
    const v = this.host.failoverVolume(name)
    if (!v) throw new VvfsError('VOLUME_NOT_FOUND', `no volume named ${name} here`)
    return v
  }

  /** withoutWriters for every volume of a pair (a group's all); the ones blocked are let go if one stays busy. */
  private async withoutWritersAll(volumes: FailoverVolume[], why: string): Promise<() => void> {
    const releases: (() => void)[] = []
    const releaseAll = () => releases.forEach((release) => release())
    try {
      for (const v of volumes) releases.push(await this.withoutWriters(v, why))
    } catch (err) {
      releaseAll()
      throw err
    }
    return releaseAll
  }

  /** Blocks writable opens and waits for open writers to close (VOLUME_BUSY if they stay). */
  private async withoutWriters(v: FailoverVolume, why: string): Promise<() => void> {
    const release = v.blockWriters(why)
    const end = Date.now() + WRITERS_MS
    while (v.openForWrite()) {
      if (Date.now() > end) {
        release()
        throw new VvfsError('VOLUME_BUSY', `volume ${v.name} is open for writing: close it first`)
      }
      await sleep(20)
    }
    return release
  }

  /**
   * Promote's steps after its record: the replica store dropped, the journal
   * attached to every volume of the pair (a group's share it, as on the
   * primary: one sequence), each volume writable. Idempotent.
   */
  private async finishPromote(r: PromotedRecord): Promise<void> {
    await this.secondaries.release(r.pair)
    const volumes = promotedVolumes(r).map((name) => this.volume(name))
    if (!this.promoted.has(r.pair)) {
      await mkdir(dirname(r.journalDir), { recursive: true })
      const log = await SegmentDurableLog.open(r.journalDir)
      try {
        const journal = await Journal.open(log, { epoch: r.chain[r.chain.length - 1]!.epoch, firstSeq: r.promotedAt + 1, syncEveryCommit: false })
        for (const v of volumes) await v.layer.replay(journal)
        for (const v of volumes) v.layer.attach(journal)
        this.promoted.set(r.pair, { journal, log })
      } catch (err) {
        await log.close().catch(() => undefined)
        throw err
      }
    }
    for (const v of volumes) {
      await this.host.setReplicaOf(v.name, undefined)
      crashPoint('replication.promote.member')
    }
  }

  /** Closes the promoted journal (detached from the volume); `drop` deletes it. */
  private async closePromoted(r: PromotedRecord, drop: boolean): Promise<void> {
    const rt = this.promoted.get(r.pair)
    if (rt) {
      for (const name of promotedVolumes(r)) this.volume(name).layer.detach()
      await rt.journal.close()
      await rt.log.close()
      this.promoted.delete(r.pair)
    }
    if (drop) await removeDurably(r.journalDir)
  }

  private async peerKeyOf(file?: string) {
    const f = file ?? this.host.peerKeyFile()
    if (!f) throw new VvfsError('INVALID_ARGUMENT', 'name the peer\'s key file (--peer-key FILE), or start the daemon with --peer-key')
    return { file: f, key: await loadPeerKey(f) }
  }

  private peerAddress(pair: string, to?: string): string {
    const r = this.records.get(pair)
    const a = to ?? this.reports.get(pair)?.side.listen ?? (r?.role === 'promoted' ? r.peerListen : undefined) ?? undefined
    if (!a) throw new VvfsError('INVALID_ARGUMENT', `the old primary of pair ${pair} has not reported its address here: give --to ADDR:PORT`)
    parseHostPort(a)
    return a
  }

  /** One request to the peer on a connection of its own (closed after). */
  private async ask(address: string, key: Awaited<ReturnType<FailoverService['peerKeyOf']>>['key'], type: number, body: Buffer): Promise<Buffer> {
    const { host, port } = parseHostPort(address)
    const client = new WireClient({ host, port, key, service: REPLICATION_SERVICE, log: this.log, deadlineMs: 30_000 })
    client.start()
    try {
      await client.ready(5000)
      return await client.request(type, body)
    } finally {
      await client.close()
    }
  }

  /**
   * reverse, or resolve --discard peer: the peer becomes our replica from the
   * promote point; its changes past it (each volume's, for a group) are
   * copied over. With discard the resolve's record goes first (nothing of
   * ours changes before it: our volumes stay writable throughout), then the
   * peer's answer is recorded before it is used, so a re-run after a crash
   * copies what the peer answered (the peer, our replica already, answers it
   * again from its taken record too).
   */
  private async takeOver(pair: string, opts: { to?: string; peerKey?: string }, discard: boolean): Promise<void> {
    const r = this.promotedRecord(pair)
    if (!r) throw new VvfsError('FAILOVER_STATE', `pair ${pair} is not promoted here: reverse runs on the promoted side`, { details: { reason: 'not-promoted' } })
    const address = this.peerAddress(pair, opts.to)
    const { file, key } = await this.peerKeyOf(opts.peerKey)
    const names = promotedVolumes(r)
    const volumes = names.map((name) => this.volume(name))
    const v = volumes[0]!
    // Issue 13.6: a group's volumes, each with the number its entries carried at the old primary.
    const members = r.volumes ? volumes.map((m) => ({ no: m.no, size: m.size, was: r.replica.volumes.find((x) => x.name === m.name)!.no })) : undefined
    let answer = discard && r.resolving?.discard === 'peer' ? r.resolving.answer : undefined
    if (!answer) {
      const history = HistoryReplyMessage.decode(await this.ask(address, key, FailoverRequest.HISTORY, HistoryMessage.encode({ format: MESSAGE_FORMAT, pair, side: this.side(pair)! })))
      if (history.side) this.noteReport(pair, history.side)
      if (!discard && history.side) {
        const c = compareHistories(this.side(pair)!, history.side)
        if (c.relation === 'split-brain')
          throw refusal('split-brain', `pair ${pair} split: both sides were written after ${c.commonSeq}; name the side whose changes are discarded (vvfs replicate resolve ${pair} --discard local|peer)`, { commonSeq: c.commonSeq })
        if (history.side.lastSeq > r.promotedAt)
          throw new VvfsError('FAILOVER_STATE', `the old primary holds writes past ${r.promotedAt} that this side lacks: resolve ${pair} --discard local|peer`, { details: { reason: 'peer-ahead' } })
        if (history.side.role === 'primary') throw new VvfsError('FAILOVER_STATE', `pair ${pair} still runs as primary on the peer: demote it there first`, { details: { reason: 'peer-primary' } })
      }
    }
    const release = await this.withoutWritersAll(volumes, 'reversing')
    try {
      if (!answer) {
        if (discard) {
          crashPoint('replication.resolve.before-record')
          r.resolving = { discard: 'peer', told: false, at: new Date().toISOString() }
          await this.save()
        }
        const reply = ExtentsReplyMessage.decode(
          await this.ask(
            address,
            key,
            FailoverRequest.TAKE_OVER,
            TakeOverMessage.encode({ format: MESSAGE_FORMAT, pair, chain: [...r.chain], commonSeq: r.promotedAt, volume: { no: v.no, size: v.size }, ...(members ? { members } : {}), discard }),
          ),
        )
        answer = reply.members ?? [{ no: v.no, extents: reply.extents }]
        for (const m of answer) if (!volumes.some((x) => x.no === m.no)) throw new VvfsError('PEER_PROTOCOL', `pair ${pair}: the old primary answered extents of volume ${m.no}, not one of the pair's`)
        if (discard) {
          r.resolving = { discard: 'peer', told: true, answer, at: r.resolving!.at }
          await this.save()
          crashPoint('replication.resolve.after-peer')
        }
      }
      const rt = this.promoted.get(pair)
      if (!rt) throw new VvfsError('INTERNAL', `pair ${pair}: the promoted journal is not open`)
      // What the peer changed past the promote point is copied over; the size of every volume always (a resize entry, no data).
      await rt.journal.addMarks([...marksOf(answer), ...volumes.map((m) => ({ volume: m.no, extent: SIZE_MARK }))])
      await this.closePromoted(r, false)
      await this.host.startReverse({ volumes: names, group: r.volumes ? r.replica.group : null, to: address, pair, peerKey: file, chain: r.chain, journalDir: this.promoteJournalBase(pair) })
      this.records.delete(pair)
      this.splitSeen.delete(pair)
      await this.save()
      const copied = extentCount(answer)
      const volume = names.join(',')
      this.log.warn({ event: 'replication.reversed', pair, volume, to: address, copied, discard }, `pair ${pair} reversed: ${volume} → ${address} (${copied} extents to copy)`)
      this.host.emitFailover({ pair, volume, action: discard ? 'resolved' : 'reversed', epoch: r.chain[r.chain.length - 1]!.epoch, reason: discard ? `the peer's changes discarded (${copied} extents)` : 'reversed' })
    } catch (err) {
      // Refused or unreachable before the peer answered: no resolve under way (a peer that did become our replica answers again from its taken record).
      if (r.resolving && !r.resolving.told && this.records.get(pair) === r) {
        delete r.resolving
        await this.save()
      }
      throw err
    } finally {
      release()
    }
  }

  /**
   * resolve --discard local: this side's changes since the promote go; it
   * becomes the old primary's replica again, every volume of a group
   * together. The resolve's record first; each volume read-only; the old
   * primary told our changed extents (REMARK, which it marks to copy); then
   * `told` recorded; then the journal dropped and the replica adopted. A
   * crash (or a refusal) before `told` makes every volume writable again
   * (not resolved); after it, open() finishes (resolved).
   */
  private async resolveLocal(pair: string, opts: { to?: string; peerKey?: string }): Promise<void> {
    const r = this.promotedRecord(pair)!
    const address = this.peerAddress(pair, opts.to)
    const { key } = await this.peerKeyOf(opts.peerKey)
    const names = promotedVolumes(r)
    const volumes = names.map((name) => this.volume(name))
    const release = await this.withoutWritersAll(volumes, 'discarding')
    try {
      const rt = this.promoted.get(pair)
      if (!rt) throw new VvfsError('INTERNAL', `pair ${pair}: the promoted journal is not open`)
      crashPoint('replication.resolve.before-record')
      r.resolving = { discard: 'local', told: false, at: new Date().toISOString() }
      await this.save()
      const members: { no: number; extents: number[] }[] = []
      try {
        for (const v of volumes) {
          await this.host.setReplicaOf(v.name, pair)
          crashPoint('replication.resolve.member')
        }
        // Our changed extents by the old primary's volume numbers, the size always.
        for (const v of volumes) members.push({ no: r.replica.volumes.find((x) => x.name === v.name)!.no, extents: [...(await changedSince(rt.journal, v.no, r.promotedAt)).filter((x) => x !== SIZE_MARK), SIZE_MARK] })
        crashPoint('replication.resolve.before-peer')
        await this.ask(address, key, FailoverRequest.REMARK, RemarkMessage.encode({ format: MESSAGE_FORMAT, pair, extents: r.volumes ? [] : members[0]!.extents, ...(r.volumes ? { members } : {}) }))
      } catch (err) {
        // The old primary did not record our changes: nothing is resolved, every volume writable again.
        delete r.resolving
        await this.save()
        for (const v of volumes) await this.host.setReplicaOf(v.name, undefined)
        throw err
      }
      r.resolving.told = true
      await this.save()
      crashPoint('replication.resolve.after-peer')
      await this.finishResolveLocal(r)
      const discarded = extentCount(members)
      const volume = names.join(',')
      this.log.warn({ event: 'replication.resolved', pair, volume, discarded }, `pair ${pair}: local changes since ${r.promotedAt} discarded; ${volume} the replica again`)
      this.host.emitFailover({ pair, volume, action: 'resolved', epoch: r.chain[r.chain.length - 2]!.epoch, reason: `local changes discarded (${discarded} extents)` })
    } finally {
      release()
    }
  }

  /** resolve --discard local after the old primary was told: the journal dropped, every volume the replica at the promote point. Idempotent (open() runs it after a crash). */
  private async finishResolveLocal(r: PromotedRecord): Promise<void> {
    const names = promotedVolumes(r)
    await this.closePromoted(r, true)
    for (const name of names) await this.host.setReplicaOf(name, r.pair)
    const chain = r.chain.slice(0, -1)
    const state: SecondaryState = { appliedSeq: r.promotedAt, chain, resyncing: false, consistentAt: null }
    const volumes = r.replica.volumes.filter((x) => names.includes(x.name)).map((x) => ({ ...x, size: this.volume(x.name).size }))
    await this.secondaries.adopt({ ...r.replica, volumes, chain }, state)
    this.records.delete(r.pair)
    this.splitSeen.delete(r.pair)
    await this.save()
  }

  /**
   * TAKE_OVER from the promoted side: become its replica from commonSeq on;
   * answer what we changed past it (a group: each volume's). A running
   * primary yields (discard) as a demote would, durably: its record (each
   * volume's changes past commonSeq) before any volume changes, so a crash
   * leaves the group either the primary still or demoted whole; the answer
   * is kept (taken record) before the replica is adopted.
   */
  private async becomeReplica(t: TakeOver, peer: string): Promise<{ format: 1; extents: number[]; members?: MemberExtentList; lastSeq: number }> {
    const running = this.host.primaryOf(t.pair)
    let demoted = this.demotedRecord(t.pair)
    const mine = running?.job.chain ?? demoted?.chain
    if (mine && !sameRecord(mine[0]!, t.chain[0]!))
      throw new VvfsError('FAILOVER_STATE', `pair ${t.pair} here began as epoch 1 at ${mine[0]!.home}, the sender's at ${t.chain[0]!.home}: not the same pair`, { details: { reason: 'other-pair' } })
    const count = running ? running.job.volNos.length : demoted ? (demoted.members?.length ?? 1) : 0
    if (count > 0 && count !== (t.members?.length ?? 1))
      throw new VvfsError('FAILOVER_STATE', `pair ${t.pair} here has ${count} volumes, the sender's ${t.members?.length ?? 1}: not the same pair`, { details: { reason: 'other-pair' } })
    if (running) {
      if (!t.discard) throw new VvfsError('FAILOVER_STATE', `pair ${t.pair} runs here as the primary: demote it first`, { details: { reason: 'peer-primary' } })
      demoted = await this.yieldPrimary(t, running)
    }
    if (!demoted) {
      // A take-over repeated after the promoted side crashed before starting its job: we are its replica already; the same answer again.
      const a = this.secondaries.lookup(t.pair)
      const last = a?.status.chain[a.status.chain.length - 1]
      if (a && last && sameRecord(last, t.chain[t.chain.length - 1]!)) {
        const kept = await this.taken(t.pair, last)
        return { format: 1, extents: kept?.extents ?? [], ...(kept?.members ? { members: kept.members } : {}), lastSeq: a.status.appliedSeq }
      }
      throw new VvfsError('PAIR_NOT_FOUND', `pair ${t.pair} is neither running nor demoted here`)
    }
    const lastSeq = demoted.lastSeq
    // Changed extents are recorded past what the secondary had applied; none past commonSeq if we gave out no later number.
    const past = demoted.lastSeq > t.commonSeq
    // Issue 13.6: a group's volumes by the numbers they had here (with their changes); one volume's is `volume`.
    const local = demoted.members
      ? t.members!.map((m) => {
          const own = demoted.members!.find((x) => x.no === m.was)
          if (!own) throw new VvfsError('FAILOVER_STATE', `pair ${t.pair}: the sender's volume ${m.no} was volume ${m.was}, not one of this group's`, { details: { reason: 'other-pair' } })
          return { no: m.no, name: own.name, changed: past ? own.changed : [] }
        })
      : [{ no: t.volume.no, name: demoted.volume, changed: past ? demoted.changed : [] }]
    const extents = local.flatMap((m) => m.changed)
    if (extents.length > 0 && !t.discard)
      throw new VvfsError('FAILOVER_STATE', `this side holds writes past ${t.commonSeq}: resolve ${t.pair} --discard local|peer`, { details: { reason: 'peer-ahead' } })
    const answer: TakenRecord = { last: t.chain[t.chain.length - 1]!, extents: t.members ? [] : extents, ...(t.members ? { members: local.map((m) => ({ no: m.no, extents: m.changed })) } : {}) }
    await writeJsonAtomic(this.takenFile(t.pair), answer)
    for (const m of local) await this.host.setReplicaOf(m.name, t.pair)
    const state: SecondaryState = { appliedSeq: t.commonSeq, chain: t.chain, resyncing: false, consistentAt: null }
    const volumes = local.map((m) => ({ no: m.no, name: m.name, size: this.volume(m.name).size }))
    await this.secondaries.adopt({ pair: t.pair, group: demoted.group ?? null, volumes, peer, createdAt: new Date().toISOString(), chain: t.chain }, state)
    crashPoint('replication.take-over.adopted')
    const volume = local.map((m) => m.name).join(',')
    this.records.delete(t.pair)
    await this.save()
    this.splitSeen.delete(t.pair)
    this.log.warn({ event: 'replication.taken_over', pair: t.pair, volume, from: t.commonSeq, discarded: extents.length }, `pair ${t.pair}: ${volume} is now the replica of ${peer}`)
    this.host.emitFailover({ pair: t.pair, volume, action: t.discard ? 'resolved' : 'reversed', epoch: t.chain[t.chain.length - 1]!.epoch, reason: `now the replica, from ${t.commonSeq}` })
    return { format: 1, extents: answer.extents, ...(answer.members ? { members: answer.members } : {}), lastSeq }
  }

  /** A running primary yields to resolve --discard peer: demoted durably (its record, each volume's changes past commonSeq, first), then read-only, its job ended. */
  private async yieldPrimary(t: TakeOver, running: { job: ReplicateJobRecord; pair: PrimaryPair }): Promise<DemotedRecord> {
    const names = running.pair.status().volume.split(',')
    const volumes = names.map((name) => this.volume(name))
    const release = await this.withoutWritersAll(volumes, 'yielding')
    try {
      const r = await demotedRecordOf(t.pair, running, volumes, t.commonSeq)
      this.records.set(t.pair, r)
      await this.save()
      for (const v of volumes) {
        await this.host.setReplicaOf(v.name, t.pair)
        crashPoint('replication.take-over.member')
      }
      await this.host.stopPair(t.pair)
      return r
    } finally {
      release()
    }
  }

  private noteReport(pair: string, side: SideReport): void {
    this.reports.set(pair, { side, at: Date.now() })
    const v = this.view(pair)
    if (v?.relation === 'split-brain' && !this.splitSeen.has(pair)) {
      this.splitSeen.add(pair)
      const me = this.side(pair)!
      this.log.error({ event: 'replication.split_brain', pair, commonSeq: v.commonSeq, local: me.lastSeq, peer: side.lastSeq }, `pair ${pair}: split-brain — both sides written after ${v.commonSeq}`)
      this.host.emitFailover({ pair, volume: this.volumeOf(pair), action: 'split-brain', epoch: me.chain[me.chain.length - 1]!.epoch, reason: `both sides written after ${v.commonSeq}` })
    }
  }

  private volumeOf(pair: string): string {
    const r = this.records.get(pair)
    if (r?.role === 'promoted') return promotedVolumes(r).join(',')
    if (r?.role === 'demoted' && r.members) return r.members.map((m) => m.name).join(',')
    return r?.volume ?? this.host.primaryOf(pair)?.pair.status().volume ?? this.secondaries.config(pair)?.volumes.map((v) => v.name).join(',') ?? '?'
  }

  /** Every second: our history to each peer we know the address of (running primaries, demoted sides), theirs back. */
  private async report(): Promise<void> {
    if (this.reporting || this.closed) return
    this.reporting = true
    try {
      const targets: { pair: string; address: string; keyFile: string }[] = []
      for (const p of this.host.primaries()) targets.push({ pair: p.job.pair, address: p.job.peer, keyFile: p.job.peerKey })
      for (const r of this.records.values()) if (r.role === 'demoted') targets.push({ pair: r.pair, address: r.peer, keyFile: r.peerKey })
      await Promise.all(
        targets.map(async (t) => {
          const side = this.side(t.pair)
          if (!side) return
          try {
            const client = await this.clients.get(t.address, t.keyFile)
            const reply = HistoryReplyMessage.decode(await client.request(FailoverRequest.HISTORY, HistoryMessage.encode({ format: MESSAGE_FORMAT, pair: t.pair, side }), { deadlineMs: REPORT_EVERY_MS }))
            if (reply.side) this.noteReport(t.pair, reply.side)
          } catch {
            // The peer is down or slow: its last report ages (status shows how old); the pair's own loop logs the link.
          }
        }),
      )
    } finally {
      this.reporting = false
    }
  }

  /** Writes the records atomically (temp file, fsync, rename). */
  private save(): Promise<void> {
    return writeJsonAtomic(this.file, [...this.records.values()])
  }

  private takenFile(pair: string): string {
    return join(this.stateDir, 'replication', 'failover', `${pair}.taken.json`)
  }

  /** The answer this side gave when it became the replica at the sender's `last` epoch, if it did. */
  private async taken(pair: string, last: EpochChain[number]): Promise<TakenRecord | undefined> {
    let raw: string
    try {
      raw = await readFile(this.takenFile(pair), 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    const t = JSON.parse(raw) as TakenRecord
    return sameRecord(t.last, last) ? t : undefined
  }
}
