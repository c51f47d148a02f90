/**
 * Bad peers against a daemon's replication listener (issue 13, "Must be
 * shown"): a wrong key, garbage, a frame claiming 4 GiB (before and after
 * authentication), a replayed old sequence number, a sequence number from
 * the future, an entry for an unknown volume and for an unknown pair. Each
 * is refused and logged, nothing is applied (the secondary image stays the
 * primary's), and both daemons keep serving the pair.
 */
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cleanupAll } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { decodeAck, encodeEntries, ReplicationRequest, REPLICATION_SERVICE } from '../../lib/replication/messages.js'
import type { JournalEntry } from '../../lib/replication/entry.js'
import { loadPeerKey, PeerKey } from '../../lib/wire/auth.js'
import { encodeHeader, FrameKind } from '../../lib/wire/frame.js'
import { RawPeer, until } from '../wire/peers.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair

beforeAll(async () => {
  p = await startPair()
  await p.primary.client.call('volume.create', { name: 'db', size: 4 * MiB })
  writeAt(p.primary.file('db'), 0, Buffer.alloc(8192, 7))
  await p.primary.client.call('replicate.start', { volume: 'db', to: p.secondaryAddress, as: 'copy', peerKey: p.keyFile })
  writeAt(p.primary.file('db'), MiB, Buffer.alloc(4096, 8))
  await waitForPair(p.primary, 'copy', 'primary', (s) => caughtUp(s) && s.lastWritten > 0)
}, 60_000)

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

/** The secondary daemon's log lines with this event (JSON lines). */
function logged(event: string): { code?: string; reason?: string; pair?: string }[] {
  return p.secondary
    .log()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { event?: string; code?: string; reason?: string; pair?: string })
    .filter((l) => l.event === event)
}

function sameImages(): void {
  expect(Buffer.compare(readFileSync(p.secondary.file('copy')), readFileSync(p.primary.file('db')))).toBe(0)
}

async function authenticated(): Promise<RawPeer> {
  const peer = await RawPeer.connect(p.secondaryPort)
  const ready = await peer.handshake(await loadPeerKey(p.keyFile), REPLICATION_SERVICE)
  expect(ready.kind).toBe(FrameKind.READY)
  return peer
}

let nextId = 1
async function request(peer: RawPeer, type: number, body: Buffer) {
  const id = nextId++
  peer.send({ kind: FrameKind.REQUEST, type, id, body })
  const f = await peer.nextFrame()
  expect(f.id).toBe(id)
  return f
}

const write = (seq: number, volume: number, fill: number): JournalEntry => ({ seq, epoch: 1, volume, kind: 'write', offset: 0, length: 4096, data: Buffer.alloc(4096, fill) })

describe('the replication listener facing bad peers', { timeout: 60_000 }, () => {
  it('drops a wrong key and garbage, logging why', async () => {
    const wrong = await RawPeer.connect(p.secondaryPort)
    await wrong.handshake(new PeerKey(randomBytes(32)), REPLICATION_SERVICE).catch(() => undefined)
    await wrong.waitClosed()
    const garbage = connect({ host: '127.0.0.1', port: p.secondaryPort })
    garbage.on('error', () => {})
    garbage.resume()
    await once(garbage, 'connect')
    garbage.write(randomBytes(4096))
    await once(garbage, 'close')
    await until(() => logged('wire.peer.dropped').some((l) => l.code === 'PEER_AUTH_FAILED'), 5000, 'the wrong key logged')
    await until(() => logged('wire.peer.dropped').length >= 2, 5000, 'the garbage logged')
    sameImages()
  })

  it('drops a frame claiming 4 GiB, before and after authentication', async () => {
    const before = await RawPeer.connect(p.secondaryPort)
    const h = encodeHeader({ kind: FrameKind.HELLO }, false)
    h.writeUInt32BE(0xffffffff, 16)
    before.socket.write(h)
    await before.waitClosed()
    const after = await authenticated()
    const big = encodeHeader({ kind: FrameKind.REQUEST, type: ReplicationRequest.ENTRIES, id: 1 }, true)
    big.writeUInt32BE(0xffffffff, 16)
    after.socket.write(big)
    await after.waitClosed()
    await until(() => logged('wire.peer.dropped').filter((l) => l.code === 'FRAME_TOO_LARGE').length >= 2, 5000, 'both oversized frames logged')
    sameImages()
  })

  it('acknowledges a replayed old number without applying it, and refuses a gap, an unknown volume and an unknown pair', async () => {
    const status = await waitForPair(p.secondary, 'copy', 'secondary', (s) => s.consistent)
    const applied = status.lastApplied
    const peer = await authenticated()
    const sender = { epoch: 1, home: 'relay' }
    // Replayed: number 1 again, with other data.
    const replay = decodeAck((await request(peer, ReplicationRequest.ENTRIES, encodeEntries({ pair: 'copy', sender, entries: [write(1, 1, 0xee)] }))).body)
    expect(replay).toMatchObject({ applied: 0, duplicates: 1, refused: null, appliedSeq: applied })
    // From the future: a gap.
    const gap = decodeAck((await request(peer, ReplicationRequest.ENTRIES, encodeEntries({ pair: 'copy', sender, entries: [write(applied + 5, 1, 0xee)] }))).body)
    expect(gap).toMatchObject({ applied: 0, refused: { code: 'REPLICATION_GAP', details: { reason: 'gap' } } })
    // The next number, but for a volume that is not in the pair.
    const unknown = decodeAck((await request(peer, ReplicationRequest.ENTRIES, encodeEntries({ pair: 'copy', sender, entries: [write(applied + 1, 99, 0xee)] }))).body)
    expect(unknown).toMatchObject({ applied: 0, refused: { code: 'VOLUME_NOT_FOUND', details: { reason: 'unknown-volume' } } })
    // A pair that does not exist here: an ERROR frame, the connection stays.
    const nopair = await request(peer, ReplicationRequest.ENTRIES, encodeEntries({ pair: 'nope', sender, entries: [write(1, 1, 0xee)] }))
    expect(nopair.kind).toBe(FrameKind.ERROR)
    expect(JSON.parse(nopair.body.toString('utf8'))).toMatchObject({ code: 'VOLUME_NOT_FOUND' })
    expect(peer.closed).toBe(false)
    peer.destroy()
    const refused = logged('replication.refused')
    expect(refused.map((l) => l.code)).toEqual(expect.arrayContaining(['REPLICATION_GAP', 'VOLUME_NOT_FOUND']))
    expect((await waitForPair(p.secondary, 'copy', 'secondary', () => true)).lastApplied).toBe(applied)
    sameImages()
  })

  it('both daemons still serve the pair', async () => {
    writeAt(p.primary.file('db'), 2 * MiB, Buffer.alloc(4096, 9))
    await waitForPair(p.primary, 'copy', 'primary', caughtUp)
    sameImages()
  })
})
