/**
 * Issue 17, target 5: a store holds ≤ 1.2 bytes on disk per byte of live
 * data once compacted — by `vvfs storage compact NAME`, or by itself after
 * `--compact-idle` without writes — and compaction changes nothing that was
 * durable: every fsync'd byte reads back, also after a kill -9 right after it.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { cliFor } from '../helpers/cli.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const MiB = 1024 * 1024
/** Enough live data that LevelDB's fixed overhead (log, manifest: well under a MiB) does not move the ratio. */
const LIVE = 64 * MiB

/** Random bytes (incompressible, like the data fio writes), stamped per block below. */
const NOISE = randomBytes(MiB)

/** The contents of 1 MiB block `block` in round `round`: every 4 KiB chunk of it differs from every other round's and block's. */
function blockOf(round: number, block: number): Buffer {
  const out = Buffer.from(NOISE)
  for (let at = 0; at < MiB; at += 4096) {
    out.writeUInt32LE(round, at)
    out.writeUInt32LE(block, at + 4)
  }
  return out
}

/** Writes the whole volume file in 1 MiB blocks, round `round`'s contents, and fsyncs it. */
async function writeRound(file: string, round: number, size = LIVE): Promise<void> {
  // O_DIRECT: straight to the daemon in 1 MiB requests (through the page cache the test spent a minute writing on a busy machine).
  const fh = await open(file, constants.O_RDWR | constants.O_DIRECT)
  try {
    for (let off = 0; off < size; off += MiB) await fh.write(blockOf(round, off / MiB), 0, MiB, off)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Throws unless every block of the file holds round `round`'s contents. */
async function expectRound(file: string, round: number, size = LIVE): Promise<void> {
  const fh = await open(file, constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(MiB)
    for (let off = 0; off < size; off += MiB) {
      await fh.read(buf, 0, MiB, off)
      if (!buf.equals(blockOf(round, off / MiB))) throw new Error(`block at ${off / MiB} MiB does not hold round ${round}'s data`)
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
    for (const round of [1, 2, 3]) await writeRound(d.file('v'), round)
    const before = await diskBytes(d, 's1')
    const r = vvfs('storage', 'compact', 's1', '--wait', '--json')
    expect(r.code, r.err).toBe(0)
    const result = JSON.parse(r.out) as { beforeBytes: number; afterBytes: number }
    const after = await diskBytes(d, 's1')
    console.log(`du before ${before} (${(before / LIVE).toFixed(2)} per live byte), after ${after} (${(after / LIVE).toFixed(2)}); reported ${result.beforeBytes} → ${result.afterBytes}`)
    expect(before).toBeGreaterThan(1.2 * LIVE)
    expect(after).toBeLessThanOrEqual(1.2 * LIVE)
    expect(d.log()).toMatch(/"event":"storage.compacted"/)
    await expectRound(d.file('v'), 3)
    await d.kill9()
    await d.restart()
    await expectRound(d.file('v'), 3)
  }, 120_000)

  it('loses nothing fsync\'d to a kill -9 while a compaction runs', async () => {
    await writeRound(d.file('v'), 4)
    await writeRound(d.file('v'), 5)
    const r = vvfs('storage', 'compact', 's1', '--json')
    expect(r.code, r.err).toBe(0)
    expect(JSON.parse(r.out)).toMatchObject({ storage: 's1', started: true })
    await d.kill9()
    await d.restart()
    await expectRound(d.file('v'), 5)
  })

  it('shows DISK in storage list and refuses unknown names with STORAGE_NOT_FOUND', async () => {
    const list = vvfs('storage', 'list')
    expect(list.code, list.err).toBe(0)
    const [header, row] = list.out.trim().split('\n')
    expect(header).toMatch(/\bUSE%\s+DISK\s+LARGEST-FREE-RUN\b/)
    // s1's DISK: its store's du, a size (a store with only its identity takes some KiB).
    expect(row!.slice(header!.indexOf('DISK'))).toMatch(/^\d+(\.\d+)? (B|KiB|MiB|GiB)\s/)
    const missing = vvfs('storage', 'compact', 'nope', '--json')
    expect(missing.code).not.toBe(0)
    expect(missing.err + missing.out).toMatch(/STORAGE_NOT_FOUND/)
  })
})

describe('the idle compaction policy (--compact-idle 2s)', () => {
  let d: DaemonHandle
  beforeAll(async () => {
    d = await startDaemon({ extraArgs: ['--compact-idle', '2s'] })
    await d.client.call('storage.add', { name: 's1', capacity: '512M' })
    await d.client.call('volume.create', { name: 'v', size: LIVE })
  })
  afterAll(async () => {
    await cleanupAll()
    removeDir(d.dir)
  })

  const compactions = () => d.log().split('\n').filter((l) => l.includes('"event":"storage.compacted"'))

  it('does not compact while writes continue, and compacts a bloated store by itself once idle', async () => {
    for (const round of [1, 2, 3]) await writeRound(d.file('v'), round)
    // Writes keep coming, never 2 s apart, for twice the idle time: no compaction.
    const fh = await open(d.file('v'), constants.O_RDWR | constants.O_DIRECT)
    try {
      for (let i = 0; i < 10; i++) {
        await fh.write(blockOf(3, i), 0, MiB, i * MiB)
        await fh.sync()
        await new Promise((r) => setTimeout(r, 400))
      }
    } finally {
      await fh.close()
    }
    expect(compactions()).toEqual([])
    const before = await diskBytes(d, 's1')
    expect(before).toBeGreaterThan(1.2 * LIVE)
    const deadline = Date.now() + 30_000
    while (compactions().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
    expect(compactions()).toHaveLength(1)
    expect(compactions()[0]).toMatch(/"reason":"idle"/)
    const after = await diskBytes(d, 's1')
    console.log(`idle policy: du ${before} (${(before / LIVE).toFixed(2)} per live byte) → ${after} (${(after / LIVE).toFixed(2)})`)
    expect(after).toBeLessThanOrEqual(1.2 * LIVE)
    await expectRound(d.file('v'), 3)
    // Once compacted it stays put until new writes.
    await new Promise((r) => setTimeout(r, 3000))
    expect(compactions()).toHaveLength(1)
  })

  it('compacts a store left bloated by an earlier run, without new writes, once the restarted daemon has been idle', async () => {
    for (const round of [4, 5]) await writeRound(d.file('v'), round)
    await d.restart()
    const before = await diskBytes(d, 's1')
    expect(before).toBeGreaterThan(1.2 * LIVE)
    const deadline = Date.now() + 30_000
    while (compactions().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
    expect(compactions()).toHaveLength(2)
    expect(await diskBytes(d, 's1')).toBeLessThanOrEqual(1.2 * LIVE)
    await expectRound(d.file('v'), 5)
  })
})
