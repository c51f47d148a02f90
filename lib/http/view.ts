/**
 * WebView: what the web page shows, read from the Manager's own read methods
 * (listStorage, poolStatus, listVolumes, jobs.list, listHosts) — no business
 * logic of its own beyond aggregating maps into tiles (extent-tiles.ts).
 *
 * - snapshot(): the whole page's data, sent once per event-stream connection
 *   (and at GET /api/state). Volume maps are compact 64-tile strips here; a
 *   detailed map is fetched per volume (volumeMap) with at most 4,096 tiles.
 * - changes(): what changed since the last call (volumes' allocation, state,
 *   hosts, strip; pool and systems), pushed to the page about once a second
 *   as a `usage` event — writes emit no events of their own, and the page
 *   must not poll the whole state.
 *
 * Read-only and synchronous: every call runs on the event loop between host
 * I/O callbacks and changes nothing. A snapshot costs O(volumes + runs +
 * slots) (~13 ms warm for 1,000 volumes); a tick first compares cheap
 * signatures (sizes, allocated bytes, states, jobs: O(volumes)) and redraws a
 * volume's strip or the pool's figures only when they moved, so an idle
 * daemon with a fully written 1 TiB volume does not sort a million extents
 * every second. (An extent moved without any allocated byte changing is
 * seen when the volume's figures next change; jobs, which move extents, are
 * always redrawn while active.)
 */
import type { JobInfo, PoolStatus, StorageInfo, VolumeInfo, VvfsEvent } from '../control/schema.js'
import { EXTENT_SIZE } from '../layout.js'
import type { Manager } from '../manager/manager.js'
import type { VolumeHandle } from '../manager/volume-handle.js'
import { extentStrip, extentTiles, freeSpaceStrip, type ExtentTiles } from './extent-tiles.js'

/** Tiles of a volume's strip in the list: 64 characters × 1,000 volumes = 64 KB. */
export const STRIP_TILES = 64
/** Tiles of a storage system's free-space strip. */
export const FREE_STRIP_TILES = 256
/** Most tiles a detailed map may ask for: 4,096 cells draw in well under 100 ms. */
export const MAX_MAP_TILES = 4096
/** Events kept for a page that connects (job.progress is not kept: bars show it). */
export const RECENT_EVENTS = 100

export interface SystemRow extends StorageInfo {
  overcommit: number
  freeRuns: number
  /** Slots per character of `strip`. */
  tileSlots: number
  /** One digit per tile: 0 all free … 8 all used. */
  strip: string
}

/** What the page shows of a volume (no id, creation time or file paths: 1,000 rows stay small). */
export interface VolumeRow extends Pick<VolumeInfo, 'name' | 'size' | 'allocated' | 'hosts' | 'state'> {
  /** Compact map: one character per tile, see extentStrip. */
  strip: string
  tileExtents: number
  /** Storage systems that hold any of its extents. */
  systems: string[]
  /** The active job moving it, if any. */
  job?: number
}

export interface Snapshot {
  version: string
  time: string
  /** Storage system names in colour order: strips index into it. */
  legend: string[]
  pool: Omit<PoolStatus, 'systems'>
  systems: SystemRow[]
  volumes: VolumeRow[]
  hosts: { name: string; mount: string; mounted: boolean; volumes: number }[]
  jobs: JobInfo[]
  events: VvfsEvent[]
  /** Replication pairs and their lag: empty until vvfs has replication. */
  replication: never[]
}

export interface VolumeMap extends ExtentTiles {
  volume: string
  size: number
  extentSize: number
  legend: string[]
  job?: JobInfo
}

export interface Usage {
  volumes: VolumeRow[]
  pool?: Omit<PoolStatus, 'systems'>
  systems?: SystemRow[]
  legend?: string[]
}

export class WebView {
  private readonly recent: VvfsEvent[] = []
  /** Per volume: the cheap signature and the row last sent (the tick's baseline). */
  private lastVolumes = new Map<string, { cheap: string; row: VolumeRow }>()
  private lastPool = ''

  constructor(
    private readonly manager: Manager,
    private readonly version: string,
  ) {}

  /** Keeps an event for pages that connect later (the feed). */
  remember(event: VvfsEvent): void {
    if (event.type === 'job.progress') return
    this.recent.push(event)
    if (this.recent.length > RECENT_EVENTS) this.recent.shift()
  }

  legend(): string[] {
    return this.manager.pool.list().map((s) => s.name)
  }

  /** The whole page's data; `baseline`: also the start of changes() (the first page to connect). */
  snapshot(baseline = false): Snapshot {
    const legend = this.legend()
    const { systems, ...pool } = this.manager.poolStatus()
    const volumes: VolumeRow[] = []
    const next = new Map<string, { cheap: string; row: VolumeRow }>()
    for (const info of this.manager.listVolumes()) {
      const row = this.volumeRow(info, legend)
      volumes.push(row)
      next.set(info.name, { cheap: this.cheapSignature(info, legend), row })
    }
    if (baseline) {
      this.lastVolumes = next
      this.lastPool = this.poolSignature()
    }
    return {
      version: this.version,
      time: new Date().toISOString(),
      legend,
      pool,
      systems: this.systemRows(systems),
      volumes,
      hosts: this.manager.listHosts().map((h) => ({ name: h.name, mount: h.mount, mounted: h.mounted, volumes: h.volumes.length })),
      jobs: this.manager.jobs.list().reverse(),
      events: [...this.recent],
      replication: [],
    }
  }

  /**
   * What changed since the last call (or the baseline snapshot); null when
   * nothing did. Later pages' snapshots do not move the baseline: a page that
   * connected in between may get a change it has already, which is harmless.
   */
  changes(): Usage | null {
    const legend = this.legend()
    const changed: VolumeRow[] = []
    const next = new Map<string, { cheap: string; row: VolumeRow }>()
    for (const info of this.manager.listVolumes()) {
      const cheap = this.cheapSignature(info, legend)
      const last = this.lastVolumes.get(info.name)
      if (last && last.cheap === cheap && !cheap.endsWith('|-')) {
        next.set(info.name, last)
        continue
      }
      const row = this.volumeRow(info, legend)
      next.set(info.name, { cheap, row })
      if (!last || rowSignature(last.row) !== rowSignature(row)) changed.push(row)
    }
    this.lastVolumes = next
    const poolSig = this.poolSignature()
    const poolChanged = poolSig !== this.lastPool
    this.lastPool = poolSig
    if (!changed.length && !poolChanged) return null
    if (!poolChanged) return { volumes: changed }
    const { systems, ...pool } = this.manager.poolStatus()
    return { volumes: changed, pool, systems: this.systemRows(systems), legend }
  }

  /** What a volume's row depends on, in O(1); ends in '|-' while a job moves the volume (its extents move, its figures need not). */
  private cheapSignature(info: VolumeInfo, legend: string[]): string {
    const v = this.manager.volumeNamed(info.name)
    const job = this.manager.jobs.activeJobOf(v.record.no)
    return `${info.size}|${info.allocated}|${v.map.extentCount()}|${info.state}|${info.hosts.join(',')}|${legend.join('/')}|${job ? '-' : ''}`
  }

  /** What the pool's figures depend on, in O(systems + volumes). */
  private poolSignature(): string {
    const systems = this.manager.pool.list().map((s) => `${s.name}:${s.table.allocated}:${s.table.capacity}:${s.reserve}:${s.draining}`)
    let volumeBytes = 0
    for (const v of this.manager.listVolumes()) volumeBytes += v.size
    return JSON.stringify([systems, volumeBytes, this.manager.settings, this.manager.spaceWatch.queued, this.manager.jobs.heldBytes()])
  }

  volumeMap(name: string, maxTiles: number): VolumeMap {
    const v = this.manager.volumeNamed(name)
    const legend = this.legend()
    const tiles = this.tiles(v, Math.min(MAX_MAP_TILES, Math.max(1, maxTiles)), true)
    const job = this.manager.jobs.activeJobOf(v.record.no)
    return { volume: v.name, size: v.size, extentSize: EXTENT_SIZE, legend, ...tiles, ...(job ? { job: this.manager.jobs.info(job) } : {}) }
  }

  private volumeRows(legend: string[]): VolumeRow[] {
    return this.manager.listVolumes().map((info) => this.volumeRow(info, legend))
  }

  private volumeRow(info: VolumeInfo, legend: string[]): VolumeRow {
    const v = this.manager.volumeNamed(info.name)
    const tiles = this.tiles(v, STRIP_TILES, false)
    const systems = new Set<string>()
    for (const c of tiles.cells) for (const s of Object.keys(c.by)) systems.add(s)
    const job = this.manager.jobs.activeJobOf(v.record.no)
    const { name, size, allocated, hosts, state } = info
    return { name, size, allocated, hosts, state, strip: extentStrip(tiles, legend), tileExtents: tiles.tileExtents, systems: [...systems].sort(), ...(job ? { job: job.id } : {}) }
  }

  private tiles(v: VolumeHandle, maxTiles: number, marks: boolean): ExtentTiles {
    const pool = this.manager.pool
    const job = marks ? this.manager.jobs.activeJobOf(v.record.no) : undefined
    const moving = job && (job.status === 'created' || job.status === 'running' || job.status === 'paused')
    return extentTiles(
      {
        extents: Math.ceil(v.size / EXTENT_SIZE),
        runs: v.map.runs(),
        systemName: (sid) => (pool.has(sid) ? pool.get(sid).name : `#${sid}`),
        retained: marks ? this.manager.jobs.retainedExtents(v.record.no) : undefined,
        pending: moving
          ? (where) => where !== 'fragments' && (job.toSid !== undefined ? where !== job.toSid : where === job.fromSid)
          : undefined,
      },
      maxTiles,
    )
  }

  private systemRows(status: PoolStatus['systems']): SystemRow[] {
    const info = new Map(this.manager.listStorage().map((s) => [s.name, s]))
    return status.flatMap((s) => {
      const i = info.get(s.name)
      if (!i) return []
      const table = this.manager.pool.get(i.id).table
      const strip = freeSpaceStrip(table.slotCount, (slot) => table.isSlotFree(slot), FREE_STRIP_TILES)
      return [{ ...i, overcommit: s.overcommit, freeRuns: table.freeRuns().length, ...strip }]
    })
  }
}

function rowSignature(v: VolumeRow): string {
  return `${v.size}|${v.allocated}|${v.state}|${v.hosts.join(',')}|${v.job ?? ''}|${v.strip}`
}
