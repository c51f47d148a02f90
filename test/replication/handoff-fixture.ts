/**
 * What the handoff tests under kill -9 share (test/replication/handoff-*.test.ts):
 * a replicated pair whose primary has two storage systems (a1, a2) and a
 * volume homed on a1; the numbered O_DIRECT|O_SYNC writer (seq-writer.mjs)
 * and the prefix check of its blocks (seq-blocks.mjs) — the same checks as
 * prefix-kills.soak.test.ts (whose copies stay there while the lead fixes
 * that test); migrations A ⇄ B and the waits between rounds.
 *
 * Cleanup: the caller's afterAll runs cleanupAll and removes `dirs()`.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs'
import { expect } from 'vitest'
import { SeqWriter, secondarySteady as steadyOf } from './seq-check.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { caughtUp, startPair, waitForPair, type Pair } from './daemons.js'
import { BLOCK, offsetOf, seqOfBlock } from './seq-blocks.mjs'

export const SIZE = 8 * 1024 * 1024
export const BLOCKS = SIZE / BLOCK
export const PAIR = 'handoff'

/**
 * A volume file's image read with O_DIRECT: past the kernel's page cache,
 * which may keep pages of a secondary's file read before the daemon applied
 * writes to it from the peer (they do not come through the mount).
 */
export function readImage(file: string): Buffer {
  const out = Buffer.alloc(SIZE)
  const fd = openSync(file, constants.O_RDONLY | constants.O_DIRECT)
  try {
    // A 1 MiB buffer is page-aligned (its own mapping), as O_DIRECT wants.
    const buf = Buffer.alloc(1024 * 1024)
    for (let at = 0; at < SIZE; at += buf.length) {
      const n = readSync(fd, buf, 0, buf.length, at)
      buf.copy(out, at, 0, n)
      if (n < buf.length) break
    }
  } finally {
    closeSync(fd)
  }
  return out
}

/** The last write number in an image; throws unless the image is exactly writes 1..that number. */
export function prefixOf(image: Buffer, label: string): number {
  const held = Array.from({ length: BLOCKS }, (_, i) => seqOfBlock(image, i, BLOCKS))
  const m = Math.max(0, ...held)
  const want = new Array<number>(BLOCKS).fill(0)
  for (let s = 1; s <= m; s++) want[offsetOf(s, BLOCKS)] = s
  const wrong = held.findIndex((s, i) => s !== want[i])
  if (wrong >= 0) throw new Error(`${label}: not a prefix of the writes: block ${wrong} holds write ${held[wrong]}, writes 1..${m} leave ${want[wrong]} there`)
  return m
}

/** The numbered writer (seq-check.ts) over one volume of BLOCKS blocks. */
export class Writer extends SeqWriter {
  constructor(ackLog: string) {
    super(ackLog, BLOCKS)
  }
}

/** Waits until the pair's secondary applied number holds still. */
export const secondarySteady = (d: DaemonHandle): Promise<void> => steadyOf(d, PAIR)

/** Two daemons; the primary's volume `vol` homed on a1 (a second system a2), replicated as PAIR and caught up. `powerLoss`: see startPair. */
export async function startHandoffPair(opts: { powerLoss?: boolean } = {}): Promise<Pair> {
  const p = await startPair(opts)
  await p.primary.client.call('storage.add', { name: 'a2', capacity: '1G' })
  await p.primary.client.call('volume.create', { name: 'vol', size: SIZE })
  await migrate(p.primary, 'a1')
  await migrationsDone(p.primary)
  await p.primary.client.call('replicate.start', { volume: 'vol', to: p.secondaryAddress, as: PAIR, peerKey: p.keyFile })
  await waitForPair(p.primary, PAIR, 'primary', caughtUp)
  return p
}

export async function migrate(d: DaemonHandle, to: string): Promise<void> {
  await d.client.call('migrate.start', { volume: 'vol', to })
}

/** Waits until no migration runs (one a kill interrupted resumes at the restart and finishes). */
export async function migrationsDone(d: DaemonHandle, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const { jobs } = await d.client.call('job.list', {})
    const running = jobs.filter((j) => j.kind !== 'replicate' && j.status !== 'concluded')
    if (running.length === 0) return
    if (Date.now() > end) throw new Error(`migrations still running after ${timeoutMs} ms: ${JSON.stringify(running)}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Waits for a daemon started with VVFS_CRASH_AT to kill itself at that step (fails if it does not within `ms`). */
export async function diesAt(d: DaemonHandle, point: string, ms = 20_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the primary did not die at ${point} within ${ms} ms (no handoff?); its log ends:\n${d.log().split('\n').slice(-30).join('\n')}`)), ms)))
  try {
    await Promise.race([d.exited(), late])
  } finally {
    clearTimeout(timer)
  }
}

/** The journal is at `home` (the handoff done) and every earlier home's journal is gone (its entries applied). */
export function journalAt(home: string) {
  return (s: Parameters<typeof caughtUp>[0]) => caughtUp(s) && s.home?.name === home && s.home.keptEpochs.length === 1
}

/** What no handoff may cause: a resync (the pair's log events). */
export function expectNoResync(d: DaemonHandle): void {
  const log = d.log()
  for (const event of ['replication.full_resync', 'replication.handoff_resync', 'replication.handoff_absorbed', 'replication.handoff_lost'])
    expect(log.includes(`"event":"${event}"`), `the primary logged ${event}: ${log.split('\n').filter((l) => l.includes(`"event":"${event}"`)).join('\n')}`).toBe(false)
  expect(/"event":"replication.state"[^\n]*"to":"resyncing"/.test(log), 'the pair went resyncing').toBe(false)
}

/** After catch-up: both images the same prefix of the writes, byte for byte. */
export function expectSameImages(p: Pair): number {
  const a = readImage(p.primary.file('vol'))
  const b = readImage(p.secondary.file(PAIR))
  const m = prefixOf(b, 'caught-up secondary')
  expect(m).toBe(prefixOf(a, 'final primary'))
  expect(Buffer.compare(a, b), 'images differ after catch-up').toBe(0)
  return m
}
