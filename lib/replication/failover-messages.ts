/**
 * The failover messages (issue 13.7): bodies of the peer-wire requests two
 * daemons of a pair exchange about who is primary — on the same 'replication'
 * service and listener as the entries (messages.ts), request types 0x011x.
 *
 *   HISTORY   JSON {format, pair, side}            → {format, pair, side|null}
 *             each side's report: its role, its epoch chain and the last
 *             number it holds (a primary's last written, a secondary's
 *             applied, a promoted side's last written since the promote), and
 *             its listen address; sent every second by the side that knows
 *             the other's address (a primary, a demoted side) — the
 *             secondary's view of whether its primary is reachable, and how
 *             split-brain is seen on both sides.
 *   TAKE_OVER JSON {format, pair, chain, commonSeq, volume, members?, discard}
 *                                                  → {format, extents, lastSeq}
 *             "become the replica of my volume from commonSeq on": the
 *             receiver (a demoted side, or with discard a primary whose
 *             changes the operator discards) answers the extents it changed
 *             past commonSeq, which the sender's resync copies over. A
 *             consistency group's take-over names every volume (`members`);
 *             the receiver answers each one's extents (`members`, by the
 *             sender's volume numbers) and `extents` empty.
 *   REMARK    JSON {format, pair, extents, members?} → {format, extents: []}
 *             "I discarded my changes and am your replica again: copy these
 *             extents of mine" (resolve --discard local on a promoted side);
 *             a group's names each volume by the receiver's number.
 *
 * Strict decoding with messages.ts's jsonMessage: FRAME_TOO_LARGE past the
 * wire's body limit, PEER_PROTOCOL for anything malformed (chains are
 * validated). No state.
 */
import { z } from 'zod'
import { checkedChain, jsonMessage, MESSAGE_FORMAT } from './messages.js'

export const FailoverRequest = {
  HISTORY: 0x0110,
  TAKE_OVER: 0x0111,
  REMARK: 0x0112,
} as const

/** A side's role in a pair as far as failover goes. */
export const SIDE_ROLES = ['primary', 'secondary', 'promoted', 'demoted'] as const
export type SideRole = (typeof SIDE_ROLES)[number]

/** Extents per message at most: 64 Ki extent numbers are ~0.5 MiB of JSON, inside the wire's 1 MiB body. */
const MAX_EXTENTS = 65536

const Seq = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)
const Name = z.string().min(1).max(128)
const Epoch = z.number().int().min(1).max(0xffffffff)
const Chain = z
  .array(z.strictObject({ epoch: Epoch, home: Name, firstSeq: Seq.min(1), predecessor: z.strictObject({ epoch: Epoch, home: Name, lastSeq: Seq }).nullable() }))
  .min(1)
  .max(4096)
const Extents = z.array(z.number().int().min(0).max(0xffffffff)).max(MAX_EXTENTS)

const SideSchema = z.strictObject({
  role: z.enum(SIDE_ROLES),
  chain: Chain,
  lastSeq: Seq,
  /** Where this side's replication listener is (null: it does not listen). */
  listen: z.string().min(1).max(300).nullable(),
})
export type SideReport = z.infer<typeof SideSchema>

const HistorySchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, side: SideSchema })
const HistoryReplySchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, side: SideSchema.nullable() })
const TakeOverSchema = z.strictObject({
  format: z.literal(MESSAGE_FORMAT),
  pair: Name,
  /** The new primary's chain: the receiver's replica admits by it. */
  chain: Chain,
  /** The last number both sides hold alike: the receiver's applied number as a replica. */
  commonSeq: Seq,
  /** The new primary's volume: its number (entries carry it) and size. */
  volume: z.strictObject({ no: z.number().int().min(0).max(0xffffffff), size: Seq }),
  /** Issue 13.6, a consistency group: every volume of the new primary (its number and size) with the number it had at the receiver (`was`, which entries carried there); `volume` is the first. */
  members: z
    .array(z.strictObject({ no: z.number().int().min(0).max(0xffffffff), size: Seq, was: z.number().int().min(0).max(0xffffffff) }))
    .min(2)
    .max(64)
    .optional(),
  /** The operator discards the receiver's changes past commonSeq (resolve --discard peer); false: refuse if it has any. */
  discard: z.boolean(),
})
export type TakeOver = z.infer<typeof TakeOverSchema>
/** Issue 13.6: a consistency group's changed extents, one volume each (`no`: the volume's number at the side that is to copy them). */
const MemberExtents = z
  .array(z.strictObject({ no: z.number().int().min(0).max(0xffffffff), extents: Extents }))
  .min(2)
  .max(64)
  .optional()
export type MemberExtentList = NonNullable<z.infer<typeof MemberExtents>>
const ExtentsReplySchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), extents: Extents, members: MemberExtents, lastSeq: Seq })
export type ExtentsReply = z.infer<typeof ExtentsReplySchema>
const RemarkSchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, extents: Extents, members: MemberExtents })
export type Remark = z.infer<typeof RemarkSchema>

export const HistoryMessage = jsonMessage('history', HistorySchema, (h) => checkedChain('history', h.side.chain))
export const HistoryReplyMessage = jsonMessage('history reply', HistoryReplySchema, (h) => h.side && checkedChain('history reply', h.side.chain))
export const TakeOverMessage = jsonMessage('take-over', TakeOverSchema, (t) => checkedChain('take-over', t.chain))
export const ExtentsReplyMessage = jsonMessage('extents reply', ExtentsReplySchema)
export const RemarkMessage = jsonMessage('remark', RemarkSchema)
