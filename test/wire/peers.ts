/**
 * Test peers for the wire: a captured logger, a raw peer that speaks the
 * protocol by hand (so tests can misbehave after a real handshake), and a
 * TCP tap between a client and a server that records every byte and can
 * freeze or corrupt the stream. Loopback only.
 */
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { Writable } from 'node:stream'
import { createLogger, type Logger } from '../../lib/log.js'
import {
  decodeChallenge,
  encodeHello,
  FrameMac,
  newNonce,
  proofOf,
  PROTOCOL_MAX,
  PROTOCOL_MIN,
  type PeerKey,
  type SessionContext,
} from '../../lib/wire/auth.js'
import { bodyPieces, encodeHeader, FrameDecoder, FrameKind, type Frame, type OutgoingFrame } from '../../lib/wire/frame.js'

export interface LogLine {
  event?: string
  code?: string
  reason?: string
  [k: string]: unknown
}

export function capturedLog(): { log: Logger; lines: LogLine[]; events(event: string): LogLine[] } {
  const lines: LogLine[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine)
      cb()
    },
  })
  return { log: createLogger('debug', 'json', sink), lines, events: (event) => lines.filter((l) => l.event === event) }
}

export async function until(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** A peer driven by hand: frames out, frames in, a MAC on both once `handshake` is done. */
export class RawPeer {
  readonly socket: Socket
  readonly received: Frame[] = []
  closed = false
  /** The protocol version the server chose in the last handshake. */
  version = 0
  private readonly decoder = new FrameDecoder(16 * 1024 * 1024)
  private sendMac: FrameMac | null = null
  private receiveMac: FrameMac | null = null

  private constructor(socket: Socket) {
    this.socket = socket
    socket.on('data', (c: Buffer) => {
      this.decoder.push(c)
      let f: Frame | null
      while ((f = this.decoder.next()) !== null) {
        if (f.mac && this.receiveMac && !this.receiveMac.verify(f.header, f.body, f.mac)) throw new Error('bad MAC from the server')
        this.received.push(f)
      }
    })
    socket.on('error', () => {})
    socket.on('close', () => (this.closed = true))
  }

  static async connect(port: number): Promise<RawPeer> {
    const socket = connect({ host: '127.0.0.1', port })
    await once(socket, 'connect')
    return new RawPeer(socket)
  }

  send(f: OutgoingFrame): void {
    const body = Buffer.concat(bodyPieces(f.body))
    const header = encodeHeader(f, this.sendMac !== null)
    this.socket.write(Buffer.concat([header, body, this.sendMac ? this.sendMac.sign(header, body) : Buffer.alloc(0)]))
  }

  async nextFrame(timeoutMs = 3000): Promise<Frame> {
    await until(() => this.received.length > 0 || this.closed, timeoutMs, 'a frame')
    const f = this.received.shift()
    if (!f) throw new Error('connection closed')
    return f
  }

  /** HELLO, CHALLENGE, PROOF (with `proofKey`, the right key unless a test wants it wrong), READY. */
  async handshake(key: PeerKey, service: string, proofKey: PeerKey = key): Promise<Frame> {
    const nonce = newNonce()
    this.send({ kind: FrameKind.HELLO, body: encodeHello({ minVersion: PROTOCOL_MIN, maxVersion: PROTOCOL_MAX, service, nonce }) })
    const c = decodeChallenge((await this.nextFrame()).body)
    const context: SessionContext = { version: c.version, service, clientNonce: nonce, serverNonce: c.nonce }
    this.version = c.version
    this.send({ kind: FrameKind.PROOF, body: proofOf(proofKey, 'client', context) })
    this.sendMac = new FrameMac(proofKey, 'client→server', context)
    this.receiveMac = new FrameMac(proofKey, 'server→client', context)
    return this.nextFrame()
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    await until(() => this.closed, timeoutMs, 'the server to drop the connection')
  }

  destroy(): void {
    this.socket.destroy()
  }
}

/** A TCP relay between a client and a server that keeps every byte each way; it can freeze (stop forwarding) or corrupt a byte. */
export class Tap {
  readonly toServer: Buffer[] = []
  readonly toClient: Buffer[] = []
  frozen = false
  /** When set, the next chunk to the server longer than this has its byte at this offset flipped. */
  corruptAt: number | null = null
  private readonly sockets = new Set<Socket>()
  /** Bytes still let through toward the client before it holds the rest (null: no holding), and what it holds. */
  private passToClient: number | null = null
  private held: { down: Socket; chunk: Buffer }[] = []

  /** From now on lets only `bytes` more through toward the client and holds the rest, in order, until releaseToClient(). */
  holdToClientAfter(bytes: number): void {
    this.passToClient = bytes
  }

  /** Sends what it held toward the client and stops holding; resolves with the bytes released. */
  releaseToClient(): number {
    this.passToClient = null
    let n = 0
    for (const { down, chunk } of this.held.splice(0)) {
      n += chunk.length
      if (!down.destroyed) down.write(chunk)
    }
    return n
  }

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<Tap> {
    const server = createServer()
    server.listen({ host: '127.0.0.1', port: 0 })
    await once(server, 'listening')
    const tap = new Tap(server, (server.address() as AddressInfo).port)
    server.on('connection', (down: Socket) => {
      const up = connect({ host: '127.0.0.1', port: targetPort })
      tap.sockets.add(down).add(up)
      down.on('data', (c: Buffer) => {
        if (tap.frozen) return
        if (tap.corruptAt !== null && c.length > tap.corruptAt) {
          c = Buffer.from(c)
          c[tap.corruptAt] ^= 0x01
          tap.corruptAt = null
        }
        tap.toServer.push(c)
        up.write(c)
      })
      up.on('data', (c: Buffer) => {
        if (tap.frozen) return
        tap.toClient.push(c)
        if (tap.passToClient !== null) {
          const now = c.subarray(0, tap.passToClient)
          tap.passToClient -= now.length
          if (now.length < c.length) tap.held.push({ down, chunk: c.subarray(now.length) })
          c = now
        }
        if (c.length > 0) down.write(c)
      })
      const end = () => {
        down.destroy()
        up.destroy()
      }
      for (const s of [down, up]) {
        s.on('error', end)
        s.on('close', end)
      }
    })
    return tap
  }

  /** Every byte seen, both ways. */
  get bytes(): Buffer {
    return Buffer.concat([...this.toServer, ...this.toClient])
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise((r) => this.server.close(r))
  }
}
