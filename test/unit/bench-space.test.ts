/**
 * Issue 17 targets 5 and 6 in the bench report's table: bytes on disk per
 * logical byte of volume data at its highest during the fio jobs and right
 * after them (≤ 2.0) and once idle 60 s (≤ 1.2), and the daemon's peak RSS
 * with three storage systems (≤ 384 MiB, with its ratio to the bound), each
 * with its verdict.
 */
import { describe, expect, it } from 'vitest'
import { resourceRows, type FioSpace } from '../../bench/report.js'

const MiB = 1024 * 1024
const du = (allocated: number) => ({ apparent: allocated, allocated })

function space(afterJobs: number, idle?: number, during?: number): FioSpace {
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
    ...(during === undefined ? {} : { duringPeak: { ratio: during, diskBytes: during * 512 * MiB, logicalBytes: 512 * MiB, samples: 20 } }),
  }
}

const daemon = (peakMiB: number) => ({ pid: 1, peakRssBytes: peakMiB * MiB, rssBytes: 0 })
const row = (rows: string[][], what: RegExp) => rows.find((r) => what.test(r[0]!))

describe('the bench report\'s space and memory targets', () => {
  it('passes 1.97 after the jobs (≤ 2.0), 1.02 idle (≤ 1.2) and 300 MiB peak RSS (≤ 384 MiB)', () => {
    const rows = resourceRows({ fioSpace: space(1.97, 1.02, 1.5), daemon: daemon(300) })
    expect(row(rows, /highest during/)).toEqual([expect.stringMatching(/20 samples/), '<= 2.0', '1.500', 'PASS'])
    expect(row(rows, /right after/)!.slice(1)).toEqual(['<= 2.0', '1.970', 'PASS'])
    expect(row(rows, /idle 60 s after/)!.slice(1)).toEqual(['<= 1.2', '1.020', 'PASS'])
    expect(row(rows, /peak RSS/)!.slice(1)).toEqual(['<= 384.0 MiB', '300.0 MiB (0.78)', 'PASS'])
  })

  it('fails the issue\'s 1.97 once idle, 2.5 after the jobs, 3.0 during them and 566 MiB peak RSS', () => {
    const rows = resourceRows({ fioSpace: space(2.5, 1.97, 3.0), daemon: daemon(566) })
    expect(row(rows, /highest during/)!.slice(2)).toEqual(['3.000', 'FAIL'])
    expect(row(rows, /right after/)!.slice(2)).toEqual(['2.500', 'FAIL'])
    expect(row(rows, /idle 60 s after/)!.slice(2)).toEqual(['1.970', 'FAIL'])
    expect(row(rows, /peak RSS/)!.slice(2)).toEqual(['566.0 MiB (1.47)', 'FAIL'])
  })

  it('leaves out what was not measured', () => {
    const rows = resourceRows({ fioSpace: space(1.5), daemon: daemon(0) })
    expect(rows.map((r) => r[0])).toEqual(['bytes on disk per logical byte, right after the fio jobs'])
  })
})
