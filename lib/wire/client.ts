/**
 * WireClient: the connecting side of the peer wire (a relay talking to a
 * storage server, a primary shipping its journal). It keeps one
 * authenticated connection up — reconnecting with exponential backoff and
 * jitter after any loss — and sends requests over it, pipelined: each gets
 * an id, replies are matched by id in whatever order they come.
 *
 * State: 'connecting' (a TCP connect and handshake under way), 'ready',
 * 'down' (waiting out the backoff after a failure), 'closed' (by close());
 * every change is emitted as a 'state' event `(state, error?)`.
 *
 * Concurrency: at most the server's announced maxInFlight requests are on
 * the wire; more wait in a queue, in order. A request whose deadline passes
 * after it was sent still holds its slot until its reply comes (the server
 * is still working on it, and counts it) or the connection ends — its late
 * reply is then dropped. Pings every third of the server's idle timeout
 * measure the round trip (`rtt`) and find a server that stopped answering.
 *
 * Failure modes — failures are answers, never hangs: a request's deadline
 * passing gives TIMEOUT if it was sent or the link is up, PEER_UNAVAILABLE
 * if it never could be sent; a connection lost with requests on the wire
 * fails them with PEER_UNAVAILABLE (details.sent: they may or may not have
 * been carried out; no request is retried, as none is assumed idempotent);
 * a wrong key (PEER_AUTH_FAILED) or an incompatible server (PEER_PROTOCOL)
 * also fails the queued requests at once, as waiting will not fix it. A
 * body over the server's limit is refused locally (FRAME_TOO_LARGE).
 */
import { EventEmitter } from 'node:events'
import { connect } from 'node:net'
import { fromWire, isErrorCode, VvfsError, type ErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import {
  decodeChallenge,
  encodeHello,
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
import { bodyLength, FrameKind, type Frame, type OutgoingBody } from './frame.js'
import { PeerLink, type LinkOwner } from './link.js'
import { decodeReady, DEFAULT_SERVER_LIMITS } from './server.js'

export type ClientState = 'connecting' | 'ready' | 'down' | 'closed'

export interface WireClientOptions {
  host: string
  port: number
  key: PeerKey
  service: string
  log: Logger
  /** Default deadline of a request: "a few seconds" (issue 14.5). */
  deadlineMs?: number
  /** TCP connect plus handshake must finish within this. */
  connectTimeoutMs?: number
  /** Backoff between attempts: initialMs doubling up to maxMs, each delay drawn from [½, 1] of that. */
  backoff?: { initialMs: number; maxMs: number }
  /** Largest reply body accepted. */
  maxBodyBytes?: number
}

export const DEFAULT_DEADLINE_MS = 5000
const DEFAULT_CONNECT_TIMEOUT_MS = 3000
/** A connection's reused read buffer: Node's own read size (it allocated a new one of these per read). */
const RECEIVE_BUFFER_BYTES = 64 * 1024
const DEFAULT_BACKOFF = { initialMs: 100, maxMs: 5000 }

interface Request {
  type: number
  body: OutgoingBody
  /** Its bytes (bodyLength). */
  bytes: number
  /** Where the reply's body goes when it has exactly this length (see request()). */
  replyInto: Buffer | null
  resolve: (b: Buffer) => void
  reject: (e: VvfsError) => void
  timer: NodeJS.Timeout
  /** Set when it went on the wire. */
  id: number | null
  /** Set when its caller was already answered (deadline); the slot stays taken until its reply. */
  expired: boolean
}

interface Session {
  link: PeerLink
  phase: 'hello' | 'challenge' | 'ready'
  nonce: Buffer
  context: SessionContext | null
  sessionId: string | null
  maxBodyBytes: number
  maxInFlight: number
  /** Requests on the wire, by id. */
  inFlight: Map<number, Request>
  pings: Map<number, { sentAt: number; resolve: (ms: number) => void; reject: (e: VvfsError) => void; timer: NodeJS.Timeout }>
  pingTimer: NodeJS.Timeout | null
  connectTimer: NodeJS.Timeout
}

export class WireClient extends EventEmitter {
  private stateNow: ClientState = 'down'
  private session: Session | null = null
  private readonly queue: Request[] = []
  private nextId = 1
  private attempt = 0
  private retryTimer: NodeJS.Timeout | null = null
  private lastError: VvfsError | null = null
  private rttMs: number | null = null
  private readonly deadlineMs: number
  private readonly backoff: { initialMs: number; maxMs: number }

  constructor(private readonly opts: WireClientOptions) {
    super()
    this.deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF
  }

  get state(): ClientState {
    return this.stateNow
  }

  /** Smoothed round trip of pings in ms (null before the first answer). */
  get rtt(): number | null {
    return this.rttMs
  }

  /** The public name of the current session (as the server logs it), null when not ready. */
  get sessionId(): string | null {
    return this.session?.phase === 'ready' ? this.session.sessionId : null
  }

  /** Starts connecting (and keeps reconnecting until close()). */
  start(): void {
    if (this.stateNow === 'closed') throw new VvfsError('SHUTTING_DOWN', 'the client is closed')
    if (!this.session && !this.retryTimer) this.connect()
  }

  /** Resolves when the client is ready; rejects with the last connection error after timeoutMs. */
  ready(timeoutMs = this.deadlineMs): Promise<void> {
    if (this.stateNow === 'ready') return Promise.resolve()
    if (this.stateNow === 'closed') return Promise.reject(new VvfsError('SHUTTING_DOWN', 'the client is closed'))
    return new Promise((resolve, reject) => {
      const onState = (s: ClientState) => {
        if (s !== 'ready' && s !== 'closed') return
        clearTimeout(timer)
        this.off('state', onState)
        if (s === 'ready') resolve()
        else reject(new VvfsError('SHUTTING_DOWN', 'the client is closed'))
      }
      const timer = setTimeout(() => {
        this.off('state', onState)
        reject(this.unavailable(`not connected within ${timeoutMs} ms`))
      }, timeoutMs)
      this.on('state', onState)
    })
  }

  /**
   * Sends one request; resolves with the reply body or rejects with a coded
   * VvfsError (see the file comment). With `replyInto`, a reply body of
   * exactly its length is received straight into it (no buffer of its own:
   * FrameDecoder.setBodyTarget) and resolved as it; the caller must not
   * read it before the answer, nor count on its contents after a failure.
   * Once the request's deadline passed, a late reply no longer goes there.
   * A body in pieces is sent as they are, not joined; like a single buffer,
   * the caller keeps them unchanged until the request settles.
   */
  request(type: number, body: OutgoingBody, opts: { deadlineMs?: number; replyInto?: Buffer } = {}): Promise<Buffer> {
    if (this.stateNow === 'closed') return Promise.reject(new VvfsError('SHUTTING_DOWN', 'the client is closed'))
    // checked against the limit the server announced; before it did, when the request is sent (pump)
    const s = this.session
    const bytes = bodyLength(body)
    if (s?.phase === 'ready' && bytes > s.maxBodyBytes)
      return Promise.reject(new VvfsError('FRAME_TOO_LARGE', `request body of ${bytes} bytes exceeds the server's limit of ${s.maxBodyBytes}`))
    const deadlineMs = opts.deadlineMs ?? this.deadlineMs
    return new Promise<Buffer>((resolve, reject) => {
      const req: Request = { type, body, bytes, replyInto: opts.replyInto ?? null, resolve, reject, id: null, expired: false, timer: setTimeout(() => this.expire(req, deadlineMs), deadlineMs) }
      this.queue.push(req)
      this.pump()
    })
  }

  /** Measures one round trip now (ms). */
  ping(deadlineMs = this.deadlineMs): Promise<number> {
    const s = this.session
    if (!s || s.phase !== 'ready') return Promise.reject(this.unavailable('not connected'))
    return new Promise((resolve, reject) => {
      const id = this.takeId(s.pings)
      const timer = setTimeout(() => {
        s.pings.delete(id)
        reject(new VvfsError('TIMEOUT', `no answer to a ping within ${deadlineMs} ms`))
      }, deadlineMs)
      s.pings.set(id, { sentAt: performance.now(), resolve, reject, timer })
      s.link.send({ kind: FrameKind.PING, id })
    })
  }

  /** Drops the connection, fails everything pending, stops reconnecting. */
  async close(): Promise<void> {
    if (this.stateNow === 'closed') return
    if (this.retryTimer) clearTimeout(this.retryTimer)
    this.retryTimer = null
    this.setState('closed') // first: the link's close below must not schedule a reconnect
    const closing = new VvfsError('SHUTTING_DOWN', 'the client is closed')
    this.session?.link.drop(closing)
    this.failQueued(closing)
  }

  // --- connection ---------------------------------------------------------

  private connect(): void {
    this.setState('connecting')
    // Reads land in one buffer per connection, reused (PeerLink.receiveVolatile): no new 64 KiB buffer per
    // socket read; or, while a reply body is arriving for a request that named its buffer, straight into
    // that buffer (PeerLink.nextReadInto). Node asks for the next read's buffer after each read (and once
    // while connect() runs, before `link` exists).
    const own = Buffer.allocUnsafeSlow(RECEIVE_BUFFER_BYTES)
    const linkOf: { current: PeerLink | null } = { current: null }
    let direct: Buffer | null = null
    const socket = connect({
      host: this.opts.host,
      port: this.opts.port,
      onread: {
        buffer: () => {
          direct = linkOf.current ? linkOf.current.nextReadInto() : null
          return direct ?? own
        },
        callback: (n: number, buf: Uint8Array) => {
          if (buf === direct) linkOf.current?.receiveDirect(n)
          else linkOf.current?.receiveVolatile(Buffer.from(buf.buffer, buf.byteOffset, n))
          return true // keep reading
        },
      },
    })
    const owner: LinkOwner = {
      onFrame: (f, authenticated) => this.onFrame(session, f, authenticated),
      onClose: (reason) => this.onClose(session, reason),
    }
    const link = new PeerLink(socket, owner)
    linkOf.current = link
    const connectTimeoutMs = this.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    const session: Session = {
      link,
      phase: 'hello',
      nonce: newNonce(),
      context: null,
      sessionId: null,
      maxBodyBytes: 0,
      maxInFlight: 0,
      inFlight: new Map(),
      pings: new Map(),
      pingTimer: null,
      connectTimer: setTimeout(() => link.drop(new VvfsError('PEER_UNAVAILABLE', `no completed handshake within ${connectTimeoutMs} ms`)), connectTimeoutMs),
    }
    link.setBodyTarget((kind, id, length) => {
      if (kind !== FrameKind.REPLY) return null
      const req = session.inFlight.get(id)
      return req && !req.expired && req.replyInto?.length === length ? req.replyInto : null
    })
    this.session = session
    socket.once('connect', () =>
      link.send({
        kind: FrameKind.HELLO,
        body: encodeHello({ minVersion: PROTOCOL_MIN, maxVersion: PROTOCOL_MAX, service: this.opts.service, nonce: session.nonce }),
      }),
    )
  }

  private onFrame(s: Session, f: Frame, authenticated: boolean): void {
    if (f.kind === FrameKind.ERROR && (f.id === 0 || !authenticated)) {
      // The server tells why it drops us. Before authentication it cannot be verified, but all it can make us do is give up this connection.
      s.link.drop(this.reported(f, authenticated), false)
      return
    }
    switch (s.phase) {
      case 'hello':
        return this.onChallenge(s, f)
      case 'challenge':
        if (f.kind !== FrameKind.READY || !authenticated) throw new VvfsError('PEER_PROTOCOL', `expected a MAC'd READY, got frame kind ${f.kind}`)
        return this.onReady(s, f)
      case 'ready':
        if (!authenticated) throw new VvfsError('PEER_AUTH_FAILED', 'a frame without MAC after authentication')
        return this.onAnswer(s, f)
      default: {
        const never: never = s.phase
        throw new VvfsError('INTERNAL', `unknown phase ${String(never)}`)
      }
    }
  }

  private onChallenge(s: Session, f: Frame): void {
    if (f.kind !== FrameKind.CHALLENGE) throw new VvfsError('PEER_PROTOCOL', `expected CHALLENGE, got frame kind ${f.kind}`)
    const c = decodeChallenge(f.body)
    if (c.version < PROTOCOL_MIN || c.version > PROTOCOL_MAX) throw new VvfsError('PEER_PROTOCOL', `server chose protocol version ${c.version}; this side speaks ${PROTOCOL_MIN}–${PROTOCOL_MAX}`)
    const context: SessionContext = { version: c.version, service: this.opts.service, clientNonce: s.nonce, serverNonce: c.nonce }
    if (!proofMatches(this.opts.key, 'server', context, c.proof)) throw new VvfsError('PEER_AUTH_FAILED', 'the server does not hold the peer key (its proof does not match)')
    s.context = context
    s.phase = 'challenge'
    s.link.send({ kind: FrameKind.PROOF, body: proofOf(this.opts.key, 'client', context) })
    s.link.authenticateSend(new FrameMac(this.opts.key, 'client→server', context))
    s.link.authenticateReceive(new FrameMac(this.opts.key, 'server→client', context), this.opts.maxBodyBytes ?? DEFAULT_SERVER_LIMITS.maxBodyBytes)
  }

  private onReady(s: Session, f: Frame): void {
    const limits = decodeReady(f.body)
    if (limits.maxInFlight < 1) throw new VvfsError('PEER_PROTOCOL', 'server announced no request slots')
    clearTimeout(s.connectTimer)
    s.phase = 'ready'
    s.sessionId = sessionIdOf(s.context as SessionContext)
    s.maxBodyBytes = limits.maxBodyBytes
    s.maxInFlight = limits.maxInFlight
    const every = Math.max(50, Math.floor(limits.idleTimeoutMs / 3))
    s.pingTimer = setInterval(() => {
      this.ping().catch(
        (err: VvfsError) => s.link.drop(new VvfsError('PEER_UNAVAILABLE', `server stopped answering: ${err.message}`)),
      )
    }, every)
    s.pingTimer.unref()
    this.attempt = 0
    this.lastError = null
    this.opts.log.info({ event: 'wire.client.ready', peer: s.link.peer, session: s.sessionId }, 'wire peer ready')
    this.setState('ready')
    this.pump()
  }

  private onAnswer(s: Session, f: Frame): void {
    if (f.kind === FrameKind.PONG) {
      const p = s.pings.get(f.id)
      if (!p) return // its deadline passed already
      s.pings.delete(f.id)
      clearTimeout(p.timer)
      const ms = performance.now() - p.sentAt
      this.rttMs = this.rttMs === null ? ms : 0.8 * this.rttMs + 0.2 * ms
      p.resolve(ms)
      return
    }
    if (f.kind !== FrameKind.REPLY && f.kind !== FrameKind.ERROR) throw new VvfsError('PEER_PROTOCOL', `unexpected frame kind ${f.kind} from the server`)
    const req = s.inFlight.get(f.id)
    if (!req) throw new VvfsError('PEER_PROTOCOL', `an answer to request ${f.id}, which is not in flight`)
    s.inFlight.delete(f.id)
    if (req.expired) {
      this.opts.log.debug({ event: 'wire.client.late_reply', id: f.id, type: req.type }, 'late reply ignored')
    } else {
      clearTimeout(req.timer)
      if (f.kind === FrameKind.REPLY) req.resolve(f.body)
      else req.reject(decodeError(f.body))
    }
    this.pump()
  }

  private onClose(s: Session, reason: VvfsError | null): void {
    clearTimeout(s.connectTimer)
    if (s.pingTimer) clearInterval(s.pingTimer)
    for (const p of s.pings.values()) {
      clearTimeout(p.timer)
      p.reject(new VvfsError('PEER_UNAVAILABLE', 'connection lost'))
    }
    const why = reason?.message ?? 'the server closed the connection'
    for (const req of s.inFlight.values()) {
      if (req.expired) continue
      clearTimeout(req.timer)
      req.reject(new VvfsError('PEER_UNAVAILABLE', `connection lost with the request on the wire (${why}); it may or may not have been carried out`, { details: { sent: true } }))
    }
    if (this.session === s) this.session = null
    if (this.stateNow === 'closed') return
    const code: ErrorCode = reason?.code === 'PEER_AUTH_FAILED' || reason?.code === 'PEER_PROTOCOL' || reason?.code === 'PEER_BUSY' ? reason.code : 'PEER_UNAVAILABLE'
    this.lastError = new VvfsError(code, `${this.opts.host}:${this.opts.port}: ${why}`, { cause: reason ?? undefined })
    if (code === 'PEER_AUTH_FAILED' || code === 'PEER_PROTOCOL') this.failQueued(this.lastError)
    const level = s.phase === 'ready' || code === 'PEER_UNAVAILABLE' ? 'warn' : 'error'
    this.opts.log[level]({ event: 'wire.client.down', peer: `${this.opts.host}:${this.opts.port}`, session: s.sessionId, code, reason: why }, 'wire peer down')
    this.setState('down', this.lastError)
    this.scheduleReconnect()
  }

  private scheduleReconnect(): void {
    const base = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(this.attempt, 30))
    const delay = base / 2 + (Math.random() * base) / 2
    this.attempt++
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      if (this.stateNow !== 'closed') this.connect()
    }, delay)
    this.retryTimer.unref()
  }

  // --- requests -----------------------------------------------------------

  private pump(): void {
    const s = this.session
    if (!s || s.phase !== 'ready') return
    while (this.queue.length > 0 && s.inFlight.size < s.maxInFlight) {
      const req = this.queue.shift() as Request
      if (req.bytes > s.maxBodyBytes) {
        clearTimeout(req.timer)
        req.reject(new VvfsError('FRAME_TOO_LARGE', `request body of ${req.bytes} bytes exceeds the server's limit of ${s.maxBodyBytes}`))
        continue
      }
      const id = this.takeId(s.inFlight)
      req.id = id
      s.inFlight.set(id, req)
      s.link.send({ kind: FrameKind.REQUEST, type: req.type, id, body: req.body })
    }
  }

  private expire(req: Request, deadlineMs: number): void {
    if (req.id === null) {
      const i = this.queue.indexOf(req)
      if (i >= 0) this.queue.splice(i, 1)
      req.reject(this.stateNow === 'ready' ? new VvfsError('TIMEOUT', `no request slot free within ${deadlineMs} ms`) : this.unavailable(`not connected within the ${deadlineMs} ms deadline`))
      return
    }
    req.expired = true
    const timeout = new VvfsError('TIMEOUT', `no answer within ${deadlineMs} ms`, { details: { sent: true } })
    // Its reply may be arriving straight into the caller's buffer, which the caller may reuse once told: stop that first.
    if (req.replyInto) this.session?.link.abandonTarget(req.replyInto, timeout)
    req.reject(timeout)
  }

  private failQueued(err: VvfsError): void {
    for (const req of this.queue.splice(0)) {
      clearTimeout(req.timer)
      req.reject(err)
    }
  }

  /** A u32 id not 0 and not in use. */
  private takeId(inUse: Map<number, unknown>): number {
    do {
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1
    } while (inUse.has(this.nextId))
    return this.nextId
  }

  private unavailable(what: string): VvfsError {
    const last = this.lastError
    return new VvfsError(last?.code ?? 'PEER_UNAVAILABLE', `${this.opts.host}:${this.opts.port} ${what}${last ? `: ${last.message}` : ''}`, { cause: last ?? undefined })
  }

  private reported(f: Frame, authenticated: boolean): VvfsError {
    const e = decodeError(f.body)
    return new VvfsError(e.code, `the server says: ${e.message}${authenticated ? '' : ' (unauthenticated)'}`, { cause: e })
  }

  private setState(state: ClientState, err?: VvfsError): void {
    if (state === this.stateNow && state !== 'down') return
    this.stateNow = state
    this.emit('state', state, err)
  }
}

/** An ERROR frame's body, `{code, message}`; anything else becomes PEER_PROTOCOL. */
function decodeError(body: Buffer): VvfsError {
  try {
    const e = JSON.parse(body.toString('utf8')) as { code?: unknown; message?: unknown }
    if (isErrorCode(e.code) && typeof e.message === 'string') return fromWire({ code: e.code, message: e.message })
  } catch {
    // falls through
  }
  return new VvfsError('PEER_PROTOCOL', `malformed error frame (${body.length} bytes)`)
}
