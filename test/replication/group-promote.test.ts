/**
 * A consistency group's promote (issue 13.6/13.7): two volumes replicated as
 * one group, written alternately by the numbered writer (write s to volume
 * s % 2, seq-check.ts). After a kill -9 of the primary, `replicate promote G`
 * on the secondary makes both volumes writable together at the group's one
 * applied number: both are the same prefix 1..m of the combined sequence
 * (prefixOf throws if one volume is ahead of the other), and the promote
 * survives a kill -9. Status shows the group on both sides. Resolve is
 * refused for a group (NOT_SUPPORTED), changing nothing. Demote and
 * reverse of a group: group-failback.test.ts.
 *
 * A kill -9 in the middle of a group's promote (VVFS_CRASH_AT, lib/
 * crash-points.ts): before its record → no volume promoted; after the first
 * volume was made writable → after the restart every volume is. A forced
 * promote while the primary still ships reads the applied number only once
 * the pair is fenced and settled: no batch lands past it.
 */
import { openSync, closeSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { writeAt } from '../helpers/files.js'
import { caughtUp, pairStatus, startPair, waitForPair, type Pair } from './daemons.js'
import { filledWith, json, vvfs } from './failover-helpers.js'
import { BLOCK } from './seq-blocks.mjs'
import { prefixOf, secondarySteady, SeqWriter, removePair } from './seq-check.js'

const SIZE = 4 * 1024 * 1024
const BLOCKS = SIZE / BLOCK
const GROUP = 'pg'
const LOCAL = ['pg-red', 'pg-blue']

let p: Pair | undefined
afterEach(async () => {
  await removePair(p)
  p = undefined
})

/** Two volumes replicated as group `pg`; the writer has written (and the secondary applied) some of the combined sequence. */
async function groupWritten(pair: Pair): Promise<SeqWriter> {
  const { primary } = pair
  for (const name of ['red', 'blue']) await primary.client.call('volume.create', { name, size: SIZE })
  const started = json(vvfs(primary)('replicate', 'start', 'red', 'blue', '--group', GROUP, '--to', pair.secondaryAddress, '--peer-key', pair.keyFile, '--json'))
  expect(started).toMatchObject({ pair: GROUP, group: GROUP, volume: 'red,blue', role: 'primary' })
  await waitForPair(primary, GROUP, 'primary', caughtUp)
  const writer = new SeqWriter(join(pair.dir, 'acked.log'), BLOCKS)
  writer.start([primary.file('red'), primary.file('blue')], 1)
  await writer.firstAck(10_000)
  // Enough writes that both volumes hold many: wait on the count, not a time.
  const end = Date.now() + 20_000
  while (writer.acked() < 60 && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  expect(writer.acked()).toBeGreaterThanOrEqual(60)
  return writer
}

const images = (d: DaemonHandle) => LOCAL.map((name) => readFileSync(d.file(name)))

function writable(file: string): boolean {
  try {
    closeSync(openSync(file, 'r+'))
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EROFS') return false
    throw err
  }
}

/** The daemon killed itself at its crash point (within `ms`). */
async function diedAtCrashPoint(d: DaemonHandle, ms = 30_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the daemon did not die at its crash point within ${ms} ms`)), ms)))
  try {
    await Promise.race([d.exited(), late])
  } finally {
    clearTimeout(timer)
  }
}

function statusJson(d: DaemonHandle, pair: string): ReplicationInfo[] {
  const r = vvfs(d)('replicate', 'status', pair, '--json')
  expect(r.code, r.err).toBe(0)
  return (JSON.parse(r.out) as { pairs: ReplicationInfo[] }).pairs
}

/** The promoted group's row: both volumes, one number, writable, each the same prefix. */
function checkPromoted(d: DaemonHandle, promotedAt: number): number {
  const [row, ...more] = statusJson(d, GROUP)
  expect(more).toEqual([])
  expect(row).toMatchObject({ pair: GROUP, role: 'primary', state: 'promoted', group: GROUP, volume: LOCAL.join(','), promotedAt, epoch: 2 })
  for (const name of LOCAL) expect(writable(d.file(name)), `${name} writable`).toBe(true)
  return prefixOf(images(d), BLOCKS, 'promoted group')
}

describe('a consistency group promoted on the secondary', () => {
  it('after kill -9 of the primary: both volumes writable together, the same prefix of the combined sequence, at one applied number; survives kill -9', { timeout: 120_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const writer = await groupWritten(p)
    // Group-level status on both sides, while it runs.
    const [prim] = statusJson(primary, GROUP)
    expect(prim).toMatchObject({ pair: GROUP, role: 'primary', group: GROUP, volume: 'red,blue' })
    const sec = await waitForPair(secondary, GROUP, 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
    expect(sec).toMatchObject({ group: GROUP, volume: LOCAL.join(','), consistent: true })
    // The same refusal as a single pair's: the primary is reachable and the pair healthy.
    const refused = vvfs(secondary)('replicate', 'promote', GROUP)
    expect(refused.code).toBe(1)
    expect(refused.err).toMatch(/PROMOTE_REFUSED/)
    for (const name of LOCAL) expect(writable(secondary.file(name))).toBe(false)

    // The primary dies with the writer writing (and the secondary maybe behind).
    secondary.proc.kill('SIGSTOP')
    await new Promise((r) => setTimeout(r, 200))
    await primary.kill9()
    secondary.proc.kill('SIGCONT')
    await writer.exited()
    await secondarySteady(secondary, GROUP)
    // Once its reports are older than PEER_ALIVE_MS (3 s) the primary is unreachable: promote needs no --force.
    const applied = (await waitForPair(secondary, GROUP, 'secondary', (s) => (s.failover?.peer?.seenSecondsAgo ?? 0) > 3.5, 30_000)).lastApplied
    const promoted = json(vvfs(secondary)('replicate', 'promote', GROUP, '--json'))
    expect(promoted).toMatchObject({ pair: GROUP, state: 'promoted', role: 'primary', group: GROUP, volume: LOCAL.join(','), promotedAt: applied, epoch: 2 })
    const m = checkPromoted(secondary, applied)
    expect(m, 'the promoted group holds some of the writes').toBeGreaterThan(0)
    // Resolve is built for one volume per pair only: refused for a group, before anything changes.
    const resolve = vvfs(secondary)('replicate', 'resolve', GROUP, '--discard', 'local', '--to', `127.0.0.1:${p.primaryPort}`)
    expect(resolve.code).toBe(1)
    expect(resolve.err).toMatch(/NOT_SUPPORTED.*consistency group/)
    // Writes on both volumes, kept across kill -9 of the promoted side.
    writeAt(secondary.file(LOCAL[0]!), 0, Buffer.alloc(BLOCK, 0xa1))
    writeAt(secondary.file(LOCAL[1]!), BLOCK, Buffer.alloc(BLOCK, 0xb2))
    await secondary.kill9()
    await secondary.restart()
    const [row] = statusJson(secondary, GROUP)
    expect(row).toMatchObject({ state: 'promoted', promotedAt: applied, volume: LOCAL.join(',') })
    expect(row!.lastWritten).toBeGreaterThan(applied)
    for (const name of LOCAL) expect(writable(secondary.file(name))).toBe(true)
    expect(filledWith(secondary.file(LOCAL[0]!), 0, BLOCK, 0xa1)).toBe(true)
    expect(filledWith(secondary.file(LOCAL[1]!), BLOCK, BLOCK, 0xb2)).toBe(true)
  })

  it('a forced promote while the primary ships: no batch is applied past the promote number (the defect: promote read the number before the batches in flight landed)', { timeout: 120_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const writer = await groupWritten(p)
    // Batches arrive while the promote runs: the pair is fenced and settled before its number is read.
    const promoted = json(vvfs(secondary)('replicate', 'promote', GROUP, '--force', '--json'))
    const at = promoted.promotedAt!
    await writer.stop()
    const m = checkPromoted(secondary, at)
    // The primary's last acknowledgement from the secondary: at most the promote's number.
    const prim = await waitForPair(primary, GROUP, 'primary', (s) => s.link === 'down')
    expect(prim.lastApplied, `the secondary acknowledged applying ${prim.lastApplied}, promoted at ${at}`).toBeLessThanOrEqual(at)
    expect(prim.lastError?.code).toBe('EPOCH_STALE')
    // What the volumes hold is the old primary's writes through that number: a prefix the primary holds too.
    expect(m).toBeLessThanOrEqual(prefixOf([primary.file('red'), primary.file('blue')].map((f) => readFileSync(f)), BLOCKS, 'primary'))
  })

  it('kill -9 in the middle of a group promote: before its record no volume is promoted, after the first volume every one is', { timeout: 120_000 }, async () => {
    p = await startPair()
    const { primary, secondary } = p
    const writer = await groupWritten(p)
    await writer.stop()
    await waitForPair(primary, GROUP, 'primary', caughtUp)
    const m = prefixOf(images(secondary), BLOCKS, 'secondary before the promote')
    const applied = (await pairStatus(secondary, GROUP, 'secondary'))!.lastApplied

    // Killed before the promote's record: nothing changed.
    await secondary.restart({ VVFS_CRASH_AT: 'replication.promote.before-record' })
    await expect(secondary.client.call('replicate.promote', { pair: GROUP, force: true })).rejects.toThrow()
    await diedAtCrashPoint(secondary)
    await secondary.restart({})
    expect(await pairStatus(secondary, GROUP, 'secondary')).toMatchObject({ group: GROUP, volume: LOCAL.join(','), lastApplied: applied })
    expect(await pairStatus(secondary, GROUP, 'primary')).toBeUndefined()
    for (const name of LOCAL) expect(writable(secondary.file(name)), `${name} still a replica`).toBe(false)
    expect(prefixOf(images(secondary), BLOCKS, 'secondary after a kill before the record')).toBe(m)

    // Killed after the first volume was made writable, before the second: the restart finishes both.
    await secondary.restart({ VVFS_CRASH_AT: 'replication.promote.member' })
    await expect(secondary.client.call('replicate.promote', { pair: GROUP, force: true })).rejects.toThrow()
    await diedAtCrashPoint(secondary)
    await secondary.restart({})
    expect(checkPromoted(secondary, applied)).toBe(m)
    expect(await pairStatus(secondary, GROUP, 'secondary')).toBeUndefined()
  })
})
