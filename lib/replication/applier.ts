/**
 * Applier: the secondary's side of one replication pair (a volume, or a
 * consistency group of volumes sharing one sequence). It admits entries by
 * the epoch chain (lib/replication/epoch.ts), applies them strictly in
 * sequence order to an ApplyTarget — the changes and the new applied number
 * in one atomic batch — and answers what the primary may trim.
 *
 * State (persisted by the target, all in the batch of the entries it
 * covers): appliedSeq, the epoch chain it knows, and resync state —
 * `consistentAt` is the number the image is a point in time of the primary
 * again once applied (null when consistent now); during a resync the image is
 * not a prefix of anything and promote must be refused without --force.
 *
 * Rules for a batch (all or nothing): every entry must be for a volume of
 * the pair (else VOLUME_NOT_FOUND, reason unknown-volume), admitted by the
 * chain for its sender (epoch rules, gaps: see epoch.ts); numbers already
 * applied are duplicates — acknowledged, not applied again (a replayed old
 * number changes nothing). A batch with any refused entry applies nothing;
 * the refusal is in the answer (a coded VvfsError) and the pair's state is
 * unchanged, so a bad or confused peer cannot damage the image.
 *
 * Concurrency: batches are handled one at a time in arrival order (the wire
 * may carry several in flight); each sees the state the previous one left.
 * A resync's data requests that arrive while another operation runs are
 * handled together when their turn comes.
 *
 * A resync's copied data (RESYNC_DATA) goes straight into the volumes when
 * the target can (ApplyTarget.writeDirect), not through its synced batches:
 * the image is marked inconsistent (`resyncing`) until RESYNC_END anyway, so
 * it need not be a prefix meanwhile, and one synced batch per group of
 * requests bounded the initial sync (0.25 of a migration's copy,
 * bench/replication.ts). Such data is durable only once a RESYNC_FLUSH
 * (resyncFlush) after it was answered, and only if this applier wrote it:
 * each applier (each daemon start) has a random `incarnation`, carried by
 * every answer; a flush names the incarnation its data's answers carried and
 * is refused (EPOCH_STALE, reason other-incarnation) by any other — a daemon
 * restarted between the data and the flush may have lost the data, and its
 * flush must not let the primary clear that data's dirty marks.
 * Resizes in a resync still go through the synced batches (durable at once).
 *
 * Failure modes: a target failure (IO_ERROR) fails that batch; the applier
 * then reloads its state from the target before the next one (a failed
 * batch may or may not have landed; the reloaded applied number says which,
 * and the primary resends from there).
 */
import { randomBytes } from 'node:crypto'
import { VvfsError, type WireError } from '../errors.js'
import { adoptChain, admit, recordOf, refusal, validateChain, type EpochChain, type Sender } from './epoch.js'
import type { JournalEntry } from './entry.js'

export interface SecondaryState {
  appliedSeq: number
  chain: EpochChain
  /** A resync began and its data is still coming (endResync not yet received): the image is no point in time. */
  resyncing: boolean
  /** After a resync's data: the image is a prefix of the primary's history again once applied reaches this; null when not waiting. */
  consistentAt: number | null
}

/** The image is exactly the primary's writes 1..appliedSeq (promote may go ahead without --force). */
export function isConsistent(s: SecondaryState): boolean {
  return !s.resyncing && s.consistentAt === null
}

/** A change as the target applies it (a resync's copy of an extent is a write without a number). */
export type TargetChange = Pick<JournalEntry, 'volume' | 'kind' | 'offset' | 'length' | 'data' | 'record'>

export interface ApplyTarget {
  /** The persisted state; null for a pair never started on this side. */
  load(): Promise<SecondaryState | null>
  /** Applies the changes in order and records `state`, atomically and durably. */
  apply(changes: TargetChange[], state: SecondaryState): Promise<void>
  /**
   * A resync's copied data (writes and zeros) straight into the volumes, not
   * durable until flushDirect(); absent: the data goes through apply().
   * Range-checked before any of it is written.
   */
  writeDirect?(changes: TargetChange[]): Promise<void>
  /** Makes everything writeDirect() wrote durable, and nothing recorded earlier may be redone over it. */
  flushDirect?(): Promise<void>
}

/** A resync data request waiting for the next group commit. */
interface ResyncRequest {
  sender: Sender
  changes: TargetChange[]
  done: (ack: Ack) => void
  fail: (err: unknown) => void
}

export interface Ack {
  /** Everything through this number is applied: the primary may trim through it. */
  appliedSeq: number
  applied: number
  duplicates: number
  /** Why the batch was refused (nothing of it applied); null when it was not. */
  refused: WireError | null
  consistent: boolean
  /** The answering applier's incarnation (random per daemon start): a RESYNC_FLUSH covers only data answered by the same one. */
  incarnation?: string
}

export interface PairView {
  volumes: readonly number[]
}

export class Applier {
  private state: SecondaryState
  private queue: Promise<unknown> = Promise.resolve()
  private stale = false
  private readonly resyncWaiting: ResyncRequest[] = []
  /** Random per open (so per daemon start): data written straight into the volumes is durable only by a flush of the same incarnation. */
  readonly incarnation = randomBytes(8).toString('hex')

  private constructor(
    private readonly target: ApplyTarget,
    private readonly volumes: ReadonlySet<number>,
    state: SecondaryState,
  ) {
    this.state = state
  }

  /**
   * Opens the pair's applier; a new pair starts with `chain` (the primary's at
   * pair creation) and nothing applied — or at `start` (issue 13.7: a side
   * that becomes the replica after a promote starts at the common number).
   */
  static async open(target: ApplyTarget, pair: PairView & { chain: EpochChain; start?: SecondaryState }): Promise<Applier> {
    validateChain(pair.chain)
    let state = await target.load()
    if (!state) {
      state = pair.start ?? { appliedSeq: pair.chain[0].firstSeq - 1, chain: pair.chain, consistentAt: null, resyncing: false }
      await target.apply([], state)
    }
    return new Applier(target, new Set(pair.volumes), state)
  }

  get status(): Readonly<SecondaryState> & { consistent: boolean } {
    return { ...this.state, consistent: isConsistent(this.state) }
  }

  /** A sender's hello: adopt its chain if it extends ours (durably), refuse it if it conflicts; answers where to resume. */
  hello(sender: Sender, chain: EpochChain): Promise<Ack> {
    return this.serial(async () => {
      const next = adoptChain(this.state.chain, chain, this.state.appliedSeq)
      const record = recordOf(next, sender.epoch)
      if (!record || record.home !== sender.home) throw refusal(record ? 'wrong-home' : 'unknown-epoch', `${sender.home} is not the home of epoch ${sender.epoch}`)
      if (next !== this.state.chain) await this.commit([], { ...this.state, chain: next })
      return this.ack(0, 0, null)
    })
  }

  /** A batch of entries from `sender`, in sequence order. */
  receive(sender: Sender, entries: readonly JournalEntry[]): Promise<Ack> {
    return this.serial(async () => {
      let applied = this.state.appliedSeq
      const take: JournalEntry[] = []
      let duplicates = 0
      for (const e of entries) {
        if (!this.volumes.has(e.volume)) {
          return this.ack(0, 0, new VvfsError('VOLUME_NOT_FOUND', `entry ${e.seq} is for volume ${e.volume}, which is not in this pair`, { details: { reason: 'unknown-volume', volume: e.volume, seq: e.seq } }))
        }
        const verdict = admit(this.state.chain, applied, sender, e)
        if (verdict.verdict === 'refuse') return this.ack(0, 0, verdict.error)
        if (verdict.verdict === 'duplicate') {
          duplicates++
          continue
        }
        take.push(e)
        applied = e.seq
      }
      if (take.length > 0) {
        const reached = this.state.consistentAt !== null && applied >= this.state.consistentAt
        await this.commit(take, { ...this.state, appliedSeq: applied, consistentAt: reached ? null : this.state.consistentAt })
      }
      return this.ack(take.length, duplicates, null)
    })
  }

  /**
   * A resync begins (the primary's journal overflowed or failed): entries
   * through `baseSeq` will never come (the resync copies their extents), so
   * the applied number becomes baseSeq and the image is inconsistent until
   * endResync and the entries after it are applied.
   */
  beginResync(sender: Sender, baseSeq: number): Promise<Ack> {
    return this.serial(async () => {
      this.checkCurrentHome(sender)
      if (!Number.isSafeInteger(baseSeq) || baseSeq < this.state.appliedSeq)
        throw new VvfsError('OUT_OF_RANGE', `a resync base ${baseSeq} below the applied number ${this.state.appliedSeq}`, { details: { reason: 'resync-base' } })
      await this.commit([], { ...this.state, appliedSeq: baseSeq, consistentAt: null, resyncing: true })
      return this.ack(0, 0, null)
    })
  }

  /**
   * Copied data of a resync (whole extents or parts). The requests that
   * arrive while another operation runs are handled together: resizes as one
   * durable batch (apply), then the data written straight into the volumes
   * (writeDirect: durable at the next resyncFlush of this incarnation), or
   * with the resizes as one batch when the target cannot. Each request is
   * still checked alone; a refused one fails by itself.
   */
  resyncData(sender: Sender, changes: TargetChange[]): Promise<Ack> {
    return new Promise<Ack>((done, fail) => {
      this.resyncWaiting.push({ sender, changes, done, fail })
      if (this.resyncWaiting.length !== 1) return
      let reached = false
      void this.serial(() => {
        reached = true
        return this.commitResyncData()
      }).catch((err: unknown) => {
        // The run never reached the waiting requests (a stale state that cannot be reloaded: the target failed for
        // good): they fail with it. They used to wait forever, each holding its body (2026-12-05 review).
        if (!reached) for (const r of this.resyncWaiting.splice(0)) r.fail(err)
      })
    })
  }

  private async commitResyncData(): Promise<void> {
    const admitted: ResyncRequest[] = []
    for (const r of this.resyncWaiting.splice(0)) {
      try {
        this.checkResyncData(r.sender, r.changes)
        admitted.push(r)
      } catch (err) {
        r.fail(err)
      }
    }
    if (admitted.length === 0) return
    const direct = this.target.writeDirect ? admitted.filter((r) => r.changes.every((c) => c.kind !== 'resize')) : []
    const batched = admitted.filter((r) => !direct.includes(r))
    try {
      if (batched.length > 0) await this.commit(batched.flatMap((r) => r.changes), this.state)
      // Each request alone, so a refused one (past the end) fails by itself; the writes of one request run in order.
      for (const r of direct) {
        try {
          await this.target.writeDirect!(r.changes)
        } catch (err) {
          r.fail(err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `writing resync data on the secondary failed: ${(err as Error).message}`, { cause: err }))
          continue
        }
        r.done(this.resyncAck())
      }
    } catch (err) {
      for (const r of admitted) r.fail(err)
      throw err
    }
    for (const r of batched) r.done(this.resyncAck())
  }

  /**
   * RESYNC_FLUSH: makes the resync data this incarnation wrote straight into
   * the volumes durable. Refused (nothing flushed) without a resync under way,
   * from anyone but the current home, and when `incarnation` (what the
   * data's answers carried) is not this applier's — the data may be lost.
   */
  resyncFlush(sender: Sender, incarnation: string): Promise<Ack> {
    return this.serial(async () => {
      this.checkCurrentHome(sender)
      if (!this.state.resyncing) throw new VvfsError('JOB_STATE', 'a resync flush without a resync under way', { details: { reason: 'no-resync' } })
      if (incarnation !== this.incarnation)
        throw new VvfsError('EPOCH_STALE', `a resync flush for data answered by incarnation ${incarnation}; this is ${this.incarnation} (the secondary restarted: that data may be lost)`, {
          details: { reason: 'other-incarnation', incarnation: this.incarnation },
        })
      if (this.target.flushDirect) {
        try {
          await this.target.flushDirect()
        } catch (err) {
          throw err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `flushing resync data on the secondary failed: ${(err as Error).message}`, { cause: err })
        }
      }
      return this.resyncAck()
    })
  }

  private checkResyncData(sender: Sender, changes: TargetChange[]): void {
    this.checkCurrentHome(sender)
    if (!this.state.resyncing) throw new VvfsError('JOB_STATE', 'resync data without a resync under way', { details: { reason: 'no-resync' } })
    for (const c of changes) {
      if (!this.volumes.has(c.volume)) throw new VvfsError('VOLUME_NOT_FOUND', `resync data for volume ${c.volume}, which is not in this pair`, { details: { reason: 'unknown-volume' } })
      if (c.kind !== 'write' && c.kind !== 'zero' && c.kind !== 'resize') throw new VvfsError('PEER_PROTOCOL', `resync data of kind ${c.kind}`)
    }
  }

  /** The copy finished; the image is consistent once entries through `consistentAt` are applied. */
  endResync(sender: Sender, consistentAt: number): Promise<Ack> {
    return this.serial(async () => {
      this.checkCurrentHome(sender)
      if (!this.state.resyncing) throw new VvfsError('JOB_STATE', 'no resync under way', { details: { reason: 'no-resync' } })
      const done = this.state.appliedSeq >= consistentAt
      await this.commit([], { ...this.state, resyncing: false, consistentAt: done ? null : consistentAt })
      return this.ack(0, 0, null)
    })
  }

  /** Issue 13.7: resolves once the operations already queued are done (a promote drops the store after them). */
  settled(): Promise<void> {
    return this.serial(async () => undefined)
  }

  private checkCurrentHome(sender: Sender): void {
    const last = this.state.chain[this.state.chain.length - 1]
    if (last.epoch !== sender.epoch || last.home !== sender.home) throw refusal('stale-epoch', `only the current home ${last.home} (epoch ${last.epoch}) may resync`)
  }

  private async commit(changes: TargetChange[], next: SecondaryState): Promise<void> {
    try {
      await this.target.apply(changes, next)
    } catch (err) {
      this.stale = true
      throw err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `applying on the secondary failed: ${(err as Error).message}`, { cause: err })
    }
    this.state = next
  }

  private ack(applied: number, duplicates: number, refused: VvfsError | null): Ack {
    return { appliedSeq: this.state.appliedSeq, applied, duplicates, refused: refused ? refused.toWire() : null, consistent: isConsistent(this.state) }
  }

  /** The answer to resync data and flushes: with this applier's incarnation. */
  private resyncAck(): Ack {
    return { ...this.ack(0, 0, null), incarnation: this.incarnation }
  }

  /** Runs one operation after the previous one, reloading state after a failed batch. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      if (this.stale) {
        const loaded = await this.target.load()
        if (loaded) this.state = loaded
        this.stale = false
      }
      return fn()
    })
    this.queue = run.catch(() => undefined)
    return run
  }
}
