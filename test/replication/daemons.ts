/**
 * Two vvfs daemons on this machine for replication tests: each its own
 * state directory, mount and peer-wire port on 127.0.0.1, one pre-shared
 * key file (0600). Cleanup is test/helpers/daemon.ts's (cleanupAll,
 * removeDir): mounts and processes go even when a test fails.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import { removeDir, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js'

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

export interface Pair {
  dir: string
  keyFile: string
  primary: DaemonHandle
  secondary: DaemonHandle
  primaryPort: number
  secondaryPort: number
  secondaryAddress: string
}

/** Removes a pair's directories (its daemons stopped first: cleanupAll); nothing when the test never started one. */
export function removePairDirs(p: Pair | undefined): void {
  if (p) for (const d of [p.primary.dir, p.secondary.dir, p.dir]) removeDir(d)
}

/** Two daemons with --listen/--peer-key, one storage system each; `powerLoss`: crash() is a power cut (test/helpers/powercut). */
export async function startPair(opts: { capacity?: string; env?: NodeJS.ProcessEnv; powerLoss?: boolean } = {}): Promise<Pair> {
  const dir = tempDir('vvfs-repl-')
  const keyFile = join(dir, 'peer.key')
  writeFileSync(keyFile, randomBytes(32).toString('hex'), { mode: 0o600 })
  const primaryPort = await freePort()
  const secondaryPort = await freePort()
  const primary = await startDaemon({ dir: tempDir('vvfs-repl-a-'), extraArgs: ['--listen', `127.0.0.1:${primaryPort}`, '--peer-key', keyFile], env: opts.env, powerLoss: opts.powerLoss })
  const secondary = await startDaemon({ dir: tempDir('vvfs-repl-b-'), extraArgs: ['--listen', `127.0.0.1:${secondaryPort}`, '--peer-key', keyFile], env: opts.env, powerLoss: opts.powerLoss })
  await primary.client.call('storage.add', { name: 'a1', capacity: opts.capacity ?? '1G' })
  await secondary.client.call('storage.add', { name: 'b1', capacity: opts.capacity ?? '1G' })
  return { dir, keyFile, primary, secondary, primaryPort, secondaryPort, secondaryAddress: `127.0.0.1:${secondaryPort}` }
}

export async function pairStatus(d: DaemonHandle, pair: string, role: 'primary' | 'secondary'): Promise<ReplicationInfo | undefined> {
  const r = await d.client.call('replicate.list', {})
  return r.pairs.find((p) => p.pair === pair && p.role === role)
}

/** Waits until `ok` holds for the pair's status on `d`; fails with the last status and the daemon's log tail. */
export async function waitForPair(d: DaemonHandle, pair: string, role: 'primary' | 'secondary', ok: (s: ReplicationInfo) => boolean, timeoutMs = 30_000): Promise<ReplicationInfo> {
  const end = Date.now() + timeoutMs
  let last: ReplicationInfo | undefined
  for (;;) {
    last = await pairStatus(d, pair, role).catch(() => undefined)
    if (last && ok(last)) return last
    if (Date.now() > end) throw new Error(`pair ${pair} (${role}) did not reach the expected state in ${timeoutMs} ms: ${JSON.stringify(last)}\n${d.log().split('\n').slice(-40).join('\n')}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** The primary caught up: everything written is applied, the secondary consistent, lag 0. */
export function caughtUp(s: ReplicationInfo): boolean {
  return s.state === 'replicating' && s.link === 'up' && s.consistent && s.lastApplied === s.lastWritten && s.lag.entries === 0
}

export function readImage(file: string): Buffer {
  return readFileSync(file)
}
