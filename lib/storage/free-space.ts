/**
 * FreeSpaceTable: which slots of one storage system are free, whole (one
 * extent) or split into single-chunk fragments (the small allocations that
 * file-system metadata gets). It is derived state: built at start from the
 * volume maps and job records, changed only by the relay's allocations and
 * releases, never persisted on its own — so allocated space can never drift
 * from what the maps reference.
 *
 * Never: touches the store or knows which volume owns a slot.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../layout.js'

const FREE = 0
const WHOLE = 1
const SPLIT = 2

/**
 * The largest capacity a storage system may declare: 16 TiB. The table holds
 * one byte per 1 MiB slot and its figures (storage list, pool status) scan
 * every slot, as the consolidation planner does with a 4-byte owner per slot,
 * all on the event loop. Measured here (Node 20, one core of the shared test
 * VM): a 16 TiB table's figures 68 ms, the planner's owner table 170 ms; a
 * 4 PiB one took 22.8 s to add and 10.7 s per `pool status`, stalling every
 * FUSE request meanwhile. Storage above this is refused (CAPACITY_TOO_LARGE)
 * until the table keeps free space as runs.
 */
export const MAX_CAPACITY = 16 * 2 ** 40

export interface FreeSpaceFigures {
  capacity: number
  allocated: number
  free: number
  /** Bytes in the longest run of consecutive free slots. */
  largestFreeRun: number
  wholeSlots: number
  fragments: number
}

export class FreeSpaceTable {
  readonly slotCount: number
  private readonly state: Uint8Array
  /** Split slot → bitmap of its used chunk positions. */
  private readonly split = new Map<number, Uint8Array>()
  private readonly splitUsed = new Map<number, number>()
  /** Split slots with at least one free position, for O(1) fragment allocation. */
  private readonly partial = new Set<number>()
  private wholeCount = 0
  private fragmentCount = 0
  private freeCount: number
  /** Lowest index that may be free: allocation scans from here. */
  private freeHint = 0

  constructor(capacityBytes: number) {
    this.slotCount = Math.floor(capacityBytes / EXTENT_SIZE)
    this.state = new Uint8Array(this.slotCount)
    this.freeCount = this.slotCount
  }

  get capacity(): number {
    return this.slotCount * EXTENT_SIZE
  }

  get allocated(): number {
    return this.wholeCount * EXTENT_SIZE + this.fragmentCount * CHUNK_SIZE
  }

  get free(): number {
    return this.capacity - this.allocated
  }

  get freeSlots(): number {
    return this.freeCount
  }

  /** Whether a fragment can be had without splitting a new slot. */
  get hasPartialSlot(): boolean {
    return this.partial.size > 0
  }

  get isEmpty(): boolean {
    return this.freeCount === this.slotCount
  }

  /** Takes the lowest free slot: keeps allocations packed, free runs long. */
  allocateSlot(): number | undefined {
    if (this.freeCount === 0) return undefined
    for (let s = this.freeHint; s < this.slotCount; s++) {
      if (this.state[s] === FREE) {
        this.markWhole(s)
        this.freeHint = s + 1
        return s
      }
    }
    return undefined
  }

  /** Returns a chunk address (slot * EXTENT_CHUNKS + position). */
  allocateFragment(): number | undefined {
    let slot: number | undefined = this.partial.values().next().value
    if (slot === undefined) {
      if (this.freeCount === 0) return undefined
      slot = this.allocateSlot()
      if (slot === undefined) return undefined
      this.state[slot] = SPLIT
      this.wholeCount--
      this.split.set(slot, new Uint8Array(EXTENT_CHUNKS))
      this.splitUsed.set(slot, 0)
      this.partial.add(slot)
    }
    const bits = this.split.get(slot)!
    const pos = bits.indexOf(0)
    this.useFragment(slot, pos)
    return slot * EXTENT_CHUNKS + pos
  }

  /** Restores a whole slot found in a map record at start. */
  markWhole(slot: number): void {
    this.check(slot)
    if (this.state[slot] !== FREE) throw new VvfsError('STATE_CORRUPT', `slot ${slot} is referenced twice`)
    this.state[slot] = WHOLE
    this.wholeCount++
    this.freeCount--
  }

  /** Restores a fragment found in a map record at start. */
  markFragment(pca: number): void {
    const slot = Math.floor(pca / EXTENT_CHUNKS)
    this.check(slot)
    if (this.state[slot] === WHOLE) throw new VvfsError('STATE_CORRUPT', `chunk ${pca} is in a whole slot and a fragment`)
    if (this.state[slot] === FREE) {
      this.state[slot] = SPLIT
      this.freeCount--
      this.split.set(slot, new Uint8Array(EXTENT_CHUNKS))
      this.splitUsed.set(slot, 0)
      this.partial.add(slot)
    }
    const pos = pca % EXTENT_CHUNKS
    if (this.split.get(slot)![pos]) throw new VvfsError('STATE_CORRUPT', `fragment ${pca} is referenced twice`)
    this.useFragment(slot, pos)
  }

  releaseSlot(slot: number): void {
    this.check(slot)
    if (this.state[slot] !== WHOLE) throw new VvfsError('INTERNAL', `release of slot ${slot} that is not allocated whole`)
    this.state[slot] = FREE
    this.wholeCount--
    this.freeCount++
    if (slot < this.freeHint) this.freeHint = slot
  }

  releaseFragment(pca: number): void {
    const slot = Math.floor(pca / EXTENT_CHUNKS)
    const pos = pca % EXTENT_CHUNKS
    const bits = this.split.get(slot)
    if (!bits || !bits[pos]) throw new VvfsError('INTERNAL', `release of fragment ${pca} that is not allocated`)
    bits[pos] = 0
    this.fragmentCount--
    const used = this.splitUsed.get(slot)! - 1
    if (used === 0) {
      this.split.delete(slot)
      this.splitUsed.delete(slot)
      this.partial.delete(slot)
      this.state[slot] = FREE
      this.freeCount++
      if (slot < this.freeHint) this.freeHint = slot
    } else {
      this.splitUsed.set(slot, used)
      this.partial.add(slot)
    }
  }

  isSlotFree(slot: number): boolean {
    return slot >= 0 && slot < this.slotCount && this.state[slot] === FREE
  }

  /** Lengths (in slots) of every run of consecutive free slots. */
  freeRuns(): number[] {
    const runs: number[] = []
    let run = 0
    for (let s = 0; s < this.slotCount; s++) {
      if (this.state[s] === FREE) run++
      else if (run > 0) {
        runs.push(run)
        run = 0
      }
    }
    if (run > 0) runs.push(run)
    return runs
  }

  figures(): FreeSpaceFigures {
    let largest = 0
    for (const run of this.freeRuns()) if (run > largest) largest = run
    return {
      capacity: this.capacity,
      allocated: this.allocated,
      free: this.free,
      largestFreeRun: largest * EXTENT_SIZE,
      wholeSlots: this.wholeCount,
      fragments: this.fragmentCount,
    }
  }

  private useFragment(slot: number, pos: number): void {
    this.split.get(slot)![pos] = 1
    this.fragmentCount++
    const used = this.splitUsed.get(slot)! + 1
    this.splitUsed.set(slot, used)
    if (used === EXTENT_CHUNKS) this.partial.delete(slot)
  }

  private check(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slotCount) {
      throw new VvfsError('STATE_CORRUPT', `slot ${slot} is outside the storage system (${this.slotCount} slots)`)
    }
  }
}
