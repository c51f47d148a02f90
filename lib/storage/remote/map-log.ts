/**
 * The map log on a storage server (issue 15): the keyed records a relay
 * keeps for its volumes' maps, so that another relay can take a volume over
 * (lib/relay/map-log.ts is the relay's side). The server does not read
 * them: a record is an opaque key (the relay's volume number and MapStore
 * key) and value, stamped with the (fencing token, sequence) it was written
 * with.
 *
 *   MAP_APPEND  token u48 | seq u48 | flags u8 (1: sync) | count u32 |
 *               count × (keyLen u8 | key | present u8 | valueLen u32 | value)
 *               → empty. One LevelDB batch: all records or none. A record
 *               not present deletes the key. With sync, durable before the
 *               answer (and so is every append before it).
 *   MAP_READ    prefixLen u8 | prefix | afterLen u8 | after | maxBytes u32
 *               → more u8 | count u32 | count × (keyLen u8 | key | token u48 |
 *               seq u48 | valueLen u32 | value): the records under the prefix
 *               after `after` (exclusive; empty: from the first), in key
 *               order, about maxBytes at most (at least one record).
 *
 * Owns: the server's `maplog/` LevelDB (ServerMapLog) and both codecs.
 * Fencing: an append is a mutation like APPLY (StorageServer.mutate): a
 * token below the fence is refused FENCED and nothing of it is stored, so
 * a stale owner's map records are refused exactly like its data. The
 * latest record per key wins: only the fence holder can write, so the
 * latest is the current owner's.
 *
 * Concurrency: appends run concurrently; a relay sends one batch at a time
 * (MapStore), so its records are applied in its order. Failure modes: a
 * malformed body is PEER_PROTOCOL; a LevelDB error is IO_ERROR.
 */
import { mkdir } from 'node:fs/promises'
import { ClassicLevel } from 'classic-level'
import { VvfsError } from '../../errors.js'
import { malformed, Reader, Writer } from './protocol.js'
import { openLevelDurably } from '../../durable-file.js'

const SYNC = 1
/** A MAP_READ reply's records stop after this many bytes (the wire's body limit is 1 MiB + 16 KiB). */
export const MAP_READ_MAX_BYTES = 512 * 1024
/** An append is split into bodies of at most this many bytes of records (see the client). */
export const MAP_APPEND_MAX_BYTES = 512 * 1024

export interface MapLogRecord {
  key: Buffer
  /** null: the key is deleted. */
  value: Buffer | null
}

export interface MapLogAppend {
  token: number
  seq: number
  sync: boolean
  records: MapLogRecord[]
}

export interface StampedMapRecord {
  key: Buffer
  token: number
  seq: number
  value: Buffer
}

/** The bytes one record takes in an append body. */
export function appendedBytes(r: MapLogRecord): number {
  return 1 + r.key.length + 1 + 4 + (r.value?.length ?? 0)
}

export function encodeMapAppend(a: MapLogAppend): Buffer {
  let size = 6 + 6 + 1 + 4
  for (const r of a.records) {
    if (r.key.length > 255) throw new VvfsError('INVALID_ARGUMENT', `map log key of ${r.key.length} bytes (at most 255)`)
    size += appendedBytes(r)
  }
  const w = new Writer(size).u48(a.token).u48(a.seq).u8(a.sync ? SYNC : 0).u32(a.records.length)
  for (const r of a.records) {
    w.u8(r.key.length).bytes(r.key)
    if (r.value === null) w.u8(0).u32(0)
    else w.u8(1).u32(r.value.length).bytes(r.value)
  }
  return w.done()
}

export function decodeMapAppend(b: Buffer): MapLogAppend {
  const r = new Reader(b, 'MAP_APPEND request')
  const token = r.u48()
  const seq = r.u48()
  const sync = (r.u8() & SYNC) !== 0
  const count = r.u32()
  // Each record takes at least 6 bytes: a count beyond what the body holds is malformed before anything is sized from it.
  if (count * 6 > r.left) throw malformed('MAP_APPEND request', b.length)
  const records: MapLogRecord[] = []
  for (let i = 0; i < count; i++) {
    const key = Buffer.from(r.bytes(r.u8()))
    const present = r.u8() === 1
    const value = Buffer.from(r.bytes(r.u32()))
    records.push({ key, value: present ? value : null })
  }
  r.end()
  return { token, seq, sync, records }
}

export function encodeMapRead(prefix: Buffer, after: Buffer | null, maxBytes: number): Buffer {
  const a = after ?? Buffer.alloc(0)
  if (prefix.length > 255 || a.length > 255) throw new VvfsError('INVALID_ARGUMENT', 'map log key over 255 bytes')
  return new Writer(1 + prefix.length + 1 + a.length + 4).u8(prefix.length).bytes(prefix).u8(a.length).bytes(a).u32(maxBytes).done()
}

export function decodeMapRead(b: Buffer): { prefix: Buffer; after: Buffer | null; maxBytes: number } {
  const r = new Reader(b, 'MAP_READ request')
  const prefix = Buffer.from(r.bytes(r.u8()))
  const after = Buffer.from(r.bytes(r.u8()))
  const maxBytes = r.u32()
  r.end()
  return { prefix, after: after.length ? after : null, maxBytes }
}

export function encodeMapRecords(records: StampedMapRecord[], more: boolean): Buffer {
  let size = 1 + 4
  for (const r of records) size += 1 + r.key.length + 6 + 6 + 4 + r.value.length
  const w = new Writer(size).u8(more ? 1 : 0).u32(records.length)
  for (const r of records) w.u8(r.key.length).bytes(r.key).u48(r.token).u48(r.seq).u32(r.value.length).bytes(r.value)
  return w.done()
}

export function decodeMapRecords(b: Buffer): { records: StampedMapRecord[]; more: boolean } {
  const r = new Reader(b, 'MAP_READ reply')
  const more = r.u8() === 1
  const count = r.u32()
  if (count * 17 > r.left) throw malformed('MAP_READ reply', b.length)
  const records: StampedMapRecord[] = []
  for (let i = 0; i < count; i++) {
    const key = Buffer.from(r.bytes(r.u8()))
    const token = r.u48()
    const seq = r.u48()
    const value = Buffer.from(r.bytes(r.u32()))
    records.push({ key, token, seq, value })
  }
  r.end()
  return { records, more }
}

/** The server's map log: a LevelDB of key → token u48 | seq u48 | value. */
export class ServerMapLog {
  private constructor(private readonly db: ClassicLevel<Buffer, Buffer>) {}

  static async open(path: string): Promise<ServerMapLog> {
    await mkdir(path, { recursive: true, mode: 0o700 })
    const db = new ClassicLevel<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer' })
    try {
      await openLevelDurably(db, path)
    } catch (err) {
      throw new VvfsError('IO_ERROR', `cannot open the map log at ${path}: ${(err as Error).message}`, { cause: err })
    }
    return new ServerMapLog(db)
  }

  /** Applies an append's records in one batch (synced when asked: that also makes every earlier append durable). */
  async append(a: MapLogAppend): Promise<void> {
    const ops = a.records.map((r) => {
      if (r.value === null) return { type: 'del' as const, key: r.key }
      const value = Buffer.allocUnsafe(12 + r.value.length)
      value.writeUIntBE(a.token, 0, 6)
      value.writeUIntBE(a.seq, 6, 6)
      r.value.copy(value, 12)
      return { type: 'put' as const, key: r.key, value }
    })
    try {
      if (ops.length) await this.db.batch(ops, { sync: a.sync })
      else if (a.sync) await this.db.put(SYNC_MARK, Buffer.from(String(Date.now())), { sync: true })
    } catch (err) {
      throw new VvfsError('IO_ERROR', `map log write failed: ${(err as Error).message}`, { cause: err })
    }
  }

  async read(prefix: Buffer, after: Buffer | null, maxBytes: number): Promise<{ records: StampedMapRecord[]; more: boolean }> {
    const upper = Buffer.concat([prefix, Buffer.from([0xff])])
    const records: StampedMapRecord[] = []
    let bytes = 0
    const it = this.db.iterator(after ? { gt: after, lt: upper } : { gte: prefix, lt: upper })
    try {
      for await (const [key, value] of it) {
        if (!key.subarray(0, prefix.length).equals(prefix)) continue
        if (records.length > 0 && bytes + key.length + value.length > Math.min(maxBytes, MAP_READ_MAX_BYTES)) return { records, more: true }
        records.push({ key, token: value.readUIntBE(0, 6), seq: value.readUIntBE(6, 6), value: value.subarray(12) })
        bytes += key.length + value.length + 17
      }
    } finally {
      await it.close()
    }
    return { records, more: false }
  }

  async close(): Promise<void> {
    await this.db.close()
  }
}

/** The key a synced empty append writes (outside every relay's key space: relays' keys start with a 4-byte volume number below 0xffffffff). */
const SYNC_MARK = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x73])
