/**
 * ControlServer: the control socket. JSON-RPC 2.0, one JSON object per line,
 * on a Unix socket of mode 0600. Params are validated against the schema
 * before a handler runs; anything malformed gets a coded error and changes
 * nothing, and no input can take the daemon down: a line over MAX_LINE is
 * answered LINE_TOO_LONG and skipped to its end, a client that stops reading
 * its events is dropped.
 *
 * Who may talk: only root and the daemon's own uid, checked on every
 * connection with SO_PEERCRED (native/peercred) — the socket's mode is the
 * first fence, the peer's credentials the second (a loosened mode or a
 * socket reached through a bind mount does not let others in). Refused
 * peers get PERMISSION_DENIED and are logged (`control.refused`). At most
 * MAX_CONNECTIONS clients at once (TOO_MANY_CONNECTIONS) and MAX_IN_FLIGHT
 * unanswered requests per connection (TOO_MANY_REQUESTS); a refusal is a
 * coded reply, never a crash.
 *
 * Start: a socket file nobody answers on is a killed daemon's and is
 * replaced; anything else at the path (a regular file, a directory) is never
 * removed: start fails with SOCKET_PATH_IN_USE.
 */
import { EventEmitter } from 'node:events'
import { chmod, lstat, unlink } from 'node:fs/promises'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { asVvfsError, isErrorCode, VvfsError, type ErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import { loadNativeAddon } from '../native-addon.js'
import { METHODS, isMethodName, rpcCode, type CallContext, type Handlers, type VvfsEvent } from './schema.js'

export const MAX_LINE = 1024 * 1024
const MAX_BUFFERED_OUT = 16 * 1024 * 1024
/**
 * Clients at once. The CLI holds one per command, `vvfs events` one each; 64
 * is far above an administrator's scripts and bounds what clients can make
 * the daemon hold (64 × (1 MiB line + 16 MiB unread output)).
 */
export const MAX_CONNECTIONS = 64
/**
 * Unanswered requests per connection (a batch counts each entry). The CLI
 * and the tests have one at a time; a client pipelining more than this is
 * told to wait for answers, so one connection cannot queue unbounded work
 * behind the manager's single queue.
 */
export const MAX_IN_FLIGHT = 32

interface PeerCred {
  pid: number
  uid: number
  gid: number
}

/** The SO_PEERCRED addon. */
function loadPeerCred(): (fd: number) => PeerCred {
  return loadNativeAddon<{ peerCred: (fd: number) => PeerCred }>('peercred', 'the peer-credential check').peerCred
}

type Id = string | number | null

interface RpcResponse {
  jsonrpc: '2.0'
  id: Id
  result?: unknown
  error?: { code: number; message: string; data: { code: ErrorCode; details?: Record<string, unknown> } }
}

export class ControlServer {
  private server: Server | null = null
  private readonly sockets = new Set<Socket>()
  private readonly peerCred = loadPeerCred()
  private readonly ownUid = process.getuid?.() ?? 0

  constructor(
    readonly socketPath: string,
    private readonly handlers: Handlers,
    private readonly events: EventEmitter,
    private readonly log: Logger,
  ) {}

  async listen(): Promise<void> {
    await this.removeStaleSocket()
    const server = createServer((socket) => this.accept(socket))
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new VvfsError('IO_ERROR', `cannot listen on ${this.socketPath}: ${err.message}`, { cause: err })))
      // The socket is created with the process umask; tighten before anyone can use it.
      const old = process.umask(0o177)
      server.listen(this.socketPath, () => {
        process.umask(old)
        resolve()
      })
    })
    await chmod(this.socketPath, 0o600)
    server.on('error', (err) => this.log.error({ event: 'control.error', err: err.message }, 'control socket error'))
    this.server = server
    this.log.info({ event: 'control.listening', socket: this.socketPath }, 'control socket ready')
  }

  async close(): Promise<void> {
    const server = this.server
    this.server = null
    for (const s of this.sockets) s.destroy()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
    await unlink(this.socketPath).catch(() => {})
  }

  /** A socket file nobody answers on is left over from a killed daemon; nothing else is removed. */
  private async removeStaleSocket(): Promise<void> {
    const found = await lstat(this.socketPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw new VvfsError('IO_ERROR', `cannot look at ${this.socketPath}: ${err.message}`, { cause: err })
    })
    if (!found) return
    if (!found.isSocket()) {
      const what = found.isFile() ? 'a regular file' : found.isDirectory() ? 'a directory' : found.isSymbolicLink() ? 'a symbolic link' : 'not a socket'
      throw new VvfsError('SOCKET_PATH_IN_USE', `${this.socketPath} is ${what}, not a socket: vvfs will not replace it (choose another --socket, or remove it)`)
    }
    const alive = await new Promise<boolean>((resolve) => {
      const probe = createConnection(this.socketPath)
      probe.once('connect', () => {
        probe.destroy()
        resolve(true)
      })
      probe.once('error', () => resolve(false))
    })
    if (alive) throw new VvfsError('STATE_LOCKED', `another daemon answers on ${this.socketPath}`)
    await unlink(this.socketPath).catch(() => {})
  }

  /** Turns away a connection with one coded reply. */
  private refuse(socket: Socket, code: ErrorCode, message: string): void {
    socket.on('error', () => socket.destroy())
    socket.end(JSON.stringify(errorReply(null, code, message)) + '\n')
    setTimeout(() => socket.destroy(), 1000).unref()
  }

  /** Root and the daemon's own uid; anyone else (or a peer that cannot be checked) is refused. */
  private admitted(socket: Socket): boolean {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd
    let peer: PeerCred | undefined
    try {
      if (fd !== undefined && fd >= 0) peer = this.peerCred(fd)
    } catch (err) {
      this.log.warn({ event: 'control.refused', reason: 'no peer credentials', err: (err as Error).message }, 'refused a client whose credentials cannot be read')
    }
    if (peer && (peer.uid === 0 || peer.uid === this.ownUid)) return true
    if (peer) this.log.warn({ event: 'control.refused', reason: 'uid', uid: peer.uid, gid: peer.gid, pid: peer.pid }, `refused a client of uid ${peer.uid}`)
    this.refuse(socket, 'PERMISSION_DENIED', `only root and uid ${this.ownUid} may use the vvfs control socket`)
    return false
  }

  private accept(socket: Socket): void {
    if (!this.admitted(socket)) return
    if (this.sockets.size >= MAX_CONNECTIONS) {
      this.log.warn({ event: 'control.refused', reason: 'connections', limit: MAX_CONNECTIONS }, 'refused a client: too many connections')
      this.refuse(socket, 'TOO_MANY_CONNECTIONS', `the daemon serves at most ${MAX_CONNECTIONS} control connections at once; close some`)
      return
    }
    this.sockets.add(socket)
    let inFlight = 0
    let parts: Buffer[] = []
    let length = 0
    let skipping = false
    let subscribed: Set<string> | null = null

    const send = (obj: unknown) => {
      if (socket.destroyed) return
      if (socket.writableLength > MAX_BUFFERED_OUT) {
        this.log.warn({ event: 'control.slow_client' }, 'dropping a client that does not read')
        socket.destroy()
        return
      }
      socket.write(JSON.stringify(obj) + '\n')
    }
    const onEvent = (event: VvfsEvent) => {
      if (subscribed?.has(event.type)) send({ jsonrpc: '2.0', method: 'event', params: event })
    }
    const ctx: CallContext = {
      subscribe: (types) => {
        if (!subscribed) this.events.on('event', onEvent)
        subscribed = new Set(types)
      },
    }
    const cleanup = () => {
      this.sockets.delete(socket)
      if (subscribed) this.events.off('event', onEvent)
    }
    socket.on('close', cleanup)
    socket.on('error', () => socket.destroy())

    const onLine = (line: Buffer) => {
      const text = line.toString('utf8').trim()
      if (text.length === 0) return
      let message: unknown
      try {
        message = JSON.parse(text)
      } catch (err) {
        send(errorReply(null, 'PARSE_ERROR', `not valid JSON: ${(err as Error).message}`))
        return
      }
      const requests = Array.isArray(message) ? Math.max(1, message.length) : 1
      if (inFlight + requests > MAX_IN_FLIGHT) {
        send(errorReply(idOf(message), 'TOO_MANY_REQUESTS', `at most ${MAX_IN_FLIGHT} requests may wait for answers on one connection; wait for some`))
        return
      }
      inFlight += requests
      void this.handleMessage(message, ctx)
        .then((reply) => {
          if (reply !== undefined) send(reply)
        })
        .finally(() => (inFlight -= requests))
    }

    socket.on('data', (data: Buffer) => {
      let start = 0
      for (;;) {
        const nl = data.indexOf(0x0a, start)
        if (nl < 0) break
        if (skipping) skipping = false
        else if (length + nl - start > MAX_LINE) send(errorReply(null, 'LINE_TOO_LONG', `request line is longer than ${MAX_LINE} bytes`))
        else onLine(Buffer.concat([...parts, data.subarray(start, nl)]))
        parts = []
        length = 0
        start = nl + 1
      }
      const rest = data.subarray(start)
      if (skipping || rest.length === 0) return
      if (length + rest.length > MAX_LINE) {
        send(errorReply(null, 'LINE_TOO_LONG', `request line is longer than ${MAX_LINE} bytes`))
        skipping = true
        parts = []
        length = 0
        return
      }
      parts.push(Buffer.from(rest))
      length += rest.length
    })
  }

  private async handleMessage(message: unknown, ctx: CallContext): Promise<unknown> {
    if (Array.isArray(message)) {
      if (message.length === 0) return errorReply(null, 'INVALID_REQUEST', 'empty batch')
      const replies = await Promise.all(message.map((m) => this.handle(m, ctx)))
      const out = replies.filter((r) => r !== undefined)
      return out.length ? out : undefined
    }
    return this.handle(message, ctx)
  }

  private async handle(message: unknown, ctx: CallContext): Promise<RpcResponse | undefined> {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      return errorReply(null, 'INVALID_REQUEST', 'a request must be a JSON object')
    }
    const req = message as Record<string, unknown>
    const rawId = req.id
    const id: Id = typeof rawId === 'string' || typeof rawId === 'number' ? rawId : null
    const isNotification = !('id' in req)
    if (rawId !== undefined && rawId !== null && typeof rawId !== 'string' && typeof rawId !== 'number') {
      return errorReply(null, 'INVALID_REQUEST', 'id must be a string, a number or null')
    }
    if (req.jsonrpc !== '2.0') return errorReply(id, 'INVALID_REQUEST', 'jsonrpc must be "2.0"')
    if (typeof req.method !== 'string') return errorReply(id, 'INVALID_REQUEST', 'method must be a string')
    const name = req.method
    if (!isMethodName(name)) return errorReply(id, 'METHOD_NOT_FOUND', `unknown method ${JSON.stringify(name.slice(0, 100))}`)
    const spec = METHODS[name]
    const parsed = spec.params.safeParse(req.params ?? {})
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      const custom = (issue as { params?: { vvfsCode?: unknown } } | undefined)?.params?.vvfsCode
      const code: ErrorCode = isErrorCode(custom) ? custom : 'INVALID_ARGUMENT'
      const where = issue && issue.path.length ? `${issue.path.join('.')}: ` : ''
      return errorReply(id, code, `invalid params for ${name}: ${where}${issue?.message ?? 'invalid'}`)
    }
    try {
      const handler = this.handlers[name] as (p: unknown, c: CallContext) => Promise<unknown>
      const result = await handler(parsed.data, ctx)
      return isNotification ? undefined : { jsonrpc: '2.0', id, result }
    } catch (err) {
      const e = asVvfsError(err)
      if (e.code === 'INTERNAL' || e.code === 'IO_ERROR') this.log.error({ event: 'control.failed', method: name, err: e.message, stack: (err as Error).stack }, 'request failed')
      return isNotification ? undefined : errorReply(id, e.code, e.message, e.details)
    }
  }
}

/** The id of a request, for a refusal the client can match. */
function idOf(message: unknown): Id {
  const id = message && typeof message === 'object' ? (message as { id?: unknown }).id : null
  return typeof id === 'string' || typeof id === 'number' ? id : null
}

function errorReply(id: Id, code: ErrorCode, message: string, details?: Record<string, unknown>): RpcResponse {
  return { jsonrpc: '2.0', id, error: { code: rpcCode(code), message, data: details ? { code, details } : { code } } }
}

