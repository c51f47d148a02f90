/**
 * The key space of the relay's MapStore (STATE/maps): every key prefix and
 * every record codec, in one file. Nothing else builds or parses a MapStore
 * key or value.
 *
 *   'e' volNo:u32 extent:u48                  volume map record (ExtentRecord)
 *   'r' jobNo:u32 volNo:u32 extent:u48        a migration's retained source (ExtentRecord)
 *   'b' jobNo:u32 volNo:u32 phase:u8 page:u32 copy bitmap page (BitmapPage)
 *   'd' jobNo:u32 volNo:u32 phase:u8 page:u32 dirty bitmap page (BitmapPage)
 *   'p' jobNo:u32                             a job's progress (JSON)
 *   "m/sync"                                  the marker a sync writes
 *
 * Records are versioned by the store's change sequence number and
 * checksummed, so a map can be shipped to and verified by another relay
 * (DESIGN.md, "standby relay"). Integers are big-endian, so a prefix scan
 * returns a volume's or a job's keys in order.
 *
 * Concurrency: pure functions. Failure modes: a corrupt record decodes to a
 * STATE_CORRUPT VvfsError, never to a wrong entry.
 */
import { crc32 } from 'node:zlib'
import { VvfsError } from '../errors.js'
import type { ExtentEntry, Fragment } from './extent-entry.js'

const EXTENT = 0x65 // 'e'
const RETAINED = 0x72 // 'r'
const COPY_BITMAP = 0x62 // 'b'
const DIRTY_BITMAP = 0x64 // 'd'
const PROGRESS = 0x70 // 'p'

/** The key a MapStore sync writes with sync:true (its value is the time). */
export const SYNC_KEY = Buffer.from('m/sync')

// ---- volume map records

export function extentKey(volNo: number, extent: number): Buffer {
  const key = Buffer.allocUnsafe(11)
  key[0] = EXTENT
  key.writeUInt32BE(volNo, 1)
  key.writeUIntBE(extent, 5, 6)
  return key
}

/** Every volume's map records, or one volume's. */
export function extentPrefix(volNo?: number): Buffer {
  if (volNo === undefined) return Buffer.from([EXTENT])
  const key = Buffer.allocUnsafe(5)
  key[0] = EXTENT
  key.writeUInt32BE(volNo, 1)
  return key
}

export function isExtentKey(key: Buffer): boolean {
  return key[0] === EXTENT
}

export function parseExtentKey(key: Buffer): { volNo: number; extent: number } {
  return { volNo: key.readUInt32BE(1), extent: key.readUIntBE(5, 6) }
}

// ---- retained sources (a migration job's)

export function retainedKey(jobNo: number, volNo: number, extent: number): Buffer {
  const k = Buffer.alloc(15)
  k[0] = RETAINED
  k.writeUInt32BE(jobNo, 1)
  k.writeUInt32BE(volNo, 5)
  k.writeUIntBE(extent, 9, 6)
  return k
}

/** Every job's retained sources, or one job's. */
export function retainedPrefix(jobNo?: number): Buffer {
  if (jobNo === undefined) return Buffer.from([RETAINED])
  const key = Buffer.alloc(5)
  key[0] = RETAINED
  key.writeUInt32BE(jobNo, 1)
  return key
}

export function parseRetainedKey(key: Buffer): { jobNo: number; volNo: number; extent: number } {
  return { jobNo: key.readUInt32BE(1), volNo: key.readUInt32BE(5), extent: key.readUIntBE(9, 6) }
}

// ---- bitmaps (a migration job's copy progress and dirty extents)

export type BitmapKind = 'copy' | 'dirty'
const BITMAP: Record<BitmapKind, number> = { copy: COPY_BITMAP, dirty: DIRTY_BITMAP }

export function bitmapPageKey(kind: BitmapKind, jobNo: number, volNo: number, phase: number, page: number): Buffer {
  const key = Buffer.alloc(14)
  key[0] = BITMAP[kind]
  key.writeUInt32BE(jobNo, 1)
  key.writeUInt32BE(volNo, 5)
  key[9] = phase
  key.writeUInt32BE(page, 10)
  return key
}

/** The pages of one bitmap (a prefix scan). */
export function bitmapPrefix(kind: BitmapKind, jobNo: number, volNo: number, phase: number): Buffer {
  return bitmapPageKey(kind, jobNo, volNo, phase, 0).subarray(0, 10)
}

export function parseBitmapPageKey(key: Buffer): { page: number } {
  return { page: key.readUInt32BE(10) }
}

// ---- job progress

export function progressKey(jobNo: number): Buffer {
  const k = Buffer.alloc(5)
  k[0] = PROGRESS
  k.writeUInt32BE(jobNo, 1)
  return k
}

export interface JobProgress {
  current: number
  total: number
  phase: number
}

export function encodeProgress(p: JobProgress): Buffer {
  return Buffer.from(JSON.stringify({ current: p.current, total: p.total, phase: p.phase }))
}

export function decodeProgress(buf: Buffer): JobProgress {
  return JSON.parse(buf.toString()) as JobProgress
}

// ---- what belongs to jobs (cleaned at start when its job is gone)

/** The prefixes of every key a job owns whose first u32 after the prefix byte is the job number. */
export function jobOwnedPrefixes(): Buffer[] {
  return [retainedPrefix(), Buffer.from([COPY_BITMAP]), Buffer.from([DIRTY_BITMAP])]
}

export function jobNoOfKey(key: Buffer): number {
  return key.readUInt32BE(1)
}

export function isRetainedKey(key: Buffer): boolean {
  return key[0] === RETAINED
}

// ---- issue 15: which volume a key belongs to (the map log, lib/relay/map-log.ts)

/** Every key kind that belongs to one volume (a prefix scan of each finds all of a volume's keys). */
export function volumeKeyKinds(): Buffer[] {
  return [EXTENT, RETAINED, COPY_BITMAP, DIRTY_BITMAP, PROGRESS].map((k) => Buffer.from([k]))
}

/** The volume a MapStore key belongs to (a job's progress: its job's volume, `jobVolume`); undefined for the sync marker or an unknown job. */
export function volumeOfKey(key: Buffer, jobVolume: (jobNo: number) => number | undefined): number | undefined {
  switch (key[0]) {
    case EXTENT:
      return key.readUInt32BE(1)
    case RETAINED:
    case COPY_BITMAP:
    case DIRTY_BITMAP:
      return key.readUInt32BE(5)
    case PROGRESS:
      return jobVolume(key.readUInt32BE(1))
    default:
      return undefined
  }
}

// ---- the extent record (volume map entries and retained sources)

const RECORD_FORMAT = 1
const KIND_WHOLE = 1
const KIND_FRAGMENTS = 2
const KIND_RELEASED = 3

export interface ExtentRecord {
  seq: number
  /** null: the extent was released. */
  entry: ExtentEntry | null
}

export function encodeExtentRecord(seq: number, entry: ExtentEntry | null): Buffer {
  const body = entry === null ? 0 : entry.kind === 'whole' ? 6 : 2 + entry.frags.size * 9
  const buf = Buffer.alloc(2 + 8 + body + 4)
  buf[0] = RECORD_FORMAT
  buf[1] = entry === null ? KIND_RELEASED : entry.kind === 'whole' ? KIND_WHOLE : KIND_FRAGMENTS
  buf.writeUIntBE(seq, 2, 6)
  let o = 10
  if (entry === null) {
    // no body
  } else if (entry.kind === 'whole') {
    buf.writeUInt16BE(entry.sid, o)
    buf.writeUInt32BE(entry.slot, o + 2)
    o += 6
  } else {
    buf.writeUInt16BE(entry.frags.size, o)
    o += 2
    for (const [chunk, f] of entry.frags) {
      buf[o] = chunk
      buf.writeUInt16BE(f.sid, o + 1)
      buf.writeUIntBE(f.pca, o + 3, 6)
      o += 9
    }
  }
  buf.writeUInt32BE(crc32(buf.subarray(0, o)), o)
  return buf
}

export function decodeExtentRecord(buf: Buffer): ExtentRecord {
  const corrupt = (why: string) => new VvfsError('STATE_CORRUPT', `volume map record is corrupt: ${why}`)
  if (buf.length < 14) throw corrupt('too short')
  const end = buf.length - 4
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) throw corrupt('checksum mismatch')
  if (buf[0] !== RECORD_FORMAT) throw corrupt(`unknown format ${buf[0]}`)
  const seq = buf.readUIntBE(2, 6)
  if (buf[1] === KIND_RELEASED) {
    if (end !== 10) throw corrupt('a released record has a body')
    return { seq, entry: null }
  }
  if (buf[1] === KIND_WHOLE) {
    return { seq, entry: { kind: 'whole', sid: buf.readUInt16BE(10), slot: buf.readUInt32BE(12) } }
  }
  if (buf[1] !== KIND_FRAGMENTS) throw corrupt(`unknown kind ${buf[1]}`)
  const n = buf.readUInt16BE(10)
  if (12 + n * 9 !== end) throw corrupt('length does not match fragment count')
  const frags = new Map<number, Fragment>()
  for (let i = 0, o = 12; i < n; i++, o += 9) {
    frags.set(buf[o]!, { sid: buf.readUInt16BE(o + 1), pca: buf.readUIntBE(o + 3, 6) })
  }
  return { seq, entry: { kind: 'fragments', frags } }
}

// ---- the bitmap page

/** Bits per bitmap page. */
export const PAGE_BITS = 4096
export const PAGE_BYTES = PAGE_BITS / 8
const PAGE_FORMAT = 1

export function encodeBitmapPage(seq: number, bits: Buffer): Buffer {
  const buf = Buffer.alloc(1 + 6 + PAGE_BYTES + 4)
  buf[0] = PAGE_FORMAT
  buf.writeUIntBE(seq, 1, 6)
  bits.copy(buf, 7)
  buf.writeUInt32BE(crc32(buf.subarray(0, 7 + PAGE_BYTES)), 7 + PAGE_BYTES)
  return buf
}

/** A page's version and a copy of its bits; STATE_CORRUPT if it does not check out. */
export function decodeBitmapPage(value: Buffer, what: string): { seq: number; bits: Buffer } {
  const end = value.length - 4
  if (value.length !== 1 + 6 + PAGE_BYTES + 4 || value[0] !== PAGE_FORMAT || crc32(value.subarray(0, end)) !== value.readUInt32BE(end)) {
    throw new VvfsError('STATE_CORRUPT', `${what} is corrupt`)
  }
  return { seq: value.readUIntBE(1, 6), bits: Buffer.from(value.subarray(7, 7 + PAGE_BYTES)) }
}
