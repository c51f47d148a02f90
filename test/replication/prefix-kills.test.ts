/**
 * Prefix consistency under kill -9 (issue 13, "Must be shown"): a writer
 * issues numbered synchronous (O_DIRECT|O_SYNC) 4 KiB writes, each block
 * carrying its number, offset and a checksum, spread over the primary
 * volume with overwrites; kill -9 lands at random moments on the primary
 * daemon or on the secondary daemon (initial sync, shipping, applying,
 * trimming, checkpointing). After every restart:
 *   - the secondary's image is exactly writes 1..m for some m (no gap, no
 *     reorder, no torn or misdirected block),
 *   - the primary's image holds every acknowledged write (it is writes
 *     1..p with p ≥ the last acknowledged number, p ≤ the last issued),
 *   - m ≤ p: the secondary never holds a write the primary lacks;
 * and after catch-up the two images are byte-identical.
 *
 * VVFS_REPL_KILLS sets the number of kill points (default 30; `make soak`
 * runs 500; a round that kills both daemons at once counts two);
 * VVFS_REPL_VICTIM=both|primary|secondary kills only that one each round.
 *
 * The defect this caught: the journal layer sent a write's data below while
 * its entry was still being logged, so a kill between the two left the
 * primary holding a write no entry described; the secondary never got it and
 * showed a gap once later writes arrived (1 CI run in 3; about 1 run in 2
 * with VVFS_REPL_VICTIM=both and 40 kills). Now write-ahead
 * (test/replication/journal-layer.test.ts). A check reads an image only while it cannot change: the writer
 * stopped, and shipping paused (or the primary dead and the secondary's
 * applied number steady).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { cleanupAll, removeDir, type DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { BLOCK, offsetOf, seqOfBlock } from './seq-blocks.mjs'

const KILLS = Number(process.env.VVFS_REPL_KILLS ?? 30)
/** Every round kills this daemon (or both) instead of a random choice: for looping one case. */
const VICTIM = process.env.VVFS_REPL_VICTIM as 'both' | 'primary' | 'secondary' | undefined
const SIZE = 8 * 1024 * 1024
const BLOCKS = SIZE / BLOCK
const WRITER = join(import.meta.dirname, 'seq-writer.mjs')

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  if (p) for (const d of [p.primary.dir, p.secondary.dir, p.dir]) removeDir(d)
})

let seed = Number(process.env.VVFS_REPL_SEED ?? Date.now() % 100000)
const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32)

/** The last write number in an image; throws unless the image is exactly writes 1..that number. */
function prefixOf(image: Buffer, label: string): number {
  const held = Array.from({ length: BLOCKS }, (_, i) => seqOfBlock(image, i, BLOCKS))
  const m = Math.max(0, ...held)
  const want = new Array<number>(BLOCKS).fill(0)
  for (let s = 1; s <= m; s++) want[offsetOf(s, BLOCKS)] = s
  const wrong = held.findIndex((s, i) => s !== want[i])
  if (wrong >= 0) throw new Error(`${label}: not a prefix of the writes: block ${wrong} holds write ${held[wrong]}, writes 1..${m} leave ${want[wrong]} there`)
  return m
}

class Writer {
  private proc: ChildProcess | null = null
  private exit: Promise<void> = Promise.resolve()
  issued = 0

  constructor(private readonly ackLog: string) {}

  start(file: string, first: number): void {
    writeFileSync(this.ackLog, '')
    this.proc = spawn(process.execPath, [WRITER, file, String(BLOCKS), String(first), this.ackLog], { stdio: 'ignore' })
    this.exit = new Promise((r) => this.proc!.once('exit', () => r()))
    this.issued = first
  }

  /** The last acknowledged number of this run (first − 1 if none). */
  acked(): number {
    const lines = existsSync(this.ackLog) ? readFileSync(this.ackLog, 'utf8').trim().split('\n').filter(Boolean) : []
    return lines.length ? Number(lines[lines.length - 1]) : this.issued - 1
  }

  /** Waits (at most `ms`) until this run's first write was acknowledged: kills land while writes flow. */
  async firstAck(ms: number): Promise<void> {
    const end = Date.now() + ms
    while (this.acked() < this.issued && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  }

  /** Stops after the write under way; resolves once the process is gone. */
  async stop(): Promise<void> {
    this.proc?.kill('SIGTERM')
    await this.exit
  }

  exited(): Promise<void> {
    return this.exit
  }
}

/** Waits until the secondary's applied number holds still (a batch it was applying when the primary died is done). */
async function secondarySteady(d: DaemonHandle): Promise<void> {
  let last = -1
  for (;;) {
    const s = await pairStatus(d, 'prefix', 'secondary')
    if (s && s.lastApplied === last) return
    last = s?.lastApplied ?? -1
    await new Promise((r) => setTimeout(r, 150))
  }
}

it(`the secondary is always a prefix of the primary's acknowledged writes across ${KILLS} kill -9s of either daemon`, { timeout: 60_000 + KILLS * 15_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: SIZE })
  await primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, as: 'prefix', peerKey: p.keyFile })
  const writer = new Writer(join(p.dir, 'acked.log'))
  let next = 1
  const log: string[] = []
  let kills = 0
  for (let k = 0; kills < KILLS; k++) {
    writer.start(primary.file('vol'), next)
    await writer.firstAck(5000)
    await new Promise((r) => setTimeout(r, 50 + rand() * 400))
    const dice = rand()
    const victim = VICTIM ?? (kills + 1 < KILLS && dice < 0.3 ? 'both' : dice < 0.65 ? 'primary' : 'secondary')
    kills += victim === 'both' ? 2 : 1
    let m: number
    let held: number
    if (victim === 'both') {
      // Both sites crash at once; the secondary comes back first (nothing ships to it until the primary does).
      await Promise.all([primary.kill9(), secondary.kill9()])
      await writer.exited()
      const acked = writer.acked()
      await secondary.restart()
      m = prefixOf(readFileSync(secondary.file('prefix')), `round ${k}: secondary after a kill of both`)
      await primary.restart()
      held = prefixOf(readFileSync(primary.file('vol')), `round ${k}: primary after a kill of both`)
      expect(held, `round ${k}: the restarted primary lost an acknowledged write`).toBeGreaterThanOrEqual(acked)
      expect(held).toBeLessThanOrEqual(acked + 1)
    } else if (victim === 'primary') {
      await primary.kill9()
      await writer.exited()
      const acked = writer.acked()
      await secondarySteady(secondary)
      m = prefixOf(readFileSync(secondary.file('prefix')), `round ${k}: secondary after a kill of the primary`)
      await primary.restart()
      held = prefixOf(readFileSync(primary.file('vol')), `round ${k}: restarted primary`)
      expect(held, `round ${k}: the restarted primary lost an acknowledged write`).toBeGreaterThanOrEqual(acked)
      expect(held).toBeLessThanOrEqual(acked + 1)
    } else {
      await secondary.kill9()
      await writer.stop()
      const acked = writer.acked()
      await primary.client.call('replicate.pause', { pair: 'prefix' })
      held = prefixOf(readFileSync(primary.file('vol')), `round ${k}: primary`)
      expect(held).toBeGreaterThanOrEqual(acked)
      await secondary.restart()
      m = prefixOf(readFileSync(secondary.file('prefix')), `round ${k}: restarted secondary`)
      await primary.client.call('replicate.resume', { pair: 'prefix' })
    }
    expect(m, `round ${k}: the secondary holds write ${m}, the primary only 1..${held}`).toBeLessThanOrEqual(held)
    log.push(`${victim}:${m}/${held}`)
    if (process.env.VVFS_REPL_VERBOSE) console.log(`round ${k}: ${log[log.length - 1]} at ${Date.now() % 100000}`)
    next = held + 1
  }
  const done = await waitForPair(primary, 'prefix', 'primary', caughtUp, 60_000)
  expect(done.lastApplied).toBeGreaterThan(0)
  const a = readFileSync(primary.file('vol'))
  const b = readFileSync(secondary.file('prefix'))
  expect(prefixOf(b, 'caught-up secondary')).toBe(prefixOf(a, 'final primary'))
  expect(Buffer.compare(a, b), `images differ after catch-up (rounds: ${log.join(' ')})`).toBe(0)
  // Some kills must have landed with writes still to ship (else the test shows little).
  expect(log.some((l) => Number(l.split(':')[1]!.split('/')[0]) < Number(l.split('/')[1]))).toBe(true)
})
