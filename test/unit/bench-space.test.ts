/**
 * Issue 17 target 5 in the bench report: bytes on disk per logical byte of
 * volume data right after the fio jobs (≤ 2.0) and once idle 60 s (≤ 1.2),
 * each with its verdict.
 */
import { describe, expect, it } from 'vitest'
import { spaceTargetLines, type FioSpace } from '../../bench/report.js'

const MiB = 1024 * 1024
const du = (allocated: number) => ({ apparent: allocated, allocated })

function space(afterJobs: number, idle?: number): FioSpace {
  const base = 10 * MiB
  return {
    bytesWritten: 2048 * MiB,
    volumeAllocated: 1024 * MiB,
    duBefore: du(base),
    duAfter: du(base + afterJobs * 1024 * MiB),
    duSettled: du(base + afterJobs * 1024 * MiB),
    settled: true,
    settleWaitMs: 4000,
    ...(idle === undefined ? {} : { duIdle: du(base + idle * 1024 * MiB), idleWaitMs: 60_000 }),
  }
}

describe('the bench report\'s space target', () => {
  it('passes 1.97 after the jobs (≤ 2.0) and 1.02 idle (≤ 1.2)', () => {
    const [during, idle] = spaceTargetLines(space(1.97, 1.02))
    expect(during).toMatch(/right after the jobs: 1\.970 \(target ≤ 2\.0: PASS\)/)
    expect(idle).toMatch(/idle 60 s after the jobs: 1\.020 \(target ≤ 1\.2: PASS\)/)
  })

  it('fails today\'s 1.97 once idle, and 2.5 after the jobs', () => {
    const [during, idle] = spaceTargetLines(space(2.5, 1.97))
    expect(during).toMatch(/2\.500 \(target ≤ 2\.0: FAIL\)/)
    expect(idle).toMatch(/1\.970 \(target ≤ 1\.2: FAIL\)/)
  })

  it('says when the idle figure was not measured', () => {
    expect(spaceTargetLines(space(1.5))[1]).toMatch(/idle: not measured/)
  })
})
