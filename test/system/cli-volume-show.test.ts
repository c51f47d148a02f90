/**
 * `vvfs volume show` prints the volume map as runs — consecutive extents on
 * one storage system, of one kind, as one row — and `--extents` one row per
 * extent; `--json` carries both.
 *
 * The 10,000-extent volume is written honestly through the FUSE file, but
 * cheaply: 128 KiB of a non-zero pattern at the start of each extent (the
 * smallest write that allocates a whole slot, docs/how-it-works.md, "Thin provisioning"),
 * eight writes in flight. Three runs come from adding the storage systems one
 * after another: placement takes the one with the most free bytes.
 */
import { open } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { daemonForFile } from '../helpers/cli.js'

const MiB = 1024 * 1024
const EXTENTS = 10_000
/** Where each storage system's run begins (extent numbers). */
const RUN_STARTS = [0, 3_334, 6_667]
/** The smallest write that allocates a whole slot: 32 chunks. */
const WHOLE_WRITE = 128 * 1024

const { daemon, vvfs } = daemonForFile()

/** Writes the first 128 KiB of extents [from, to) of the volume file, `parallel` writes in flight. */
async function writeExtents(file: string, from: number, to: number, parallel = 8): Promise<void> {
  const fh = await open(file, 'r+')
  const pattern = Buffer.alloc(WHOLE_WRITE, 0xa5)
  let next = from
  const writer = async () => {
    while (next < to) {
      const e = next++
      await fh.write(pattern, 0, WHOLE_WRITE, e * MiB)
    }
  }
  try {
    await Promise.all(Array.from({ length: parallel }, writer))
    await fh.sync()
  } finally {
    await fh.close()
  }
}

describe('vvfs volume show on a volume of 10,000 extents', () => {
  it('prints three runs, one per storage system, and every extent with --extents', async () => {
    await daemon().client.call('volume.create', { name: 'big', size: EXTENTS * MiB })
    const ends = [...RUN_STARTS.slice(1), EXTENTS]
    for (const [i, start] of RUN_STARTS.entries()) {
      // Each new system has the most free bytes, so it takes the next run.
      await daemon().client.call('storage.add', { name: `ss${i + 1}`, capacity: '12G' })
      const t = Date.now()
      await writeExtents(daemon().file('big'), start, ends[i]!)
      console.log(`run ${i + 1}: ${ends[i]! - start} extents written in ${Date.now() - t} ms`)
    }

    const t = Date.now()
    const r = vvfs('volume', 'show', 'big')
    console.log(`vvfs volume show: ${Date.now() - t} ms`)
    expect(r.code).toBe(0)
    expect(r.out).toMatch(/extents\s+10000/)
    const rows = r.out.slice(r.out.indexOf('OFFSET')).trim().split('\n')
    expect(rows[0]).toMatch(/^OFFSET\s+LENGTH\s+EXTENTS\s+STORAGE\s+KIND$/)
    expect(rows.slice(1)).toEqual([
      expect.stringMatching(/^0 B\s+3\.3 GiB\s+3334\s+ss1\s+whole$/),
      expect.stringMatching(/^3\.3 GiB\s+3\.3 GiB\s+3333\s+ss2\s+whole$/),
      expect.stringMatching(/^6\.5 GiB\s+3\.3 GiB\s+3333\s+ss3\s+whole$/),
    ])

    const list = vvfs('volume', 'show', 'big', '--extents')
    expect(list.code).toBe(0)
    const lines = list.out.slice(list.out.indexOf('EXTENT ')).trim().split('\n')
    expect(lines).toHaveLength(1 + EXTENTS)
    expect(lines[1]).toMatch(/^0\s+0 B\s+ss1\s+whole\s+slot \d+$/)
    expect(lines[EXTENTS]).toMatch(/^9999\s+9\.8 GiB\s+ss3\s+whole\s+slot \d+$/)

    const json = JSON.parse(vvfs('volume', 'show', 'big', '--json').out)
    expect(json.map).toEqual([
      { offset: 0, length: 3_334 * MiB, extents: 3_334, storage: 'ss1', kind: 'whole' },
      { offset: 3_334 * MiB, length: 3_333 * MiB, extents: 3_333, storage: 'ss2', kind: 'whole' },
      { offset: 6_667 * MiB, length: 3_333 * MiB, extents: 3_333, storage: 'ss3', kind: 'whole' },
    ])
    expect(json.extentMap).toHaveLength(EXTENTS)
    expect(json.extentMap.map((e: { extent: number }) => e.extent)).toEqual([...Array(EXTENTS).keys()])
    expect(json.extentMap[3_334]).toMatchObject({ extent: 3_334, offset: 3_334 * MiB, kind: 'whole', storage: 'ss2' })
  }, 120_000)

  it('shows fragments as their own kind, apart from whole extents on the same system', async () => {
    await daemon().client.call('volume.create', { name: 'small', size: 16 * MiB })
    const fh = await open(daemon().file('small'), 'r+')
    try {
      await fh.write(Buffer.alloc(WHOLE_WRITE, 1), 0, WHOLE_WRITE, 0) // extent 0: whole
      await fh.write(Buffer.alloc(4096, 2), 0, 4096, 1 * MiB) // extents 1 and 2: one fragment each
      await fh.write(Buffer.alloc(4096, 3), 0, 4096, 2 * MiB + 8192)
      await fh.sync()
    } finally {
      await fh.close()
    }
    const v = JSON.parse(vvfs('volume', 'show', 'small', '--json').out)
    expect(v.map.map((r: { extents: number; kind: string }) => [r.extents, r.kind])).toEqual([
      [1, 'whole'],
      [2, 'fragments'],
    ])
    expect(v.extentMap[1]).toMatchObject({ extent: 1, kind: 'fragments', fragments: 1 })
    const out = vvfs('volume', 'show', 'small').out
    expect(out).toMatch(/^1 MiB\s+2 MiB\s+2\s+ss\d\s+fragments$/m)
  })
})
