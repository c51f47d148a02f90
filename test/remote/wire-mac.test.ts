/**
 * The peer wire's frame MACs: version 2's Poly1305 (five to fifteen times
 * cheaper than version 1's HMAC-SHA256 per byte, which the remote store's
 * sequential loads spent most of their CPU on) and version 3's GMAC (about
 * half of Poly1305 again), with the same guarantees; a peer that speaks
 * only an older version is still served with it.
 */
import { randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import {
  decodeChallenge,
  encodeHello,
  FrameMac,
  GMAC_VERSION,
  newNonce,
  PeerKey,
  POLY1305_VERSION,
  PROTOCOL_MAX,
  proofOf,
  type SessionContext,
} from '../../lib/wire/auth.js'
import { encodeHeader, FrameKind, MAC_BYTES } from '../../lib/wire/frame.js'
import { WireServer } from '../../lib/wire/server.js'
import { WireClient } from '../../lib/wire/client.js'
import { capturedLog, RawPeer } from '../wire/peers.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const context = (version: number): SessionContext => ({ version, service: 'storage', clientNonce: newNonce(), serverNonce: newNonce() })

describe('the frame MACs of protocol versions 2 (Poly1305) and 3 (GMAC)', () => {
  const key = new PeerKey(randomBytes(32))
  const body = randomBytes(128 * 1024)
  const header = encodeHeader({ kind: FrameKind.REQUEST, type: 4, id: 1, body }, true)

  it('is GMAC at best in this build', () => {
    expect(PROTOCOL_MAX).toBe(GMAC_VERSION)
    expect(GMAC_VERSION).toBe(POLY1305_VERSION + 1)
  })

  for (const version of [POLY1305_VERSION, GMAC_VERSION]) {
    it(`version ${version} refuses a replayed, altered, truncated or other-direction frame, and another version's MAC`, () => {
      const c = context(version)
      const mac = new FrameMac(key, 'client→server', c).sign(header, body)
      expect(mac.length).toBe(MAC_BYTES)
      expect(mac.subarray(16).equals(Buffer.alloc(16))).toBe(true) // a 16-byte tag in the 32-byte trailer

      const receive = new FrameMac(key, 'client→server', c)
      expect(receive.verify(header, body, mac)).toBe(true)
      expect(receive.verify(header, body, mac)).toBe(false) // the same frame again: the counter (the nonce) moved on
      expect(new FrameMac(key, 'server→client', c).verify(header, body, mac)).toBe(false)
      expect(new FrameMac(key, 'client→server', { ...c, serverNonce: newNonce() }).verify(header, body, mac)).toBe(false)
      for (const at of [0, 65_537, body.length - 1]) {
        const altered = Buffer.from(body)
        altered[at] ^= 0x80
        expect(new FrameMac(key, 'client→server', c).verify(header, altered, mac), `byte ${at}`).toBe(false)
      }
      expect(new FrameMac(key, 'client→server', c).verify(header, body.subarray(1), mac)).toBe(false)
      const otherId = Buffer.from(header)
      otherId.writeUInt32BE(2, 12)
      expect(new FrameMac(key, 'client→server', c).verify(otherId, body, mac)).toBe(false)
      expect(new FrameMac(key, 'client→server', c).verify(header, body, null)).toBe(false)
      for (const other of [1, 2, 3].filter((v) => v !== version)) {
        const o = { ...c, version: other }
        expect(new FrameMac(key, 'client→server', c).verify(header, body, new FrameMac(key, 'client→server', o).sign(header, body)), `version ${other}`).toBe(false)
      }
      expect(new FrameMac(new PeerKey(randomBytes(32)), 'client→server', c).verify(header, body, mac)).toBe(false)
    })
  }
})

describe('the protocol version a session uses', () => {
  async function echoServer(key: PeerKey): Promise<number> {
    const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: 'storage', log: capturedLog().log })
    server.handle(1, (b) => b)
    const { port } = await server.listen()
    cleanups.push(() => server.close())
    return port
  }

  it('is version 3 between two peers of this build: a client gets its answer', async () => {
    const key = new PeerKey(randomBytes(32))
    const port = await echoServer(key)
    const raw = await RawPeer.connect(port)
    cleanups.push(() => raw.destroy())
    expect((await raw.handshake(key, 'storage')).kind).toBe(FrameKind.READY)
    expect(raw.version).toBe(GMAC_VERSION)
    const client = new WireClient({ host: '127.0.0.1', port, key, service: 'storage', log: capturedLog().log })
    client.start()
    cleanups.push(() => client.close())
    const body = randomBytes(200_000)
    expect((await client.request(1, body)).equals(body)).toBe(true)
  })

  for (const [version, mac] of [[1, 'HMAC-SHA256'], [2, 'Poly1305']] as const) {
  it(`is version ${version} with a peer that speaks only up to version ${version} (${mac}), which is served as before`, async () => {
    const key = new PeerKey(randomBytes(32))
    const port = await echoServer(key)
    const raw = await RawPeer.connect(port)
    cleanups.push(() => raw.destroy())
    const nonce = newNonce()
    raw.send({ kind: FrameKind.HELLO, body: encodeHello({ minVersion: 1, maxVersion: version, service: 'storage', nonce }) })
    const c = decodeChallenge((await raw.nextFrame()).body)
    expect(c.version).toBe(version)
    const ctx: SessionContext = { version, service: 'storage', clientNonce: nonce, serverNonce: c.nonce }
    raw.send({ kind: FrameKind.PROOF, body: proofOf(key, 'client', ctx) })
    const send = new FrameMac(key, 'client→server', ctx)
    const receive = new FrameMac(key, 'server→client', ctx)
    const ready = await raw.nextFrame()
    expect(ready.kind).toBe(FrameKind.READY)
    expect(receive.verify(ready.header, ready.body, ready.mac)).toBe(true)
    const body = Buffer.from(`hello over version ${version}`)
    const header = encodeHeader({ kind: FrameKind.REQUEST, type: 1, id: 9, body }, true)
    raw.socket.write(Buffer.concat([header, body, send.sign(header, body)]))
    const reply = await raw.nextFrame()
    expect(reply).toMatchObject({ kind: FrameKind.REPLY, id: 9 })
    expect(reply.body.equals(body)).toBe(true)
    expect(receive.verify(reply.header, reply.body, reply.mac)).toBe(true)
  })
  }
})
