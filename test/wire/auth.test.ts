import { randomBytes } from 'node:crypto'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { FrameMac, loadPeerKey, newNonce, PeerKey, proofMatches, proofOf, type SessionContext } from '../../lib/wire/auth.js'
import { encodeHeader, FrameKind } from '../../lib/wire/frame.js'
import { parseHostPort } from '../../lib/wire/server.js'
import { codeOf } from '../helpers/errors.js'

const dir = mkdtempSync(join(tmpdir(), 'vvfs-wire-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function keyFile(name: string, content: string | Buffer, mode: number): string {
  const path = join(dir, name)
  writeFileSync(path, content)
  chmodSync(path, mode)
  return path
}

const context = (): SessionContext => ({ version: 1, service: 'storage', clientNonce: newNonce(), serverNonce: newNonce() })

describe('the peer key file', () => {
  const secret = randomBytes(32).toString('base64')

  it('is read without its trailing newline', async () => {
    const a = await loadPeerKey(keyFile('a', secret + '\n', 0o600))
    const b = await loadPeerKey(keyFile('b', secret, 0o400))
    expect(a.id).toBe(b.id)
    expect(a.id).not.toContain(secret.slice(0, 6))
  })

  it('is refused when others may read it, too short, or missing', async () => {
    expect(await codeOf(loadPeerKey(keyFile('shared', secret, 0o644)))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(loadPeerKey(keyFile('group', secret, 0o640)))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(loadPeerKey(keyFile('short', 'hunter2\n', 0o600)))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(loadPeerKey(keyFile('empty', '\n', 0o600)))).toBe('INVALID_ARGUMENT')
    expect(await codeOf(loadPeerKey(join(dir, 'absent')))).toBe('INVALID_ARGUMENT')
  })
})

describe('the challenge–response proofs', () => {
  it('match only for the same key, role and session', () => {
    const key = new PeerKey(randomBytes(32))
    const c = context()
    const proof = proofOf(key, 'client', c)
    expect(proofMatches(key, 'client', c, proof)).toBe(true)
    expect(proofMatches(new PeerKey(randomBytes(32)), 'client', c, proof)).toBe(false)
    expect(proofMatches(key, 'server', c, proof)).toBe(false) // a server's proof is never a client's
    expect(proofMatches(key, 'client', { ...c, serverNonce: newNonce() }, proof)).toBe(false) // nor another session's
    expect(proofMatches(key, 'client', { ...c, service: 'replication' }, proof)).toBe(false)
    expect(proofMatches(key, 'client', c, proof.subarray(0, 16))).toBe(false)
  })
})

describe('the MAC of every frame', () => {
  const key = new PeerKey(randomBytes(32))
  const header = encodeHeader({ kind: FrameKind.REQUEST, type: 1, id: 1, body: Buffer.from('write') }, true)
  const body = Buffer.from('write')

  it('refuses a replayed, altered or other-direction frame', () => {
    const c = context()
    const send = new FrameMac(key, 'client→server', c)
    const mac = send.sign(header, body)
    expect(new FrameMac(key, 'client→server', c).verify(header, body, mac)).toBe(true)

    const receive = new FrameMac(key, 'client→server', c)
    expect(receive.verify(header, body, mac)).toBe(true)
    expect(receive.verify(header, body, mac)).toBe(false) // the same frame again: the counter moved on
    expect(new FrameMac(key, 'server→client', c).verify(header, body, mac)).toBe(false)
    expect(new FrameMac(key, 'client→server', c).verify(header, Buffer.from('wrote'), mac)).toBe(false)
    const otherId = Buffer.from(header)
    otherId.writeUInt32BE(2, 12)
    expect(new FrameMac(key, 'client→server', c).verify(otherId, body, mac)).toBe(false)
    expect(new FrameMac(key, 'client→server', c).verify(header, body, null)).toBe(false)
  })
})

describe('the MAC of a body sent in pieces (a replication batch: header, lengths, records)', () => {
  it('is the MAC of the pieces joined, under every protocol version, however they are cut', () => {
    const key = new PeerKey(randomBytes(32))
    const body = randomBytes(5000)
    const header = encodeHeader({ kind: FrameKind.REQUEST, type: 1, id: 1, body }, true)
    for (const version of [1, 2, 3]) {
      const c = { ...context(), version }
      for (const cuts of [[], [0], [1, 2], [7, 16, 17, 4999], [2500]]) {
        const edges = [0, ...cuts, body.length]
        const cut = edges.slice(1).map((end, i) => body.subarray(edges[i], end))
        expect(Buffer.concat(cut).equals(body)).toBe(true)
        const mac = new FrameMac(key, 'client→server', c).sign(header, cut)
        expect(new FrameMac(key, 'client→server', c).verify(header, body, mac), `version ${version}, cuts ${cuts.join(',')}`).toBe(true)
      }
    }
  })
})

describe('ADDR:PORT of --listen and of peers', () => {
  it('takes an explicit address and port, and nothing less', () => {
    expect(parseHostPort('127.0.0.1:7000')).toEqual({ host: '127.0.0.1', port: 7000 })
    expect(parseHostPort('[fd00::5]:7000')).toEqual({ host: 'fd00::5', port: 7000 })
    expect(parseHostPort('storage-1.lan:0')).toEqual({ host: 'storage-1.lan', port: 0 })
    for (const bad of [':7000', '7000', '127.0.0.1', '127.0.0.1:70000', 'fd00::5:7000', '[fd00::5]', 'a b:1', '']) {
      expect(() => parseHostPort(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    }
  })
})
