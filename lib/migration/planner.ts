/**
 * The consolidation policy (claims 1–2), as a pure function of the pool and
 * the volume maps: what the manager would migrate, and why.
 *
 * Two triggers:
 *  - spanned: a volume whose extents lie on several storage systems, when
 *    one of them (preferably the one already holding most of it) has room
 *    for the rest → consolidate the volume onto it;
 *  - fragmented: a storage system whose free space lies mostly in short runs
 *    — the share of its free space in runs shorter than `minRun` is above
 *    `fragmentation`. The free
 *    runs are the holes between extents of volumes: moving the volume whose
 *    departure lengthens the system's largest free run the most onto another
 *    system with room for the whole volume joins them — if that makes a run
 *    of at least `minRun`.
 * A volume with an active job, or whose move finds no room, is only reported.
 */
import { EXTENT_SIZE } from '../layout.js'

export interface PlannerSystem {
  sid: number
  name: string
  free: number
  allocatable: boolean
  /** Slot owner: a volume number, 0 for free, -1 for fragments or held space. */
  owners: Int32Array
}

export interface PlannerVolume {
  volNo: number
  name: string
  /** Allocated bytes per storage system id. */
  bySystem: Map<number, number>
  busy: boolean
}

export interface ConsolidationPolicy {
  enabled: boolean
  /** Share (0–1) of a system's free space in short runs above which it counts as fragmented. */
  fragmentation: number
  /** Runs shorter than this many bytes are "short". */
  minRun: number
  intervalMs: number
}

export const DEFAULT_POLICY: ConsolidationPolicy = { enabled: false, fragmentation: 0.5, minRun: 16 * EXTENT_SIZE, intervalMs: 30_000 }

export interface PlannedMove {
  volume: string
  volNo: number
  to: string
  toSid: number
  trigger: 'spanned' | 'fragmented'
  reason: string
}

export interface Plan {
  moves: PlannedMove[]
  findings: string[]
}

function maxOf(xs: number[]): number {
  let m = 0
  for (const x of xs) if (x > m) m = x
  return m
}

const mib = (bytes: number) => `${Math.round((bytes / EXTENT_SIZE) * 10) / 10} MiB`

export function freeRunsOf(owners: Int32Array, treatFree?: (owner: number) => boolean): number[] {
  const runs: number[] = []
  let run = 0
  for (let s = 0; s < owners.length; s++) {
    const o = owners[s]!
    if (o === 0 || treatFree?.(o)) run++
    else if (run) {
      runs.push(run)
      run = 0
    }
  }
  if (run) runs.push(run)
  return runs
}

export function fragmentationOf(runs: number[], minRunSlots: number): { share: number; free: number; largest: number } {
  const free = runs.reduce((a, b) => a + b, 0)
  const short = runs.filter((r) => r < minRunSlots).reduce((a, b) => a + b, 0)
  return { share: free === 0 ? 0 : short / free, free, largest: maxOf(runs) }
}

export function planConsolidation(systems: PlannerSystem[], volumes: PlannerVolume[], policy: ConsolidationPolicy): Plan {
  const moves: PlannedMove[] = []
  const findings: string[] = []
  const bySid = new Map(systems.map((s) => [s.sid, s]))
  const name = (sid: number) => bySid.get(sid)?.name ?? `#${sid}`
  const planned = new Set<number>()

  // Spanned volumes.
  for (const v of volumes) {
    const parts = [...v.bySystem].filter(([, b]) => b > 0).sort((a, b) => b[1] - a[1])
    if (parts.length < 2) continue
    const total = parts.reduce((a, [, b]) => a + b, 0)
    const spread = parts.map(([sid, b]) => `${name(sid)} ${mib(b)}`).join(', ')
    const target = parts
      .map(([sid, here]) => ({ sid, here }))
      .concat(systems.filter((s) => !v.bySystem.has(s.sid)).map((s) => ({ sid: s.sid, here: 0 })))
      .find(({ sid, here }) => bySid.get(sid)?.allocatable && bySid.get(sid)!.free >= total - here)
    if (!target) {
      findings.push(`volume ${v.name} spans ${spread}; no single storage system has room for all ${mib(total)}`)
    } else if (v.busy) {
      findings.push(`volume ${v.name} spans ${spread}; a job is already running on it`)
    } else {
      const reason = `volume ${v.name} spans ${spread}; ${name(target.sid)} has room for the other ${mib(total - target.here)}`
      moves.push({ volume: v.name, volNo: v.volNo, to: name(target.sid), toSid: target.sid, trigger: 'spanned', reason })
      planned.add(v.volNo)
    }
  }

  // Fragmented free space.
  const minRunSlots = Math.max(1, Math.round(policy.minRun / EXTENT_SIZE))
  for (const s of systems) {
    if (!s.allocatable) continue
    const f = fragmentationOf(freeRunsOf(s.owners), minRunSlots)
    const pct = Math.round(f.share * 100)
    const where = `${s.name}: ${pct}% of its ${mib(f.free * EXTENT_SIZE)} free lies in runs shorter than ${mib(policy.minRun)} (largest run ${mib(f.largest * EXTENT_SIZE)})`
    if (f.share <= policy.fragmentation || f.free === 0) {
      findings.push(`${where}: below the ${Math.round(policy.fragmentation * 100)}% threshold`)
      continue
    }
    let best: { v: PlannerVolume; largest: number; to: PlannerSystem } | undefined
    for (const v of volumes) {
      if (v.busy || planned.has(v.volNo) || !(v.bySystem.get(s.sid) ?? 0)) continue
      const total = [...v.bySystem.values()].reduce((a, b) => a + b, 0)
      const to = systems
        .filter((t) => t.sid !== s.sid && t.allocatable && t.free >= total - (v.bySystem.get(t.sid) ?? 0))
        .sort((a, b) => b.free - a.free)[0]
      if (!to) continue
      const largest = maxOf(freeRunsOf(s.owners, (o) => o === v.volNo))
      if (!best || largest > best.largest) best = { v, largest, to }
    }
    if (!best || best.largest <= f.largest || best.largest < minRunSlots) {
      findings.push(`${where}, above the ${Math.round(policy.fragmentation * 100)}% threshold; no volume's move off it finds room elsewhere and joins its holes into a run of ${mib(policy.minRun)}`)
      continue
    }
    const reason = `${where}, above the ${Math.round(policy.fragmentation * 100)}% threshold; moving volume ${best.v.name} to ${best.to.name} makes its largest free run ${mib(best.largest * EXTENT_SIZE)}`
    moves.push({ volume: best.v.name, volNo: best.v.volNo, to: best.to.name, toSid: best.to.sid, trigger: 'fragmented', reason })
    planned.add(best.v.volNo)
  }
  if (moves.length === 0 && !volumes.some((v) => [...v.bySystem.values()].filter((b) => b > 0).length > 1)) findings.unshift('no volume spans storage systems')
  return { moves, findings }
}
