import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { MemoryDurableLog, SIZE_MARK, type DurableLog, type LogBatch } from '../../lib/replication/durable-log.js'
import { ENTRY_HEADER_BYTES, type Change } from '../../lib/replication/entry.js'
import { Journal, type ModeChange } from '../../lib/replication/journal.js'
import { SegmentDurableLog } from '../../lib/replication/journal-log.js'
import { rng } from '../helpers/model.js'

const dirs: string[] = []
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'vvfs-journal-'))
  dirs.push(d)
  return d
}

const write = (offset: number, fill = 1, length = 4096): Change => ({ kind: 'write', volume: 7, offset, data: Buffer.alloc(length, fill) })

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (err) {
    expect(err).toBeInstanceOf(VvfsError)
    return (err as VvfsError).code
  }
  throw new Error('expected a rejection')
}

/** Counts commits of a log (to see group commit). */
class CountingLog implements DurableLog {
  commits: LogBatch[] = []
  constructor(private readonly inner: DurableLog) {}
  load() {
    return this.inner.load()
  }
  commit(b: LogBatch) {
    this.commits.push(b)
    return this.inner.commit(b)
  }
  read(from: number, through: number, max: number) {
    return this.inner.read(from, through, max)
  }
  syncLogged() {
    return this.inner.syncLogged()
  }
  close() {
    return this.inner.close()
  }
}

describe('journal: numbering and acknowledgement order', () => {
  it('gives changes consecutive numbers in the order they are appended, and resolves durable in that order', async () => {
    const j = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    const r = rng(3)
    const resolved: number[] = []
    const all: Promise<void>[] = []
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < r.int(1, 8); i++) {
        const a = j.append(write(r.int(0, 100) * 4096))
        all.push(a.durable.then(() => void resolved.push(a.seq as number)))
      }
      await new Promise((res) => setImmediate(res))
    }
    await Promise.all(all)
    expect(resolved).toEqual(Array.from({ length: resolved.length }, (_, i) => i + 1))
    expect(j.positions).toMatchObject({ lastAccepted: resolved.length, lastDurable: resolved.length })
  })

  it('commits the appends of one turn as one synced batch (group commit), also on its segment log', async () => {
    const log = new CountingLog(await SegmentDurableLog.open(await tempDir()))
    const j = await Journal.open(log, { epoch: 1 })
    const before = log.commits.length
    const acks = Array.from({ length: 200 }, (_, i) => j.append(write(i * 4096)).durable)
    await Promise.all(acks)
    expect(log.commits.length - before).toBe(1)
    expect(log.commits[log.commits.length - 1].entries).toHaveLength(200)
    // While that batch syncs, the next writers form the next group.
    const more = [j.append(write(0)).durable]
    await new Promise((res) => setImmediate(res))
    more.push(j.append(write(4096)).durable, j.append(write(8192)).durable)
    await Promise.all(more)
    expect(log.commits.length - before).toBeLessThanOrEqual(3)
    await j.close()
    await log.close()
  })

  it('a new journal numbers from its first sequence number (the handoff gives B its first number)', async () => {
    const j = await Journal.open(new MemoryDurableLog(), { epoch: 2, firstSeq: 501 })
    expect(j.append(write(0)).seq).toBe(501)
    const [e] = await (async () => {
      await j.drain()
      return j.read(501, 1 << 20)
    })()
    expect(e).toMatchObject({ seq: 501, epoch: 2, volume: 7, kind: 'write', offset: 0, length: 4096 })
  })
})

describe('journal: only durable entries are shipped, and power cuts keep exactly those', () => {
  it('read() returns nothing that is not synced yet', async () => {
    const log = new MemoryDurableLog()
    const j = await Journal.open(log, { epoch: 1 })
    await j.append(write(0)).durable
    log.hold()
    const a = j.append(write(4096))
    await new Promise((res) => setImmediate(res))
    expect(j.positions).toMatchObject({ lastAccepted: 2, lastDurable: 1 })
    expect((await j.read(1, 1 << 20)).map((e) => e.seq)).toEqual([1])
    expect(await j.read(2, 1 << 20)).toEqual([])
    log.release()
    await a.durable
    expect((await j.read(1, 1 << 20)).map((e) => e.seq)).toEqual([1, 2])
  })

  it('after a power cut the journal holds every acknowledged entry and none that was not synced', async () => {
    const log = new MemoryDurableLog()
    const j = await Journal.open(log, { epoch: 1 })
    for (let i = 0; i < 10; i++) await j.append(write(i * 4096, i + 1)).durable
    log.hold()
    const lost = [j.append(write(0, 99)), j.append(write(4096, 99))]
    await new Promise((res) => setImmediate(res))
    const j2 = await Journal.open(log.powerCut(), { epoch: 1 })
    expect(j2.positions).toMatchObject({ lastAccepted: 10, lastDurable: 10, trimmedThrough: 0 })
    const entries = await j2.read(1, 1 << 30)
    expect(entries.map((e) => e.data?.[0])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    // The lost changes were never acknowledged: their promises never resolved.
    let acked = false
    void Promise.race(lost.map((l) => l.durable)).then(() => (acked = true))
    await new Promise((res) => setTimeout(res, 10))
    expect(acked).toBe(false)
  })

  it('trims what the secondary acknowledged, durably, and numbers on past a fully trimmed journal after a restart', async () => {
    const log = new MemoryDurableLog()
    const j = await Journal.open(log, { epoch: 1 })
    for (let i = 0; i < 6; i++) await j.append(write(i * 4096)).durable
    await j.trim(4)
    expect(j.positions).toMatchObject({ trimmedThrough: 4, retainedEntries: 2, retainedBytes: 2 * (4096 + ENTRY_HEADER_BYTES) })
    expect(await codeOf(j.read(3, 1 << 20))).toBe('OUT_OF_RANGE')
    await j.trim(6)
    const j2 = await Journal.open(log.powerCut(), { epoch: 1 })
    expect(j2.positions).toMatchObject({ lastAccepted: 6, trimmedThrough: 6, retainedBytes: 0 })
    expect(j2.append(write(0)).seq).toBe(7)
  })

  it('refuses to trim past what is durable (an acknowledgement for something never shipped)', async () => {
    const log = new MemoryDurableLog()
    const j = await Journal.open(log, { epoch: 1 })
    await j.append(write(0)).durable
    log.hold()
    j.append(write(4096))
    expect(await codeOf(j.trim(2))).toBe('OUT_OF_RANGE')
    expect(j.positions.trimmedThrough).toBe(0)
    log.release()
  })

  it('keeps entries, trim point and marks across a close and reopen of its segment log', async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir)
    const j = await Journal.open(log, { epoch: 3, settings: { limitBytes: 5 * (4096 + ENTRY_HEADER_BYTES) } })
    for (let i = 0; i < 5; i++) await j.append(write(i * 4096, i + 1)).durable
    await j.append(write(3 * EXTENT_SIZE)).durable // over the limit: a mark
    await j.trim(2)
    await j.close()
    await log.close()
    const log2 = await SegmentDurableLog.open(dir)
    const j2 = await Journal.open(log2, { epoch: 3 })
    expect(j2.positions).toMatchObject({ mode: 'bitmap', lastAccepted: 5, trimmedThrough: 2, retainedEntries: 3, dirtyMarks: 1 })
    expect((await j2.read(3, 1 << 20)).map((e) => [e.seq, e.epoch, e.data?.[0]])).toEqual([
      [3, 3, 3],
      [4, 3, 4],
      [5, 3, 5],
    ])
    expect(j2.dirtyMarks()).toEqual([{ volume: 7, extent: 3 }])
    await j2.close()
    await log2.close()
  })
})

describe('journal: metadata overhead', () => {
  it('costs at most 1/32 of the data for 4 KiB writes, measured on disk in its segment log', async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir)
    const j = await Journal.open(log, { epoch: 1 })
    const sizeOf = async () => {
      let n = 0
      for (const f of await readdir(dir)) if (f.endsWith('.seg')) n += (await stat(join(dir, f))).size
      return n
    }
    const before = await sizeOf()
    const r = rng(11)
    const writes = 2048
    for (let batch = 0; batch < writes / 64; batch++) {
      const acks = []
      for (let i = 0; i < 64; i++) {
        const data = Buffer.alloc(4096)
        for (let k = 0; k < 4096; k += 4) data.writeUInt32LE((r.next() * 0x100000000) >>> 0, k)
        acks.push(j.append({ kind: 'write', volume: 1, offset: r.int(0, 1 << 18) * 4096, data }).durable)
      }
      await Promise.all(acks)
    }
    const data = writes * 4096
    const overhead = (await sizeOf()) - before - data
    expect(ENTRY_HEADER_BYTES / 4096).toBeLessThanOrEqual(1 / 32)
    expect(overhead).toBeGreaterThan(0)
    expect(overhead / data).toBeLessThanOrEqual(1 / 32)
    await j.close()
    await log.close()
  })
})

describe('journal: the size limit and its policies', () => {
  const entry = 4096 + ENTRY_HEADER_BYTES

  it('bitmap: at the limit it stops journaling, marks dirty extents durably, and says so once', async () => {
    const log = new MemoryDurableLog()
    const events: ModeChange[] = []
    const j = await Journal.open(log, { epoch: 1, settings: { limitBytes: 3 * entry }, onModeChange: (c) => events.push(c) })
    for (let i = 0; i < 3; i++) expect(j.append(write(i * 4096)).seq).toBe(i + 1)
    const over = j.append(write(2 * EXTENT_SIZE + 100))
    const again = j.append({ kind: 'zero', volume: 7, offset: 2 * EXTENT_SIZE, length: 2 * EXTENT_SIZE })
    const resize = j.append({ kind: 'resize', volume: 7, size: 10 * EXTENT_SIZE })
    expect([over.seq, again.seq, resize.seq]).toEqual([null, null, null])
    await Promise.all([over.durable, again.durable, resize.durable])
    expect(events).toEqual([{ mode: 'bitmap', reason: 'limit' }])
    const j2 = await Journal.open(log.powerCut(), { epoch: 1 })
    expect(j2.positions).toMatchObject({ mode: 'bitmap', lastAccepted: 3 })
    expect(j2.dirtyMarks().sort((a, b) => a.extent - b.extent)).toEqual([
      { volume: 7, extent: 2 },
      { volume: 7, extent: 3 },
      { volume: 7, extent: SIZE_MARK },
    ])
  })

  it('bitmap: a resync covers the unacknowledged entries too, numbering resumes after them, and only marks not set again are cleared', async () => {
    const log = new MemoryDurableLog()
    const events: ModeChange[] = []
    const j = await Journal.open(log, { epoch: 1, settings: { limitBytes: 3 * entry }, onModeChange: (c) => events.push(c) })
    await j.append(write(0)).durable
    await j.append(write(EXTENT_SIZE)).durable
    await j.trim(1) // the secondary has entry 1
    await j.append(write(2 * EXTENT_SIZE)).durable
    await j.append(write(3 * EXTENT_SIZE)).durable
    await j.append(write(5 * EXTENT_SIZE)).durable // over: mark
    expect(j.positions.mode).toBe('bitmap')
    const plan = await j.beginResync()
    expect(plan.baseSeq).toBe(4)
    expect(plan.marks.map((m) => m.extent).sort()).toEqual([1, 2, 3, 5])
    expect(j.positions).toMatchObject({ mode: 'journaling', trimmedThrough: 4, retainedBytes: 0 })
    expect(j.append(write(6 * EXTENT_SIZE)).seq).toBe(5)
    expect(events.map((e) => e.mode)).toEqual(['bitmap', 'journaling'])
    await j.finishResync(plan)
    expect(j.dirtyMarks()).toEqual([])
    // A mark set again after the plan was made survives finishResync.
    for (let i = 0; i < 3; i++) await j.append(write(i * 4096)).durable
    await j.append(write(9 * EXTENT_SIZE)).durable
    const plan2 = await j.beginResync()
    await j.trim(j.positions.lastDurable)
    // fill again to go back to bitmap, then mark extent 9 again
    for (let i = 0; i < 4; i++) await j.append(write(i * 4096)).durable
    await j.append(write(9 * EXTENT_SIZE)).durable
    await j.finishResync(plan2)
    expect(j.dirtyMarks().map((m) => m.extent)).toContain(9)
  })

  it('throttle: over the limit acknowledgements are delayed (bounded), past the hard limit it falls back to bitmap', async () => {
    const events: ModeChange[] = []
    const j = await Journal.open(new MemoryDurableLog(), {
      epoch: 1,
      settings: { policy: 'throttle', limitBytes: 2 * entry, hardLimitBytes: 4 * entry, throttleMaxDelayMs: 80 },
      onModeChange: (c) => events.push(c),
    })
    const timed = async (c: Change) => {
      const t = performance.now()
      const a = j.append(c)
      await a.durable
      return { seq: a.seq, ms: performance.now() - t }
    }
    expect((await timed(write(0))).ms).toBeLessThan(20)
    expect((await timed(write(4096))).ms).toBeLessThan(20)
    const third = await timed(write(8192)) // 1 entry over: 40 ms
    expect(third.seq).toBe(3)
    expect(third.ms).toBeGreaterThanOrEqual(35)
    const fourth = await timed(write(12288)) // 2 over: 80 ms, the most
    expect(fourth.ms).toBeGreaterThanOrEqual(75)
    expect(fourth.ms).toBeLessThan(400)
    const fifth = await timed(write(16384))
    expect(fifth.seq).toBeNull()
    expect(events).toEqual([{ mode: 'bitmap', reason: 'hard-limit' }])
  })
})

describe('journal: log failures never fail host I/O', () => {
  it('a failed commit covers its entries with dirty marks and goes to bitmap', async () => {
    const log = new MemoryDurableLog()
    const events: ModeChange[] = []
    const j = await Journal.open(log, { epoch: 1, onModeChange: (c) => events.push(c) })
    await j.append(write(0)).durable
    log.failNext()
    const a = j.append(write(4 * EXTENT_SIZE))
    expect(a.seq).toBe(2)
    await a.durable
    expect(events).toEqual([{ mode: 'bitmap', reason: 'journal-failed' }])
    expect(j.positions).toMatchObject({ lastDurable: 1, lastAccepted: 2 })
    const j2 = await Journal.open(log.powerCut(), { epoch: 1 })
    expect(j2.dirtyMarks()).toEqual([{ volume: 7, extent: 4 }])
    expect(j2.positions.mode).toBe('bitmap')
  })

  it('a failed batch of marks leaves the journal broken, still acknowledging', async () => {
    const log = new MemoryDurableLog()
    const events: ModeChange[] = []
    const j = await Journal.open(log, { epoch: 1, settings: { limitBytes: 1 }, onModeChange: (c) => events.push(c) })
    log.failNext()
    const a = j.append(write(0))
    await a.durable
    expect(events.map((e) => e.mode)).toEqual(['bitmap', 'broken'])
    await j.append(write(0)).durable
    expect(j.positions.mode).toBe('broken')
  })

  it('append after close is refused with SHUTTING_DOWN', async () => {
    const j = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    await j.close()
    expect(() => j.append(write(0))).toThrow(expect.objectContaining({ code: 'SHUTTING_DOWN' }))
  })
})
