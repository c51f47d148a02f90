/**
 * The failover reports' peer clients (lib/replication/peer-clients.ts): one
 * per peer even when several reports ask at once, and none made after
 * close() — a client nobody closes keeps a stopped daemon's process alive.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { silentLogger } from '../../lib/log.js'
import { PeerClients } from '../../lib/replication/peer-clients.js'
import { freePort } from './daemons.js'

const dir = mkdtempSync(join(tmpdir(), 'vvfs-peer-clients-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const keyFile = join(dir, 'peer.key')
writeFileSync(keyFile, randomBytes(32).toString('hex'), { mode: 0o600 })

it('reports asking for one peer at once share one client', async () => {
  const clients = new PeerClients(silentLogger(), { deadlineMs: 1000 })
  const address = `127.0.0.1:${await freePort()}`
  const got = await Promise.all([clients.get(address, keyFile), clients.get(address, keyFile), clients.get(address, keyFile)])
  expect(new Set(got).size).toBe(1)
  expect(clients.size).toBe(1)
  await clients.close()
  expect(clients.size).toBe(0)
})

it('a report that was reading the key when close() ran makes no client', async () => {
  const clients = new PeerClients(silentLogger(), { deadlineMs: 1000 })
  const pending = clients.get(`127.0.0.1:${await freePort()}`, keyFile)
  await clients.close()
  await expect(pending).rejects.toMatchObject({ code: 'SHUTTING_DOWN' })
  expect(clients.size).toBe(0)
})
