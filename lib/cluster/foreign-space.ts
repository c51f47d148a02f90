/**
 * ForeignSpace (issue 15): the space that volumes not served by this relay
 * hold on the storage servers of its pool, kept marked in its free-space
 * tables so that nothing this relay allocates lands on their data.
 *
 * Why: the tables are derived from the maps of the volumes a relay serves.
 * Relays share storage servers, so without this a relay that took one volume
 * over (or made one) handed out slots another volume's data was in —
 * measured 2026-12-04: after a `volume move` of one of two volumes on the
 * same servers, writes to it on the new relay overwrote 3 of the other's
 * 4 MiB, and moving the other then failed ("slot 0 is referenced twice").
 *
 * When: the Manager refreshes the holds each time this relay raises the
 * servers' fence (a start that claims volumes, a volume made, a takeover).
 * From then until another relay fences higher, only this relay can change
 * anything on those servers, so what the volumes' map logs say at that
 * moment is what they hold. A volume that becomes served here is forgotten
 * (`forget`) before its own map marks its space.
 *
 * Owns: which entries are held for which volume. Never: reads map logs
 * itself (each volume's `entries`), decides ownership, touches a store.
 *
 * Concurrency: refresh() reads every volume's entries first, then releases
 * the old holds and marks the new ones in one synchronous step, so no
 * allocation runs while the space is briefly given back. Calls are made from
 * the Manager's serial queue or the fence callback within it.
 *
 * Failure modes: a volume whose log cannot be read keeps its previous hold
 * (logged `relay.space_unknown`); an entry overlapping space already in use
 * here (the damage this prevents, done before) is not held and is logged
 * `relay.space_conflict`. Entries on systems outside the pool are skipped:
 * this relay cannot allocate there.
 *
 * Crash order: none — derived state, rebuilt at the next fence.
 */
import { asVvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import { entrySystems, markSpace, releaseSpace, type ExtentEntry } from '../relay/extent-entry.js'
import type { Pool } from '../storage/pool.js'

/** A volume another relay serves (or nobody does now), and how to read the entries of its map log. */
export interface ForeignVolume {
  no: number
  name: string
  entries(): Promise<ExtentEntry[]>
}

/** An entry as pieces that are marked or released on their own: a whole slot, or one fragment each. */
function piecesOf(entry: ExtentEntry): ExtentEntry[] {
  if (entry.kind === 'whole') return [entry]
  return [...entry.frags].map(([chunk, f]) => ({ kind: 'fragments', frags: new Map([[chunk, f]]) }))
}

export class ForeignSpace {
  private readonly held = new Map<number, ExtentEntry[]>()

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
  ) {}

  /** Replaces every hold with what `volumes` hold now (volumes not listed are no longer held). */
  async refresh(volumes: readonly ForeignVolume[]): Promise<void> {
    const read = new Map<number, { volume: ForeignVolume; entries: ExtentEntry[] }>()
    const unreadable = new Set<number>()
    for (const volume of volumes) {
      try {
        read.set(volume.no, { volume, entries: await volume.entries() })
      } catch (err) {
        const e = asVvfsError(err)
        unreadable.add(volume.no)
        this.log.error(
          { event: 'relay.space_unknown', volume: volume.name, code: e.code, err: e.message, kept: this.held.get(volume.no)?.length ?? 0 },
          `the space volume ${volume.name} holds could not be read from its map log (${e.message}); what was known of it stays held`,
        )
      }
    }
    // From here to the end: synchronous, so no allocation sees the space in between.
    for (const [no, entries] of this.held) {
      if (unreadable.has(no)) continue
      for (const piece of entries) releaseSpace(this.pool, piece)
      this.held.delete(no)
    }
    for (const [no, { volume, entries }] of read) {
      const marked: ExtentEntry[] = []
      let conflicts = 0
      let first = ''
      for (const entry of entries) {
        if (![...entrySystems(entry)].every((sid) => this.pool.has(sid))) continue
        for (const piece of piecesOf(entry)) {
          try {
            markSpace(this.pool, piece)
            marked.push(piece)
          } catch (err) {
            if (conflicts++ === 0) first = asVvfsError(err).message
          }
        }
      }
      this.held.set(no, marked)
      if (conflicts > 0)
        this.log.error(
          { event: 'relay.space_conflict', volume: volume.name, pieces: conflicts, first },
          `volume ${volume.name}'s map log names ${conflicts} pieces of space already in use here (${first}): data was allocated over it before this relay knew`,
        )
    }
  }

  /** The volume is served here from now on: its hold is given back (its own map marks its space). */
  forget(volNo: number): void {
    for (const piece of this.held.get(volNo) ?? []) releaseSpace(this.pool, piece)
    this.held.delete(volNo)
  }
}
