/**
 * A journal entry: one change to a replicated volume, numbered in the
 * journal's one sequence (a volume's, or a consistency group's), and its
 * binary form — the same bytes in the primary's durable log and in the
 * replication stream, so shipping never re-encodes and the checksum made
 * when the change was accepted is the one the secondary checks.
 *
 * Record: a 40-byte header, then the data of a write (nothing else has data).
 *
 *   0 format u8 (1) | 1 kind u8 | 2 reserved u16 (0) | 4 volume u32
 *   8 epoch u32     | 12 seq u64 | 20 offset u64 | 28 length u64
 *  36 crc32 u32 over the record with this field zero | 40 data
 *
 * all big-endian; u64 fields hold integers below 2^53. `length` is the byte
 * count of the range (a write's data length); for `resize` it is the new
 * size (offset 0); a `flush` has neither. 40 bytes per 4 KiB write is 1/102
 * of the data — under the 1/32 budget of issue 13 with room for the log's
 * own framing (test/replication/journal.test.ts measures it on disk).
 *
 * Failure modes: decodeEntry never trusts a field — a wrong format, kind,
 * reserved bits, length/data mismatch, a range past 2^53 or a checksum
 * mismatch (a torn or misdirected record) throws a VvfsError with the code
 * the caller names (PEER_PROTOCOL for the wire, STATE_CORRUPT for the log).
 * Pure functions, no state.
 */
import { crc32 } from 'node:zlib'
import { VvfsError, type ErrorCode } from '../errors.js'

export const ENTRY_KINDS = ['write', 'discard', 'zero', 'resize', 'release', 'flush'] as const
export type EntryKind = (typeof ENTRY_KINDS)[number]

export const ENTRY_FORMAT = 1
export const ENTRY_HEADER_BYTES = 40
/**
 * The largest write one entry carries. A host write is at most 128 KiB (FUSE
 * max_write, lib/relay/volume.ts), so one host write is one entry; a larger
 * change is split by the journal layer into consecutive entries. 256 KiB keeps
 * at least three entries in one 1 MiB wire frame (lib/wire/server.ts).
 */
export const MAX_ENTRY_DATA = 256 * 1024

/** A change as the journal layer hands it over, before it has a number. */
export type Change =
  | { kind: 'write'; volume: number; offset: number; data: Buffer }
  | { kind: 'discard' | 'zero' | 'release'; volume: number; offset: number; length: number }
  | { kind: 'resize'; volume: number; size: number }
  | { kind: 'flush'; volume: number }

export interface JournalEntry {
  seq: number
  /** The epoch (lib/replication/epoch.ts) of the home that numbered it. */
  epoch: number
  /** The volume's number (the catalog's `no`) within the journal's group. */
  volume: number
  kind: EntryKind
  offset: number
  /** Bytes of the range; a resize's new size; 0 for a flush. */
  length: number
  /** A write's data; null for every other kind. */
  data: Buffer | null
  /**
   * The checked record this entry was decoded from, when it is a view of it
   * (decodeEntry's `view`): the secondary's redo log stores a received entry
   * as it came, not encoded and checksummed a second time.
   */
  record?: Buffer
}

/** Numbers a change: the entry it becomes as sequence number `seq` of `epoch`. */
export function entryOf(change: Change, seq: number, epoch: number): JournalEntry {
  switch (change.kind) {
    case 'write':
      return { seq, epoch, volume: change.volume, kind: 'write', offset: change.offset, length: change.data.length, data: change.data }
    case 'discard':
    case 'zero':
    case 'release':
      return { seq, epoch, volume: change.volume, kind: change.kind, offset: change.offset, length: change.length, data: null }
    case 'resize':
      return { seq, epoch, volume: change.volume, kind: 'resize', offset: 0, length: change.size, data: null }
    case 'flush':
      return { seq, epoch, volume: change.volume, kind: 'flush', offset: 0, length: 0, data: null }
    default: {
      const never: never = change
      throw new VvfsError('INTERNAL', `unknown change ${JSON.stringify(never)}`)
    }
  }
}

/** Bytes of the encoded entry. */
export function encodedSize(e: Pick<JournalEntry, 'data'>): number {
  return ENTRY_HEADER_BYTES + (e.data?.length ?? 0)
}

export function encodeEntry(e: JournalEntry): Buffer {
  const parts = encodeEntryParts(e)
  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

/**
 * The record as its header and the write's data itself (not copied): what
 * the journal hands its log, which writes the pieces with one writev. The
 * checksum is the same as encodeEntry's (crc32 runs on over the pieces).
 */
export function encodeEntryParts(e: JournalEntry): Buffer[] {
  checkEntry(e, 'INVALID_ARGUMENT')
  // From node's shared pool, not a new ArrayBuffer per entry (each one was
  // V8 work to create, sweep and unregister); every byte is written below.
  const head = Buffer.allocUnsafe(ENTRY_HEADER_BYTES)
  head.writeUInt8(ENTRY_FORMAT, 0)
  head.writeUInt8(ENTRY_KINDS.indexOf(e.kind) + 1, 1)
  head.writeUInt16BE(0, 2)
  head.writeUInt32BE(e.volume, 4)
  head.writeUInt32BE(e.epoch, 8)
  writeU53(head, 12, e.seq)
  writeU53(head, 20, e.offset)
  writeU53(head, 28, e.length)
  head.writeUInt32BE(0, 36) // the checksum covers its own field as zeros
  const crc = crc32(head)
  if (!e.data) {
    head.writeUInt32BE(crc, 36)
    return [head]
  }
  head.writeUInt32BE(crc32(e.data, crc), 36)
  return [head, e.data]
}

/**
 * Decodes one record, refusing anything malformed with `code` (see the file
 * comment). The data is a copy, or with `view` a view of `b` — for a record
 * in a buffer nobody reuses or changes (a wire message's body, a span read
 * for this decode), whose copy is a second pass over every replicated byte
 * and a buffer for V8's external-memory trigger.
 */
export function decodeEntry(b: Buffer, code: ErrorCode, opts: { view?: boolean } = {}): JournalEntry {
  const bad = (why: string) => new VvfsError(code, `malformed journal entry: ${why}`, { details: { reason: 'malformed-entry' } })
  if (b.length < ENTRY_HEADER_BYTES) throw bad(`${b.length} bytes, shorter than the ${ENTRY_HEADER_BYTES}-byte header`)
  if (b.readUInt8(0) !== ENTRY_FORMAT) throw bad(`format ${b.readUInt8(0)}`)
  const kindNo = b.readUInt8(1)
  if (kindNo < 1 || kindNo > ENTRY_KINDS.length) throw bad(`kind ${kindNo}`)
  if (b.readUInt16BE(2) !== 0) throw bad('reserved bits set')
  if (!entryChecksumOk(b)) throw bad('checksum mismatch (torn or altered)')
  const kind = ENTRY_KINDS[kindNo - 1]
  const seq = readU53(b, 12, bad)
  const offset = readU53(b, 20, bad)
  const length = readU53(b, 28, bad)
  const dataBytes = b.length - ENTRY_HEADER_BYTES
  const data = kind !== 'write' ? null : opts.view ? b.subarray(ENTRY_HEADER_BYTES) : Buffer.from(b.subarray(ENTRY_HEADER_BYTES))
  if (kind !== 'write' && dataBytes !== 0) throw bad(`a ${kind} carries ${dataBytes} bytes of data`)
  // record set in the literal, not added after: every decoded entry keeps one shape for V8.
  const e: JournalEntry = { seq, epoch: b.readUInt32BE(8), volume: b.readUInt32BE(4), kind, offset, length, data, record: opts.view ? b : undefined }
  checkEntry(e, code)
  return e
}

/** Whether a record's checksum matches its bytes (a torn or altered record fails), without copying it. */
export function entryChecksumOk(b: Buffer): boolean {
  if (b.length < ENTRY_HEADER_BYTES) return false
  const head = crc32(b.subarray(0, 36))
  return crc32(b.subarray(ENTRY_HEADER_BYTES), crc32(ZERO_CRC, head)) === b.readUInt32BE(36)
}
const ZERO_CRC = Buffer.alloc(4)

/** The sequence number in a record's header (check entryChecksumOk first). */
export function entrySeqOf(b: Buffer): number {
  return readU53(b, 12, (why) => new VvfsError('STATE_CORRUPT', `malformed journal entry: ${why}`, { details: { reason: 'malformed-entry' } }))
}

/** The rules every entry obeys, whoever made it. */
function checkEntry(e: JournalEntry, code: ErrorCode): void {
  const bad = (why: string) => new VvfsError(code, `invalid journal entry ${e.seq}: ${why}`, { details: { reason: 'malformed-entry' } })
  if (!isU53(e.seq) || e.seq < 1) throw bad('sequence numbers start at 1')
  if (!isU32(e.epoch) || e.epoch < 1) throw bad(`epoch ${e.epoch}`)
  if (!isU32(e.volume)) throw bad(`volume ${e.volume}`)
  if (!isU53(e.offset) || !isU53(e.length) || !isU53(e.offset + e.length)) throw bad('range past 2^53')
  switch (e.kind) {
    case 'write':
      if (!e.data || e.data.length !== e.length) throw bad('a write whose length is not its data length')
      if (e.length === 0 || e.length > MAX_ENTRY_DATA) throw bad(`a write of ${e.length} bytes (1–${MAX_ENTRY_DATA})`)
      return
    case 'discard':
    case 'zero':
    case 'release':
    case 'resize':
      if (e.data) throw bad(`a ${e.kind} with data`)
      if (e.kind === 'resize' && e.offset !== 0) throw bad('a resize with an offset')
      return
    case 'flush':
      if (e.data || e.offset !== 0 || e.length !== 0) throw bad('a flush with a range')
      return
    default: {
      const never: never = e.kind
      throw bad(`unknown kind ${String(never)}`)
    }
  }
}

function isU53(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff
}

export function writeU53(b: Buffer, at: number, n: number): void {
  b.writeUInt32BE(Math.floor(n / 0x100000000), at)
  b.writeUInt32BE(n >>> 0, at + 4)
}

export function readU53(b: Buffer, at: number, bad: (why: string) => VvfsError): number {
  const hi = b.readUInt32BE(at)
  if (hi > 0x1fffff) throw bad(`a 64-bit field at byte ${at} past 2^53`)
  return hi * 0x100000000 + b.readUInt32BE(at + 4)
}
