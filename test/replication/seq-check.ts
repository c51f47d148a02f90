/**
 * The kill tests' writer and checks (prefix-kills.test.ts, group-kills.test.ts):
 * a numbered synchronous writer in its own process (seq-writer.mjs) that
 * logs each acknowledged number, and the check that images are exactly the
 * writes 1..m of one sequence — of one volume, or of a consistency group
 * whose volumes share the sequence (write s goes to volume s % n).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cleanupAll, removeDir, type DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, pairStatus, waitForPair, type Pair } from './daemons.js'
import { offsetOf, seqOfBlock } from './seq-blocks.mjs'

const WRITER = join(import.meta.dirname, 'seq-writer.mjs')

/**
 * The last write number m such that image i is exactly the writes s ≤ m
 * with s % n = i (n images); throws unless the images are that — no gap,
 * no reorder, no torn, misdirected or foreign block.
 */
export function prefixOf(images: Buffer[], blocks: number, label: string): number {
  const n = images.length
  const held = images.map((image) => Array.from({ length: blocks }, (_, b) => seqOfBlock(image, b, blocks)))
  const m = Math.max(0, ...held.flat())
  const want = images.map(() => new Array<number>(blocks).fill(0))
  for (let s = 1; s <= m; s++) want[s % n]![offsetOf(s, blocks)] = s
  for (let i = 0; i < n; i++) {
    const wrong = held[i]!.findIndex((s, b) => s !== want[i]![b])
    if (wrong >= 0) {
      const which = n > 1 ? ` of volume ${i}` : ''
      throw new Error(`${label}: not a prefix of the writes: block ${wrong}${which} holds write ${held[i]![wrong]}, writes 1..${m} leave ${want[i]![wrong]} there`)
    }
  }
  return m
}

/** The numbered writer, one process per run; kills land while it writes. */
export class SeqWriter {
  private proc: ChildProcess | null = null
  private exit: Promise<void> = Promise.resolve()
  issued = 0

  constructor(
    private readonly ackLog: string,
    private readonly blocks: number,
  ) {}

  /** Starts writing `first`, `first` + 1, … to `files` (write s to files[s % n]). */
  start(files: string | string[], first: number): void {
    writeFileSync(this.ackLog, '')
    this.proc = spawn(process.execPath, [WRITER, ([] as string[]).concat(files).join(','), String(this.blocks), String(first), this.ackLog], { stdio: 'ignore' })
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
export async function secondarySteady(d: DaemonHandle, pair: string): Promise<void> {
  let last = -1
  for (;;) {
    const s = await pairStatus(d, pair, 'secondary')
    if (s && s.lastApplied === last) return
    last = s?.lastApplied ?? -1
    await new Promise((r) => setTimeout(r, 150))
  }
}

export type Victim = 'both' | 'primary' | 'secondary'

export interface KillRounds {
  primary: DaemonHandle
  secondary: DaemonHandle
  pair: string
  /** The primary's volume files, in the sequence's order (write s to files[s % n]). */
  primaryFiles: () => string[]
  /** The secondary's files of the same volumes, same order. */
  secondaryFiles: () => string[]
  blocks: number
  /** Kill points; a round that kills both daemons counts two. */
  kills: number
  /** Every round kills this one instead of a random choice. */
  victim?: Victim
  ackLog: string
  rand: () => number
  verbose?: boolean
}

const images = (files: string[]) => files.map((f) => readFileSync(f))

/**
 * Rounds of: the writer runs, a crash lands on the primary, the secondary
 * or both at a random moment (kill -9; a power cut — unsynced data gone —
 * for daemons started in power-loss mode), the dead restart; after each, the secondary
 * is exactly writes 1..m of the sequence, the primary 1..p with every
 * acknowledged write (p ≤ acknowledged + 1, the write under way), and
 * m ≤ p. Then, caught up, the images are byte-identical. Returns the
 * rounds as `victim:m/p`.
 */
export async function killRounds(o: KillRounds, expect: (cond: boolean, why: string) => void): Promise<string[]> {
  const { primary, secondary, pair, blocks } = o
  const writer = new SeqWriter(o.ackLog, blocks)
  let next = 1
  const log: string[] = []
  let kills = 0
  const primaryHolds = (acked: number, label: string) => {
    const held = prefixOf(images(o.primaryFiles()), blocks, label)
    expect(held >= acked, `${label}: the primary lost an acknowledged write (holds 1..${held}, ${acked} acknowledged)`)
    return held
  }
  for (let k = 0; kills < o.kills; k++) {
    writer.start(o.primaryFiles(), next)
    await writer.firstAck(5000)
    // Every third round the secondary is paused first, so the crash surely finds
    // writes still to ship (on a loaded machine it otherwise keeps up every time).
    const paused = k % 3 === 0
    if (paused) secondary.proc.kill('SIGSTOP')
    await new Promise((r) => setTimeout(r, (paused ? 300 : 50) + o.rand() * 400))
    const dice = o.rand()
    const victim: Victim = o.victim ?? (kills + 1 < o.kills && dice < 0.3 ? 'both' : dice < 0.65 ? 'primary' : 'secondary')
    kills += victim === 'both' ? 2 : 1
    const resumeSecondary = () => {
      if (paused && secondary.proc.exitCode === null && secondary.proc.signalCode === null) secondary.proc.kill('SIGCONT')
    }
    let m: number
    let held: number
    if (victim === 'both') {
      // Both sites crash at once; the secondary comes back first (nothing ships to it until the primary does).
      await Promise.all([primary.crash(), secondary.crash()])
      await writer.exited()
      const acked = writer.acked()
      await secondary.restart()
      m = prefixOf(images(o.secondaryFiles()), blocks, `round ${k}: secondary after a kill of both`)
      await primary.restart()
      held = primaryHolds(acked, `round ${k}: primary after a kill of both`)
      expect(held <= acked + 1, `round ${k}: the primary holds ${held}, more than the write under way after ${acked}`)
    } else if (victim === 'primary') {
      await primary.crash()
      resumeSecondary()
      await writer.exited()
      const acked = writer.acked()
      await secondarySteady(secondary, pair)
      m = prefixOf(images(o.secondaryFiles()), blocks, `round ${k}: secondary after a kill of the primary`)
      await primary.restart()
      held = primaryHolds(acked, `round ${k}: restarted primary`)
      expect(held <= acked + 1, `round ${k}: the primary holds ${held}, more than the write under way after ${acked}`)
    } else {
      await secondary.crash()
      await writer.stop()
      const acked = writer.acked()
      await primary.client.call('replicate.pause', { pair })
      held = primaryHolds(acked, `round ${k}: primary`)
      await secondary.restart()
      m = prefixOf(images(o.secondaryFiles()), blocks, `round ${k}: restarted secondary`)
      await primary.client.call('replicate.resume', { pair })
    }
    expect(m <= held, `round ${k}: the secondary holds write ${m}, the primary only 1..${held}`)
    log.push(`${victim}:${m}/${held}`)
    if (o.verbose) console.log(`round ${k}: ${log[log.length - 1]} at ${Date.now() % 100000}`)
    next = held + 1
  }
  const done = await waitForPair(primary, pair, 'primary', caughtUp, 60_000)
  expect(done.lastApplied > 0, 'nothing was applied')
  const a = images(o.primaryFiles())
  const b = images(o.secondaryFiles())
  const [mb, ma] = [prefixOf(b, blocks, 'caught-up secondary'), prefixOf(a, blocks, 'final primary')]
  expect(mb === ma, `the caught-up secondary is writes 1..${mb}, the primary 1..${ma} (rounds: ${log.join(' ')}; primary ${JSON.stringify(done)})`)
  a.forEach((img, i) => expect(Buffer.compare(img, b[i]!) === 0, `images of volume ${i} differ after catch-up (rounds: ${log.join(' ')})`))
  // Some kills must have landed with writes still to ship (else the test shows little).
  expect(
    log.some((l) => Number(l.split(':')[1]!.split('/')[0]) < Number(l.split('/')[1])),
    `no kill landed with writes still to ship (rounds: ${log.join(' ')})`,
  )
  return log
}

/** A kill test's random choices, printed so VVFS_REPL_SEED can repeat a run. */
export function killDice(): () => number {
  let seed = Number(process.env.VVFS_REPL_SEED ?? Date.now() % 100000)
  console.log(`VVFS_REPL_SEED=${seed}`)
  return () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32)
}

/** After a test file's pair: its processes, mounts and directories, even when a test failed. */
export async function removePair(p: Pair | undefined): Promise<void> {
  await cleanupAll()
  if (p) for (const d of [p.primary.dir, p.secondary.dir, p.dir]) removeDir(d)
}
