/**
 * The epoch chain: which home numbered which sequence numbers of a
 * replicated volume (or group) — claims 1–7, the primary migrating from
 * storage system A to B while the copy runs.
 *
 * An epoch record `{epoch, home, firstSeq, predecessor {epoch, home,
 * lastSeq}}` is committed atomically at the switch: the new home numbers
 * from firstSeq = predecessor.lastSeq + 1 (claim 7: "larger by one than the
 * newest number" at the old home), the old home numbered up to lastSeq. A
 * chain is those records in epoch order; epoch e owns the numbers
 * [firstSeq(e), firstSeq(e+1) − 1], the last epoch owns everything from its
 * firstSeq on. Ceph's rbd-mirror journal tags are the model.
 *
 * The secondary's rule (admit): an entry is applied only if its number is
 * the next one (no gap, no reorder: claim 6), the epoch stamped on it owns
 * the number (so an entry from A at or past B's firstSeq is refused, and so
 * is one from B below it), and its sender is a home of the chain at least as
 * new as the entry's epoch (B may relay A's pending entries forward, claims
 * 4–5; A can never send B's). A number already applied is a duplicate: it is
 * acknowledged, not applied again.
 *
 * Split-brain (compareHistories): a side's history is its chain plus the
 * last number it holds; two histories agree on a number when both chains
 * assign it to the same epoch record. If one history is a prefix of the
 * other, the shorter side is behind (an orderly promote/demote leaves the two
 * the same, never split); if they part before both ends, both sides hold
 * numbers the other lacks — split-brain, shown with the common point, never
 * resolved here.
 *
 * Pure functions, no state, no I/O. Refusals are VvfsErrors whose
 * `details.reason` names the rule (tests match code and reason).
 */
import { VvfsError, type ErrorCode } from '../errors.js'

export interface EpochPredecessor {
  epoch: number
  home: string
  lastSeq: number
}

export interface EpochRecord {
  epoch: number
  /** The storage system whose journal numbers this epoch's entries. */
  home: string
  firstSeq: number
  /** null for the first epoch of a pair. */
  predecessor: EpochPredecessor | null
}

export type EpochChain = readonly EpochRecord[]

/** Who sends entries: a home in the epoch it knows itself to be in (from the stream's hello). */
export interface Sender {
  epoch: number
  home: string
}

export type RefusalReason =
  | 'unknown-epoch'
  | 'wrong-home'
  | 'from-a-later-epoch'
  | 'stale-epoch'
  | 'before-epoch'
  | 'gap'
  | 'invalid-chain'
  | 'split-brain'

export type Admission = { verdict: 'apply' } | { verdict: 'duplicate' } | { verdict: 'refuse'; error: VvfsError }

const CODE_OF: Record<RefusalReason, ErrorCode> = {
  'unknown-epoch': 'PERMISSION_DENIED',
  'wrong-home': 'PERMISSION_DENIED',
  'from-a-later-epoch': 'PERMISSION_DENIED',
  'stale-epoch': 'EPOCH_STALE',
  'before-epoch': 'EPOCH_STALE',
  gap: 'REPLICATION_GAP',
  'invalid-chain': 'PEER_PROTOCOL',
  'split-brain': 'SPLIT_BRAIN',
}

/** A refusal with its rule in details.reason. */
export function refusal(reason: RefusalReason, message: string, details: Record<string, unknown> = {}): VvfsError {
  return new VvfsError(CODE_OF[reason], message, { details: { reason, ...details } })
}

export function genesis(home: string, firstSeq = 1): EpochRecord {
  return { epoch: 1, home, firstSeq, predecessor: null }
}

/**
 * The record committed at a switch to `home`: the current home numbered
 * through `lastSeq` (its journal is sealed there), the new one numbers from
 * lastSeq + 1.
 */
/**
 * The storage system an epoch's home names. A home is a storage system's
 * name, qualified after an `@` when the epoch began for another reason than
 * the journal moving there (a promote: `b1@promote-e2`, failover.ts) — two
 * epochs in a row may then be on one system.
 */
export function storageOfHome(home: string): string {
  const at = home.indexOf('@')
  return at < 0 ? home : home.slice(0, at)
}

export function handoff(chain: EpochChain, home: string, lastSeq: number): EpochRecord {
  validateChain(chain)
  const last = chain[chain.length - 1]
  if (!Number.isSafeInteger(lastSeq) || lastSeq < last.firstSeq - 1)
    throw new VvfsError('INVALID_ARGUMENT', `epoch ${last.epoch} starts at ${last.firstSeq}: its last number cannot be ${lastSeq}`)
  if (home === last.home) throw new VvfsError('INVALID_ARGUMENT', `the journal is already at ${home}`)
  return { epoch: last.epoch + 1, home, firstSeq: lastSeq + 1, predecessor: { epoch: last.epoch, home: last.home, lastSeq } }
}

/**
 * How far past the current epoch's first number a relay that took the pair
 * over (issue 15: the old owner's journal stayed in its state directory)
 * numbers from. It cannot know the old owner's last number; one epoch gives
 * out at most this many (2^40: 3.5 years of 10,000 writes a second), so
 * every number it gave is below the new epoch's. 2^53 / 2^40: a pair may be
 * taken over about 8,000 times.
 */
export const TAKEOVER_SEQ_STRIDE = 2 ** 40

/**
 * The record a relay commits when it takes a pair over without the old
 * owner's journal (journal-chain.ts, takeOverJournal): a new epoch at
 * `home` (named `SYSTEM@takeover-eN`, like a promote's) numbering from
 * TAKEOVER_SEQ_STRIDE past the current epoch's first number; the old epoch
 * ends just before it. What the old owner numbered and the secondary lacks
 * is resent by a resync, never shipped. `lastSeq`: the old owner's last
 * number when it is known (a `volume move` that left the pair caught up):
 * the new epoch numbers right after it.
 */
export function takeover(chain: EpochChain, home: string, lastSeq?: number): EpochRecord {
  validateChain(chain)
  const last = chain[chain.length - 1]
  if (lastSeq !== undefined && (!Number.isSafeInteger(lastSeq) || lastSeq < last.firstSeq - 1))
    throw new VvfsError('INVALID_ARGUMENT', `epoch ${last.epoch} starts at ${last.firstSeq}: its last number cannot be ${lastSeq}`)
  const firstSeq = lastSeq !== undefined ? lastSeq + 1 : last.firstSeq + TAKEOVER_SEQ_STRIDE
  if (!Number.isSafeInteger(firstSeq)) throw new VvfsError('OUT_OF_RANGE', `epoch ${last.epoch} starts at ${last.firstSeq}: no sequence numbers are left for another takeover`)
  const epoch = last.epoch + 1
  return { epoch, home: `${storageOfHome(home)}@takeover-e${epoch}`, firstSeq, predecessor: { epoch: last.epoch, home: last.home, lastSeq: firstSeq - 1 } }
}

/** The number the chain's last takeover epoch numbers after (0 if it has none): the numbers below it were not all given out. */
export function takenOverAfter(chain: EpochChain): number {
  for (let i = chain.length - 1; i >= 0; i--) if (chain[i].home.includes('@takeover-')) return chain[i].firstSeq - 1
  return 0
}

/** Throws PEER_PROTOCOL (reason invalid-chain) unless every record follows its predecessor. */
export function validateChain(chain: EpochChain): void {
  const bad = (why: string) => refusal('invalid-chain', `invalid epoch chain: ${why}`)
  if (!Array.isArray(chain) || chain.length === 0) throw bad('empty')
  chain.forEach((r, i) => {
    if (!Number.isSafeInteger(r.epoch) || r.epoch < 1 || r.epoch > 0xffffffff) throw bad(`epoch ${r.epoch}`)
    if (typeof r.home !== 'string' || r.home.length === 0) throw bad(`epoch ${r.epoch} has no home`)
    if (!Number.isSafeInteger(r.firstSeq) || r.firstSeq < 1) throw bad(`epoch ${r.epoch} starts at ${r.firstSeq}`)
    if (i === 0) {
      if (r.predecessor !== null) throw bad('the first record has a predecessor')
      return
    }
    const prev = chain[i - 1]
    const p = r.predecessor
    if (r.epoch !== prev.epoch + 1) throw bad(`epoch ${r.epoch} follows epoch ${prev.epoch}`)
    if (!p || p.epoch !== prev.epoch || p.home !== prev.home) throw bad(`epoch ${r.epoch} does not name epoch ${prev.epoch} at ${prev.home} as its predecessor`)
    if (p.lastSeq !== r.firstSeq - 1) throw bad(`epoch ${r.epoch} starts at ${r.firstSeq}, not one past its predecessor's last ${p.lastSeq}`)
    if (p.lastSeq < prev.firstSeq - 1) throw bad(`epoch ${prev.epoch} ends at ${p.lastSeq}, before it starts at ${prev.firstSeq}`)
  })
}

export function recordOf(chain: EpochChain, epoch: number): EpochRecord | undefined {
  const first = chain[0]?.epoch ?? 1
  const r = chain[epoch - first]
  return r && r.epoch === epoch ? r : undefined
}

/** The numbers an epoch owns: [firstSeq, lastSeq] (lastSeq Infinity while it is the chain's last). */
export function rangeOf(chain: EpochChain, epoch: number): { firstSeq: number; lastSeq: number } | undefined {
  const r = recordOf(chain, epoch)
  if (!r) return undefined
  const next = recordOf(chain, epoch + 1)
  return { firstSeq: r.firstSeq, lastSeq: next ? next.firstSeq - 1 : Infinity }
}

/** The secondary's rule for one entry (see the file comment); `applied` is its last applied number. */
export function admit(chain: EpochChain, applied: number, sender: Sender, entry: { epoch: number; seq: number }): Admission {
  const refuse = (reason: RefusalReason, message: string, details: Record<string, unknown> = {}): Admission => ({
    verdict: 'refuse',
    error: refusal(reason, message, { seq: entry.seq, epoch: entry.epoch, ...details }),
  })
  const home = recordOf(chain, sender.epoch)
  if (!home) return refuse('unknown-epoch', `the sender's epoch ${sender.epoch} is not in this secondary's chain (send the chain first)`)
  if (home.home !== sender.home) return refuse('wrong-home', `epoch ${sender.epoch} belongs to ${home.home}, not ${sender.home}`)
  if (entry.epoch > sender.epoch) return refuse('from-a-later-epoch', `${sender.home} (epoch ${sender.epoch}) sent an entry stamped epoch ${entry.epoch}`)
  const range = rangeOf(chain, entry.epoch)
  if (!range) return refuse('unknown-epoch', `entry ${entry.seq} is stamped with epoch ${entry.epoch}, which this secondary does not know`)
  if (entry.seq > range.lastSeq)
    return refuse('stale-epoch', `entry ${entry.seq} of epoch ${entry.epoch} is at or past ${range.lastSeq + 1}, where epoch ${entry.epoch + 1} took over`, {
      takenOverAt: range.lastSeq + 1,
    })
  if (entry.seq < range.firstSeq) return refuse('before-epoch', `entry ${entry.seq} is before epoch ${entry.epoch}'s first number ${range.firstSeq}`)
  if (entry.seq <= applied) return { verdict: 'duplicate' }
  if (entry.seq !== applied + 1) return refuse('gap', `entry ${entry.seq} arrived after ${applied}: ${applied + 1} is next`, { expected: applied + 1 })
  return { verdict: 'apply' }
}

/** Whether two records are the same record. */
export function sameRecord(a: EpochRecord, b: EpochRecord): boolean {
  const pa = a.predecessor
  const pb = b.predecessor
  return (
    a.epoch === b.epoch &&
    a.home === b.home &&
    a.firstSeq === b.firstSeq &&
    (pa === null ? pb === null : pb !== null && pa.epoch === pb.epoch && pa.home === pb.home && pa.lastSeq === pb.lastSeq)
  )
}

/** A side's history: its chain and the last number it holds (a primary's last durable, a secondary's applied). */
export interface History {
  chain: EpochChain
  lastSeq: number
}

/** The last number two chains assign to the same epoch records, from 1 on (Infinity if they never part). */
function agreeThrough(a: EpochChain, b: EpochChain): number {
  if (a.length === 0 || b.length === 0 || !sameRecord(a[0], b[0])) return 0
  let i = 1
  while (i < a.length && i < b.length && sameRecord(a[i], b[i])) i++
  const endA = i < a.length ? a[i].firstSeq - 1 : Infinity
  const endB = i < b.length ? b[i].firstSeq - 1 : Infinity
  return Math.min(endA, endB)
}

export type Relation = 'same' | 'a-behind' | 'b-behind' | 'split-brain'

export interface Comparison {
  relation: Relation
  /** The last number both hold alike: where a split-brain's sides parted, or the shorter side's end. */
  commonSeq: number
  /** The epoch of that number in both chains (0 when they hold nothing alike). */
  commonEpoch: number
}

/** Compares two sides of a pair (see the file comment). */
export function compareHistories(a: History, b: History): Comparison {
  validateChain(a.chain)
  validateChain(b.chain)
  const commonSeq = Math.min(agreeThrough(a.chain, b.chain), a.lastSeq, b.lastSeq)
  const epochAt = (chain: EpochChain, seq: number) => [...chain].reverse().find((r) => r.firstSeq <= seq)?.epoch ?? 0
  const commonEpoch = commonSeq === 0 ? 0 : epochAt(a.chain, commonSeq)
  const relation: Relation =
    a.lastSeq === commonSeq && b.lastSeq === commonSeq ? 'same' : a.lastSeq === commonSeq ? 'a-behind' : b.lastSeq === commonSeq ? 'b-behind' : 'split-brain'
  return { relation, commonSeq, commonEpoch }
}

/**
 * The chain a secondary keeps after a sender offers its own: the longer of
 * the two if one extends the other. Refused (split-brain) if they conflict,
 * or if the offered chain would give numbers the secondary already applied
 * (through `applied`) to another epoch — it would then hold writes outside
 * the primary's history.
 */
export function adoptChain(known: EpochChain, offered: EpochChain, applied: number): EpochChain {
  validateChain(offered)
  validateChain(known)
  const n = Math.min(known.length, offered.length)
  for (let i = 0; i < n; i++) {
    if (!sameRecord(known[i], offered[i]))
      throw refusal('split-brain', `the sender's epoch ${offered[i].epoch} (${offered[i].home} from ${offered[i].firstSeq}) differs from this secondary's (${known[i].home} from ${known[i].firstSeq})`, {
        epoch: offered[i].epoch,
      })
  }
  if (offered.length <= known.length) return known
  const through = agreeThrough(known, offered)
  if (through < applied)
    throw refusal('split-brain', `the sender's chain ends epoch ${known[known.length - 1].epoch} at ${through}, but this secondary applied through ${applied}`, {
      applied,
      endsAt: through,
    })
  return offered
}
