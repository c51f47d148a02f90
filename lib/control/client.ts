/**
 * ControlClient: a typed client of the control socket, used by the CLI and
 * the tests. One request per line; replies matched by id; `event`
 * notifications go to the onEvent listeners.
 */
import { createConnection, type Socket } from 'node:net'
import { fromWire, VvfsError, type WireError } from '../errors.js'
import type { MethodName, ParamsInput, Result, VvfsEvent } from './schema.js'

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
}

export class ControlClient {
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private readonly listeners = new Set<(e: VvfsEvent) => void>()
  private buffer = ''

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => this.onData(chunk))
    socket.on('close', () => this.failAll(new VvfsError('CONNECTION_FAILED', 'the daemon closed the connection')))
    socket.on('error', (err) => this.failAll(new VvfsError('CONNECTION_FAILED', err.message, { cause: err })))
  }

  static connect(socketPath: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const socket = createConnection(socketPath)
      socket.once('connect', () => resolve(new ControlClient(socket)))
      socket.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new VvfsError('CONNECTION_FAILED', `cannot reach the vvfs daemon at ${socketPath} (${err.code ?? err.message}); is it running? (vvfs daemon, or make run)`, {
            cause: err,
          }),
        ),
      )
    })
  }

  call<M extends MethodName>(method: M, params: ParamsInput<M>): Promise<Result<M>> {
    const id = this.nextId++
    return new Promise<Result<M>>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.socket.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n')
    })
  }

  /** Sends a raw line (for tests of malformed input); resolves with the next reply line. */
  raw(line: string): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.set(-1, { resolve, reject })
      this.socket.write(line.endsWith('\n') ? line : line + '\n')
    })
  }

  onEvent(fn: (e: VvfsEvent) => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  close(): void {
    this.socket.end()
    this.socket.destroy()
  }

  private onData(chunk: string): void {
    this.buffer += chunk
    let nl: number
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl)
      this.buffer = this.buffer.slice(nl + 1)
      if (line.trim()) this.onMessage(line)
    }
  }

  private onMessage(line: string): void {
    let msg: { id?: unknown; method?: string; params?: unknown; result?: unknown; error?: { message: string; data?: WireError } }
    try {
      msg = JSON.parse(line)
    } catch {
      return
    }
    if (msg.method === 'event') {
      for (const fn of this.listeners) fn(msg.params as VvfsEvent)
      return
    }
    const raw = this.pending.get(-1)
    const id = typeof msg.id === 'number' ? msg.id : -1
    const p = this.pending.get(id) ?? raw
    if (!p) return
    this.pending.delete(this.pending.has(id) ? id : -1)
    if (raw && p === raw) return p.resolve(msg)
    if (msg.error) {
      const data = msg.error.data
      p.reject(fromWire({ code: data?.code ?? 'INTERNAL', message: msg.error.message, details: data?.details }))
    } else p.resolve(msg.result)
  }

  private failAll(err: VvfsError): void {
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
  }
}
