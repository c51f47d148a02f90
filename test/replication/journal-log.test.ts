/**
 * The DurableLog contract (lib/replication/durable-log.ts), one suite for
 * every backend: the in-memory model and the segment log the daemon uses
 * (lib/replication/journal-log.ts). Then what only the segment log has:
 * segments deleted once trimmed, a torn tail dropped at load, corruption
 * refused, and its crash order under kill -9 and power cuts at random points
 * (a writer process under the powercut interposer, test/helpers/powercut.ts).
 */
import { spawn } from 'node:child_process'
import { open, readdir, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterEach, describe, expect, it } from 'vitest'
import { MemoryDurableLog, type DurableLog, type LogBatch } from '../../lib/replication/durable-log.js'
import { decodeEntry, encodeEntryParts } from '../../lib/replication/entry.js'
import { SegmentDurableLog } from '../../lib/replication/journal-log.js'
import { Journal } from '../../lib/replication/journal.js'
import { removeDir, tempDir as makeTempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'
import { PowerCutTracker, powercutEnv } from '../helpers/powercut.js'
import { rng } from '../helpers/model.js'
import { dataOf } from './journal-log-data.mjs'

const dirs: string[] = []

/** fsync of every file in `dir`, then of `dir` itself. */
async function syncTree(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const fh = await open(join(dir, name), 'r')
    await fh.sync().finally(() => fh.close())
  }
  const d = await open(dir, 'r')
  await d.sync().finally(() => d.close())
}
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d)
})

async function tempDir(): Promise<string> {
  const d = makeTempDir('vvfs-journal-log-')
  dirs.push(d)
  return d
}

const entry = (seq: number, fill = seq % 251) => ({ seq, parts: encodeEntryParts({ seq, epoch: 1, volume: 1, kind: 'write', offset: 0, length: 4096, data: Buffer.alloc(4096, fill) }) })
const fillOf = (record: Buffer) => decodeEntry(record, 'STATE_CORRUPT').data?.[1]

/** A backend: the log, and what a crash (power cut) and restart leaves of it. */
interface Backend {
  log: DurableLog
  restart(): Promise<DurableLog>
}

const BACKENDS: [string, () => Promise<Backend>][] = [
  [
    'MemoryDurableLog',
    async () => {
      const log = new MemoryDurableLog()
      return { log, restart: async () => log.powerCut() }
    },
  ],
  [
    'SegmentDurableLog',
    async () => {
      const dir = await tempDir()
      const b: Backend = {
        log: await SegmentDurableLog.open(dir, { segmentBytes: 16 * 1024 }),
        restart: async () => {
          await b.log.close()
          b.log = await SegmentDurableLog.open(dir, { segmentBytes: 16 * 1024 })
          return b.log
        },
      }
      return b
    },
  ],
]

describe.each(BACKENDS)('the DurableLog contract: %s', { timeout: 30_000 }, (_name, make) => {
  it('a new log loads as never committed to', async () => {
    const { log } = await make()
    expect(await log.load()).toEqual({ mode: null, trimmedThrough: 0, retained: [], dirty: [], meta: null })
  })

  it('a synced commit survives a restart: entries, trim point, marks and mode, atomically', async () => {
    const b = await make()
    await b.log.commit({ mode: 'journaling', trimThrough: 2 })
    await b.log.commit({ entries: [3, 4, 5].map((s) => entry(s)), addDirty: [{ volume: 1, extent: 9 }, { volume: 1, extent: 10 }] })
    await b.log.commit({ removeDirty: [{ volume: 1, extent: 9 }], mode: 'bitmap' })
    const log = await b.restart()
    const c = await log.load()
    expect(c).toMatchObject({ mode: 'bitmap', trimmedThrough: 2, dirty: [{ volume: 1, extent: 10 }] })
    expect(c.retained.map((r) => r.seq)).toEqual([3, 4, 5])
    expect(c.retained.every((r) => r.bytes === 4096 + 40)).toBe(true)
    expect((await log.read(3, 5, 1 << 20)).map((r) => [r.seq, fillOf(r.record)])).toEqual([
      [3, 3],
      [4, 4],
      [5, 5],
    ])
  })

  it('a read that a trim overtakes still answers whole, numbered records (CI 2026-12-04: a handoff failed with INTERNAL)', async () => {
    const { log } = await make()
    await log.commit({ entries: Array.from({ length: 40 }, (_, i) => entry(i + 1)) })
    // The trim is committed while the read waits for its disk reads: each record it answers is the one its number names.
    for (let through = 5; through <= 40; through += 5) {
      const read = log.read(1, 40, 1 << 20)
      await log.commit({ trimThrough: through })
      const records = await read
      expect(records.length).toBeGreaterThan(0)
      for (const r of records) expect(fillOf(r.record), `record ${r.seq}`).toBe(r.seq % 251)
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: records.length }, (_, i) => records[0]!.seq + i))
    }
  })

  it('commits made at once (not awaited one by one) are all kept, in call order, and survive a restart', async () => {
    const b = await make()
    await Promise.all(Array.from({ length: 30 }, (_, i) => b.log.commit({ entries: [entry(i + 1)] }, i % 3 === 0)))
    await b.log.commit({})
    const log = await b.restart()
    expect((await log.load()).retained.map((r) => r.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
    const records = await log.read(1, 30, 1 << 30)
    expect(records.map((r) => [r.seq, fillOf(r.record)])).toEqual(Array.from({ length: 30 }, (_, i) => [i + 1, (i + 1) % 251]))
  })

  it('reads ascending within [from, through], stopping after the first record that reaches maxBytes', async () => {
    const { log } = await make()
    await log.commit({ entries: Array.from({ length: 10 }, (_, i) => entry(i + 1)) })
    expect((await log.read(3, 6, 1 << 20)).map((r) => r.seq)).toEqual([3, 4, 5, 6])
    expect((await log.read(2, 10, 2 * 4136)).map((r) => r.seq)).toEqual([2, 3])
    expect((await log.read(2, 10, 1)).map((r) => r.seq)).toEqual([2])
    expect(await log.read(11, 20, 1 << 20)).toEqual([])
  })

  it('a trim drops entries up to it and is remembered when every entry is gone; entries at or below it are ignored', async () => {
    const b = await make()
    await b.log.commit({ entries: Array.from({ length: 6 }, (_, i) => entry(i + 1)) })
    await b.log.commit({ trimThrough: 4 })
    expect((await b.log.read(1, 10, 1 << 20)).map((r) => r.seq)).toEqual([5, 6])
    await b.log.commit({ trimThrough: 6, entries: [entry(6)] })
    const log = await b.restart()
    expect(await log.load()).toMatchObject({ trimmedThrough: 6, retained: [] })
  })

  it('an unsynced commit is durable once syncLogged() returns, and read at once', async () => {
    const b = await make()
    await b.log.commit({ entries: [entry(1)] })
    await b.log.commit({ entries: [entry(2), entry(3)] }, false)
    expect((await b.log.read(1, 3, 1 << 20)).map((r) => r.seq)).toEqual([1, 2, 3])
    await b.log.syncLogged()
    const log = await b.restart()
    expect((await log.load()).retained.map((r) => r.seq)).toEqual([1, 2, 3])
  })

  it("keeps the owner's meta of the last synced commit with its entries, also once the segments it was committed in are trimmed away", async () => {
    const b = await make()
    await b.log.commit({ entries: [entry(1)], meta: Buffer.from('one') })
    await b.log.commit({ entries: [entry(2)] })
    expect((await (await b.restart()).load()).meta).toEqual(Buffer.from('one'))
    // Past several 16 KiB segments, then trimmed: the meta lives on in the checkpoint that opens the segment left.
    for (let s = 3; s <= 12; s++) await b.log.commit({ entries: [entry(s)], meta: Buffer.from(`m${s}`) })
    await b.log.commit({ trimThrough: 12 })
    await b.log.commit({ entries: [entry(13)] })
    const log = await b.restart()
    expect(await log.load()).toMatchObject({ trimmedThrough: 12, meta: Buffer.from('m12') })
    expect((await log.load()).retained.map((r) => r.seq)).toEqual([13])
  })

  it('refuses every call after close with SHUTTING_DOWN', async () => {
    const { log } = await make()
    await log.close()
    expect(await codeOf(() => log.commit({ entries: [entry(1)] }))).toBe('SHUTTING_DOWN')
    expect(await codeOf(() => log.read(1, 1, 1))).toBe('SHUTTING_DOWN')
    expect(await codeOf(() => log.load())).toBe('SHUTTING_DOWN')
  })
})

describe('the in-memory model', () => {
  it('syncLogged makes durable only what was logged before it was called, not batches logged after a synced commit overtook it', async () => {
    const log = new MemoryDurableLog()
    log.hold()
    await log.commit({ entries: [entry(1)] }, false)
    const sync = log.syncLogged()
    const synced = log.commit({ entries: [entry(2)] })
    log.release()
    await synced
    await log.commit({ entries: [entry(3)] }, false) // logged, never synced
    await sync
    expect([...log.powerCut().durableEntries().keys()]).toEqual([1, 2])
  })
})

describe('the segment log', { timeout: 30_000 }, () => {
  const SEG = 16 * 1024
  const segFiles = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.seg')).sort()
  /** A log of entries 1..n, closed. */
  const logOf = async (dir: string, n: number) => {
    const log = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    for (let s = 1; s <= n; s++) await log.commit({ entries: [entry(s)] })
    await log.close()
  }

  it('writes each entry once and deletes whole segments once a sync covered a trim past their last entry', async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    for (let s = 1; s <= 40; s++) await log.commit({ entries: [entry(s)] }, s % 4 === 0)
    const files = await segFiles(dir)
    expect(files.length).toBeGreaterThanOrEqual(8)
    let bytes = 0
    for (const f of files) bytes += (await stat(join(dir, f))).size
    expect(bytes).toBeLessThan(40 * 4136 * 1.05)
    await log.commit({ trimThrough: 30 }, false)
    expect(await segFiles(dir)).toEqual(expect.arrayContaining(files)) // not synced yet: nothing deleted
    await log.syncLogged()
    const left = await segFiles(dir)
    expect(left.length).toBeLessThanOrEqual(4)
    expect(left).toContain(files[files.length - 1]) // never the segment being appended
    await log.close()
    const again = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    expect(await again.load()).toMatchObject({ trimmedThrough: 30, retained: Array.from({ length: 10 }, (_, i) => ({ seq: 31 + i, bytes: 4136 })) })
    expect((await again.read(31, 40, 1 << 20)).map((r) => fillOf(r.record))).toEqual(Array.from({ length: 10 }, (_, i) => 31 + i))
    await again.close()
  })

  it("carries the owner's meta in the checkpoint of every new segment: it survives the deletion of the segments it was committed in", async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    await log.commit({ entries: [entry(1)], meta: Buffer.from('state after 1') })
    for (let s = 2; s <= 20; s++) await log.commit({ entries: [entry(s)] })
    await log.commit({ trimThrough: 20 })
    await log.commit({ entries: [entry(21)] })
    expect((await segFiles(dir))[0]).not.toBe('0000000000000001.seg')
    await log.close()
    const again = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    expect(await again.load()).toMatchObject({ trimmedThrough: 20, meta: Buffer.from('state after 1') })
    await again.close()
  })

  it('drops a torn last frame at load (short, or a record failing its checksum) and appends after what is whole', async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir)
    await log.commit({ entries: [entry(1), entry(2)] })
    const [file] = await segFiles(dir)
    const whole = (await stat(join(dir, file))).size
    await log.commit({ entries: [entry(3)] })
    await log.close()
    await truncate(join(dir, file), whole + 100) // a kill inside the append of entry 3
    let again = await SegmentDurableLog.open(dir)
    expect((await again.load()).retained.map((r) => r.seq)).toEqual([1, 2])
    expect((await stat(join(dir, file))).size).toBe(whole)
    await again.commit({ entries: [entry(3, 33)] })
    await again.close()
    // A record whose data is not what its checksum says (a sector that never made it): the last frame goes.
    const fh = await open(join(dir, file), 'r+')
    const size = (await fh.stat()).size
    await fh.write(Buffer.from([0xee]), 0, 1, size - 10)
    await fh.close()
    again = await SegmentDurableLog.open(dir)
    expect((await again.load()).retained.map((r) => r.seq)).toEqual([1, 2])
    await again.commit({ entries: [entry(3, 34)] })
    await again.close()
    again = await SegmentDurableLog.open(dir)
    expect((await again.read(1, 3, 1 << 20)).map((r) => fillOf(r.record))).toEqual([1, 2, 34])
    await again.close()
  })

  it.each([
    ['empty (a power cut emptied it: never synced)', 0],
    ['torn inside its checkpoint (a kill while it was written)', 5],
  ])('deletes a last segment whose checkpoint never landed: %s', async (_what, bytes) => {
    const dir = await tempDir()
    await logOf(dir, 6)
    const files = await segFiles(dir)
    const next = (parseInt(files[files.length - 1], 16) + 1).toString(16).padStart(16, '0') + '.seg'
    await writeFile(join(dir, next), Buffer.alloc(bytes))
    const again = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    expect((await again.load()).retained.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6])
    expect(await segFiles(dir)).toEqual(files)
    await again.commit({ entries: [entry(7)] })
    await again.close()
    const third = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    expect((await third.load()).retained.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7])
    await third.close()
  })

  it('refuses a bad frame in a segment that is not the last (STATE_CORRUPT), and a LevelDB journal of an earlier vvfs', async () => {
    const dir = await tempDir()
    await logOf(dir, 12)
    const [first] = await segFiles(dir)
    const fh = await open(join(dir, first), 'r+')
    await fh.write(Buffer.from([0xee]), 0, 1, (await fh.stat()).size - 10)
    await fh.close()
    expect(await codeOf(SegmentDurableLog.open(dir, { segmentBytes: SEG }))).toBe('STATE_CORRUPT')
    const old = await tempDir()
    await writeFile(join(old, 'CURRENT'), 'MANIFEST-000001\n')
    expect(await codeOf(SegmentDurableLog.open(old))).toBe('STATE_CORRUPT')
  })

  it('keeps a batch that is larger than a segment whole', async () => {
    const dir = await tempDir()
    const log = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    const batch: LogBatch = { entries: Array.from({ length: 20 }, (_, i) => entry(i + 1)) }
    await log.commit(batch)
    await log.commit({ entries: [entry(21)] })
    await log.close()
    const again = await SegmentDurableLog.open(dir, { segmentBytes: SEG })
    expect((await again.load()).retained.map((r) => r.seq)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1))
    await again.close()
  })
})

const ROUNDS = Number(process.env.VVFS_JOURNAL_LOG_ROUNDS ?? '12')

/**
 * The crash order: a journal on a segment log of 16 KiB segments (a segment
 * change every few groups) written by another process, killed at random
 * points — every other time a power cut (each file keeps what was synced).
 * After each: the log opens, its entries are consecutive from the trim point
 * on with the data of their numbers, everything the writer saw synced is
 * there, and numbering goes on past it.
 */
it(`keeps a consecutive, intact journal with every synced entry across ${ROUNDS} kill -9s and power cuts`, { timeout: 60_000 + ROUNDS * 10_000 }, async () => {
  const dir = await tempDir()
  const logDir = join(dir, 'state', 'journal')
  const tracker = new PowerCutTracker(join(dir, 'state'), join(dir, 'powercut.log'))
  const seed = Number(process.env.VVFS_JOURNAL_LOG_SEED ?? Date.now() % 100000)
  console.log(`VVFS_JOURNAL_LOG_SEED=${seed} (${dir})`)
  const r = rng(seed)
  let everDurable = 0
  let everTrimmed = 0
  for (let round = 0; round < ROUNDS; round++) {
    const cut = round % 2 === 1
    const child = spawn(process.execPath, [join(import.meta.dirname, 'journal-log-writer.mjs'), logDir, String(16 * 1024), String(r.int(1, 1 << 30))], {
      env: { ...process.env, ...powercutEnv(tracker.log) },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stderr = ''
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<void>((res) => child.once('exit', () => res()))
    let durable = 0
    let ready = false
    let readyAt = 0
    const lines = createInterface({ input: child.stdout! })
    // Every line the writer wrote before it died, read: 'exit' can come before the pipe is drained.
    const drained = new Promise<void>((res) => lines.once('close', () => res()))
    const isReady = new Promise<void>((res, rej) => {
      lines.on('line', (line) => {
        const [what, n] = line.split(' ')
        if (what === 'ready') {
          ready = true
          readyAt = Number(n)
          res()
        } else if (what === 'durable') durable = Math.max(durable, Number(n))
        else if (what === 'trim') everTrimmed = Math.max(everTrimmed, Number(n))
      })
      void exited.then(() => (ready ? undefined : rej(new Error(`the writer exited before it was ready: ${stderr}`))))
    })
    try {
      await isReady
      // Its restart made everything it found durable: at least what it reported before.
      expect(readyAt).toBeGreaterThanOrEqual(everDurable)
      await new Promise((res) => setTimeout(res, r.int(20, 400)))
    } finally {
      child.kill('SIGKILL')
      await exited
      await drained
    }
    if (cut) tracker.cut()
    everDurable = Math.max(everDurable, durable)
    const log = await SegmentDurableLog.open(logDir, { segmentBytes: 16 * 1024 })
    const j = await Journal.open(log, { epoch: 1 })
    const p = j.positions
    expect(p.lastAccepted).toBeGreaterThanOrEqual(everDurable)
    expect(p.trimmedThrough).toBeLessThanOrEqual(everTrimmed)
    for (let from = p.trimmedThrough + 1; from <= p.lastAccepted; ) {
      const got = await j.read(from, 1 << 20)
      expect(got.length).toBeGreaterThan(0)
      for (const e of got) {
        expect(e.seq).toBe(from)
        // The writer's entries carry their number; the flushes are this check's own appends of earlier rounds.
        if (e.kind !== 'flush') expect(e.data).toEqual(dataOf(e.seq))
        from++
      }
    }
    expect(j.append({ kind: 'flush', volume: 1 }).seq).toBe(p.lastAccepted + 1)
    await j.close()
    await log.close()
    // This process is outside the interposer: what its open synced (the last segment), the segment its
    // append may have begun and that append are made durable here and the tracker told, or the next cut
    // would drop them as never synced (a gap behind the next segment: VVFS_JOURNAL_LOG_SEED=94053).
    await syncTree(logDir)
    tracker.markDurable()
    everDurable = Math.max(everDurable, p.lastAccepted + 1)
  }
})
