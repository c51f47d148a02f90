/**
 * The consistency-group promote tests' pair (group-promote*.test.ts): two
 * volumes `red` and `blue` replicated as group `pg` (`pg-red`, `pg-blue` on
 * the secondary) with the numbered writer writing them alternately
 * (seq-check.ts), and the checks of a promoted group.
 */
import { closeSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect } from 'vitest'
import type { ReplicationInfo } from '../../lib/control/schema.js'
import type { DaemonHandle } from '../helpers/daemon.js'
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
