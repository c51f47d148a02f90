/**
 * The migration runner and reclaim through the extent operations only
 * (ExtentOps), over the stack builder's stack, for each kind of storage
 * system the stack can be built over: a job moves a volume while a host
 * keeps writing and reading it, a cancelled job gives it back whole, and
 * reclaim frees the blocks ext4 calls free without touching the rest.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { reclaimVolume, type ReclaimableVolume } from '../../lib/manager/reclaim.js'
import type { CopyMode } from '../../lib/migration/job.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { payload, range, rng, type VolumeModel } from '../helpers/model.js'
import { STORES, stacksPerTest, type Stack, type SystemFactory } from '../helpers/stack.js'
import { debugfs, mkfs, patternFile } from '../reclaim/images.js'

const MiB = 1024 * 1024

const newStack = stacksPerTest('vvfs-over-')

function stackOver(systemsFrom: SystemFactory, size: number) {
  return newStack({ systems: 3, capacity: 32 * MiB, size, systemsFrom })
}

/** A host that writes and verifies reads until `until` settles. */
async function busyHost(stack: Stack, model: VolumeModel, until: Promise<unknown>): Promise<number> {
  const r = rng(9)
  let done = false
  void until.finally(() => (done = true))
  let ops = 0
  while (!done) {
    const [offset, len] = range(r, model.size, 128 * 1024)
    if (r.next() < 0.5) {
      const data = payload(r, len)
      await stack.volume.write(offset, data)
      model.write(offset, data)
    } else {
      const buf = Buffer.alloc(len)
      await stack.volume.read(offset, len, buf)
      if (!buf.equals(model.read(offset, len))) throw new Error(`read of ${len} at ${offset} during the job differs from the model`)
    }
    if (++ops % 10 === 0) await new Promise((res) => setImmediate(res))
  }
  return ops
}

for (const [store, systemsFrom] of STORES) {
  describe(`over ${store} storage systems`, () => {
    for (const mode of ['direct', 'memory'] as CopyMode[]) {
      it(`a migration (${mode}) moves every extent onto its destination while a host writes and reads, and frees the sources`, async () => {
        const size = 8 * MiB
        const stack = await stackOver(systemsFrom, size)
        const model = await fill(stack, size)
        expect(stack.map.allocationBySystem().size).toBe(3)
        let ops = 0
        const job = await runJob(stack, 2, mode, async (runner) => {
          ops = await busyHost(stack, model, runner.done)
        })
        expect(job).toMatchObject({ status: 'concluded', result: 'completed' })
        expect(ops).toBeGreaterThan(5)
        await stack.thin.settle()
        expect([...stack.map.allocationBySystem().keys()]).toEqual([2])
        expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
        await expectContent(stack, model)
      })
    }

    it('a cancelled migration gives the volume back to its sources, whole', async () => {
      const size = 8 * MiB
      const stack = await stackOver(systemsFrom, size)
      const model = await fill(stack, size)
      const job = await runJob(stack, 3, 'direct', async (runner) => {
        // Once the first extent has moved.
        while (runner.job.current === 0) await new Promise((res) => setTimeout(res, 1))
        runner.cancel()
      })
      expect(job).toMatchObject({ status: 'concluded', result: 'cancelled' })
      // What it gave back: the extents it had moved.
      expect(job.total).toBeGreaterThan(0)
      await stack.thin.settle()
      expect(stack.map.allocationBySystem().has(3)).toBe(job.sourceSids.includes(3))
      expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
      await expectContent(stack, model)
    })

    it('reclaim frees the blocks of a deleted file and keeps the file system intact', async () => {
      const size = 32 * MiB
      const stack = await stackOver(systemsFrom, size)
      const dir = stack.dir
      const img = join(dir, 'fs.img')
      mkfs(img, '32M')
      patternFile(join(dir, 'big'), 6 * MiB, 3)
      debugfs(img, `write ${join(dir, 'big')} /gone`, true)
      await stack.volume.write(0, readFileSync(img))
      await stack.volume.drain()
      const withFile = stack.map.allocatedBytes
      debugfs(img, 'rm /gone', true)
      await stack.volume.write(0, readFileSync(img))
      await stack.volume.drain()
      expect(stack.map.allocatedBytes).toBe(withFile)
      const volume: ReclaimableVolume = {
        name: 'v',
        size,
        get allocatedBytes() {
          return stack.map.allocatedBytes
        },
        isOpenForWrite: () => false,
        openCounts: () => ({}),
        blockWriters: () => () => {},
        read: (offset, length, into) => stack.volume.read(offset, length, into),
        discard: (offset, length) => stack.volume.discard(offset, length),
        extents: stack.extents,
      }
      const dry = await reclaimVolume(volume, { dryRun: true, force: false })
      expect(stack.map.allocatedBytes).toBe(withFile)
      const done = await reclaimVolume(volume, { dryRun: false, force: false })
      expect(done.releasedBytes).toBeGreaterThanOrEqual(5 * MiB)
      expect(done.releasedBytes).toBe(dry.releasedBytes)
      expect(withFile - stack.map.allocatedBytes).toBe(done.releasedBytes)
      // What ext4 still uses reads back as it was: the image checks clean.
      const back = Buffer.alloc(size)
      await stack.volume.read(0, size, back)
      writeFileSync(img, back)
      execFileSync('e2fsck', ['-fn', img], { stdio: 'pipe' })
    })
  })
}
