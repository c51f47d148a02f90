import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { encodeHeader, FRAME_MAGIC, FrameDecoder, FrameKind, HEADER_BYTES, MAC_BYTES, type Frame } from '../../lib/wire/frame.js'
import { payload, rng } from '../helpers/model.js'

interface Sent {
  kind: FrameKind
  type: number
  id: number
  body: Buffer
  mac: Buffer | null
}

const KINDS = Object.values(FrameKind)

function encode(f: Sent): Buffer {
  return Buffer.concat([encodeHeader(f, f.mac !== null), f.body, f.mac ?? Buffer.alloc(0)])
}

function randomFrames(r: ReturnType<typeof rng>, n: number, maxBody: number): Sent[] {
  return Array.from({ length: n }, () => {
    const length = r.next() < 0.2 ? 0 : r.int(0, maxBody)
    return {
      kind: r.pick(KINDS),
      type: r.int(0, 0xffff),
      id: r.int(0, 0xffffffff),
      body: payload(r, Math.max(1, length)).subarray(0, length),
      mac: r.next() < 0.5 ? payload(r, MAC_BYTES) : null,
    }
  })
}

/** Feeds `stream` in the given pieces, draining next() after each, as a socket owner does. */
function decodeAll(d: FrameDecoder, pieces: Buffer[]): Frame[] {
  const out: Frame[] = []
  for (const p of pieces) {
    d.push(p)
    let f: Frame | null
    while ((f = d.next()) !== null) out.push(f)
  }
  return out
}

function expectSame(got: Frame[], sent: Sent[]): void {
  const fields = (f: Sent | Frame) => ({ kind: f.kind, type: f.type, id: f.id, length: f.body.length, mac: f.mac?.toString('hex') ?? null })
  expect(got.map(fields)).toEqual(sent.map(fields))
  for (let i = 0; i < sent.length; i++) if (!got[i].body.equals(sent[i].body)) expect.fail(`frame ${i}: body differs`)
}

describe('the wire frame decoder', () => {
  it('returns each frame of a stream once, whatever byte boundary the stream is split at', () => {
    const r = rng(13)
    const sent = randomFrames(r, 6, 300)
    const stream = Buffer.concat(sent.map(encode))
    for (let k = 0; k <= stream.length; k++) {
      const d = new FrameDecoder(1024)
      expectSame(decodeAll(d, [stream.subarray(0, k), stream.subarray(k)]), sent)
      expect(d.buffered).toBe(0)
    }
  })

  it('returns the same frames under 500 random chunkings, one byte at a time included', () => {
    const r = rng(14)
    for (let round = 0; round < 500; round++) {
      const maxPiece = r.pick([1, 7, 64, 65536])
      const sent = randomFrames(r, r.int(1, 8), maxPiece === 1 ? 300 : r.pick([0, 16, 4096, 70_000]))
      const stream = Buffer.concat(sent.map(encode))
      const pieces: Buffer[] = []
      for (let at = 0; at < stream.length; ) {
        const n = r.int(1, maxPiece)
        pieces.push(stream.subarray(at, at + n))
        at += n
      }
      expectSame(decodeAll(new FrameDecoder(70_000), pieces), sent)
    }
  })

  it('returns the same frames from chunks read into one reused buffer, no body pointing into it or into its spill', () => {
    const r = rng(15)
    for (let round = 0; round < 300; round++) {
      const maxPiece = r.pick([1, 7, 4096, 65536])
      const sent = randomFrames(r, r.int(1, 8), maxPiece === 1 ? 300 : r.pick([0, 16, 4096, 70_000]))
      const stream = Buffer.concat(sent.map(encode))
      const d = new FrameDecoder(70_000)
      const read = Buffer.alloc(65536) // the socket's onread buffer
      const got: Frame[] = []
      for (let at = 0; at < stream.length; ) {
        const n = Math.min(r.int(1, maxPiece), stream.length - at)
        stream.copy(read, 0, at, at + n)
        d.pushVolatile(read.subarray(0, n), (f) => got.push(f))
        read.fill(0xaa) // the next read overwrites it
        at += n
      }
      expectSame(got, sent) // bodies compared only now: every later read and spill has happened
      expect(d.buffered).toBe(0)
    }
  })

  it('returns the same frames when reads go straight into body targets whenever it offers them, and writes a target only with its own body', () => {
    const r = rng(17)
    let direct = 0
    for (let round = 0; round < 300; round++) {
      const maxPiece = r.pick([1, 7, 4096, 65536, 1 << 20])
      const sent = randomFrames(r, r.int(1, 8), r.pick([16, 4096, 70_000]))
      const stream = Buffer.concat(sent.map(encode))
      const d = new FrameDecoder(70_000)
      // Targets for about half the frames with a body, keyed by id; a guard byte after each catches an overrun.
      const targets = new Map<number, Buffer>()
      for (const f of sent) if (f.body.length > 0 && r.next() < 0.5) targets.set(f.id, Buffer.alloc(f.body.length + 1, 0xee))
      d.setBodyTarget((_kind, id, length) => {
        const t = targets.get(id)
        return t ? t.subarray(0, length) : null
      })
      const read = Buffer.alloc(65536)
      const got: Frame[] = []
      for (let at = 0; at < stream.length; ) {
        const region = d.directRegion()
        const n = Math.min(r.int(1, maxPiece), stream.length - at, region ? region.length : read.length)
        if (region) {
          expect(d.buffered).toBe(0)
          stream.copy(region, 0, at, at + n) // the socket read straight into the body
          d.receivedDirect(n)
          let f: Frame | null
          while ((f = d.next()) !== null) got.push(f)
          direct++
        } else {
          stream.copy(read, 0, at, at + n)
          d.pushVolatile(read.subarray(0, n), (f) => got.push(f))
          read.fill(0xaa)
        }
        at += n
      }
      expectSame(got, sent)
      for (const f of got) {
        const t = targets.get(f.id)
        if (t && f.body.length > 0) {
          expect(f.body.buffer).toBe(t.buffer) // delivered in its target
          expect(t[f.body.length]).toBe(0xee)
        }
      }
      expect(d.buffered).toBe(0)
      expect(d.directRegion()).toBeNull()
    }
    expect(direct).toBeGreaterThan(1000) // the rounds did read straight into targets
  })

  it('asks a "complete" target only once the whole body is in (no buffer sized by a claimed length), and offers no direct reads then', () => {
    const body = payload(rng(18), 200_000)
    const stream = encode({ kind: FrameKind.REQUEST, type: 1, id: 5, body, mac: Buffer.alloc(MAC_BYTES, 3) })
    const d = new FrameDecoder(1024 * 1024)
    const asked: number[] = []
    const into = Buffer.alloc(body.length)
    d.setBodyTarget((_k, _id, length) => (asked.push(length), into), 'complete')
    d.push(stream.subarray(0, 100_000))
    expect(d.next()).toBeNull()
    expect(asked).toEqual([])
    expect(d.directRegion()).toBeNull()
    d.push(stream.subarray(100_000))
    const f = d.next()
    expect(asked).toEqual([body.length])
    expect(f?.body).toBe(into)
    expect(into.equals(body)).toBe(true)
  })

  it('holds a frame sent one byte per chunk in blocks, not in a Buffer per byte', () => {
    const body = payload(rng(16), 1024 * 1024)
    const stream = encode({ kind: FrameKind.REQUEST, type: 1, id: 7, body, mac: Buffer.alloc(MAC_BYTES, 5) })
    const d = new FrameDecoder(1024 * 1024)
    const before = process.memoryUsage()
    let peak = 0
    let got: Frame | null = null
    for (let i = 0; i < stream.length; i++) {
      d.push(stream.subarray(i, i + 1))
      got = d.next() ?? got
      if (i % 65536 === 0) {
        const m = process.memoryUsage()
        peak = Math.max(peak, m.heapUsed + m.arrayBuffers - before.heapUsed - before.arrayBuffers)
      }
    }
    expect(got?.body.equals(body)).toBe(true)
    // the body itself is 1 MiB (+ at most one block); a view per byte would be ~100 MiB
    expect(peak).toBeLessThan(24 * 1024 * 1024)
  })

  it('refuses a header claiming 4 GiB as soon as the header is in, holding nothing', () => {
    const d = new FrameDecoder(1024 * 1024)
    const header = encodeHeader({ kind: FrameKind.REQUEST, id: 1 }, false)
    header.writeUInt32BE(0xffffffff, 16)
    d.push(header)
    let err: unknown
    try {
      d.next()
    } catch (e) {
      err = e
    }
    expect((err as VvfsError).code).toBe('FRAME_TOO_LARGE')
    expect(d.buffered).toBe(0)
    // poisoned: what follows is never read as frames
    expect(() => d.push(encode({ kind: FrameKind.PING, type: 0, id: 1, body: Buffer.alloc(0), mac: null }))).toThrow(VvfsError)
  })

  it('lets its owner raise the limit between two frames of one chunk', () => {
    const small = { kind: FrameKind.PROOF, type: 0, id: 0, body: Buffer.alloc(32, 1), mac: null }
    const big = { kind: FrameKind.REQUEST, type: 3, id: 9, body: Buffer.alloc(5000, 2), mac: Buffer.alloc(MAC_BYTES, 3) }
    const d = new FrameDecoder(256)
    d.push(Buffer.concat([encode(small), encode(big)]))
    expectSame([d.next() as Frame], [small])
    d.setMaxBody(8192)
    expectSame([d.next() as Frame], [big])
    expect(d.next()).toBeNull()
  })

  it('turns random garbage into coded errors or frames, never another exception, never more than one frame held', () => {
    const r = rng(15)
    const limit = 4096
    const codes = new Set<string>()
    for (let round = 0; round < 3000; round++) {
      const parts: Buffer[] = []
      for (let i = r.int(1, 6); i > 0; i--) {
        const k = r.next()
        if (k < 0.4) parts.push(payload(r, r.int(1, 200)))
        else {
          // near-frames: a valid header with one field off, or a valid frame
          const f = randomFrames(r, 1, 300)[0]
          const b = encode(f)
          if (k < 0.8) b[r.int(0, HEADER_BYTES - 1)] ^= 1 << r.int(0, 7)
          parts.push(b)
        }
      }
      const stream = Buffer.concat(parts)
      const d = new FrameDecoder(limit)
      try {
        for (let at = 0; at < stream.length; ) {
          const n = r.int(1, 128)
          d.push(stream.subarray(at, at + n))
          at += n
          while (d.next() !== null);
          expect(d.buffered).toBeLessThanOrEqual(HEADER_BYTES + limit + MAC_BYTES)
        }
      } catch (err) {
        expect(err).toBeInstanceOf(VvfsError)
        codes.add((err as VvfsError).code)
      }
    }
    expect([...codes].sort()).toEqual(['FRAME_TOO_LARGE', 'PEER_PROTOCOL'])
  })

  it('knows its magic', () => {
    expect(encodeHeader({ kind: FrameKind.PING }, false).readUInt32BE(0)).toBe(FRAME_MAGIC)
  })
})
