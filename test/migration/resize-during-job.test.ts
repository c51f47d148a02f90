/**
 * Regression: a migration job failed with INTERNAL ("Cannot read properties
 * of undefined (reading 'kind')") 4 ms after it started, found by xfstests'
 * fsx truncating a volume file while migrations ran in a loop. The runner
 * walked a snapshot of the volume's extent indexes and awaited inside the
 * walk (setting the bit of each extent already at the destination); a shrink
 * in between took extents later in the snapshot away, and their entry was
 * read as if still there. An extent the host shrank away is nothing to do:
 * the job must finish (or give the volume back) with every byte below the
 * current size as the host wrote it and no space left held.
 *
 * Found with it: the walk also took an extent the host cut off and wrote
 * anew as the job started (new extents go to the destination) for one that
 * was at the destination before the job, so a cancel left it there; the
 * runner now notes those extents before its first await (the last test).
 *
 * Deterministic: the host's shrink-then-grow (then writes into the regrown
 * part, making extents the runner's snapshot never saw) runs from inside the
 * runner's own MapStore writes — its bitmap bits, progress and retained-source
 * drops. When the runner holds no extent lock there, the write waits for the
 * whole shrink and grow; under an extent's lock, the host's resize queues
 * behind it (RangeLock is FIFO), so it lands before the runner's next extent.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { afterEach, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { MigrationRunner } from '../../lib/migration/runner.js'
import { entrySystems } from '../../lib/relay/extent-entry.js'
import type { ExtentOps } from '../../lib/relay/extent-ops.js'
import type { MapStore } from '../../lib/relay/map-store.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { expectContent, fill, runJob } from '../helpers/migration-job.js'
import { payload, rng, type VolumeModel } from '../helpers/model.js'
import { openStack, STORES, type Stack, type SystemFactory } from '../helpers/stack.js'

const MiB = 1024 * 1024
const SIZE = 16 * MiB

/** Rounds per job: through the start, the copy and the give-back, in about a second. */
const ROUNDS = 16

const dirs: string[] = []
const stacks: Stack[] = []
afterEach(async () => {
  for (const s of stacks.splice(0)) await s.close()
  dirs.splice(0).forEach(removeDir)
})

async function stackOver(systemsFrom: SystemFactory): Promise<Stack> {
  const dir = tempDir('vvfs-resize-job-')
  dirs.push(dir)
  const stack = await openStack({ dir, systems: 3, capacity: 64 * MiB, size: SIZE, systemsFrom }, true)
  stacks.push(stack)
  return stack
}

/** `target` with some of its methods replaced (the rest bound to it, so its own calls stay its own). */
function intercept<T extends object>(target: T, overrides: Partial<T>): T {
  return new Proxy(target, {
    get(t, p) {
      if (Object.prototype.hasOwnProperty.call(overrides, p)) return overrides[p as keyof T]
      const v: unknown = Reflect.get(t, p, t)
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v
    },
  })
}

/** The extents with data on storage system `sid`. */
function extentsOn(stack: Stack, sid: number): number[] {
  return [...stack.map.extentMap()].filter(([, entry]) => entrySystems(entry).has(sid)).map(([e]) => e)
}

/**
 * A host that shrinks the volume and grows it back (a round) at each of the
 * runner's MapStore writes: `maps` and `extents` are what the runner is
 * given. `settled()` once the rounds queued so far have ended.
 */
function resizingHost(stack: Stack, model: VolumeModel) {
  const r = rng(11)
  let locksHeld = 0
  const inRound = new AsyncLocalStorage<true>()
  let queue = Promise.resolve()
  const host = {
    rounds: 0,
    /** Where a round shrinks the volume to (unaligned: the kept tail chunk is zeroed past the end, too). */
    shrinkTo: (): number => r.int(SIZE / 4, SIZE - 4096),
    /** Called at each of the runner's MapStore writes, before its round. */
    onWrite: (): void => {},
    /** Every round started has ended. */
    settled: () => queue,
    maps: null as unknown as MapStore,
    extents: null as unknown as ExtentOps,
  }
  const shrinkAndGrow = () =>
    inRound.run(true, async () => {
      const small = host.shrinkTo()
      await stack.volume.resize(small)
      model.resize(small)
      await stack.volume.resize(SIZE)
      model.resize(SIZE)
      // Extents past the shrink's end come back by writes (placed per the job), some the job had moved.
      for (let i = 0; i < 4; i++) {
        const off = r.int(small, Math.min(SIZE, small + 2 * MiB)) - 256 * 1024
        const data = payload(r, 256 * 1024)
        await stack.volume.write(off, data)
        model.write(off, data)
      }
    })
  const round = async (): Promise<void> => {
    // The host's own writes (MigrateLayer's dirty marks at a shrink) pass.
    if (inRound.getStore()) return
    host.onWrite()
    if (host.rounds < ROUNDS) {
      host.rounds++
      queue = queue.then(shrinkAndGrow)
    }
    // Under an extent's lock the resize would wait for this very write: it queues instead.
    if (locksHeld === 0) await queue
  }
  host.maps = intercept(stack.maps, {
    put: async (...args: Parameters<MapStore['put']>) => {
      await round()
      return stack.maps.put(...args)
    },
    putMany: async (items: Parameters<MapStore['putMany']>[0]) => {
      await round()
      return stack.maps.putMany(items)
    },
  })
  host.extents = intercept(stack.extents, {
    lock: async (extent: number) => {
      const release = await stack.extents.lock(extent)
      locksHeld++
      return () => {
        locksHeld--
        release()
      }
    },
  })
  return host
}

for (const [store, systemsFrom] of STORES) {
  describe(`a job on a volume the host shrinks and grows (over ${store})`, () => {
    it('completes, every byte below the size as written, every extent at the destination, no INTERNAL', async () => {
      const stack = await stackOver(systemsFrom)
      const model = await fill(stack, SIZE)
      expect(stack.map.allocationBySystem().size).toBe(3)
      const host = resizingHost(stack, model)
      // The rounds end while the job's placement still holds (a round queued under the last extent's lock included).
      const job = await runJob(stack, 2, 'direct', (runner) => runner.done.then(host.settled), host)
      expect(job.error).toBeUndefined()
      expect(job).toMatchObject({ status: 'concluded', result: 'completed' })
      expect(host.rounds).toBe(ROUNDS)
      await stack.thin.settle()
      // Extents made by the host's writes during the job went where the job goes.
      expect([...stack.map.allocationBySystem().keys()]).toEqual([2])
      // No space held for an extent that went (a retained source included).
      expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
      await expectContent(stack, model)
    })

    it('cancelled, gives the volume back to its sources, every byte below the size as written, no INTERNAL', async () => {
      const stack = await stackOver(systemsFrom)
      const model = await fill(stack, SIZE)
      const host = resizingHost(stack, model)
      const r = rng(13)
      let runner: MigrationRunner | undefined
      let cancelled = false
      // The cancel comes at a runner's write once the job has moved extents: later rounds hit the give-back.
      // (It takes effect between two steps; an idle host's steps grow 1, 2, 4… extents: MigrationRunner.)
      host.onWrite = () => {
        if (!cancelled && runner && runner.retained.volume(1).size >= 2) {
          runner.cancel()
          cancelled = true
          // Into the extents it moved: some of what the give-back returns is gone, some written anew.
          host.shrinkTo = () => r.int(MiB, 3 * MiB)
        }
      }
      const thereAtStart = new Set(extentsOn(stack, 3))
      const job = await runJob(
        stack,
        3,
        'direct',
        async (started) => {
          runner = started
          await started.done
          await host.settled()
        },
        host,
      )
      expect(job.error).toBeUndefined()
      expect(cancelled).toBe(true)
      expect(job).toMatchObject({ status: 'concluded', result: 'cancelled' })
      expect(host.rounds).toBeGreaterThan(ROUNDS / 2)
      await stack.thin.settle()
      // Only what was at the destination when the job started is there now.
      expect(extentsOn(stack, 3).filter((e) => !thereAtStart.has(e))).toEqual([])
      expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
      await expectContent(stack, model)
    })

    it('cancelled, moves an extent the host cut off and wrote anew as the job started off the destination: it was not there at the start', async () => {
      const stack = await stackOver(systemsFrom)
      const model = await fill(stack, SIZE)
      const thereAtStart = new Set(extentsOn(stack, 3))
      // An extent elsewhere, after one already at the destination: the job's walk over those meets it after the host's rewrite.
      const remade = stack.map.extentIndexes().filter((e) => e > Math.min(...thereAtStart) && !thereAtStart.has(e)).pop()
      expect(remade).toBeDefined()
      let runner: MigrationRunner | undefined
      let hooked = false
      const maps = intercept(stack.maps, {
        putMany: async (items: Parameters<MapStore['putMany']>[0]) => {
          // The job's first write: the bit of the first extent already at its destination.
          if (!hooked) {
            hooked = true
            await stack.volume.resize(remade! * EXTENT_SIZE)
            model.resize(remade! * EXTENT_SIZE)
            await stack.volume.resize(SIZE)
            model.resize(SIZE)
            const data = Buffer.alloc(EXTENT_SIZE, 0x5a)
            await stack.volume.write(remade! * EXTENT_SIZE, data)
            model.write(remade! * EXTENT_SIZE, data)
            runner!.cancel()
          }
          return stack.maps.putMany(items)
        },
      })
      const job = await runJob(
        stack,
        3,
        'direct',
        async (started) => {
          runner = started
        },
        { maps },
      )
      expect(hooked).toBe(true)
      expect(job.error).toBeUndefined()
      expect(job).toMatchObject({ status: 'concluded', result: 'cancelled' })
      await stack.thin.settle()
      expect(extentsOn(stack, 3).filter((e) => !thereAtStart.has(e))).toEqual([])
      expect(stack.pool.totals().allocated).toBe(stack.map.allocatedBytes)
      await expectContent(stack, model)
    })
  })
}
