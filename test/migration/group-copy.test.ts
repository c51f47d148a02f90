/**
 * A migration's groups of copies (issue 17, target 4): while hosts are idle
 * the runner copies several extents under one lock of their range, syncs
 * each destination once, then writes every switch (MigrationRunner.moveGroup).
 * Claims: each switch is written only once the copy it points at would
 * survive a power cut of its storage system (MemoryChunkStore's model: a
 * logged batch survives once a sync covered it); groups of several extents
 * do form; the job still ends with the volume whole at its destination.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { GROUP_EXTENTS } from '../../lib/migration/runner.js'
import { entryChunks } from '../../lib/relay/extent-entry.js'
import { VolumeExtents } from '../../lib/relay/extent-ops.js'
import type { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { memorySystems, openStack, type Stack } from '../helpers/stack.js'

const MiB = 1024 * 1024

const dirs: string[] = []
const stacks: Stack[] = []
afterEach(async () => {
  vi.restoreAllMocks()
  for (const s of stacks.splice(0)) await s.close()
  dirs.splice(0).forEach(removeDir)
})

describe('a migration copies groups of extents while hosts are idle', () => {
  it('writes each switch only once its copy would survive a power cut, in groups of several extents', async () => {
    const dir = tempDir('vvfs-group-copy-')
    dirs.push(dir)
    const size = 48 * MiB
    const stack = await openStack({ dir, systems: 3, capacity: 128 * MiB, size, systemsFrom: memorySystems }, true)
    stacks.push(stack)
    const model = await fill(stack, size)
    const lost: string[] = []
    let switches = 0
    const switchExtent = VolumeExtents.prototype.switchExtent
    vi.spyOn(VolumeExtents.prototype, 'switchExtent').mockImplementation(async function (this: VolumeExtents, extent, expected, next, extra) {
      switches++
      for (const [sid, pcas] of entryChunks(next)) {
        const store = stack.pool.get(sid).chunkStore as MemoryChunkStore
        const now = await store.readMany(pcas)
        const kept = store.readAfterPowerCut(pcas)
        const differ = pcas.filter((_, i) => !(now[i] === undefined ? kept[i] === undefined : kept[i]?.equals(now[i]!)))
        if (differ.length > 0) lost.push(`extent ${extent}: ${differ.length} chunks on system ${sid}`)
      }
      return switchExtent.call(this, extent, expected, next, extra)
    })
    const groups: number[] = []
    const lock = stack.extents.lock.bind(stack.extents)
    stack.extents.lock = (extent, count) => {
      groups.push(count ?? 1)
      return lock(extent, count)
    }
    const job = await runJob(stack, 2, 'direct', async () => {})
    expect(job).toMatchObject({ status: 'concluded', result: 'completed' })
    expect(switches).toBeGreaterThan(20)
    expect(lost).toEqual([])
    expect(Math.max(...groups)).toBe(GROUP_EXTENTS)
    expect([...stack.map.allocationBySystem().keys()]).toEqual([2])
    await expectContent(stack, model)
  })
})
