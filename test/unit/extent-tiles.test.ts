/**
 * Extent tiles: a map aggregated into at most N tiles accounts for every
 * allocated extent exactly once, in the tile that covers it, whatever the
 * runs' sizes — and costs O(runs + tiles), so a 16 TiB volume is no slower
 * than a small one. Free-space strips show free runs and fragmentation.
 */
import { describe, expect, it } from 'vitest'
import { extentStrip, extentTiles, freeSpaceStrip } from '../../lib/http/extent-tiles.js'
import type { MapRun } from '../../lib/relay/volume-map.js'

const names = (sid: number) => `ss${sid}`

describe('extentTiles', () => {
  it('gives one tile per extent when the volume has at most N extents', () => {
    const runs: MapRun[] = [
      { firstExtent: 0, extents: 2, where: 1 },
      { firstExtent: 2, extents: 1, where: 'fragments' },
      { firstExtent: 5, extents: 1, where: 2 },
    ]
    const t = extentTiles({ extents: 8, runs, systemName: names, retained: [5], pending: (w) => w === 1 }, 1024)
    expect(t).toEqual({
      extents: 8,
      tileExtents: 1,
      tiles: 8,
      cells: [
        { i: 0, used: 1, by: { ss1: 1 }, frag: 0, retained: 0, copying: 1 },
        { i: 1, used: 1, by: { ss1: 1 }, frag: 0, retained: 0, copying: 1 },
        { i: 2, used: 1, by: {}, frag: 1, retained: 0, copying: 0 },
        { i: 5, used: 1, by: { ss2: 1 }, frag: 0, retained: 1, copying: 0 },
      ],
    })
  })

  it('splits runs across tiles of a 16 TiB volume and counts every extent once', () => {
    const extents = 16 * 1024 * 1024
    const runs: MapRun[] = [
      { firstExtent: 0, extents: 100_000, where: 1 },
      { firstExtent: 100_000, extents: 3, where: 2 },
      { firstExtent: extents - 10, extents: 10, where: 3 },
    ]
    const t = extentTiles({ extents, runs, systemName: names }, 1024)
    expect(t.tiles).toBe(1024)
    expect(t.tileExtents).toBe(16384)
    expect(t.cells.reduce((a, c) => a + c.used, 0)).toBe(100_013)
    // Run 1 fills tiles 0..5 and 1,696 extents of tile 6, where ss2's 3 extents follow it.
    expect(t.cells[5]).toEqual({ i: 5, used: 16384, by: { ss1: 16384 }, frag: 0, retained: 0, copying: 0 })
    expect(t.cells[6]).toEqual({ i: 6, used: 100_000 - 6 * 16384 + 3, by: { ss1: 100_000 - 6 * 16384, ss2: 3 }, frag: 0, retained: 0, copying: 0 })
    expect(t.cells[7]).toEqual({ i: 1023, used: 10, by: { ss3: 10 }, frag: 0, retained: 0, copying: 0 })
  })

  it('draws a compact strip with the dominant system of each tile', () => {
    const runs: MapRun[] = [
      { firstExtent: 0, extents: 3, where: 2 },
      { firstExtent: 3, extents: 1, where: 1 },
      { firstExtent: 4, extents: 4, where: 'fragments' },
    ]
    const t = extentTiles({ extents: 16, runs, systemName: names }, 4)
    expect(extentStrip(t, ['ss1', 'ss2'])).toBe('1~..')
  })
})

describe('freeSpaceStrip', () => {
  it('shows all-free tiles as 0, full tiles as 8 and a single used slot in a big tile as at least 1', () => {
    const used = new Set([0, 1, 2, 3, 9])
    const s = freeSpaceStrip(16, (slot) => !used.has(slot), 4)
    expect(s).toEqual({ tileSlots: 4, strip: '8020' })
    const wide = freeSpaceStrip(4096, (slot) => slot !== 4000, 4)
    expect(wide.strip).toBe('0001')
  })
})
