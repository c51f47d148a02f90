/**
 * The consolidation policy (claims 1–2): it fires on a constructed
 * fragmented pool and on a volume spread over several systems that one could
 * hold, not on a healthy pool, and `migrate plan` explains either way.
 */
import { afterEach, describe, expect, it } from 'vitest'
import type { Manager } from '../../lib/manager/manager.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openManager } from '../helpers/manager.js'

const MiB = 1024 * 1024
let m: Manager | undefined
let dir: string
afterEach(async () => {
  await m?.close()
  m = undefined
  removeDir(dir)
})

async function open() {
  dir = tempDir('vvfs-policy-')
  m = await openManager(dir)
  return m
}

describe('the consolidation policy', () => {
  it('finds a fragmented storage system, explains it, and fixes it when enabled', async () => {
    const m = await open()
    await m.addStorage({ name: 's1', capacity: 16 * MiB })
    await m.createVolume({ name: 'a', size: 8 * MiB })
    await m.createVolume({ name: 'b', size: 8 * MiB })
    // Interleave a and b extent by extent on s1, then delete b: s1's free space is 8 holes of 1 MiB.
    for (let e = 0; e < 8; e++) {
      await m.volumeNamed('a').write(e * MiB, Buffer.alloc(MiB, e + 1))
      await m.volumeNamed('b').write(e * MiB, Buffer.alloc(MiB, e + 101))
    }
    await m.deleteVolume('b')
    await m.addStorage({ name: 's2', capacity: 64 * MiB })
    expect(m.listStorage().find((s) => s.name === 's1')!.largestFreeRun).toBe(MiB)

    const plan = m.jobs.plan()
    expect(plan.moves).toHaveLength(1)
    expect(plan.moves[0]).toMatchObject({ volume: 'a', to: 's2', trigger: 'fragmented' })
    expect(plan.moves[0]!.reason).toMatch(/s1: 100% of its 8 MiB free lies in runs shorter than 16 MiB/)
    expect(plan.moves[0]!.reason).toMatch(/largest free run 16 MiB/)

    // Off: nothing happens.
    expect(await m.jobs.runPolicy()).toBeUndefined()
    await m.policy({ enabled: true })
    const job = await m.jobs.runPolicy()
    expect(job).toMatchObject({ kind: 'consolidate', auto: true, to: 's2' })
    expect(job!.reason).toMatch(/fragment|runs shorter/)
    expect((await m.jobs.settled(job!.id)).result).toBe('completed')
    expect(m.listStorage().find((s) => s.name === 's1')!.largestFreeRun).toBe(16 * MiB)
    for (let e = 0; e < 8; e++) {
      const buf = Buffer.alloc(MiB)
      await m.volumeNamed('a').read(e * MiB, MiB, buf)
      expect(buf.equals(Buffer.alloc(MiB, e + 1))).toBe(true)
    }
    // Healthy now: nothing more to do, and the plan says why.
    const after = m.jobs.plan()
    expect(after.moves).toEqual([])
    expect(after.findings.join('\n')).toMatch(/below the 50% threshold/)
  })

  it('consolidates a volume spread over several systems onto one that can hold it', async () => {
    const m = await open()
    for (const s of ['s1', 's2', 's3']) await m.addStorage({ name: s, capacity: 32 * MiB })
    await m.createVolume({ name: 'spread', size: 12 * MiB })
    await m.volumeNamed('spread').write(0, Buffer.alloc(12 * MiB, 7))
    expect(m.showVolume('spread').allocatedBySystem).toHaveLength(3)
    const plan = m.jobs.plan()
    expect(plan.moves[0]).toMatchObject({ volume: 'spread', trigger: 'spanned' })
    expect(plan.moves[0]!.reason).toMatch(/spans s1 4 MiB, s2 4 MiB, s3 4 MiB; s1 has room for the other 8 MiB/)
    await m.policy({ enabled: true })
    const job = await m.jobs.runPolicy()
    expect((await m.jobs.settled(job!.id)).result).toBe('completed')
    expect(m.showVolume('spread').allocatedBySystem.map((s) => s.storage)).toEqual(['s1'])
  })

  it('does not fire on a healthy pool, and says why', async () => {
    const m = await open()
    for (const s of ['s1', 's2']) await m.addStorage({ name: s, capacity: 64 * MiB })
    await m.createVolume({ name: 'one', size: 4 * MiB })
    await m.volumeNamed('one').write(0, Buffer.alloc(MiB, 1))
    await m.policy({ enabled: true })
    const plan = m.jobs.plan()
    expect(plan.moves).toEqual([])
    expect(plan.findings[0]).toBe('no volume spans storage systems')
    expect(plan.findings.join('\n')).toMatch(/s1: 0% of its 63 MiB free lies in runs shorter than 16 MiB/)
    expect(await m.jobs.runPolicy()).toBeUndefined()
    expect(m.jobs.list()).toEqual([])
  })
})
