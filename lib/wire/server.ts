/**
 * WireServer: the listening side of the peer wire (a storage server, a
 * replication target). It accepts TCP connections on the one address it is
 * given, authenticates each peer (lib/wire/auth.ts), then answers its
 * requests through a handler per request type. A handler's answer is a
 * REPLY; what it throws becomes an ERROR frame `{code, message}`.
 *
 * State per connection: its phase (hello → proof → ready), its requests in
 * flight (each with an AbortSignal fired when the connection ends).
 *
 * Concurrency: requests of one connection run concurrently up to maxInFlight
 * (announced to the client in READY; a client sending more is dropped, as it
 * broke the protocol); replies go out in completion order, matched by id.
 * When the socket's unsent replies pass the write high-water mark the server
 * stops reading that socket until they drain, so a peer that does not read
 * cannot make it buffer without bound.
 *
 * Failure modes — every one drops only the offending connection, logged with
 * `event: 'wire.peer.dropped'` and a reason, and changes nothing: garbage or
 * a malformed handshake (PEER_PROTOCOL), a frame over the limit (before
 * authentication PRE_AUTH_MAX_BODY = 256 bytes; FRAME_TOO_LARGE, refused at
 * its header), a wrong key (PEER_AUTH_FAILED), no completed handshake within
 * handshakeDeadlineMs (TIMEOUT), silence for idleTimeoutMs after it, the
 * oldest handshake when a new connection finds every handshake slot taken
 * (PEER_BUSY), a peer proving its key while maxConnections are connected
 * (PEER_BUSY). Memory per connection is bounded by one frame being decoded
 * plus maxInFlight bodies.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { asVvfsError, isErrorCode, VvfsError, type ErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import {
  decodeHello,
  decodeProof,
  encodeChallenge,
  FrameMac,
  newNonce,
  proofMatches,
  proofOf,
  PROTOCOL_MAX,
  PROTOCOL_MIN,
  sessionIdOf,
  type PeerKey,
  type SessionContext,
} from './auth.js'
import type { BufferPool } from '../buffer-pool.js'
import { FrameKind, type Frame } from './frame.js'
import { PeerLink, type LinkOwner } from './link.js'

export interface ServerLimits {
  /** Largest request or reply body. 1 MiB: eight 128 KiB FUSE writes (HostMount's max_write) per request, with room. */
  maxBodyBytes: number
  /** Authenticated connections at once: a storage server has a few relays, a replica one primary. */
  maxConnections: number
  /** Connections still in the handshake at once; a new one past it drops the oldest (accept), so idle sockets cannot keep peers out. */
  maxPendingHandshakes: number
  /** Requests in flight per connection; with maxBodyBytes this bounds a connection's memory (32 MiB). */
  maxInFlight: number
  /** A loopback handshake takes ~1 ms and two round trips on a 300 ms WAN 0.6 s: 3 s is five times that. */
  handshakeDeadlineMs: number
  /** An authenticated connection with no frame for this long is dropped; clients ping every third of it. */
  idleTimeoutMs: number
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  maxBodyBytes: 1024 * 1024,
  maxConnections: 16,
  maxPendingHandshakes: 32,
  maxInFlight: 32,
  handshakeDeadlineMs: 3000,
  idleTimeoutMs: 30_000,
}

export interface RequestContext {
  sessionId: string
  peer: string
  /** Fires when the connection ends before the handler answered (the answer would go nowhere). */
  signal: AbortSignal
  /**
   * Registers `fn` to run once the answer to this request was handed to the
   * kernel, or will never be (an error, a closed connection): from then on
   * the handler may reuse the buffer it answered with.
   */
  afterAnswer?(fn: () => void): void
}

export type WireHandler = (body: Buffer, ctx: RequestContext) => Promise<Buffer> | Buffer

export interface WireServerOptions {
  /** The address to bind, exactly (no default: the listener binds only where told). */
  host: string
  port: number
  key: PeerKey
  /** The service this server offers ('storage', 'replication'); a client asking for another is refused. */
  service: string
  log: Logger
  limits?: Partial<ServerLimits>
  /**
   * Where request bodies spanning several TCP reads are received (instead of
   * a new buffer each): each is given back once its handler settled, so a
   * handler must not keep its body (or views of it) past its answer.
   */
  requestBodies?: BufferPool
}

/**
 * Parses `--listen ADDR:PORT` (or a peer's address): `127.0.0.1:7000`,
 * `[::1]:7000`, `storage-1.lan:7000`. The address is required — there is no
 * "all interfaces" default; `0.0.0.0:7000` must be written out.
 */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text.trim())
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new VvfsError('INVALID_ARGUMENT', `'${text}' is not ADDR:PORT (e.g. 192.168.1.5:7000 or [fd00::5]:7000)`)
  return { host: m[1] ?? m[2], port }
}

/** The READY body: the limits the client must respect. */
export function encodeReady(l: ServerLimits): Buffer {
  const b = Buffer.alloc(10)
  b.writeUInt32BE(l.maxBodyBytes, 0)
  b.writeUInt16BE(l.maxInFlight, 4)
  b.writeUInt32BE(l.idleTimeoutMs, 6)
  return b
}

export function decodeReady(b: Buffer): Pick<ServerLimits, 'maxBodyBytes' | 'maxInFlight' | 'idleTimeoutMs'> {
  if (b.length !== 10) throw new VvfsError('PEER_PROTOCOL', `malformed READY (${b.length} bytes)`)
  return { maxBodyBytes: b.readUInt32BE(0), maxInFlight: b.readUInt16BE(4), idleTimeoutMs: b.readUInt32BE(6) }
}

/** The write high-water mark above which a connection is not read until its replies drain. */
const REPLY_HIGH_WATER = 4 * 1024 * 1024

export class WireServer {
  readonly limits: ServerLimits
  private server: Server | null = null
  private readonly handlers = new Map<number, WireHandler>()
  private readonly connections = new Set<ServerConnection>()

  constructor(private readonly opts: WireServerOptions) {
    if (!opts.host) throw new VvfsError('INVALID_ARGUMENT', 'a wire server needs an explicit address to listen on')
    this.limits = { ...DEFAULT_SERVER_LIMITS, ...opts.limits }
  }

  get log(): Logger {
    return this.opts.log
  }

  /** Registers the handler of one request type (0–65535). */
  handle(type: number, handler: WireHandler): void {
    if (!Number.isInteger(type) || type < 0 || type > 0xffff) throw new VvfsError('INVALID_ARGUMENT', `request type ${type} is not a u16`)
    this.handlers.set(type, handler)
  }

  get requestBodies(): BufferPool | null {
    return this.opts.requestBodies ?? null
  }

  handlerOf(type: number): WireHandler | undefined {
    return this.handlers.get(type)
  }

  get key(): PeerKey {
    return this.opts.key
  }

  get service(): string {
    return this.opts.service
  }

  /** Connections by phase, and requests in flight: for status views and tests. */
  get stats(): { authenticated: number; pending: number; inFlight: number } {
    let authenticated = 0
    let inFlight = 0
    for (const c of this.connections) {
      if (c.isReady) authenticated++
      inFlight += c.inFlight
    }
    return { authenticated, pending: this.connections.size - authenticated, inFlight }
  }

  async listen(): Promise<{ host: string; port: number }> {
    const server = createServer((socket) => this.accept(socket))
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new VvfsError('IO_ERROR', `cannot listen on ${this.opts.host}:${this.opts.port}: ${err.message}`, { cause: err })),
      )
      server.listen({ host: this.opts.host, port: this.opts.port, exclusive: true }, resolve)
    })
    server.on('error', (err) => this.log.error({ event: 'wire.error', err: err.message }, 'wire listener error'))
    this.server = server
    const addr = server.address() as AddressInfo
    this.log.info({ event: 'wire.listening', service: this.service, host: addr.address, port: addr.port, keyId: this.key.id }, 'wire listener ready')
    return { host: addr.address, port: addr.port }
  }

  /** Stops listening and drops every connection (their handlers see their signal abort). */
  async close(): Promise<void> {
    const server = this.server
    this.server = null
    for (const c of [...this.connections]) c.link.drop(new VvfsError('SHUTTING_DOWN', 'the server is closing'))
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  forget(c: ServerConnection): void {
    this.connections.delete(c)
  }

  /**
   * A new connection takes a handshake slot. With every slot taken, the
   * oldest connection still in its handshake is dropped to make room (a SYN
   * cache's rule): sockets that connect and say nothing cannot keep a relay
   * out by holding the slots and renewing each within the deadline — to
   * push out a peer's handshake (two round trips) they would have to open
   * maxPendingHandshakes connections within it.
   */
  private accept(socket: Socket): void {
    const { pending } = this.stats
    const conn = new ServerConnection(this, socket)
    if (pending >= this.limits.maxPendingHandshakes) {
      const oldest = this.oldestPending()
      const busy = `${pending} connections in the handshake (cap ${this.limits.maxPendingHandshakes})`
      if (!oldest) {
        conn.link.drop(new VvfsError('PEER_BUSY', `connection refused: ${busy}`)) // a cap of 0
        return
      }
      oldest.link.drop(new VvfsError('PEER_BUSY', `dropped to make room: ${busy} and this one the oldest`))
    }
    this.connections.add(conn)
  }

  /** The connection that has been in its handshake longest (connections are kept in accept order). */
  private oldestPending(): ServerConnection | undefined {
    for (const c of this.connections) if (!c.isReady) return c
    return undefined
  }
}

type Phase = 'hello' | 'proof' | 'ready'

class ServerConnection implements LinkOwner {
  readonly link: PeerLink
  private phase: Phase = 'hello'
  private context: SessionContext | null = null
  private sessionId: string | null = null
  private readonly handshakeTimer: NodeJS.Timeout
  private readonly aborter = new AbortController()
  inFlight = 0

  constructor(
    private readonly server: WireServer,
    socket: Socket,
  ) {
    this.link = new PeerLink(socket, this)
    this.handshakeTimer = setTimeout(
      () => this.link.drop(new VvfsError('TIMEOUT', `no completed handshake within ${server.limits.handshakeDeadlineMs} ms`)),
      server.limits.handshakeDeadlineMs,
    )
    this.handshakeTimer.unref()
  }

  get isReady(): boolean {
    return this.phase === 'ready'
  }

  onFrame(f: Frame, authenticated: boolean): void {
    switch (this.phase) {
      case 'hello':
        return this.onHello(f)
      case 'proof':
        return this.onProof(f)
      case 'ready':
        return this.onReadyFrame(f, authenticated)
      default: {
        const never: never = this.phase
        throw new VvfsError('INTERNAL', `unknown phase ${String(never)}`)
      }
    }
  }

  onClose(reason: VvfsError | null): void {
    clearTimeout(this.handshakeTimer)
    this.aborter.abort(reason ?? new VvfsError('PEER_UNAVAILABLE', 'the peer closed the connection'))
    this.server.forget(this)
    const fields = { event: 'wire.peer.dropped', peer: this.link.peer, session: this.sessionId, phase: this.phase }
    if (reason === null) this.server.log.info({ ...fields, reason: 'the peer closed the connection' }, 'wire peer gone')
    else if (reason.code === 'SHUTTING_DOWN') this.server.log.info({ ...fields, code: reason.code, reason: reason.message }, 'wire peer dropped')
    else this.server.log.warn({ ...fields, code: reason.code, reason: reason.message }, 'wire peer dropped')
  }

  /** A peer's own ERROR frame before it is ready: it tells why it leaves. */
  private peerReported(f: Frame): void {
    let code: ErrorCode = 'PEER_PROTOCOL'
    let reported = 'a malformed error frame'
    try {
      const e = JSON.parse(f.body.toString('utf8')) as { code?: unknown; message?: unknown }
      if (isErrorCode(e.code)) code = e.code
      reported = `${String(e.code)}: ${String(e.message)}`.slice(0, 200)
    } catch {
      // the reason stays "a malformed error frame"
    }
    this.link.drop(new VvfsError(code, `the peer leaves (${reported})`), false)
  }

  private onHello(f: Frame): void {
    if (f.kind === FrameKind.ERROR) return this.peerReported(f)
    if (f.kind !== FrameKind.HELLO) throw new VvfsError('PEER_PROTOCOL', `expected HELLO, got frame kind ${f.kind}`)
    const hello = decodeHello(f.body)
    const version = Math.min(PROTOCOL_MAX, hello.maxVersion)
    if (version < Math.max(PROTOCOL_MIN, hello.minVersion))
      throw new VvfsError('PEER_PROTOCOL', `no common protocol version (peer ${hello.minVersion}–${hello.maxVersion}, here ${PROTOCOL_MIN}–${PROTOCOL_MAX})`)
    if (hello.service !== this.server.service) throw new VvfsError('PEER_PROTOCOL', `peer asks for service '${hello.service}'; this is '${this.server.service}'`)
    const context: SessionContext = { version, service: hello.service, clientNonce: hello.nonce, serverNonce: newNonce() }
    this.context = context
    this.phase = 'proof'
    this.link.send({ kind: FrameKind.CHALLENGE, body: encodeChallenge({ version, nonce: context.serverNonce, proof: proofOf(this.server.key, 'server', context) }) })
  }

  private onProof(f: Frame): void {
    if (f.kind === FrameKind.ERROR) return this.peerReported(f)
    if (f.kind !== FrameKind.PROOF) throw new VvfsError('PEER_PROTOCOL', `expected PROOF, got frame kind ${f.kind}`)
    const context = this.context as SessionContext
    if (!proofMatches(this.server.key, 'client', context, decodeProof(f.body)))
      throw new VvfsError('PEER_AUTH_FAILED', 'the peer does not hold the peer key (its proof does not match)')
    if (this.server.stats.authenticated >= this.server.limits.maxConnections)
      throw new VvfsError('PEER_BUSY', `${this.server.limits.maxConnections} peers already connected (cap)`)
    clearTimeout(this.handshakeTimer)
    this.phase = 'ready'
    this.sessionId = sessionIdOf(context)
    const limits = this.server.limits
    this.link.authenticateReceive(new FrameMac(this.server.key, 'client→server', context), limits.maxBodyBytes)
    const pool = this.server.requestBodies
    // Taken once the body is here: a pool buffer is never sized by a length a peer merely claimed.
    if (pool) this.link.setBodyTarget((kind, _id, length) => (kind === FrameKind.REQUEST && length >= pool.minBytes ? pool.take(length) : null), 'complete')
    this.link.authenticateSend(new FrameMac(this.server.key, 'server→client', context))
    this.link.send({ kind: FrameKind.READY, body: encodeReady(limits) })
    const socket = this.link.socket
    socket.setTimeout(limits.idleTimeoutMs, () => this.link.drop(new VvfsError('TIMEOUT', `no frame for ${limits.idleTimeoutMs} ms`)))
    socket.setKeepAlive(true, Math.max(1000, Math.floor(limits.idleTimeoutMs / 3)))
    this.server.log.info({ event: 'wire.peer.authenticated', peer: this.link.peer, session: this.sessionId, version: context.version }, 'wire peer authenticated')
  }

  private onReadyFrame(f: Frame, authenticated: boolean): void {
    if (!authenticated) {
      if (f.kind === FrameKind.ERROR) return this.peerReported(f)
      throw new VvfsError('PEER_AUTH_FAILED', 'a frame without MAC after authentication')
    }
    switch (f.kind) {
      case FrameKind.REQUEST:
        return this.onRequest(f)
      case FrameKind.PING:
        // Held back like any answer: a peer that pings and never reads must not grow the write buffer without bound.
        this.holdBack(this.link.send({ kind: FrameKind.PONG, id: f.id }))
        return
      case FrameKind.ERROR:
        return this.peerReported(f)
      default:
        throw new VvfsError('PEER_PROTOCOL', `unexpected frame kind ${f.kind} from an authenticated peer`)
    }
  }

  private onRequest(f: Frame): void {
    const limits = this.server.limits
    if (this.inFlight >= limits.maxInFlight) throw new VvfsError('PEER_BUSY', `more than ${limits.maxInFlight} requests in flight (the announced cap)`)
    const handler = this.server.handlerOf(f.type)
    if (!handler) {
      this.holdBack(this.link.sendError(f.id, new VvfsError('METHOD_NOT_FOUND', `no handler for request type ${f.type}`)))
      return
    }
    this.inFlight++
    let written: (() => void)[] | null = null
    const afterWrite = () => {
      for (const fn of written ?? []) fn()
      written = null
    }
    const ctx: RequestContext = {
      sessionId: this.sessionId as string,
      peer: this.link.peer,
      signal: this.aborter.signal,
      afterAnswer: (fn) => (written ??= []).push(fn),
    }
    void Promise.resolve()
      .then(() => handler(f.body, ctx))
      .then((reply) => {
        if (reply.length > limits.maxBodyBytes) throw new VvfsError('FRAME_TOO_LARGE', `reply of ${reply.length} bytes exceeds the limit of ${limits.maxBodyBytes}`)
        this.answer({ kind: FrameKind.REPLY, type: f.type, id: f.id, body: reply }, 0, undefined, written ? afterWrite : undefined)
      })
      .catch((err: unknown) => {
        afterWrite()
        const e = asVvfsError(err)
        if (e.code === 'INTERNAL') this.server.log.error({ event: 'wire.handler.failed', type: f.type, err: e.message }, 'wire handler failed')
        this.answer(null, f.id, e)
      })
      .finally(() => {
        this.inFlight--
        this.server.requestBodies?.give(f.body)
      })
  }

  private answer(reply: { kind: FrameKind; type: number; id: number; body: Buffer } | null, id = 0, err?: VvfsError, written?: () => void): void {
    if (this.link.isClosed) {
      written?.()
      return
    }
    this.holdBack(reply ? this.link.send(reply, written) : this.link.sendError(id, err as VvfsError))
  }

  /** Stops reading from a peer that does not read its answers (the write buffer past REPLY_HIGH_WATER) until they drain. */
  private holdBack(flowing: boolean): void {
    const socket = this.link.socket
    if (!flowing && socket.writableLength > REPLY_HIGH_WATER && !socket.isPaused()) {
      socket.pause()
      socket.once('drain', () => socket.resume())
    }
  }
}
