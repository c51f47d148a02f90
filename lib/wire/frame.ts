/**
 * The peer wire's frame codec: what bytes between two vvfs processes (a relay
 * and a storage server, a primary and its replica) mean, and nothing else.
 *
 * A frame is a fixed 20-byte header, a body of `length` bytes, and, when the
 * MAC flag is set, a 32-byte MAC trailer (lib/wire/auth.ts computes and
 * checks it; this file only carries it):
 *
 *   0 magic u32 'vvw1' | 4 format u8 | 5 kind u8 | 6 flags u16 | 8 type u16
 *  10 reserved u16 (0) | 12 id u32  | 16 length u32 | 20 body | MAC (32)
 *
 * all big-endian. `kind` is the frame's role in the protocol (handshake,
 * request, reply, …); `type` names the operation of a request (the feature
 * that uses the wire owns its numbers); `id` matches a reply to its request.
 *
 * Concurrency: a FrameDecoder belongs to one socket; push() a chunk, then
 * call next() until it returns null. Frames come out one at a time so the
 * owner can change the decoder's limit between two frames (the handshake
 * raises it once the peer is authenticated).
 *
 * Failure modes: a header that is not a frame of this format (magic, format,
 * kind, reserved bits) throws PEER_PROTOCOL; a length over the current limit
 * throws FRAME_TOO_LARGE as soon as the header is in — before any byte of the
 * body is read, and no buffer is ever sized by a length field: the decoder
 * holds only bytes it has received (chunks under 4 KiB copied into 16 KiB
 * blocks, so one byte per TCP segment costs no Buffer object per byte), and
 * after the owner drained next() at most one incomplete frame (≤ header +
 * limit + MAC). After an error the
 * decoder is poisoned: every later call throws the same error.
 */
import { VvfsError } from '../errors.js'

export const FRAME_MAGIC = 0x76767731 // 'vvw1'
export const FRAME_FORMAT = 1
export const HEADER_BYTES = 20
export const MAC_BYTES = 32

/** The MAC flag: a 32-byte MAC trailer follows the body. No other flag is defined; a set unknown bit is a protocol error. */
export const FLAG_MAC = 0x0001

export const FrameKind = {
  /** client → server: versions it speaks, the service it wants, its nonce. */
  HELLO: 1,
  /** server → client: the chosen version, the server's nonce, the server's proof. */
  CHALLENGE: 2,
  /** client → server: the client's proof. */
  PROOF: 3,
  /** server → client, first MAC'd frame: the server's limits. */
  READY: 4,
  REQUEST: 5,
  REPLY: 6,
  /** A coded error `{code, message}` (JSON): the answer to request `id`, or with id 0 the reason the sender drops the connection. */
  ERROR: 7,
  PING: 8,
  PONG: 9,
} as const
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind]
const KIND_MAX = 9

export interface Frame {
  kind: FrameKind
  flags: number
  type: number
  id: number
  body: Buffer
  /** The 20 header bytes as received (the MAC covers them). */
  header: Buffer
  /** The trailer, when the MAC flag is set. */
  mac: Buffer | null
}

/** A body to send: one buffer, or its pieces in order (written as they are, never joined: a replication batch's records). */
export type OutgoingBody = Buffer | readonly Buffer[]

export interface OutgoingFrame {
  kind: FrameKind
  type?: number
  id?: number
  body?: OutgoingBody
}

/** A body to send as its pieces (none for no body). */
export function bodyPieces(body: OutgoingBody | undefined): readonly Buffer[] {
  return body === undefined ? [] : Buffer.isBuffer(body) ? [body] : (body as readonly Buffer[])
}

/** Bytes of a body to send. */
export function bodyLength(body: OutgoingBody | undefined): number {
  let n = 0
  for (const p of bodyPieces(body)) n += p.length
  return n
}

/** The header of a frame; the body and MAC trailer are written after it as they are (no copy). */
export function encodeHeader(f: OutgoingFrame, withMac: boolean): Buffer {
  const h = Buffer.alloc(HEADER_BYTES)
  h.writeUInt32BE(FRAME_MAGIC, 0)
  h.writeUInt8(FRAME_FORMAT, 4)
  h.writeUInt8(f.kind, 5)
  h.writeUInt16BE(withMac ? FLAG_MAC : 0, 6)
  h.writeUInt16BE(f.type ?? 0, 8)
  h.writeUInt32BE(f.id ?? 0, 12)
  h.writeUInt32BE(bodyLength(f.body), 16)
  return h
}

/** A buffer of exactly `length` bytes to receive the body of frame `id` of `kind`, or null for a new one. */
export type BodyTarget = (kind: FrameKind, id: number, length: number) => Buffer | null

/** Chunks shorter than this are copied into a shared block rather than kept: a peer sending one byte per TCP segment must not make us hold a Buffer object (~100 bytes) per byte. */
const SMALL_CHUNK = 4096
const BLOCK_BYTES = 16 * 1024
/** The spill buffer's first size (pushVolatile); it grows to the largest partial frame it had to keep. */
const SPILL_MIN_BYTES = 64 * 1024

/** Incremental decoder over one socket's chunks; see the file comment. */
export class FrameDecoder {
  /** Received, not yet consumed: chunks[head..]. */
  private chunks: Buffer[] = []
  private head = 0
  private bufferedBytes = 0
  /** The block small chunks are copied into, and how much of it is used. */
  private block: Buffer | null = null
  private blockUsed = 0
  private header: Buffer | null = null
  private failure: VvfsError | null = null

  /** The buffer of the chunk being decoded by pushVolatile, and the spill buffer: bodies are never views of either. */
  private volatile: ArrayBufferLike | null = null
  private spill: Buffer | null = null

  /** Where the owner wants a frame's body put (see setBodyTarget). */
  private target: BodyTarget | null = null
  /** Whether the target is asked when a header arrives (else when its body is complete). */
  private targetAtHeader = true
  /** The current frame's body target, once named, and how many of its bytes have arrived. */
  private fill: { into: Buffer; filled: number } | null = null

  /** @param maxBody the largest body accepted now (setMaxBody changes it between frames). */
  constructor(private maxBody: number) {}

  /**
   * Lets the owner name, for a frame whose header has arrived, a buffer of
   * exactly its length to receive the body into instead of a new one (a
   * reply read straight into the caller's buffer: a fresh 1 MiB buffer per
   * frame cost 1.3–2.6 ms of page faults here against 0.04–0.24 ms for a copy
   * into a reused one). Asked synchronously once the header is in, with the
   * frame's kind, id and length; a buffer of another length is ignored. Body
   * bytes go there as they arrive, and the owner may read the rest of the
   * body from the socket straight into it (directRegion): from then on the
   * buffer is written until the frame is complete or the socket is gone.
   * The frame's `body` is then that buffer, not yet checked by any MAC.
   * With `when` 'complete' it is asked only once the whole body is here and
   * the body is copied into it then: for an owner whose buffer would be
   * taken for the length a header claims (a server's pool), so no buffer is
   * sized by a length field before its bytes have come.
   */
  setBodyTarget(target: BodyTarget | null, when: 'header' | 'complete' = 'header'): void {
    this.target = target
    this.targetAtHeader = when === 'header'
  }

  setMaxBody(bytes: number): void {
    this.maxBody = bytes
  }

  /** Bytes received and not yet returned as a frame (besides a body's bytes already in its target). */
  get buffered(): number {
    return this.bufferedBytes
  }

  /**
   * Where the next socket read may land directly: the part of the current
   * frame's body target not yet filled, when no other received byte waits
   * to be decoded (else null). A read there saves the copy out of the
   * socket's buffer — a quarter of the relay's main thread in a remote
   * sequential read (perf, bench/remote.js). Report it with receivedDirect.
   */
  directRegion(): Buffer | null {
    const f = this.fill
    if (!f || this.failure || this.bufferedBytes > 0 || f.filled >= f.into.length) return null
    return f.into.subarray(f.filled)
  }

  /** `n` bytes were read into the region directRegion() returned (n ≤ its length); then call next(). */
  receivedDirect(n: number): void {
    const f = this.fill
    if (!f || n > f.into.length - f.filled) throw new VvfsError('INTERNAL', `a direct read of ${n} bytes with no room for it`)
    f.filled += n
  }

  /** Whether the current frame's body is being received into `buffer`. */
  isFilling(buffer: Buffer): boolean {
    return this.fill?.into === buffer
  }

  /**
   * A chunk the caller reuses once this call returns (a socket's `onread`
   * buffer): the frames it completes are returned now, with bodies copied out
   * of it, and its remaining bytes are copied into a spill buffer the decoder
   * owns and reuses — a new 64 KiB buffer per socket read made V8 run a full
   * mark-compact about every 64 MiB received (its external-memory trigger):
   * 3–4 a second in the relay during a remote sequential read, a third of
   * its CPU (perf, bench/remote.js). `each` gets every frame in order; what
   * it throws ends decoding as next() does.
   */
  pushVolatile(chunk: Buffer, each: (frame: Frame) => void): void {
    this.push(chunk)
    this.volatile = chunk.buffer
    try {
      let frame: Frame | null
      while ((frame = this.next()) !== null) each(frame)
    } finally {
      this.volatile = null
      if (!this.failure) this.spillRest(chunk.buffer)
    }
  }

  /** Copies the buffered bytes that lie in `volatile` (and those already spilled) to the start of the spill buffer. */
  private spillRest(volatile: ArrayBufferLike): void {
    const rest = this.chunks.slice(this.head)
    if (!rest.some((c) => c.buffer === volatile)) return
    const spill = this.spill && this.spill.length >= this.bufferedBytes ? this.spill : Buffer.allocUnsafeSlow(Math.max(SPILL_MIN_BYTES, this.bufferedBytes))
    // Spilled bytes first (they come first and may move down within the spill buffer: copy, which handles overlap), then the rest.
    let at = 0
    for (const c of rest) at += c.copy(spill, at)
    this.spill = spill
    this.chunks = [spill.subarray(0, at)]
    this.head = 0
  }

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure
    if (chunk.length === 0) return
    this.bufferedBytes += chunk.length
    if (chunk.length >= SMALL_CHUNK) {
      this.chunks.push(chunk)
      return
    }
    if (!this.block || this.blockUsed + chunk.length > this.block.length) {
      this.block = Buffer.allocUnsafeSlow(BLOCK_BYTES)
      this.blockUsed = 0
    }
    const block = this.block
    chunk.copy(block, this.blockUsed)
    const last = this.head < this.chunks.length ? this.chunks[this.chunks.length - 1] : null
    if (last && last.buffer === block.buffer && last.byteOffset + last.length === block.byteOffset + this.blockUsed) {
      this.chunks[this.chunks.length - 1] = Buffer.from(block.buffer, last.byteOffset, last.length + chunk.length)
    } else {
      this.chunks.push(block.subarray(this.blockUsed, this.blockUsed + chunk.length))
    }
    this.blockUsed += chunk.length
  }

  /** The next complete frame, or null when more bytes are needed. */
  next(): Frame | null {
    if (this.failure) throw this.failure
    try {
      return this.decodeOne()
    } catch (err) {
      this.failure = err as VvfsError
      this.fill = null
      this.chunks = []
      this.head = 0
      this.bufferedBytes = 0
      this.block = null
      throw err
    }
  }

  private decodeOne(): Frame | null {
    if (!this.header) {
      if (this.bufferedBytes < HEADER_BYTES) return null
      const header = Buffer.from(this.take(HEADER_BYTES)) // own copy: the MAC needs it after the chunk is gone
      this.check(header)
      this.header = header
      this.fill = this.targetAtHeader ? this.fillOf(header) : null
    }
    const header = this.header
    const flags = header.readUInt16BE(6)
    const length = header.readUInt32BE(16)
    const macBytes = flags & FLAG_MAC ? MAC_BYTES : 0
    let body: Buffer
    const f = this.fill
    if (f) {
      // Body bytes go to the target as they come; the frame is done once it is full and the MAC is in.
      const k = Math.min(this.bufferedBytes, length - f.filled)
      if (k > 0) f.filled += this.copyOut(k, f.into, f.filled)
      if (f.filled < length || this.bufferedBytes < macBytes) return null
      this.fill = null
      body = f.into
    } else {
      if (this.bufferedBytes < length + macBytes) return null
      const late = this.targetAtHeader ? null : this.fillOf(header)
      body = late ? late.into : this.take(length)
      if (late) this.copyOut(length, late.into, 0)
    }
    this.header = null
    const mac = macBytes ? Buffer.from(this.take(macBytes)) : null
    return { kind: header.readUInt8(5) as FrameKind, flags, type: header.readUInt16BE(8), id: header.readUInt32BE(12), body, header, mac }
  }

  /** The owner's target for this frame's body, if it names one of the right length. */
  private fillOf(header: Buffer): { into: Buffer; filled: number } | null {
    const length = header.readUInt32BE(16)
    const into = length > 0 && this.target ? this.target(header.readUInt8(5) as FrameKind, header.readUInt32BE(12), length) : null
    return into && into.length === length ? { into, filled: 0 } : null
  }

  private check(h: Buffer): void {
    const magic = h.readUInt32BE(0)
    if (magic !== FRAME_MAGIC) throw new VvfsError('PEER_PROTOCOL', `not a vvfs wire frame (magic 0x${magic.toString(16).padStart(8, '0')})`)
    const format = h.readUInt8(4)
    if (format !== FRAME_FORMAT) throw new VvfsError('PEER_PROTOCOL', `unknown frame format ${format} (this side speaks ${FRAME_FORMAT})`)
    const kind = h.readUInt8(5)
    if (kind < 1 || kind > KIND_MAX) throw new VvfsError('PEER_PROTOCOL', `unknown frame kind ${kind}`)
    const flags = h.readUInt16BE(6)
    if ((flags & ~FLAG_MAC) !== 0 || h.readUInt16BE(10) !== 0) throw new VvfsError('PEER_PROTOCOL', `reserved header bits set (flags 0x${flags.toString(16)})`)
    const length = h.readUInt32BE(16)
    if (length > this.maxBody)
      throw new VvfsError('FRAME_TOO_LARGE', `frame body of ${length} bytes exceeds the limit of ${this.maxBody}`, { details: { length, limit: this.maxBody } })
  }

  /** Removes n buffered bytes (n ≤ buffered): a view into one chunk when they lie in one, else a copy of exactly n received bytes. */
  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0)
    const first = this.chunks[this.head]
    if (first.length >= n && first.buffer !== this.volatile && first.buffer !== this.spill?.buffer) {
      this.bufferedBytes -= n
      if (first.length === n) this.head++
      else this.chunks[this.head] = first.subarray(n)
      this.compact()
      return first.subarray(0, n)
    }
    const out = Buffer.allocUnsafe(n)
    this.copyOut(n, out, 0)
    return out
  }

  /** Removes n buffered bytes (n ≤ buffered), copying them into `out` at `at`; returns n. */
  private copyOut(n: number, out: Buffer, at: number): number {
    this.bufferedBytes -= n
    let filled = 0
    while (filled < n) {
      const c = this.chunks[this.head]
      const k = Math.min(c.length, n - filled)
      c.copy(out, at + filled, 0, k)
      filled += k
      if (k === c.length) this.head++
      else this.chunks[this.head] = c.subarray(k)
    }
    this.compact()
    return n
  }

  /** Forgets consumed chunks. */
  private compact(): void {
    if (this.head === this.chunks.length) {
      this.chunks = []
      this.head = 0
    } else if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head)
      this.head = 0
    }
  }
}
