import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { readFileSync } from 'node:fs'
import { afterEach, describe, expect, it } from 'vitest'
import { PeerKey } from '../../lib/wire/auth.js'
import { encodeHeader, FrameKind } from '../../lib/wire/frame.js'
import { Op, STORAGE_MAX_BODY, STORAGE_SERVICE } from '../../lib/storage/remote/protocol.js'
import { RawPeer, until } from '../wire/peers.js'
import { chunkOf, cleanup, freePort, newKey, openStore, spawnServer, startServer, tempDir } from './servers.js'
import type { RemoteChunkStore } from '../../lib/storage/remote/client.js'

afterEach(cleanup)

/** The relay's store still writes and reads back. */
async function stillServes(store: RemoteChunkStore, pca: number): Promise<void> {
  await store.apply({ writes: [{ pca, data: chunkOf(pca) }] })
  expect((await store.readMany([pca]))[0]?.equals(chunkOf(pca))).toBe(true)
}

async function rawSocket(port: number): Promise<Socket> {
  const s = connect({ host: '127.0.0.1', port })
  s.on('error', () => {})
  s.resume() // reads (and discards) what the server says, so its FIN is seen
  await once(s, 'connect')
  return s
}

describe('a storage server facing bad peers keeps serving its relay', { timeout: 20_000 }, () => {
  it('refuses a wrong key (the relay side sees an I/O error at once, the server drops it), then serves the right one', async () => {
    const { key } = await newKey()
    const srv = await startServer(key)
    const relay = openStore(key, srv.port)
    await stillServes(relay, 1)
    const wrong = openStore(new PeerKey(randomBytes(32)), srv.port, { deadlineMs: 3000 })
    const t0 = Date.now()
    const err = await wrong.readMany([1]).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'IO_ERROR', details: { cause: 'PEER_AUTH_FAILED' } })
    expect(Date.now() - t0).toBeLessThan(2000)
    await until(() => srv.logs.events('wire.peer.dropped').some((l) => l.code === 'PEER_AUTH_FAILED'), 3000, 'the server to log the wrong key')
    await stillServes(relay, 2)
  })

  it('drops garbage, a frame over the maximum before and after authentication, and a request before IDENTITY is refused', async () => {
    const { key } = await newKey()
    const srv = await startServer(key)
    const relay = openStore(key, srv.port)
    await stillServes(relay, 1)

    const garbage = await rawSocket(srv.port)
    garbage.write(randomBytes(4096))
    await once(garbage, 'close')

    const bigBeforeAuth = await RawPeer.connect(srv.port)
    const header = encodeHeader({ kind: FrameKind.HELLO }, false)
    header.writeUInt32BE(1 << 20, 16)
    bigBeforeAuth.socket.write(header)
    await bigBeforeAuth.waitClosed()

    const big = await RawPeer.connect(srv.port)
    const ready = await big.handshake(key, STORAGE_SERVICE)
    expect(ready.kind).toBe(FrameKind.READY)
    // A REQUEST whose header announces one byte more than the maximum: dropped at the header, before any body byte.
    const h = encodeHeader({ kind: FrameKind.REQUEST, type: Op.APPLY, id: 1 }, true)
    h.writeUInt32BE(STORAGE_MAX_BODY + 1, 16)
    big.socket.write(h)
    await big.waitClosed()

    const early = await RawPeer.connect(srv.port)
    await early.handshake(key, STORAGE_SERVICE)
    early.send({ kind: FrameKind.REQUEST, type: Op.READ_MANY, id: 1, body: Buffer.from([0, 0, 0, 0]) })
    const answer = await early.nextFrame()
    expect(answer.kind).toBe(FrameKind.ERROR)
    expect(JSON.parse(answer.body.toString()).code).toBe('INVALID_REQUEST')
    early.destroy()

    const codes = srv.logs.events('wire.peer.dropped').map((l) => l.code)
    expect(codes).toContain('PEER_PROTOCOL')
    expect(codes.filter((c) => c === 'FRAME_TOO_LARGE').length).toBe(2)
    await stillServes(relay, 2)
  })

  it('drops a half-open peer (no handshake) and a silent authenticated one at their deadlines', async () => {
    const { key } = await newKey()
    const srv = await startServer(key, { limits: { handshakeDeadlineMs: 300, idleTimeoutMs: 600 } })
    const relay = openStore(key, srv.port)
    await stillServes(relay, 1)
    const half = await rawSocket(srv.port)
    const silent = await RawPeer.connect(srv.port)
    await silent.handshake(key, STORAGE_SERVICE)
    const t0 = Date.now()
    await once(half, 'close')
    await silent.waitClosed()
    expect(Date.now() - t0).toBeLessThan(2000)
    const codes = srv.logs.events('wire.peer.dropped').map((l) => l.code)
    expect(codes.filter((c) => c === 'TIMEOUT').length).toBe(2)
    // The relay pings every third of the idle timeout, so it is never taken for silent.
    await stillServes(relay, 2)
    expect(relay.link.state).toBe('ready')
  })

  it('200 idle connections: at most the pending cap are held, each newcomer past it dropping the oldest; the relay is served throughout', async () => {
    const { key } = await newKey()
    const srv = await startServer(key, { limits: { handshakeDeadlineMs: 1000 } })
    const relay = openStore(key, srv.port)
    await stillServes(relay, 1)
    const sockets = await Promise.all(Array.from({ length: 200 }, () => rawSocket(srv.port)))
    let closed = 0
    for (const s of sockets) s.on('close', () => closed++)
    await until(() => closed >= 200 - 32, 3000, 'the connections over the cap to be dropped')
    expect(srv.server.stats.pending).toBeLessThanOrEqual(32)
    await stillServes(relay, 2)
    await until(() => closed === 200, 3000, 'the idle ones to be dropped at the handshake deadline')
    expect(srv.server.stats.pending).toBe(0)
    expect(srv.server.stats.authenticated).toBe(1)
    await stillServes(relay, 3)
  })

  it('memory stays bounded: a server process facing rounds of 200 idle connections, garbage and frames claiming more than the maximum grows its peak RSS by less than 64 MiB', async () => {
    const { key, file } = await newKey()
    const port = await freePort()
    const srv = await spawnServer({ dir: `${await tempDir()}/server`, port, keyFile: file })
    const relay = openStore(key, port)
    for (let pca = 0; pca < 64; pca++) await stillServes(relay, pca) // warm: the store open, the relay's path taken
    const before = memoryOf(srv.proc.pid!)
    for (let round = 0; round < 3; round++) {
      // Authenticated first: the flood below fills the handshake cap, and each connection past it drops the oldest
      // (so the garbage and the over-size claims below are read and dropped by the decoder, not at accept).
      const authed = await RawPeer.connect(port)
      await authed.handshake(key, STORAGE_SERVICE)
      const sockets = await Promise.all(Array.from({ length: 200 }, () => rawSocket(port)))
      const garbage = await Promise.all(Array.from({ length: 20 }, () => rawSocket(port)))
      for (const s of garbage) s.write(randomBytes(64 * 1024))
      // Headers claiming a body past the maximum, before authentication and after it.
      const claims = await Promise.all(Array.from({ length: 10 }, () => RawPeer.connect(port)))
      for (const c of claims) {
        const h = encodeHeader({ kind: FrameKind.HELLO }, false)
        h.writeUInt32BE(0xffffffff, 16)
        c.socket.write(h)
      }
      const h = encodeHeader({ kind: FrameKind.REQUEST, type: Op.APPLY, id: 1 }, true)
      h.writeUInt32BE(0xffffffff, 16)
      authed.socket.write(h)
      await stillServes(relay, 100 + round)
      const all = [...sockets, ...garbage, ...claims.map((c) => c.socket), authed.socket]
      await until(() => all.every((s) => s.destroyed || s.closed), 10_000, 'every bad peer to be dropped')
    }
    await stillServes(relay, 200)
    const after = memoryOf(srv.proc.pid!)
    console.log(`storage server under bad peers: VmRSS ${mib(before.rss)} → ${mib(after.rss)} MiB, VmHWM ${mib(before.hwm)} → ${mib(after.hwm)} MiB`)
    expect(after.hwm - before.rss).toBeLessThan(64 * 1024 * 1024)
    expect(after.rss - before.rss).toBeLessThan(64 * 1024 * 1024)
  })
})

/** A process's resident set now and at its peak, from /proc/PID/status (bytes). */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)![1]) * 1024
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') }
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1)
}
