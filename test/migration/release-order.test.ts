/**
 * The end of a migration releases its retained sources (lib/migration/
 * runner.ts releaseSources). A retained record names its source as the copy
 * a cancel returns to, without copying when the extent is clean; so the
 * record must be gone, durably, before the source it names is cleared.
 * Cleared first (before 2026-12-04), a crash in the release left records of
 * cleared sources, and a cancel after the restart switched those extents
 * back to zeros.
 */
import { expect, it } from 'vitest'
import { decodeExtentRecord, retainedPrefix } from '../../lib/relay/key-space.js'
import type { ExtentEntry } from '../../lib/relay/extent-entry.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { stacksPerTest } from '../helpers/stack.js'

const MiB = 1024 * 1024
const newStack = stacksPerTest('vvfs-release-order-')

const sameEntry = (a: ExtentEntry, b: ExtentEntry) => JSON.stringify(a, (_k, v) => (v instanceof Map ? [...v] : v)) === JSON.stringify(b, (_k, v) => (v instanceof Map ? [...v] : v))

it('drops each retained record, and syncs that, before it clears the source the record names', async () => {
  const stack = await newStack({ systems: 3, capacity: 64 * MiB, size: 8 * MiB })
  const model = await fill(stack, 8 * MiB)
  const toSid = stack.pool.list()[0]!.sid
  // Retained-record deletions put since the last completed MapStore sync.
  let dropsUnsynced = 0
  const putMany = stack.maps.putMany.bind(stack.maps)
  stack.maps.putMany = (items) => {
    dropsUnsynced += items.filter((i) => i.key[0] === retainedPrefix()[0] && i.produce() === null).length
    return putMany(items)
  }
  const sync = stack.maps.sync.bind(stack.maps)
  stack.maps.sync = async () => {
    const before = dropsUnsynced
    await sync()
    dropsUnsynced -= before
  }
  const seen: { named: boolean; unsynced: number }[] = []
  const discard = stack.extents.discardEntry.bind(stack.extents)
  stack.extents.discardEntry = async (entry) => {
    let named = false
    for await (const [, value] of stack.maps.scan(retainedPrefix())) {
      const { entry: source } = decodeExtentRecord(value)
      if (source && sameEntry(source, entry)) named = true
    }
    seen.push({ named, unsynced: dropsUnsynced })
    return discard(entry)
  }
  await runJob(stack, toSid, 'direct', async () => {})
  expect(seen.length).toBeGreaterThan(4)
  expect(seen.filter((s) => s.named), 'a source was cleared while a retained record still named it').toEqual([])
  expect(seen.filter((s) => s.unsynced > 0), 'a source was cleared before the drop of its record was synced').toEqual([])
  await expectContent(stack, model)
})
