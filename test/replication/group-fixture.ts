/**
 * The consistency-group promote tests' pair (group-promote*.test.ts): two
 * volumes `red` and `blue` replicated as group `pg` (`pg-red`, `pg-blue` on
 * the secondary) with the numbered writer writing them alternately
 * (seq-check.ts), and the checks of a promoted group; the group-resolve
 * tests' split-brain of the same group (groupSplit).
 */
import { closeSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import type { DaemonHandle } from '../helpers/daemon.js'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { writeAt } from '../helpers/files.js'
import { caughtUp, waitForPair, type Pair } from './daemons.js'
import { json, vvfs } from './failover-helpers.js'
import { BLOCK } from './seq-blocks.mjs'
import { prefixOf, SeqWriter } from './seq-check.js'

export const SIZE = 4 * 1024 * 1024
export const BLOCKS = SIZE / BLOCK
export const GROUP = 'pg'
export const LOCAL = ['pg-red', 'pg-blue']

/** Two volumes replicated as group `pg`; the writer has written (and the secondary applied) some of the combined sequence. */
export async function groupWritten(pair: Pair): Promise<SeqWriter> {
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

export const images = (d: DaemonHandle) => LOCAL.map((name) => readFileSync(d.file(name)))

export function writable(file: string): boolean {
  try {
    closeSync(openSync(file, 'r+'))
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EROFS') return false
    throw err
  }
}

/** The daemon killed itself at its crash point (within `ms`). */
export async function diedAtCrashPoint(d: DaemonHandle, ms = 30_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the daemon did not die at its crash point within ${ms} ms`)), ms)))
  try {
    await Promise.race([d.exited(), late])
  } finally {
    clearTimeout(timer)
  }
}

export function statusJson(d: DaemonHandle, pair: string): ReplicationInfo[] {
  const r = vvfs(d)('replicate', 'status', pair, '--json')
  expect(r.code, r.err).toBe(0)
  return (JSON.parse(r.out) as { pairs: ReplicationInfo[] }).pairs
}

/** The promoted group's row: both volumes, one number, writable, each the same prefix. */
export function checkPromoted(d: DaemonHandle, promotedAt: number): number {
  const [row, ...more] = statusJson(d, GROUP)
  expect(more).toEqual([])
  expect(row).toMatchObject({ pair: GROUP, role: 'primary', state: 'promoted', group: GROUP, volume: LOCAL.join(','), promotedAt, epoch: 2 })
  for (const name of LOCAL) expect(writable(d.file(name)), `${name} writable`).toBe(true)
  return prefixOf(images(d), BLOCKS, 'promoted group')
}

export const PRIMARY = ['red', 'blue']
const MiB = 1024 * 1024

export type Write = [file: string, offset: number, length: number, byte: number]
export const write = (writes: Write[]) => writes.forEach(([file, offset, length, byte]) => writeAt(file, offset, Buffer.alloc(length, byte)))
export const bytesOf = (writes: Write[]) => writes.reduce((n, [, , l]) => n + l, 0)
/** Extents touched, per volume: a copy of each is the most a resolve ships beyond the entries. */
const touchedBy = (writes: Write[][], volumeOf: (file: string) => string) => new Set(writes.flat().map(([f, o]) => `${volumeOf(f)}:${Math.floor(o / EXTENT_SIZE)}`)).size
export const readOnly = (d: DaemonHandle, names: string[]) => names.forEach((name) => expect(() => writeAt(d.file(name), 0, Buffer.alloc(1))).toThrow(/EROFS|read-only/))

/** A write's volume, the same name on both sides (`pg-red` is `red`). */
const volumeOf = (file: string) => file.split('/').pop()!.replace(/^pg-/, '')
/** The most a resolve ships: entries for what the kept side wrote, a copy of each extent either side touched (never a full copy). */
export const shippedBound = (kept: Write[], discarded: Write[]) => bytesOf(kept) + touchedBy([kept, discarded], volumeOf) * EXTENT_SIZE
/** The least it ships when the discarded writes hit extents allocated whole on the kept side: those entries, and a copy of each extent the discarded side touched. */
export const shippedFloor = (kept: Write[], discarded: Write[]) => bytesOf(kept) + touchedBy([discarded], volumeOf) * EXTENT_SIZE

/** Split-brain shown for the group on both daemons (one row each, both volumes), nothing merged. */
export async function splitBoth(promoted: DaemonHandle, other: DaemonHandle, volumes: { promoted: string[]; other: string[] }): Promise<void> {
  const a = await waitForPair(promoted, GROUP, 'primary', (s) => s.state === 'split-brain')
  const b = await waitForPair(other, GROUP, 'primary', (s) => s.state === 'split-brain')
  expect(a).toMatchObject({ group: GROUP, volume: volumes.promoted.join(','), failover: { role: 'promoted', relation: 'split-brain' } })
  expect(b).toMatchObject({ group: GROUP, volume: volumes.other.join(','), failover: { relation: 'split-brain', peer: { role: 'promoted' } } })
  expect(a.failover?.commonSeq).toBe(b.failover?.commonSeq)
  // Reverse does not pick a side.
  expect(vvfs(promoted)('replicate', 'reverse', GROUP).err).toMatch(/SPLIT_BRAIN/)
}

/** `red` and `blue` (16 MiB, four allocated 1 MiB extents each: a full copy would ship 8 MiB) replicated as group `pg`, caught up. */
export async function groupOfFourExtents(pair: Pair): Promise<void> {
  const { primary } = pair
  for (const name of PRIMARY) await primary.client.call('volume.create', { name, size: 16 * MiB })
  PRIMARY.forEach((name, i) => {
    for (let x = 0; x < 4; x++) writeAt(primary.file(name), x * 4 * MiB, Buffer.alloc(EXTENT_SIZE, 0x10 + 4 * i + x))
  })
  json(vvfs(primary)('replicate', 'start', ...PRIMARY, '--group', GROUP, '--to', pair.secondaryAddress, '--peer-key', pair.keyFile, '--json'))
  await waitForPair(primary, GROUP, 'primary', caughtUp)
}

/**
 * The group-resolve tests' split-brain: groupOfFourExtents, a forced
 * promote of the group, then writes on both volumes of both sides;
 * split-brain shown on both. `kept`: the promoted side's writes.
 */
export async function groupSplit(pair: Pair): Promise<{ kept: Write[]; discarded: Write[] }> {
  const { primary, secondary } = pair
  await groupOfFourExtents(pair)
  await waitForPair(secondary, GROUP, 'secondary', (s) => s.failover?.peer?.role === 'primary' && s.failover.peer.seenSecondsAgo < 2)
  expect(json(vvfs(secondary)('replicate', 'promote', GROUP, '--force', '--json'))).toMatchObject({ state: 'promoted', volume: LOCAL.join(','), epoch: 2 })
  // Into allocated extents only, so that each extent a resolve copies is a full extent of data (shippedFloor).
  const kept: Write[] = [
    [secondary.file(LOCAL[0]!), 4 * MiB + 4096, 8192, 0xa1],
    [secondary.file(LOCAL[1]!), 8 * MiB + 12288, 65536, 0xa2],
  ]
  const discarded: Write[] = [
    [primary.file(PRIMARY[0]!), 12 * MiB, 4096, 0xb1],
    [primary.file(PRIMARY[1]!), 4096, 4096, 0xb2],
    [primary.file(PRIMARY[1]!), 12 * MiB + 8192, 4096, 0xb3],
  ]
  write(kept)
  write(discarded)
  await splitBoth(secondary, primary, { promoted: LOCAL, other: PRIMARY })
  return { kept, discarded }
}
