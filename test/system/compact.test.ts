/**
 * Issue 17, target 5: a store holds ≤ 1.2 bytes on disk per byte of live
 * data once compacted — by `vvfs storage compact NAME`, or by itself after
 * `--compact-idle` without writes — and compaction changes nothing that was
 * durable: every fsync'd byte reads back, also after a kill -9 right after it.
 */
import { open } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { blockData } from '../helpers/block-data.mjs'
import { cliFor } from '../helpers/cli.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const MiB = 1024 * 1024
/** Enough live data that LevelDB's fixed overhead (log, manifest: well under a MiB) does not move the ratio. */
const LIVE = 96 * MiB

/** Writes the whole volume file in 1 MiB blocks, round `round`'s contents, and fsyncs it. */
async function writeRound(file: string, round: number, size = LIVE): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    for (let off = 0; off < size; off += MiB) await fh.write(blockData(round * 10_000 + off / MiB, MiB), 0, MiB, off)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Throws unless every block of the file holds round `round`'s contents. */
async function expectRound(file: string, round: number, size = LIVE): Promise<void> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(MiB)
    for (let off = 0; off < size; off += MiB) {
      await fh.read(buf, 0, MiB, off)
      if (!buf.equals(blockData(round * 10_000 + off / MiB, MiB))) throw new Error(`block at ${off / MiB} MiB does not hold round ${round}'s data`)
    }
  } finally {
    await fh.close()
  }
}

async function diskBytes(d: DaemonHandle, name: string): Promise<number> {
  const s = (await d.client.call('storage.list', {})).storage.find((x) => x.name === name)!
  return s.diskBytes!
}

describe('vvfs storage compact', () => {
  let d: DaemonHandle
  const vvfs = cliFor(() => d.socket)
  beforeAll(async () => {
    d = await startDaemon({ extraArgs: ['--compact-idle', '0'] })
    await d.client.call('storage.add', { name: 's1', capacity: '512M' })
    await d.client.call('volume.create', { name: 'v', size: LIVE })
  })
  afterAll(async () => {
    await cleanupAll()
    removeDir(d.dir)
  })

  it('gives back the space of overwritten data: ≤ 1.2 bytes on disk per live byte, every byte intact, also after a kill -9', async () => {
    const t0 = Date.now()
    const lap = (what: string) => console.log(`${what}: ${Date.now() - t0} ms`)
    for (const round of [1, 2, 3, 4]) await writeRound(d.file('v'), round)
    lap('written')
    const before = await diskBytes(d, 's1')
    const r = vvfs('storage', 'compact', 's1', '--wait', '--json')
    expect(r.code, r.err).toBe(0)
    const result = JSON.parse(r.out) as { beforeBytes: number; afterBytes: number }
    const after = await diskBytes(d, 's1')
    console.log(`du before ${before} (${(before / LIVE).toFixed(2)} per live byte), after ${after} (${(after / LIVE).toFixed(2)}); reported ${result.beforeBytes} → ${result.afterBytes}`)
    expect(before).toBeGreaterThan(1.2 * LIVE)
    expect(after).toBeLessThanOrEqual(1.2 * LIVE)
    expect(d.log()).toMatch(/"event":"storage.compacted"/)
    lap('compacted')
    await expectRound(d.file('v'), 4)
    lap('read back')
    await d.kill9()
    await d.restart()
    lap('restarted')
    await expectRound(d.file('v'), 4)
    lap('read back after kill -9')
  }, 240_000)

  it('shows DISK in storage list and refuses unknown names with STORAGE_NOT_FOUND', async () => {
    const list = vvfs('storage', 'list')
    expect(list.code, list.err).toBe(0)
    expect(list.out).toMatch(/DISK/)
    const missing = vvfs('storage', 'compact', 'nope', '--json')
    expect(missing.code).not.toBe(0)
    expect(missing.err + missing.out).toMatch(/STORAGE_NOT_FOUND/)
  })
})
