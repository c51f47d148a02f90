/**
 * The storage protocol: what the bodies of the peer wire's REQUEST and REPLY
 * frames mean between a relay (RemoteChunkStore) and a storage server
 * (StorageServer), service 'storage'. Framing, authentication, request ids,
 * deadlines and the frame-size limit are the wire's (lib/wire); this file owns
 * only the operations, one request type each, mirroring ChunkStore:
 *
 *   IDENTITY  claim or check who the server's store is   → identity, capacity, fence
 *   FENCE_STATUS (issue 15)                               → fence u48 | refused u48
 *   READ_RUN  chunks [first, first+count)                → their bytes (zeros where none)
 *   READ_MANY scattered chunks                           → chunk set
 *   APPLY     one atomic batch of clears, puts, deletes  → empty
 *   STORED    stored addresses in a range, at most limit → address list
 *   SYNC      make earlier batches durable               → empty
 *   FENCE     raise the fencing token                    → the token now
 *   MAP_APPEND keyed map records of a relay (fenced)      → empty       (map-log.ts)
 *   MAP_READ  map records under a key prefix, paged       → records     (map-log.ts)
 *
 * Encoding: big-endian binary, chunk payloads raw (never JSON or base64).
 * Addresses (pca) are u48 — slot × 256 + position for any capacity up to
 * MAX_CAPACITY; tokens are u48 too (an epoch; 2^48 raises will not happen).
 * A chunk set is `count u32 | presence bitmap ⌈count/8⌉ | the present chunks`,
 * so a sparse read sends no zeros. A mutating request always carries a token
 * (0 when the caller has none).
 *
 * Versioning: the wire's handshake versions the frames; IDENTITY carries
 * STORAGE_PROTOCOL, which the server checks (PEER_PROTOCOL on mismatch)
 * before it serves anything else on that connection.
 *
 * Failure modes: every decoder checks lengths exactly and throws
 * PEER_PROTOCOL on a malformed body (the server answers it as that request's
 * error, the client drops nothing). No decoder sizes a buffer from a field
 * before checking it against the body's actual length.
 */
import { VvfsError } from '../../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../../layout.js'
import type { ChunkBatch, ChunkWrite, StoreIdentity } from '../chunk-store.js'

/**
 * The storage protocol's version (the wire has its own, in the handshake).
 * 2: the IDENTITY reply also carries the server process's incarnation. A
 * server answers a relay of version 1 as before.
 */
export const STORAGE_PROTOCOL = 2
export const STORAGE_PROTOCOL_MIN = 1
export const STORAGE_SERVICE = 'storage'

export const Op = {
  IDENTITY: 1,
  READ_RUN: 2,
  READ_MANY: 3,
  APPLY: 4,
  STORED: 5,
  SYNC: 6,
  FENCE: 7,
  /** Issue 15: a relay's map records, kept for the relay that takes a volume over (map-log.ts). */
  MAP_APPEND: 8,
  MAP_READ: 9,
  /** Issue 15: the server's fence and how many mutations it refused FENCED (an older server answers it as unknown). */
  FENCE_STATUS: 10,
} as const
export type Op = (typeof Op)[keyof typeof Op]

/**
 * Largest request or reply body of the storage service: one extent
 * (256 chunks, 1 MiB — a migration copies an extent's run in one atomic
 * batch) plus its addresses and flags (256 × 7 bytes) with room. The wire's
 * default (1 MiB) is one byte short of one extent's data alone.
 */
export const STORAGE_MAX_BODY = 1024 * 1024 + 16 * 1024
/** Chunks per read request: a reply of this many present chunks fits STORAGE_MAX_BODY. */
export const MAX_READ_CHUNKS = 256
/** Addresses per STORED reply (6 bytes each). */
export const MAX_STORED = 65536

const U48_MAX = 2 ** 48 - 1
const BATCH_UNLOGGED = 1
const BATCH_SYNC = 2
const SYNC_FLUSH_UNLOGGED = 1

export function malformed(what: string, length: number): VvfsError {
  return new VvfsError('PEER_PROTOCOL', `malformed ${what} (${length} bytes)`)
}

function checkU48(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > U48_MAX) throw new VvfsError('INVALID_ARGUMENT', `${what} ${n} is not an unsigned 48-bit integer`)
}

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffffffff) throw new VvfsError('INVALID_ARGUMENT', `${what} ${n} is not an unsigned 32-bit integer`)
}

/** A decoded run of chunk addresses must end within the u48 address space (a store's keys would overflow past it: found by test/remote/protocol-fuzz.test.ts, answered IO_ERROR before). */
function checkRun(first: number, count: number, what: string): void {
  if (first + count > U48_MAX + 1) throw new VvfsError('PEER_PROTOCOL', `${what}: chunks ${first}+${count} run past the address space`)
}

/** A bounds-checked reader over one body; every read past the end is PEER_PROTOCOL. */
export class Reader {
  private at = 0
  constructor(
    private readonly b: Buffer,
    private readonly what: string,
  ) {}
  private need(n: number): number {
    if (this.at + n > this.b.length) throw malformed(this.what, this.b.length)
    const at = this.at
    this.at += n
    return at
  }
  u8(): number {
    return this.b.readUInt8(this.need(1))
  }
  u32(): number {
    return this.b.readUInt32BE(this.need(4))
  }
  u48(): number {
    return this.b.readUIntBE(this.need(6), 6)
  }
  bytes(n: number): Buffer {
    const at = this.need(n)
    return this.b.subarray(at, at + n)
  }
  get left(): number {
    return this.b.length - this.at
  }
  end(): void {
    if (this.at !== this.b.length) throw malformed(this.what, this.b.length)
  }
}

/** A writer into a body of known size. */
export class Writer {
  private at = 0
  readonly b: Buffer
  constructor(size: number, alloc: (size: number) => Buffer = Buffer.allocUnsafe) {
    this.b = alloc(size)
  }
  u8(n: number): this {
    this.at = this.b.writeUInt8(n, this.at)
    return this
  }
  u32(n: number): this {
    this.at = this.b.writeUInt32BE(n, this.at)
    return this
  }
  u48(n: number): this {
    this.at = this.b.writeUIntBE(n, this.at, 6)
    return this
  }
  bytes(src: Buffer): this {
    this.at += src.copy(this.b, this.at)
    return this
  }
  done(): Buffer {
    if (this.at !== this.b.length) throw new VvfsError('INTERNAL', `encoder wrote ${this.at} of ${this.b.length} bytes`)
    return this.b
  }
}

// ---- IDENTITY

export interface IdentityRequest {
  protocol: number
  /** The storage system the relay means: the server's store must be it, or (claim) become it if new. */
  sid: number
  name: string
  /** A new store may be created as this identity (`storage add --remote`); otherwise it must exist. */
  claim: boolean
}

export interface IdentityReply {
  identity: StoreIdentity
  /** The server's --capacity (0: not set). */
  capacity: number
  /** The highest fencing token the server has seen. */
  fence: number
  unlogged: boolean
  /**
   * The server machine's boot (16 bytes, /proc/sys/kernel/random/boot_id): a
   * different one after a reconnect means the machine restarted, and writes
   * no sync covered may be gone (a process crash keeps them in the page cache).
   */
  boot: Buffer
  /**
   * The server process's incarnation (16 random bytes drawn at its start;
   * protocol 2, null from a version 1 server): a different one after a
   * reconnect means the process restarted, and unlogged batches no flushing
   * sync covered are gone with its memtable.
   */
  incarnation: Buffer | null
}

export const BOOT_BYTES = 16
export const INCARNATION_BYTES = 16

export function encodeIdentityRequest(r: IdentityRequest): Buffer {
  const name = Buffer.from(r.name, 'utf8')
  if (name.length > 255) throw new VvfsError('INVALID_ARGUMENT', 'storage system name over 255 bytes')
  checkU48(r.sid, 'storage system id')
  return new Writer(1 + 6 + 1 + 1 + name.length).u8(r.protocol).u48(r.sid).u8(r.claim ? 1 : 0).u8(name.length).bytes(name).done()
}

export function decodeIdentityRequest(b: Buffer): IdentityRequest {
  const r = new Reader(b, 'IDENTITY request')
  const protocol = r.u8()
  const sid = r.u48()
  const claim = r.u8() === 1
  const name = r.bytes(r.u8()).toString('utf8')
  r.end()
  return { protocol, sid, name, claim }
}

/** An IDENTITY reply; its incarnation follows the name when there is one (protocol 2). */
export function encodeIdentityReply(r: IdentityReply): Buffer {
  const name = Buffer.from(r.identity.name, 'utf8')
  checkU48(r.capacity, 'capacity')
  checkU48(r.fence, 'fencing token')
  if (r.boot.length !== BOOT_BYTES) throw new VvfsError('INTERNAL', `a boot id of ${r.boot.length} bytes`)
  if (r.incarnation && r.incarnation.length !== INCARNATION_BYTES) throw new VvfsError('INTERNAL', `an incarnation of ${r.incarnation.length} bytes`)
  const incarnation = r.incarnation ?? Buffer.alloc(0)
  return new Writer(6 + 1 + 4 + 6 + 6 + 1 + BOOT_BYTES + 1 + name.length + incarnation.length)
    .u48(r.identity.sid)
    .u8(r.identity.format)
    .u32(r.identity.chunkSize)
    .u48(r.capacity)
    .u48(r.fence)
    .u8(r.unlogged ? 1 : 0)
    .bytes(r.boot)
    .u8(name.length)
    .bytes(name)
    .bytes(incarnation)
    .done()
}

export function decodeIdentityReply(b: Buffer): IdentityReply {
  const r = new Reader(b, 'IDENTITY reply')
  const sid = r.u48()
  const format = r.u8()
  const chunkSize = r.u32()
  const capacity = r.u48()
  const fence = r.u48()
  const unlogged = r.u8() === 1
  const boot = Buffer.from(r.bytes(BOOT_BYTES))
  const name = r.bytes(r.u8()).toString('utf8')
  const incarnation = r.left > 0 ? Buffer.from(r.bytes(INCARNATION_BYTES)) : null
  r.end()
  return { identity: { sid, name, format, chunkSize }, capacity, fence, unlogged, boot, incarnation }
}

// ---- READ_RUN, READ_MANY and their chunk sets

export function encodeReadRun(first: number, count: number): Buffer {
  checkU48(first, 'chunk address')
  checkCount(count, 'chunk count')
  return new Writer(10).u48(first).u32(count).done()
}

export function decodeReadRun(b: Buffer): { first: number; count: number } {
  const r = new Reader(b, 'READ_RUN request')
  const first = r.u48()
  const count = r.u32()
  r.end()
  if (count > MAX_READ_CHUNKS) throw new VvfsError('PEER_PROTOCOL', `READ_RUN of ${count} chunks (at most ${MAX_READ_CHUNKS})`)
  checkRun(first, count, 'READ_RUN request')
  return { first, count }
}

export function encodeReadMany(pcas: number[]): Buffer {
  const w = new Writer(4 + 6 * pcas.length).u32(pcas.length)
  for (const p of pcas) {
    checkU48(p, 'chunk address')
    w.u48(p)
  }
  return w.done()
}

export function decodeReadMany(b: Buffer): number[] {
  const r = new Reader(b, 'READ_MANY request')
  const n = r.u32()
  if (n > MAX_READ_CHUNKS || r.left !== n * 6) throw malformed('READ_MANY request', b.length)
  const pcas = new Array<number>(n)
  for (let i = 0; i < n; i++) pcas[i] = r.u48()
  return pcas
}

/** A READ_RUN reply: exactly count chunks, zeros where none is stored (the store's fast run read fills it). */
export function decodeRun(b: Buffer, count: number): Buffer {
  if (b.length !== count * CHUNK_SIZE) throw malformed(`READ_RUN reply for ${count} chunks`, b.length)
  return b
}

/** A chunk set from chunks in order (undefined: none stored). */
export function encodeChunkSet(chunks: (Buffer | undefined)[]): Buffer {
  let present = 0
  for (const c of chunks) if (c) present++
  const bitmapBytes = Math.ceil(chunks.length / 8)
  const w = new Writer(4 + bitmapBytes + present * CHUNK_SIZE).u32(chunks.length)
  const bitmap = Buffer.alloc(bitmapBytes)
  chunks.forEach((c, i) => {
    if (c) bitmap[i >> 3] |= 1 << (i & 7)
  })
  w.bytes(bitmap)
  for (const c of chunks) {
    if (!c) continue
    if (c.length !== CHUNK_SIZE) throw new VvfsError('INTERNAL', `a stored chunk of ${c.length} bytes`)
    w.bytes(c)
  }
  return w.done()
}

/** A chunk set's chunks (views into `b`), checked to hold exactly `expected` entries. */
export function decodeChunkSet(b: Buffer, expected: number): (Buffer | undefined)[] {
  const r = new Reader(b, 'chunk set')
  const n = r.u32()
  if (n !== expected) throw new VvfsError('PEER_PROTOCOL', `chunk set of ${n} entries for ${expected} asked`)
  const bitmap = r.bytes(Math.ceil(n / 8))
  const out = new Array<Buffer | undefined>(n)
  for (let i = 0; i < n; i++) out[i] = bitmap[i >> 3] & (1 << (i & 7)) ? r.bytes(CHUNK_SIZE) : undefined
  r.end()
  return out
}

// ---- APPLY

/**
 * `flags u8 | token u48 | clears u32 | (first u48, count u32)* | writes u32 |
 * (pca u48, present u8)* | the present chunks' data in order`, in a buffer
 * from `alloc` when given.
 */
export function encodeApply(batch: ChunkBatch, token: number, alloc?: (size: number) => Buffer): Buffer {
  const clears = batch.clears ?? []
  const writes = batch.writes ?? []
  let present = 0
  for (const w of writes) {
    if (w.data === null) continue
    if (w.data.length !== CHUNK_SIZE) throw new VvfsError('INVALID_ARGUMENT', `a chunk write of ${w.data.length} bytes (chunks are ${CHUNK_SIZE})`)
    present++
  }
  checkU48(token, 'fencing token')
  const w = new Writer(1 + 6 + 4 + clears.length * 10 + 4 + writes.length * 7 + present * CHUNK_SIZE, alloc)
  w.u8((batch.unlogged ? BATCH_UNLOGGED : 0) | (batch.sync ? BATCH_SYNC : 0)).u48(token).u32(clears.length)
  for (const c of clears) {
    checkU48(c.first, 'chunk address')
    checkCount(c.count, 'clear count')
    w.u48(c.first).u32(c.count)
  }
  w.u32(writes.length)
  for (const c of writes) {
    checkU48(c.pca, 'chunk address')
    w.u48(c.pca).u8(c.data === null ? 0 : 1)
  }
  for (const c of writes) if (c.data) w.bytes(c.data)
  return w.done()
}

/** Puts `token` into an APPLY body made by encodeApply (a batch sent again after `storage fence` raised the relay's epoch). */
export function setApplyToken(body: Buffer, token: number): void {
  checkU48(token, 'fencing token')
  body.writeUIntBE(token, 1, 6)
}

/**
 * The most chunks one APPLY may clear: a relay clears one extent's slot (256
 * chunks) per batch. A server builds a deletion per chunk cleared (or lists
 * the stored keys of a longer run): 106,000 clears of 256 in one 1 MiB body
 * asked it for 27 million deletions at once (2026-12-04 review).
 */
export const MAX_APPLY_CLEAR_CHUNKS = 64 * EXTENT_CHUNKS

export interface ApplyRequest {
  batch: ChunkBatch
  token: number
}

export function decodeApply(b: Buffer): ApplyRequest {
  const r = new Reader(b, 'APPLY request')
  const flags = r.u8()
  const token = r.u48()
  const nClears = r.u32()
  if (nClears * 10 > r.left) throw malformed('APPLY request', b.length)
  const clears: { first: number; count: number }[] = []
  let cleared = 0
  for (let i = 0; i < nClears; i++) {
    const clear = { first: r.u48(), count: r.u32() }
    checkRun(clear.first, clear.count, 'APPLY clear')
    cleared += clear.count
    if (cleared > MAX_APPLY_CLEAR_CHUNKS) throw new VvfsError('PEER_PROTOCOL', `an APPLY clears more than ${MAX_APPLY_CLEAR_CHUNKS} chunks`)
    clears.push(clear)
  }
  const nWrites = r.u32()
  if (nWrites * 7 > r.left) throw malformed('APPLY request', b.length)
  const heads: { pca: number; present: boolean }[] = []
  for (let i = 0; i < nWrites; i++) heads.push({ pca: r.u48(), present: r.u8() === 1 })
  const writes: ChunkWrite[] = heads.map((h) => ({ pca: h.pca, data: h.present ? r.bytes(CHUNK_SIZE) : null }))
  r.end()
  if ((flags & ~(BATCH_UNLOGGED | BATCH_SYNC)) !== 0) throw new VvfsError('PEER_PROTOCOL', `unknown APPLY flags 0x${flags.toString(16)}`)
  return { batch: { writes, clears, unlogged: (flags & BATCH_UNLOGGED) !== 0, sync: (flags & BATCH_SYNC) !== 0, token }, token }
}

// ---- STORED

export function encodeStored(first: number, count: number, limit: number): Buffer {
  checkU48(first, 'chunk address')
  checkU48(count, 'chunk count')
  return new Writer(16).u48(first).u48(count).u32(Math.min(limit, MAX_STORED)).done()
}

export function decodeStored(b: Buffer): { first: number; count: number; limit: number } {
  const r = new Reader(b, 'STORED request')
  const first = r.u48()
  const count = r.u48()
  const limit = r.u32()
  r.end()
  checkRun(first, count, 'STORED request')
  return { first, count, limit: Math.min(limit, MAX_STORED) }
}

export function encodeAddresses(pcas: number[]): Buffer {
  const w = new Writer(4 + pcas.length * 6).u32(pcas.length)
  for (const p of pcas) w.u48(p)
  return w.done()
}

export function decodeAddresses(b: Buffer): number[] {
  const r = new Reader(b, 'address list')
  const n = r.u32()
  if (r.left !== n * 6) throw malformed('address list', b.length)
  const out = new Array<number>(n)
  for (let i = 0; i < n; i++) out[i] = r.u48()
  return out
}

// ---- SYNC and FENCE

export function encodeSync(flushUnlogged: boolean, token: number): Buffer {
  checkU48(token, 'fencing token')
  return new Writer(7).u8(flushUnlogged ? SYNC_FLUSH_UNLOGGED : 0).u48(token).done()
}

export function decodeSync(b: Buffer): { flushUnlogged: boolean; token: number } {
  const r = new Reader(b, 'SYNC request')
  const flags = r.u8()
  const token = r.u48()
  r.end()
  return { flushUnlogged: (flags & SYNC_FLUSH_UNLOGGED) !== 0, token }
}

export function encodeToken(token: number): Buffer {
  checkU48(token, 'fencing token')
  return new Writer(6).u48(token).done()
}

export function decodeToken(b: Buffer): number {
  const r = new Reader(b, 'fencing token')
  const t = r.u48()
  r.end()
  return t
}

// ---- FENCE_STATUS (issue 15)

export interface FenceStatus {
  /** The highest fencing token the server has seen. */
  fence: number
  /** Mutations (data, syncs, map records) the server refused FENCED since it started. */
  refused: number
}

export function encodeFenceStatus(s: FenceStatus): Buffer {
  checkU48(s.fence, 'fencing token')
  checkU48(s.refused, 'refusal count')
  return new Writer(12).u48(s.fence).u48(s.refused).done()
}

export function decodeFenceStatus(b: Buffer): FenceStatus {
  const r = new Reader(b, 'FENCE_STATUS reply')
  const fence = r.u48()
  const refused = r.u48()
  r.end()
  return { fence, refused }
}
