/**
 * Extent tiles: a volume's extent map aggregated into at most N tiles, so the
 * web view draws a 16 TiB volume (16 Mi extents) in a few hundred cells and
 * never sends a cell per extent. Works from the map's runs (VolumeMap.runs:
 * consecutive extents on one storage system), so the cost is O(runs + tiles),
 * not O(extents). Also the storage systems' free-space strips.
 *
 * Pure functions over values: no I/O, no state, nothing to crash.
 */
import type { MapRun } from '../relay/volume-map.js'

/** One tile that holds at least one allocated extent (tiles with none are left out). */
export interface ExtentTile {
  /** Tile index: it covers extents [i * tileExtents, (i + 1) * tileExtents). */
  i: number
  /** Allocated extents in the tile. */
  used: number
  /** Allocated extents per storage system (whole extents), by system name. */
  by: Record<string, number>
  /** Extents held as single-chunk fragments (fragmented extents). */
  frag: number
  /** Extents whose migration source is still retained (rollback possible). */
  retained: number
  /** Extents a running job has yet to move (not on its destination yet). */
  copying: number
}

export interface ExtentTiles {
  /** Extents of the whole volume (its size in extents, allocated or not). */
  extents: number
  tileExtents: number
  tiles: number
  cells: ExtentTile[]
}

export interface TileInput {
  /** The volume's size in extents. */
  extents: number
  runs: readonly MapRun[]
  /** Storage system name of a run's `where` (a sid). */
  systemName: (sid: number) => string
  /** Extent indexes whose source a job retains. */
  retained?: Iterable<number>
  /** Whether a whole extent on `where` is still to be moved by a running job (none: no job). */
  pending?: (where: number | 'fragments') => boolean
}

/** The volume map as at most `maxTiles` tiles (one extent per tile when it has that few). */
export function extentTiles(input: TileInput, maxTiles: number): ExtentTiles {
  const extents = Math.max(1, input.extents)
  const tileExtents = Math.max(1, Math.ceil(extents / Math.max(1, maxTiles)))
  const tiles = Math.ceil(extents / tileExtents)
  const cells = new Map<number, ExtentTile>()
  const cell = (i: number): ExtentTile => {
    let c = cells.get(i)
    if (!c) cells.set(i, (c = { i, used: 0, by: {}, frag: 0, retained: 0, copying: 0 }))
    return c
  }
  for (const run of input.runs) {
    const end = run.firstExtent + run.extents
    const name = run.where === 'fragments' ? undefined : input.systemName(run.where)
    const pending = input.pending?.(run.where) ?? false
    for (let e = run.firstExtent; e < end; ) {
      const i = Math.floor(e / tileExtents)
      const n = Math.min(end, (i + 1) * tileExtents) - e
      const c = cell(i)
      c.used += n
      if (name === undefined) c.frag += n
      else c.by[name] = (c.by[name] ?? 0) + n
      if (pending) c.copying += n
      e += n
    }
  }
  for (const e of input.retained ?? []) {
    if (e < extents) cell(Math.floor(e / tileExtents)).retained++
  }
  return { extents, tileExtents, tiles, cells: [...cells.values()].sort((a, b) => a.i - b.i) }
}

/** Characters of a compact strip: a system's index in the legend, '.' unallocated, '~' fragments. */
export const STRIP_SYSTEM_CHARS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'

/**
 * A compact one-line strip of a volume's map, one character per tile: the
 * tile's dominant storage system (its index in `legend`), '~' when fragments
 * dominate, '.' when nothing in it is allocated. 64 tiles of 1,000 volumes
 * are 64 KB: the whole list fits the first load.
 */
export function extentStrip(tiles: ExtentTiles, legend: readonly string[]): string {
  const out = new Array<string>(tiles.tiles).fill('.')
  for (const c of tiles.cells) {
    let best = '~'
    let most = c.frag
    for (const [name, n] of Object.entries(c.by)) {
      if (n > most) {
        most = n
        const k = legend.indexOf(name)
        best = k >= 0 && k < STRIP_SYSTEM_CHARS.length ? STRIP_SYSTEM_CHARS[k]! : '?'
      }
    }
    out[c.i] = best
  }
  return out.join('')
}

/**
 * A storage system's slots as at most `maxTiles` tiles, one digit each: how
 * full the tile is, 0 (all free) to 8 (all used). Free runs show as runs of
 * 0s, fragmentation as alternating digits.
 */
export function freeSpaceStrip(slotCount: number, isSlotFree: (slot: number) => boolean, maxTiles: number): { tileSlots: number; strip: string } {
  if (slotCount === 0) return { tileSlots: 1, strip: '' }
  const tileSlots = Math.max(1, Math.ceil(slotCount / Math.max(1, maxTiles)))
  let strip = ''
  for (let first = 0; first < slotCount; first += tileSlots) {
    const last = Math.min(slotCount, first + tileSlots)
    let used = 0
    for (let s = first; s < last; s++) if (!isSlotFree(s)) used++
    // 0 only when all free, 8 only when all used: one used slot in a big tile still shows.
    const level = used === 0 ? 0 : used === last - first ? 8 : Math.min(7, Math.max(1, Math.round((8 * used) / (last - first))))
    strip += String(level)
  }
  return { tileSlots, strip }
}
