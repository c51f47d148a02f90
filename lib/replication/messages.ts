/**
 * The replication messages: the bodies of peer-wire requests and replies
 * (lib/wire: framing, authentication, limits and deadlines are the wire's;
 * this file owns only what a body means). The wire service is
 * 'replication'; its request types are 0x01xx.
 *
 *   HELLO    JSON {format, pair, group, volumes, sender, chain} → Ack (JSON)
 *   ENTRIES  binary (below)                                     → Ack (JSON)
 *   STATUS   JSON {format, pair}                                → PairStatus (JSON)
 *   CREATE   as HELLO, creating the pair and its read-only volumes if new
 *   RESYNC_BEGIN / RESYNC_DATA (ENTRIES' form) / RESYNC_END      → Ack (JSON)
 *   RESYNC_FLUSH JSON {format, pair, sender, incarnation}       → Ack (JSON)
 *
 * ENTRIES, all big-endian: format u8 (1) | pair length u8 | pair (UTF-8) |
 * sender epoch u32 | home length u8 | home | count u16 | count × (record
 * length u32 | journal entry record, lib/replication/entry.ts). The records
 * are the bytes of the primary's durable log, checksums included: shipping
 * does not re-encode, and the secondary checks what the primary wrote.
 *
 * Strict decoding: every decoder takes untrusted bytes and either returns a
 * well-typed value or throws a VvfsError — FRAME_TOO_LARGE for a body over
 * MAX_MESSAGE_BYTES, PEER_PROTOCOL for anything else (not JSON, wrong types,
 * unknown or missing fields, short or trailing bytes, a bad entry record or
 * epoch chain). Nothing else escapes (test/replication/messages.test.ts fuzzes
 * it). No state.
 */
import { z } from 'zod'
import { ERROR_CODES, VvfsError } from '../errors.js'
import type { Ack } from './applier.js'
import { decodeEntry, encodeEntry, type JournalEntry } from './entry.js'
import { validateChain, type EpochChain, type Sender } from './epoch.js'

export const REPLICATION_SERVICE = 'replication'

export const ReplicationRequest = {
  HELLO: 0x0101,
  ENTRIES: 0x0102,
  STATUS: 0x0103,
  /** JSON Hello → Ack: creates the pair (and its read-only volumes) on the secondary if new; the same as HELLO if it exists. */
  CREATE: 0x0104,
  /** JSON {format, pair, sender, baseSeq} → Ack: a resync (or the initial sync) begins. */
  RESYNC_BEGIN: 0x0105,
  /** ENTRIES' binary form → Ack: copied data of a resync (the records' numbers are not used). */
  RESYNC_DATA: 0x0106,
  /** JSON {format, pair, sender, consistentAt} → Ack: the copy is done. */
  RESYNC_END: 0x0107,
  /**
   * JSON {format, pair, sender, incarnation} → Ack: makes the resync data
   * answered by that incarnation of the secondary durable (refused by any
   * other incarnation: applier.ts). Data acks and this ack carry the answering
   * incarnation.
   */
  RESYNC_FLUSH: 0x0108,
} as const

export const MESSAGE_FORMAT = 1
/** The wire's body limit (DEFAULT_SERVER_LIMITS.maxBodyBytes): no message may be larger. */
export const MAX_MESSAGE_BYTES = 1024 * 1024
const MAX_NAME_BYTES = 128
const MAX_CHAIN = 4096
const MAX_VOLUMES = 256

const protocol = (what: string, why: string) => new VvfsError('PEER_PROTOCOL', `malformed replication ${what}: ${why}`, { details: { reason: 'malformed-message', message: what } })

function checkSize(what: string, body: Buffer): void {
  if (!Buffer.isBuffer(body)) throw protocol(what, 'not bytes')
  checkLength(what, body.length)
}

function checkLength(what: string, length: number): void {
  if (length > MAX_MESSAGE_BYTES)
    throw new VvfsError('FRAME_TOO_LARGE', `replication ${what} of ${length} bytes exceeds ${MAX_MESSAGE_BYTES}`, { details: { length, limit: MAX_MESSAGE_BYTES } })
}

// --- JSON messages ---------------------------------------------------------

const Seq = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)
const Name = z.string().min(1).max(MAX_NAME_BYTES)
const Epoch = z.number().int().min(1).max(0xffffffff)
const SenderSchema = z.strictObject({ epoch: Epoch, home: Name })
const RecordSchema = z.strictObject({
  epoch: Epoch,
  home: Name,
  firstSeq: Seq.min(1),
  predecessor: z.strictObject({ epoch: Epoch, home: Name, lastSeq: Seq }).nullable(),
})
const ChainSchema = z.array(RecordSchema).min(1).max(MAX_CHAIN)

const HelloSchema = z.strictObject({
  format: z.literal(MESSAGE_FORMAT),
  /** The pair's name on the secondary (`--as NAME`), or the group's. */
  pair: Name,
  group: Name.nullable(),
  /** The primary volumes of the pair: number (entries name it), name, size. */
  volumes: z.array(z.strictObject({ no: z.number().int().min(0).max(0xffffffff), name: Name, size: Seq })).min(1).max(MAX_VOLUMES),
  sender: SenderSchema,
  chain: ChainSchema,
})
export type Hello = z.infer<typeof HelloSchema>

const WireErrorSchema = z.strictObject({ code: z.enum(ERROR_CODES), message: z.string().max(4096), details: z.record(z.string(), z.unknown()).optional() })

/** A secondary's incarnation (applier.ts): random per daemon start. */
const Incarnation = z.string().regex(/^[0-9a-f]{1,64}$/)

const AckSchema = z.strictObject({
  appliedSeq: Seq,
  applied: Seq,
  duplicates: Seq,
  refused: WireErrorSchema.nullable(),
  consistent: z.boolean(),
  incarnation: Incarnation.optional(),
})

const StatusRequestSchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name })
export type StatusRequest = z.infer<typeof StatusRequestSchema>

const PairStatusSchema = z.strictObject({
  pair: Name,
  appliedSeq: Seq,
  chain: ChainSchema,
  consistent: z.boolean(),
  resyncing: z.boolean(),
  consistentAt: Seq.nullable(),
})
export type PairStatus = z.infer<typeof PairStatusSchema>

const ResyncBeginSchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, sender: SenderSchema, baseSeq: Seq })
export type ResyncBegin = z.infer<typeof ResyncBeginSchema>
const ResyncEndSchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, sender: SenderSchema, consistentAt: Seq })
export type ResyncEnd = z.infer<typeof ResyncEndSchema>
const ResyncFlushSchema = z.strictObject({ format: z.literal(MESSAGE_FORMAT), pair: Name, sender: SenderSchema, incarnation: Incarnation })
export type ResyncFlush = z.infer<typeof ResyncFlushSchema>

function encodeJson(what: string, value: unknown): Buffer {
  const b = Buffer.from(JSON.stringify(value), 'utf8')
  checkSize(what, b)
  return b
}

function decodeJson<T>(what: string, schema: z.ZodType<T>, body: Buffer): T {
  checkSize(what, body)
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body))
  } catch {
    throw protocol(what, 'not UTF-8 JSON')
  }
  const parsed = schema.safeParse(value)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw protocol(what, `${issue?.path.join('.') || '(body)'}: ${issue?.message ?? 'invalid'}`)
  }
  return parsed.data
}

export function checkedChain(what: string, chain: EpochChain): EpochChain {
  try {
    validateChain(chain)
  } catch (err) {
    throw protocol(what, (err as Error).message)
  }
  return chain
}

/** A JSON message: its encoder, and its strict decoder (schema, then `check` for what a schema cannot say). */
export function jsonMessage<T>(what: string, schema: z.ZodType<T>, check: (v: T) => void = () => undefined) {
  return {
    encode: (v: T): Buffer => encodeJson(what, v),
    decode: (body: Buffer): T => {
      const v = decodeJson(what, schema, body)
      check(v)
      return v
    },
  }
}

const HelloMessage = jsonMessage('hello', HelloSchema, (h) => checkedChain('hello', h.chain))
const AckMessage = jsonMessage('ack', AckSchema as z.ZodType<Ack>)
const StatusRequestMessage = jsonMessage('status request', StatusRequestSchema)
const PairStatusMessage = jsonMessage('status', PairStatusSchema, (s) => checkedChain('status', s.chain))

const ResyncBeginMessage = jsonMessage('resync begin', ResyncBeginSchema)
const ResyncEndMessage = jsonMessage('resync end', ResyncEndSchema)
const ResyncFlushMessage = jsonMessage('resync flush', ResyncFlushSchema)
export const encodeResyncFlush = ResyncFlushMessage.encode
export const decodeResyncFlush = ResyncFlushMessage.decode
export const encodeResyncBegin = ResyncBeginMessage.encode
export const decodeResyncBegin = ResyncBeginMessage.decode
export const encodeResyncEnd = ResyncEndMessage.encode
export const decodeResyncEnd = ResyncEndMessage.decode
export const encodeHello = HelloMessage.encode
export const decodeHello = HelloMessage.decode
export const encodeAck = AckMessage.encode
export const decodeAck = AckMessage.decode
export const encodeStatusRequest = StatusRequestMessage.encode
export const decodeStatusRequest = StatusRequestMessage.decode
export const encodePairStatus = PairStatusMessage.encode
export const decodePairStatus = PairStatusMessage.decode

// --- ENTRIES (binary) --------------------------------------------------------

export interface EntriesBatch {
  pair: string
  sender: Sender
  entries: JournalEntry[]
}

const MAX_BATCH_ENTRIES = 0xffff

/** Bytes of a batch's header for this pair and sender. */
export function entriesHeaderBytes(pair: string, sender: Sender): number {
  return 1 + 1 + Buffer.byteLength(pair) + 4 + 1 + Buffer.byteLength(sender.home) + 2
}

/** Encodes a batch; `records` may be given as the log's bytes (not re-encoded). */
export function encodeEntries(batch: { pair: string; sender: Sender; records: Buffer[] } | EntriesBatch): Buffer {
  return Buffer.concat(encodeEntriesParts(batch))
}

/**
 * A batch's body in pieces: the header, then each record's length and the
 * record itself, not copied (the wire sends the pieces as they are:
 * WireClient.request). Joining them cost a new buffer of the batch's size
 * per message — towards V8's external-memory trigger of a full GC every
 * 64 MiB (lib/buffer-pool.ts).
 */
export function encodeEntriesParts(batch: { pair: string; sender: Sender; records: Buffer[] } | EntriesBatch): Buffer[] {
  const records = 'records' in batch ? batch.records : batch.entries.map(encodeEntry)
  const pair = Buffer.from(batch.pair, 'utf8')
  const home = Buffer.from(batch.sender.home, 'utf8')
  if (pair.length === 0 || pair.length > MAX_NAME_BYTES || home.length === 0 || home.length > MAX_NAME_BYTES)
    throw new VvfsError('INVALID_ARGUMENT', `pair and home names must be 1–${MAX_NAME_BYTES} bytes`)
  if (records.length > MAX_BATCH_ENTRIES) throw new VvfsError('INVALID_ARGUMENT', `at most ${MAX_BATCH_ENTRIES} entries per batch`)
  const head = Buffer.alloc(entriesHeaderBytes(batch.pair, batch.sender))
  let at = 0
  head.writeUInt8(MESSAGE_FORMAT, at++)
  head.writeUInt8(pair.length, at++)
  at += pair.copy(head, at)
  head.writeUInt32BE(batch.sender.epoch, at)
  at += 4
  head.writeUInt8(home.length, at++)
  at += home.copy(head, at)
  head.writeUInt16BE(records.length, at)
  const parts: Buffer[] = [head]
  const lengths = Buffer.alloc(4 * records.length)
  let bytes = head.length + lengths.length
  records.forEach((r, i) => {
    lengths.writeUInt32BE(r.length, 4 * i)
    parts.push(lengths.subarray(4 * i, 4 * i + 4), r)
    bytes += r.length
  })
  checkLength('entries', bytes)
  return parts
}

/** How many of `records` (from the first) fit one ENTRIES body of at most maxBody bytes (at least one is the caller's check). */
export function entriesThatFit(pair: string, sender: Sender, recordBytes: readonly number[], maxBody = MAX_MESSAGE_BYTES): number {
  let total = entriesHeaderBytes(pair, sender)
  let n = 0
  for (const b of recordBytes) {
    if (total + 4 + b > maxBody || n === MAX_BATCH_ENTRIES) break
    total += 4 + b
    n++
  }
  return n
}

export function decodeEntries(body: Buffer): EntriesBatch {
  checkSize('entries', body)
  let at = 0
  const need = (n: number, what: string) => {
    if (at + n > body.length) throw protocol('entries', `${body.length} bytes end inside ${what}`)
  }
  need(2, 'the header')
  const format = body.readUInt8(at++)
  if (format !== MESSAGE_FORMAT) throw protocol('entries', `format ${format}`)
  const pairLen = body.readUInt8(at++)
  need(pairLen, 'the pair name')
  const pair = utf8Name('entries', body.subarray(at, (at += pairLen)))
  need(5, 'the sender')
  const epoch = body.readUInt32BE(at)
  at += 4
  if (epoch < 1) throw protocol('entries', 'sender epoch 0')
  const homeLen = body.readUInt8(at++)
  need(homeLen, 'the sender home')
  const home = utf8Name('entries', body.subarray(at, (at += homeLen)))
  need(2, 'the entry count')
  const count = body.readUInt16BE(at)
  at += 2
  const entries: JournalEntry[] = []
  for (let i = 0; i < count; i++) {
    need(4, `entry ${i}'s length`)
    const len = body.readUInt32BE(at)
    at += 4
    need(len, `entry ${i}`)
    // A view: the body is this message's until its handler settled (a pooled body is reused after that: the
    // secondary's handlers keep no entry past their answer — its volumes copy what they are given).
    entries.push(decodeEntry(body.subarray(at, (at += len)), 'PEER_PROTOCOL', { view: true }))
  }
  if (at !== body.length) throw protocol('entries', `${body.length - at} bytes after the last entry`)
  return { pair, sender: { epoch, home }, entries }
}

function utf8Name(what: string, b: Buffer): string {
  if (b.length === 0) throw protocol(what, 'an empty name')
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b)
  } catch {
    throw protocol(what, 'a name that is not UTF-8')
  }
}
