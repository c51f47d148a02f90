/**
 * ExtentEntry: one line of a volume map — where the data of one volume extent
 * lives — and its record form. A record is versioned (the global change
 * sequence number) and checksummed, so that the map can be shipped to and
 * verified by another relay (DESIGN.md, "standby relay").
 *
 *   whole:     the extent is one slot of one storage system
 *   fragments: some of its chunks each have a single-chunk fragment, possibly
 *              on different systems (the small allocations of claim 7/16)
 *   released:  (a record with no entry) the extent holds nothing any more —
 *              kept as a versioned record so a standby relay learns of it
 */
import { crc32 } from 'node:zlib'
import { VvfsError } from '../errors.js'

export interface Fragment {
  sid: number
  pca: number
}

export interface WholeExtent {
  kind: 'whole'
  sid: number
  slot: number
}

export interface FragmentedExtent {
  kind: 'fragments'
  /** Chunk index within the extent → its fragment. */
  frags: Map<number, Fragment>
}

export type ExtentEntry = WholeExtent | FragmentedExtent

const FORMAT = 1
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
  buf[0] = FORMAT
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
  if (buf[0] !== FORMAT) throw corrupt(`unknown format ${buf[0]}`)
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
