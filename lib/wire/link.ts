/**
 * PeerLink: one TCP connection of the peer wire, on either side — the
 * socket, its FrameDecoder, the MAC of each direction once authenticated,
 * and the one way a link ends (drop, with a coded reason).
 *
 * The link knows nothing of the handshake's phases or of requests: it turns
 * bytes into frames, checks the MAC of every frame that carries one, tells
 * the owner whether a frame was authenticated, and stamps a MAC on what it
 * sends once `authenticateSend` was called. The owner (WireServer or
 * WireClient) decides which frames a phase accepts.
 *
 * Concurrency: frames are delivered synchronously from the socket's 'data'
 * event (or its `onread` callback: receiveVolatile, receiveDirect), one at a
 * time, so the owner may raise the decoder's limit or install a MAC between
 * two frames of the same chunk. While the socket reads straight into a body
 * target (nextReadInto), a drop destroys it at once (see drop).
 *
 * Failure modes: anything the decoder, a MAC check or the owner's onFrame
 * throws drops the link with that error as the reason; onClose is called
 * exactly once, with the reason (null when the peer simply closed). A drop
 * tries to tell the peer why in an ERROR frame (id 0), then ends the socket
 * and destroys it after DROP_GRACE_MS even if the peer never reads.
 */
import type { Socket } from 'node:net'
import { asVvfsError, VvfsError } from '../errors.js'
import type { FrameMac } from './auth.js'
import { bodyLength, bodyPieces, encodeHeader, FrameDecoder, FrameKind, type BodyTarget, type Frame, type OutgoingFrame } from './frame.js'

/** The largest body before authentication: the biggest handshake message is 67 bytes, an ERROR up to ~200. */
export const PRE_AUTH_MAX_BODY = 256
/** Bodies up to this many bytes are sent as one buffer with their header and MAC (a copy of a few KiB costs less than a writev of three). */
const SMALL_FRAME = 16 * 1024
/** Time a dropped peer gets to read our ERROR frame before the socket is destroyed. */
const DROP_GRACE_MS = 1000
/** Longest message put in an ERROR frame (a frame must stay under the peer's limit, PRE_AUTH_MAX_BODY before auth). */
const MAX_ERROR_MESSAGE = 160

export interface LinkOwner {
  /** One frame; `authenticated` says its MAC was present and checked. Throwing a VvfsError drops the link with it. */
  onFrame(frame: Frame, authenticated: boolean): void
  onClose(reason: VvfsError | null): void
}

export class PeerLink {
  readonly peer: string
  private readonly decoder = new FrameDecoder(PRE_AUTH_MAX_BODY)
  private sendMac: FrameMac | null = null
  private receiveMac: FrameMac | null = null
  private closed = false
  /** The socket's next read goes into a body target (nextReadInto handed one out). */
  private readingDirect = false

  constructor(
    readonly socket: Socket,
    private readonly owner: LinkOwner,
  ) {
    this.peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('error', (err) => this.finish(new VvfsError('PEER_UNAVAILABLE', `connection error: ${err.message}`, { cause: err })))
    socket.on('close', () => this.finish(null))
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** From now on every frame sent carries a MAC. */
  authenticateSend(mac: FrameMac): void {
    this.sendMac = mac
  }

  /** From now on frames with a MAC are checked with this one; the decoder accepts bodies up to maxBody. */
  authenticateReceive(mac: FrameMac, maxBody: number): void {
    this.receiveMac = mac
    this.decoder.setMaxBody(maxBody)
  }

  /** Received frames' bodies go where `target` says (FrameDecoder.setBodyTarget). */
  setBodyTarget(target: BodyTarget | null, when: 'header' | 'complete' = 'header'): void {
    this.decoder.setBodyTarget(target, when)
  }

  /**
   * Sends one frame; `written` (optional) is called once the socket has
   * handed all of it to the kernel, or failed to (the body may be reused
   * from then on). Returns false when the socket's buffer is over its mark.
   */
  send(f: OutgoingFrame, written?: () => void): boolean {
    if (this.closed) {
      written?.()
      return false
    }
    const pieces = bodyPieces(f.body)
    const header = encodeHeader(f, this.sendMac !== null)
    const mac = this.sendMac ? this.sendMac.sign(header, pieces) : Buffer.alloc(0)
    if (bodyLength(f.body) <= SMALL_FRAME) {
      // One buffer, one write: a write of three (cork, writev) cost more than the copy of a small body.
      return this.socket.write(Buffer.concat([header, ...pieces, mac]), written && (() => written()))
    }
    this.socket.cork()
    this.socket.write(header)
    for (const piece of pieces) if (piece.length > 0) this.socket.write(piece)
    const ok = this.socket.write(mac, written && (() => written()))
    this.socket.uncork()
    return ok
  }

  sendError(id: number, err: VvfsError): boolean {
    const message = err.message.length > MAX_ERROR_MESSAGE ? err.message.slice(0, MAX_ERROR_MESSAGE) + '…' : err.message
    return this.send({ kind: FrameKind.ERROR, id, body: Buffer.from(JSON.stringify({ code: err.code, message })) })
  }

  /**
   * Ends the link for `reason`; tells the peer why unless `tell` is false.
   * While the socket reads straight into a body target, the socket is
   * destroyed at once: the target's owner is told the request failed and may
   * reuse the buffer, so not one more byte may be read into it.
   */
  drop(reason: VvfsError, tell = true): void {
    if (this.closed) return
    if (this.readingDirect) tell = false
    if (tell && this.socket.writable) {
      this.sendError(0, reason)
      this.socket.end()
      setTimeout(() => this.socket.destroy(), DROP_GRACE_MS).unref()
    } else {
      this.socket.destroy()
    }
    this.finish(reason)
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return
    try {
      this.decoder.push(chunk)
      this.deliverFrames()
    } catch (err) {
      this.drop(asVvfsError(err, 'PEER_PROTOCOL'))
    }
  }

  /**
   * Bytes read into a buffer the socket reuses (its `onread` option: the
   * creator of the socket passes them here instead of 'data' events): decoded
   * at once, nothing kept that points into `chunk` (FrameDecoder.pushVolatile).
   */
  receiveVolatile(chunk: Buffer): void {
    if (this.closed) return
    try {
      this.decoder.pushVolatile(chunk, (frame) => {
        if (!this.closed) this.onFrame(frame)
      })
    } catch (err) {
      this.drop(asVvfsError(err, 'PEER_PROTOCOL'))
    }
  }

  /**
   * For a socket whose owner chooses each read's buffer (`onread` with a
   * buffer function): the rest of a body being received into its target,
   * to read into next (FrameDecoder.directRegion), or null for the owner's
   * own buffer. Ask after every read; report a read into it with receiveDirect.
   */
  nextReadInto(): Buffer | null {
    const region = this.closed ? null : this.decoder.directRegion()
    this.readingDirect = region !== null
    return region
  }

  /** `n` bytes were read into the region nextReadInto returned. */
  receiveDirect(n: number): void {
    if (this.closed) return
    try {
      this.decoder.receivedDirect(n)
      this.deliverFrames()
    } catch (err) {
      this.drop(asVvfsError(err, 'PEER_PROTOCOL'))
    }
  }

  /** The owner gave up on the frame whose body goes into `target` (its request expired): the link is dropped if that body is still arriving. */
  abandonTarget(target: Buffer, reason: VvfsError): void {
    if (!this.closed && this.decoder.isFilling(target)) this.drop(reason, false)
  }

  /** Every complete frame the decoder holds, in order, until the link closes. */
  private deliverFrames(): void {
    let frame: Frame | null
    while (!this.closed && (frame = this.decoder.next()) !== null) this.onFrame(frame)
  }

  private onFrame(frame: Frame): void {
    let authenticated = false
    if (frame.mac) {
      if (!this.receiveMac) throw new VvfsError('PEER_PROTOCOL', 'a MAC before authentication')
      if (!this.receiveMac.verify(frame.header, frame.body, frame.mac)) throw new VvfsError('PEER_AUTH_FAILED', 'frame MAC does not match')
      authenticated = true
    } else if (this.receiveMac && frame.kind !== FrameKind.ERROR) {
      throw new VvfsError('PEER_AUTH_FAILED', 'a frame without MAC after authentication')
    }
    this.owner.onFrame(frame, authenticated)
  }

  private finish(reason: VvfsError | null): void {
    if (this.closed) return
    this.closed = true
    this.owner.onClose(reason)
  }
}
