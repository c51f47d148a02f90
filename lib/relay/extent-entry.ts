/**
 * ExtentEntry: one line of a volume map — where the data of one volume extent
 * lives — and the one place that tells its two shapes apart for everyone
 * else (size, systems, chunk addresses, space in the free-space tables).
 * Its record form is in key-space.ts.
 *
 *   whole:     the extent is one slot of one storage system
 *   fragments: some of its chunks each have a single-chunk fragment, possibly
 *              on different systems (the small allocations of claim 7/16)
 *   (released: a record with no entry — the extent holds nothing any more)
 *
 * Concurrency: pure functions over an entry; the space functions change the
 * pool's free-space tables synchronously. Failure modes: none.
 */
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../layout.js'
import type { Pool } from '../storage/pool.js'

export interface Fragment {
  sid: number
  pca: number
}

export interface WholeExtent {
  kind: 'whole'
  sid: number
  slot: number
}

export interface FragmentedExtent {
  kind: 'fragments'
  /** Chunk index within the extent → its fragment. */
  frags: Map<number, Fragment>
}

export type ExtentEntry = WholeExtent | FragmentedExtent

/** Bytes of pool space an entry holds. */
export function entryBytes(entry: ExtentEntry): number {
  return entry.kind === 'whole' ? EXTENT_SIZE : entry.frags.size * CHUNK_SIZE
}

/** The storage systems an entry's data is on. */
export function entrySystems(entry: ExtentEntry): Set<number> {
  if (entry.kind === 'whole') return new Set([entry.sid])
  const sids = new Set<number>()
  for (const f of entry.frags.values()) sids.add(f.sid)
  return sids
}

/** Calls fn with the bytes of pool space an entry holds on each storage system (once per fragment). */
export function forEachSpace(entry: ExtentEntry, fn: (sid: number, bytes: number) => void): void {
  if (entry.kind === 'whole') fn(entry.sid, EXTENT_SIZE)
  else for (const f of entry.frags.values()) fn(f.sid, CHUNK_SIZE)
}

/** Whether two entries hold the same chunks of an extent (so one can be copied onto the other). */
export function sameShape(a: ExtentEntry, b: ExtentEntry): boolean {
  if (a.kind === 'whole' || b.kind === 'whole') return a.kind === b.kind
  if (a.frags.size !== b.frags.size) return false
  for (const c of a.frags.keys()) if (!b.frags.has(c)) return false
  return true
}

/** An entry's chunk addresses per storage system (a whole slot: all its chunks). */
export function entryChunks(entry: ExtentEntry): Map<number, number[]> {
  if (entry.kind === 'whole') return new Map([[entry.sid, Array.from({ length: EXTENT_CHUNKS }, (_, i) => entry.slot * EXTENT_CHUNKS + i)]])
  const out = new Map<number, number[]>()
  for (const f of entry.frags.values()) {
    const list = out.get(f.sid)
    if (list) list.push(f.pca)
    else out.set(f.sid, [f.pca])
  }
  return out
}

/** Marks an entry's space used in the free-space tables (an entry found at start). */
export function markSpace(pool: Pool, entry: ExtentEntry): void {
  if (entry.kind === 'whole') pool.get(entry.sid).table.markWhole(entry.slot)
  else for (const f of entry.frags.values()) pool.get(f.sid).table.markFragment(f.pca)
}

/** Gives an entry's space back to the free-space tables. */
export function releaseSpace(pool: Pool, entry: ExtentEntry): void {
  if (entry.kind === 'whole') pool.releaseSlot(entry.sid, entry.slot)
  else for (const f of entry.frags.values()) pool.releaseFragment(f.sid, f.pca)
}
