/**
 * Replies received straight into the caller's buffer (WireClient.request's
 * `replyInto`, FrameDecoder.setBodyTarget): what the remote store's extent
 * reads use instead of a new buffer per reply, and that a reply coming after
 * its deadline never writes into a buffer its caller has taken back.
 */
import { randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { PeerKey } from '../../lib/wire/auth.js'
import { WireClient } from '../../lib/wire/client.js'
import { BufferPool, sizeClass } from '../../lib/buffer-pool.js'
import { WireServer } from '../../lib/wire/server.js'
import { codeOf } from '../helpers/errors.js'
import { capturedLog, Tap } from '../wire/peers.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const ECHO = 1
const LATE = 2

async function pair(): Promise<{ client: WireClient; release: () => void }> {
  const key = new PeerKey(randomBytes(32))
  const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: 'storage', log: capturedLog().log })
  let release = () => {}
  server.handle(ECHO, (b) => Buffer.from(b))
  server.handle(LATE, (b) => new Promise<Buffer>((resolve) => (release = () => resolve(Buffer.from(b)))))
  const { port } = await server.listen()
  cleanups.push(() => server.close())
  const client = new WireClient({ host: '127.0.0.1', port, key, service: 'storage', log: capturedLog().log, maxBodyBytes: 2 * 1024 * 1024 })
  client.start()
  cleanups.push(() => client.close())
  return { client, release: () => release() }
}

describe('a reply received into the caller’s buffer', () => {
  it('is that buffer, filled, when the lengths match (a 1 MiB body spanning many TCP reads); a reply of another length gets its own', async () => {
    const { client } = await pair()
    const body = randomBytes(1024 * 1024)
    const into = Buffer.alloc(body.length)
    const reply = await client.request(ECHO, body, { replyInto: into })
    expect(reply).toBe(into)
    expect(into.equals(body)).toBe(true)
    const other = Buffer.alloc(10)
    const short = await client.request(ECHO, Buffer.from('abc'), { replyInto: other })
    expect(short).not.toBe(other)
    expect(short.toString()).toBe('abc')
    expect(other.equals(Buffer.alloc(10))).toBe(true)
  })

  it('is left alone by a reply that comes after the request’s deadline', async () => {
    const { client, release } = await pair()
    const into = Buffer.alloc(64 * 1024)
    expect(await codeOf(client.request(LATE, randomBytes(into.length), { replyInto: into, deadlineMs: 200 }))).toBe('TIMEOUT')
    release()
    expect((await client.request(ECHO, Buffer.from('after'))).toString()).toBe('after') // the late reply has come and gone
    expect(into.equals(Buffer.alloc(into.length))).toBe(true)
  })
})

describe('a reply body read from the socket straight into the caller’s buffer', () => {
  const BIG = 3

  /** A client whose server answers BIG with 1 MiB of 0x11, through a tap that can hold the reply back; after a first exchange. */
  async function tapped(): Promise<{ client: WireClient; tap: Tap }> {
    const key = new PeerKey(randomBytes(32))
    const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: 'storage', log: capturedLog().log })
    server.handle(ECHO, (b) => Buffer.from(b))
    server.handle(BIG, () => Buffer.alloc(1024 * 1024, 0x11))
    const { port } = await server.listen()
    cleanups.push(() => server.close())
    const tap = await Tap.start(port)
    cleanups.push(() => tap.close())
    const client = new WireClient({ host: '127.0.0.1', port: tap.port, key, service: 'storage', log: capturedLog().log, maxBodyBytes: 2 * 1024 * 1024 })
    client.start()
    cleanups.push(() => client.close())
    expect((await client.request(ECHO, Buffer.from('warm'))).toString()).toBe('warm')
    return { client, tap }
  }

  /** Lets the held rest of the reply through and checks that none of it lands in `into` (zeroed by the caller). */
  async function releaseAndCheck(tap: Tap, into: Buffer): Promise<void> {
    expect(tap.releaseToClient()).toBeGreaterThan(512 * 1024)
    await new Promise((r) => setTimeout(r, 300))
    expect(into.equals(Buffer.alloc(into.length))).toBe(true)
  }

  it('stops at the request’s deadline: once the caller is told TIMEOUT not one more byte lands in its buffer, and the client reconnects', async () => {
    const { client, tap } = await tapped()
    // A quarter of the reply arrives, the rest waits in the tap past the deadline.
    tap.holdToClientAfter(256 * 1024)
    const into = Buffer.alloc(1024 * 1024)
    expect(await codeOf(client.request(BIG, Buffer.alloc(0), { replyInto: into, deadlineMs: 300 }))).toBe('TIMEOUT')
    expect(into.includes(0x11)).toBe(true) // it was being received into the buffer
    into.fill(0) // the caller has taken its buffer back
    await releaseAndCheck(tap, into)
    expect((await client.request(ECHO, Buffer.from('after'))).toString()).toBe('after')
  })

  it('stops when the connection is dropped for another reason (the client closed) while the body arrives', async () => {
    const { client, tap } = await tapped()
    tap.holdToClientAfter(256 * 1024)
    const into = Buffer.alloc(1024 * 1024)
    const pending = codeOf(client.request(BIG, Buffer.alloc(0), { replyInto: into, deadlineMs: 5000 }))
    const end = Date.now() + 3000
    while (!into.includes(0x11) && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
    await client.close()
    expect(['PEER_UNAVAILABLE', 'SHUTTING_DOWN']).toContain(await pending)
    into.fill(0)
    await releaseAndCheck(tap, into)
  })
})

describe('a server that receives request bodies into reused buffers (WireServerOptions.requestBodies)', () => {
  it('gives each back once its handler settled and reuses it for the next body of that length; small bodies stay its own', async () => {
    const key = new PeerKey(randomBytes(32))
    const pool = new BufferPool(64 * 1024, 4 * 1024 * 1024)
    const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: 'storage', log: capturedLog().log, requestBodies: pool })
    const seen: Buffer[] = []
    server.handle(ECHO, (b) => {
      seen.push(b)
      return Buffer.from(b.subarray(0, 16))
    })
    const { port } = await server.listen()
    cleanups.push(() => server.close())
    const client = new WireClient({ host: '127.0.0.1', port, key, service: 'storage', log: capturedLog().log })
    client.start()
    cleanups.push(() => client.close())
    const a = randomBytes(200_000)
    const b = randomBytes(200_000)
    expect((await client.request(ECHO, a)).equals(a.subarray(0, 16))).toBe(true)
    expect((await client.request(ECHO, b)).equals(b.subarray(0, 16))).toBe(true)
    // The same memory, given back after the first handler settled: a view of the size class's buffer.
    expect(seen[1]!.buffer).toBe(seen[0]!.buffer)
    expect(pool.held).toBe(sizeClass(200_000))
    await client.request(ECHO, Buffer.from('small'))
    expect(pool.held).toBe(sizeClass(200_000))
  })
})
