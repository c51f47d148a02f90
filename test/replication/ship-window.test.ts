/**
 * The primary's shipping loop (lib/replication/primary.ts, ship()): a
 * backlog — the catch-up after an outage, here a pause — goes out with two
 * ENTRIES batches in flight, never more, and the secondary still ends with
 * the primary's image; a live stream of small batches waits for each answer
 * (one in flight). Stop-and-wait, the secondary sat idle while the primary
 * read and sent each next batch (BENCH_ONLY=outage, 2026-12-06).
 */
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { Applier, type SecondaryState, type TargetChange } from '../../lib/replication/applier.js'
import { serveReplication } from '../../lib/replication/endpoint.js'
import { genesis } from '../../lib/replication/epoch.js'
import { REPLICATION_SERVICE, ReplicationRequest } from '../../lib/replication/messages.js'
import { PrimaryPair } from '../../lib/replication/primary.js'
import { PeerKey } from '../../lib/wire/auth.js'
import { WireServer, type WireHandler } from '../../lib/wire/server.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { memorySystems, openStack } from '../helpers/stack.js'
import { capturedLog } from '../wire/peers.js'
import { MemoryApplyTarget } from './model-target.js'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined)
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(what: string, ok: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

it('ships a backlog with two batches in flight, never more, a live stream with one, and the secondary ends with the primary\'s image', async () => {
  const dir = tempDir('vvfs-ship-window-')
  cleanups.push(async () => removeDir(dir))
  const log = capturedLog().log
  const key = new PeerKey(randomBytes(32))

  // The secondary: an applier over the in-memory target, each batch taking 20 ms to apply — time enough, even on a
  // loaded machine, for the primary to read and send the next batch of a backlog meanwhile.
  const server = new WireServer({ host: '127.0.0.1', port: 0, key, service: REPLICATION_SERVICE, log })
  let inFlight = 0
  let most = 0
  const handle = server.handle.bind(server)
  server.handle = (type: number, handler: WireHandler) =>
    handle(type, type !== ReplicationRequest.ENTRIES ? handler : async (body, ctx) => {
      most = Math.max(most, ++inFlight)
      try {
        return await handler(body, ctx)
      } finally {
        inFlight--
      }
    })
  const target = new MemoryApplyTarget()
  const apply = target.apply.bind(target)
  target.apply = async (changes: TargetChange[], state: SecondaryState) => {
    await sleep(20)
    return apply(changes, state)
  }
  let applier: Applier | undefined
  serveReplication(server, () => applier, log, async (h) => (applier ??= await Applier.open(target, { volumes: h.volumes.map((v) => v.no), chain: h.chain })))
  const { port } = await server.listen()
  cleanups.push(() => server.close())

  // The primary: a volume of 8 extents whose journal layer the pair attaches to.
  const s = await openStack({ dir, systems: 1, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE, systemsFrom: memorySystems }, true)
  cleanups.push(() => s.close())
  const pair = await PrimaryPair.open(
    {
      pair: 'p',
      group: null,
      members: [{ volNo: 1, name: 'v', size: () => s.volume.size, layer: s.layers.journal, allocatedExtents: () => [] }],
      journalDir: join(dir, 'journal'),
      host: '127.0.0.1',
      port,
      key,
      rate: 0,
      chain: [genesis('s1')],
      log,
      onState: () => undefined,
    },
    true,
  )
  await pair.replay()
  pair.start()
  cleanups.push(() => pair.close())
  await until('the initial sync', () => pair.status().state === 'replicating' && pair.status().consistent)

  const block = (n: number) => Buffer.alloc(CHUNK_SIZE, n % 251)
  const blocks = (8 * EXTENT_SIZE) / CHUNK_SIZE
  // Live: one write at a time, each shipped as it comes.
  for (let i = 0; i < 40; i++) {
    await s.volume.write(((i * 37) % blocks) * CHUNK_SIZE, block(i))
    await sleep(2)
  }
  await until('the live writes applied', () => pair.status().lastApplied === pair.status().lastWritten)
  expect(most).toBe(1)

  // A backlog of about 4 MiB of entries (four messages and more) while paused.
  pair.pause()
  for (let i = 0; i < 1024; i += 16) await Promise.all(Array.from({ length: 16 }, (_, j) => s.volume.write((((i + j) * 13) % blocks) * CHUNK_SIZE, block(i + j + 1))))
  pair.resume()
  await until('the backlog applied', () => pair.status().lastApplied === pair.status().lastWritten, 60_000)
  expect(most).toBe(2)

  const primary = Buffer.alloc(8 * EXTENT_SIZE)
  await s.volume.read(0, primary.length, primary)
  await until('the last batch durable on the secondary', () => target.image(1)?.equals(primary) ?? false)
})
