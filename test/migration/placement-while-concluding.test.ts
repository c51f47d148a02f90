/**
 * Where a volume's new extents go while a job's last status is being
 * committed. The runner set `concluded` and then committed it (with the
 * volume's new home) to the catalog; in between, the job no longer placed
 * new allocations and the manager fell back to the volume's old home — a
 * host write or a fragment promotion in that window landed on the system
 * the job had just emptied (seen as an extent left on a remote source after
 * a completed migration in test/remote/daemon-remote.test.ts).
 */
import { describe, expect, it } from 'vitest'
import type { PlacementRule } from '../../lib/relay/extent-ops.js'
import { fill, runJob } from '../helpers/migration-job.js'
import { stacksPerTest } from '../helpers/stack.js'

const MiB = 1024 * 1024
const newStack = stacksPerTest('vvfs-placement-commit-')

describe('a job whose status change is being committed', () => {
  it('keeps placing new extents as before the change until the commit is done', async () => {
    const stack = await newStack({ systems: 3, capacity: 64 * MiB, size: 8 * MiB })
    await fill(stack, 8 * MiB)
    const toSid = stack.pool.list()[0]!.sid
    const seen = new Map<string, PlacementRule | undefined>()
    await runJob(stack, toSid, 'direct', async () => {}, {
      save: async (job, runner) => {
        // What a host write would be placed by while this status is committed.
        seen.set(job.status, runner.placement())
        await new Promise((r) => setTimeout(r, 5))
      },
    })
    expect(seen.get('running')).toEqual({ only: toSid })
    // Until `concluded` is committed (and the home with it) the destination still takes them.
    expect(seen.get('concluded')).toEqual({ only: toSid })
  })
})
