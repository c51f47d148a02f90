/**
 * Power-loss order of copies: data a map record will point at is durable on
 * its storage system before the record is written — a migration's copy, a
 * rollback's copy-back, a promotion's slot — and data a switch moved away
 * from is dropped only once the map store has synced the switch. Checked by
 * watching each store's sync writes (the only thing that makes a logged
 * write survive a power cut) against the copies into it at the moment each
 * record is written, and the map store's against the switches at each drop.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import type { Manager } from '../../lib/manager/manager.js'
import type { ExtentEntry } from '../../lib/relay/extent-entry.js'
import { PROMOTE_AT, ThinVolume } from '../../lib/relay/thin.js'
import { InlineChunkMover } from '../../lib/storage/chunk-mover.js'
import type { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openManager, withSystems } from '../helpers/manager.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'
import { openStack } from '../helpers/stack.js'
import { watchStoreSyncs, watchSyncWrites } from '../helpers/sync-writes.js'

const MiB = 1024 * 1024
let m: Manager | undefined
const dirs: string[] = []
afterEach(async () => {
  vi.restoreAllMocks()
  await m?.close()
  m = undefined
  dirs.splice(0).forEach(removeDir)
})


/** Per storage system: writes ended into it, and how many of those a finished sync write covers. */
class SyncLedger {
  private readonly ended = new Map<number, number>()
  private readonly synced = new Map<number, number>()
  readonly unsynced: string[] = []
  checked = 0

  watch(system: StorageSystem): void {
    watchStoreSyncs(
      system,
      () => this.ended.get(system.sid) ?? 0,
      (covered) => this.synced.set(system.sid, Math.max(covered, this.synced.get(system.sid) ?? 0)),
    )
  }

  wrote(sid: number): void {
    this.ended.set(sid, (this.ended.get(sid) ?? 0) + 1)
  }

  /** A record is about to point at `entry`: every write into its systems must be synced. */
  check(what: string, entry: ExtentEntry): void {
    this.checked++
    const sids = entry.kind === 'whole' ? [entry.sid] : [...entry.frags.values()].map((f) => f.sid)
    for (const sid of new Set(sids)) {
      if ((this.ended.get(sid) ?? 0) > (this.synced.get(sid) ?? 0)) this.unsynced.push(`${what} onto system ${sid}`)
    }
  }
}

/** Switches written, and how many of them a finished map-store sync covers, when data is dropped. */
interface DropLedger {
  written: number
  synced: number
  drops: number
  early: string[]
}

function watchDrops(maps: unknown): DropLedger {
  const ledger: DropLedger = { written: 0, synced: 0, drops: 0, early: [] }
  watchSyncWrites(
    maps,
    () => ledger.written,
    (covered) => (ledger.synced = Math.max(ledger.synced, covered)),
  )
  const switchExtent = ThinVolume.prototype.switchExtent
  vi.spyOn(ThinVolume.prototype, 'switchExtent').mockImplementation(async function (this: ThinVolume, extent, expected, next, extra) {
    await switchExtent.call(this, extent, expected, next, extra)
    ledger.written++
  })
  const discardEntry = ThinVolume.prototype.discardEntry
  vi.spyOn(ThinVolume.prototype, 'discardEntry').mockImplementation(function (this: ThinVolume, entry) {
    ledger.drops++
    if (ledger.written > ledger.synced) ledger.early.push(`a drop after ${ledger.written} switches, ${ledger.synced} synced`)
    return discardEntry.call(this, entry)
  })
  return ledger
}

/** Watches every copy the migration runner makes and every switch it writes. */
function watchMigrations(ledger: SyncLedger): void {
  const copy = InlineChunkMover.prototype.copy
  vi.spyOn(InlineChunkMover.prototype, 'copy').mockImplementation(async function (this: InlineChunkMover, req) {
    try {
      return await copy.call(this, req)
    } finally {
      ledger.wrote(req.toSid)
    }
  })
  const switchExtent = ThinVolume.prototype.switchExtent
  vi.spyOn(ThinVolume.prototype, 'switchExtent').mockImplementation(function (this: ThinVolume, extent, expected, next, extra) {
    ledger.check(`the switch of extent ${extent}`, next)
    return switchExtent.call(this, extent, expected, next, extra)
  })
}

async function setup(watchCopies = true): Promise<{ m: Manager; ledger: SyncLedger }> {
  const dir = tempDir('vvfs-copydur-')
  dirs.push(dir)
  m = await openManager(dir)
  await withSystems(m, [['s1', '64M'], ['s2', '64M'], ['src', '64M']])
  const ledger = new SyncLedger()
  if (watchCopies) {
    for (const s of m.pool.list()) ledger.watch(s)
    watchMigrations(ledger)
  }
  return { m, ledger }
}

async function fill(m: Manager, name: string, size: number, filled = size): Promise<VolumeModel> {
  await m.createVolume({ name, size })
  const v = m.volumeNamed(name)
  const model = new VolumeModel(size)
  const r = rng(31)
  for (let off = 0; off < filled; off += 256 * 1024) {
    const data = payload(r, 256 * 1024)
    await v.write(off, data)
    model.write(off, data)
  }
  return model
}

describe('copies are durable before the records that point at them', () => {
  it('a migration’s copy is not durable before its map switch: each copy is synced on the destination before its switch', async () => {
    const { m, ledger } = await setup()
    await fill(m, 'v', 8 * MiB)
    const job = await m.migrate({ volume: 'v', to: 's2' })
    expect((await m.jobs.settled(job.id)).result).toBe('completed')
    expect(ledger.checked).toBeGreaterThan(4)
    expect(ledger.unsynced).toEqual([])
  })

  it('a rollback’s copy-back and the move back to the source are synced on the source before their switches', async () => {
    const { m, ledger } = await setup()
    const model = await fill(m, 'v', 8 * MiB, 6 * MiB)
    await m.jobs.settled((await m.migrate({ volume: 'v', to: 'src' })).id)
    const job = await m.migrate({ volume: 'v', to: 's1', keep: 60_000 })
    for (let i = 0; i < 200 && m.jobs.show(job.id).status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 50))
    expect(m.jobs.show(job.id).status).toBe('ready')
    // Writes after the switch (copied back on rollback), some into extents
    // the job never copied (moved to the source).
    const v = m.volumeNamed('v')
    const r = rng(8)
    for (let i = 0; i < 20; i++) {
      const [off, len] = i < 4 ? [6 * MiB + i * 512 * 1024, 256 * 1024] : range(r, model.size, 300 * 1024)
      const data = payload(r, len)
      await v.write(off, data)
      model.write(off, data)
    }
    const before = ledger.checked
    m.jobs.rollback(job.id)
    expect((await m.jobs.settled(job.id)).result).toBe('rolled-back')
    expect(ledger.checked).toBeGreaterThan(before)
    expect(ledger.unsynced).toEqual([])
    const all = Buffer.alloc(model.size)
    await v.read(0, model.size, all)
    expect(all.equals(model.data)).toBe(true)
  })

  it('a rollback drops the copies it switched away from only once the map store has synced the switches', async () => {
    const { m } = await setup(false)
    await fill(m, 'v', 6 * MiB)
    await m.jobs.settled((await m.migrate({ volume: 'v', to: 'src' })).id)
    const job = await m.migrate({ volume: 'v', to: 's1', keep: 60_000 })
    for (let i = 0; i < 200 && m.jobs.show(job.id).status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 50))
    expect(m.jobs.show(job.id).status).toBe('ready')
    const ledger = watchDrops((m as unknown as { maps: { db: unknown } }).maps.db)
    m.jobs.rollback(job.id)
    expect((await m.jobs.settled(job.id)).result).toBe('rolled-back')
    expect(ledger.drops).toBeGreaterThan(4)
    expect(ledger.early).toEqual([])
  })

  it('a promotion’s slot is synced before the record that switches the extent to it', async () => {
    const dir = tempDir('vvfs-promote-')
    dirs.push(dir)
    const stack = await openStack({ dir, systems: 2, capacity: 16 * MiB, size: 4 * MiB }, true)
    try {
      const ledger = new SyncLedger()
      for (const s of stack.pool.list()) {
        ledger.watch(s)
        const write = s.write.bind(s)
        s.write = (chunks, opts) => write(chunks, opts).finally(() => ledger.wrote(s.sid))
      }
      const putMany = stack.maps.putMany.bind(stack.maps)
      stack.maps.putMany = (items) => {
        const entry = stack.thin.entry(0)
        if (entry?.kind === 'whole') ledger.check('the promotion of extent 0', entry)
        return putMany(items)
      }
      // Scattered 4 KiB writes into extent 0: fragments, until it is promoted.
      for (let c = 0; c < PROMOTE_AT; c++) await stack.volume.write(c * 3 * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, c + 1))
      await stack.volume.drain()
      await stack.thin.settle()
      expect(stack.thin.entry(0)?.kind).toBe('whole')
      expect(ledger.checked).toBeGreaterThan(0)
      expect(ledger.unsynced).toEqual([])
    } finally {
      await stack.close()
    }
  })
})
