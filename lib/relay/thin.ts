/**
 * ThinLayer: the thin-provisioning layer of one volume — allocation on
 * write, zero detection, release and promotion — over its VolumeMap
 * (volume-map.ts: the entries and their records). The extent operations a
 * migration drives (extent-ops.ts) work on the same map under the extent's
 * lock and ask this layer only whether an extent's preparation has settled.
 *
 * State: the map's entries (whole slot, or single-chunk fragments); here,
 * the preparations of new slots (clear, then first record), the scheduled
 * maintenance, and the storage systems written since the last flush.
 *
 * Allocation policy (docs/how-it-works.md, "Thin provisioning"):
 *  - a write that brings at least WHOLE_AT non-zero chunks to an unallocated
 *    extent gets a whole slot (1 MiB) from the pool's placement policy;
 *  - so does a write with data that continues a sequential run of at least
 *    WHOLE_AT chunks (each write starting where the one before it ended; a
 *    discard, or a write of zeros only, ends a run):
 *    ext4's write-back of many small files reaches the loop device's file
 *    as one stream cut into 4–128 KiB writes (1,981 of 2,035 writes of an
 *    unpack of 20,000 files began where the previous one ended), which as
 *    fragments cost a map record and a log sync per write and then a
 *    promotion per extent (issue 17: 5.25 s against qcow2's 3.44);
 *  - smaller writes — the scattered metadata writes of mkfs — get one 4 KiB
 *    fragment per non-zero chunk;
 *  - an extent whose fragments reach PROMOTE_AT is promoted to a whole slot
 *    in the background (a copy of at most PROMOTE_AT chunks);
 *  - an all-zero chunk is never stored: writing one drops what was there,
 *    and an extent left with no data is released.
 *
 * Crash safety (invariant 3): a whole slot is cleared before its first data
 * and its record is written after the clear; a fragment's record is written
 * after its data. A release drops data, then the record, then the space. So
 * after kill -9 every record points at data that is its own or at nothing,
 * and data not referenced by a record is overwritten or cleared before reuse.
 * Under power loss the same holds because every record names the storage
 * systems it points at (VolumeMap.record()) and the MapStore makes their logged writes
 * durable before it writes the record: the clear, the fragment's data, and
 * the deletions an earlier owner made before freeing the space (a log sync
 * covers every logged write before it). A release's record needs nothing:
 * the next owner's record covers the deletion. Unlogged bulk data over whole
 * slots is not waited for: losing it shows the slot's own earlier data or
 * its durable clear. The other way round, released space is freed (can get
 * a new owner) only once the release's record is durable
 * (freeOnceReleased), so no durable old record names a new owner's data.
 *
 * Failure (a storage system's write or the MapStore's record fails): the map
 * in memory is made equal to what is on disk again before the write returns
 * its error. Planning adds fragments and slots in memory before their data
 * and records exist; a write that fails takes back what it added whose record
 * it did not see written (WritePlan.added, newWhole), writes the extent's
 * record again (a concurrent write's record may have carried the addition)
 * and only then frees the space — never referenced twice. A whole slot whose
 * record is written keeps it: its data may be missing, which the write's
 * error reports. Promotion and release restore the entry they replaced when
 * its record fails. Failures are reported through `onFailure` (logged by the
 * manager), never swallowed.
 *
 * Concurrency: host I/O arrives holding the volume's chunk locks. Work that
 * needs a whole extent (release, promotion) is scheduled and runs under the
 * extent's exclusive lock, never inside a host write; so do the extent
 * operations (ExtentOps.lock waits for settled() too).
 *
 * A write (ChunkLayer's Write) is *accepted* once planned — its space is
 * allocated, so POOL_FULL (after the space policy's wait) refuses it before
 * acceptance and only an I/O error can fail it after — and *stored* once its
 * data and records are written.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE, forEachExtent, forEachHeldExtent, isZeroChunk } from '../layout.js'
import type { Pool } from '../storage/pool.js'
import { writeDurably, type ChunkWrite, type StorageSystem } from '../storage/storage-system.js'
import { acceptance, type Acceptance, type ChunkLayer, type Write } from './chunk-layer.js'
import type { Fragment, FragmentedExtent, WholeExtent } from './extent-entry.js'
import type { PlacementRule } from './extent-ops.js'
import type { MapStore } from './map-store.js'
import type { RangeLock } from './range-lock.js'
import type { VolumeMap } from './volume-map.js'

/** Non-zero chunks (128 KiB) that bring a whole slot with them. */
export const WHOLE_AT = (128 * 1024) / CHUNK_SIZE
/** Fragments (256 KiB) at which an extent is promoted to a whole slot. */
export const PROMOTE_AT = (256 * 1024) / CHUNK_SIZE

/** What a full pool does to a writer: give up, or wait for space. */
export interface SpacePolicy {
  /** Resolves true when the write should be retried, false to fail it. */
  waitForSpace(): Promise<boolean>
}

interface WritePlan {
  writes: Map<StorageSystem, ChunkWrite[]>
  /** Slot clears that must finish before data is written. */
  ready: Promise<void>[]
  /** Record writes that must finish before the write is acknowledged. */
  durable: Promise<void>[]
  newWhole: NewWhole[]
  fragmentsAdded: Set<number>
  /** Fragments this write allocated, and the extents whose record it saw written after their data. */
  added: { extent: number; chunk: number; frag: Fragment }[]
  recorded: Set<number>
  fragmentsDropped: { extent: number; chunk: number; frag: Fragment }[]
  maybeEmpty: Set<number>
  /**
   * Only data over whole slots (the slot's earlier data or its logged clear
   * stays valid if this is lost), no deletion and no fragment: such a write
   * may skip LevelDB's log until the next flush (StorageSystem.write).
   */
  inPlace: boolean
}

/** A whole slot a write allocated; `recorded` once its record is written. */
interface NewWhole {
  extent: number
  system: StorageSystem
  entry: WholeExtent
  /** Its clear and then its record (set once started, by prepareWhole). */
  prepared?: { clearing: Promise<void>; recording: Promise<void> }
  recorded: boolean
}

/** A failure of work the volume does for a write or in the background (logged by the manager). */
export interface ThinFailure {
  what: 'write' | 'rollback' | 'promote' | 'release'
  extent: number
  err: unknown
}

export class ThinLayer implements ChunkLayer {
  /** Set by the stack's owner: draining and reserve systems, a migration's destination. */
  placement: () => PlacementRule = () => ({})
  /** Set by the stack's owner: where failures are reported. */
  onFailure: (failure: ThinFailure) => void = () => {}
  /** Whole extents whose slot is still being cleared. */
  private readonly clearing = new Map<number, Promise<void>>()
  /** Whole extents whose first record is still being written. */
  private readonly recording = new Map<number, Promise<void>>()
  private readonly maintenance = new Map<number, Promise<void>>()
  /**
   * Storage systems written (data, deletions, clears) since the last flush:
   * the mark of the latest note, and the system's writeLosses when it was
   * first noted (errseq: a loss after that is this volume's to report).
   */
  private readonly written = new Map<StorageSystem, { mark: number; losses: number }>()
  /** Told of every loss a flush finds (the stack builder: the Volume counts it for each open description). */
  writesLost: (err: unknown) => void = () => {}
  private marks = 0
  /** The chunk after the last write planned, and the length of the sequential run it ended (the allocation policy's run). */
  private runEnd = -1
  private runChunks = 0
  private closed = false

  constructor(
    readonly map: VolumeMap,
    private readonly pool: Pool,
    private readonly maps: MapStore,
    private readonly locks: RangeLock,
    private readonly space: SpacePolicy = { waitForSpace: async () => false },
  ) {}

  async read(first: number, count: number, into: Buffer): Promise<void> {
    const reads: Promise<void>[] = []
    forEachExtent(first, count, (extent, inExtent, n, offset) => {
      const entry = this.map.get(extent)
      if (!entry) into.fill(0, offset, offset + n * CHUNK_SIZE)
      else if (entry.kind === 'whole') reads.push(this.readWhole(extent, entry, inExtent, n, into, offset))
      else reads.push(this.readFragments(entry, inExtent, n, into, offset))
    })
    if (reads.length === 1) return reads[0]
    await Promise.all(reads)
  }

  write(first: number, data: Buffer, after?: Promise<void>): Write {
    const acceptor = acceptance()
    return { accepted: acceptor.accepted, stored: this.store(first, data, acceptor, after) }
  }

  /** Plans the write (waiting for space if the policy says so), accepts it, then stores data and records. */
  private async store(first: number, data: Buffer, acceptor: Acceptance, after?: Promise<void>): Promise<void> {
    const count = data.length / CHUNK_SIZE
    let plan: WritePlan
    try {
      this.checkOpen()
      for (;;) {
        try {
          plan = this.plan(first, count, data)
          break
        } catch (err) {
          if (!(err instanceof VvfsError && err.code === 'POOL_FULL') || !(await this.space.waitForSpace())) throw err
        }
      }
    } catch (err) {
      acceptor.refuse(err)
      throw err
    }
    acceptor.accept()
    // The caller's condition (the journal's write-ahead) holds the data like a slot's clear does.
    if (after) plan.ready.push(after)
    let stored: Promise<void>[] = []
    try {
      if (plan.ready.length) await Promise.all(plan.ready)
      stored = [...plan.writes].map(([system, chunks]) => this.writing(system, (s) => s.write(chunks, { unlogged: plan.inPlace })))
      await Promise.all(stored)
      for (const extent of plan.fragmentsAdded) plan.durable.push(this.map.persist(extent).then(() => void plan.recorded.add(extent)))
      if (plan.fragmentsDropped.length) plan.durable.push(this.dropFragments(plan.fragmentsDropped))
      if (plan.durable.length) await Promise.all(plan.durable)
    } catch (err) {
      // Everything this write started settles before the map is repaired.
      await Promise.allSettled([...plan.ready, ...stored, ...plan.durable])
      this.onFailure({ what: 'write', extent: Math.floor(first / EXTENT_CHUNKS), err })
      await this.rollBack(plan)
      throw err
    }
    for (const extent of plan.maybeEmpty) this.schedule(extent)
  }

  async discard(first: number, count: number): Promise<void> {
    this.checkOpen()
    this.runEnd = -1
    const work: Promise<void>[] = []
    const dropped: { extent: number; chunk: number; frag: Fragment }[] = []
    forEachHeldExtent({ size: this.map.extentCount(), keys: () => this.map.extentIndexes() }, first, count, (extent, inExtent, n) => {
      const entry = this.map.get(extent)
      if (!entry) return
      if (entry.kind === 'whole') {
        if (n === EXTENT_CHUNKS) work.push(this.releaseWhole(extent, entry, true))
        else {
          const system = this.pool.get(entry.sid)
          const base = entry.slot * EXTENT_CHUNKS
          work.push(this.afterReady(extent).then(() => this.writing(system, (s) => s.clearRange(base + inExtent, n))).then(() => this.schedule(extent)))
        }
      } else {
        for (let c = inExtent; c < inExtent + n; c++) {
          const frag = entry.frags.get(c)
          if (frag) dropped.push({ extent, chunk: c, frag })
        }
      }
    })
    if (dropped.length) {
      work.push(this.writeGrouped(dropped.map((d) => ({ sid: d.frag.sid, pca: d.frag.pca, data: null }))).then(() => this.dropFragments(dropped)))
    }
    await Promise.all(work)
  }

  async truncate(chunkCount: number): Promise<void> {
    const firstExtent = Math.floor(chunkCount / EXTENT_CHUNKS)
    const past = this.map.extentIndexes().filter((e) => e >= firstExtent)
    for (const extent of past) {
      const start = Math.max(extent * EXTENT_CHUNKS, chunkCount)
      await this.discard(start, (extent + 1) * EXTENT_CHUNKS - start)
    }
  }

  /**
   * Data first, then the records that point at it (power-loss order). Only
   * the storage systems this volume wrote to since its last flush: a slow or
   * failing system holds up the fsyncs of its own volumes, not every one.
   */
  async flush(): Promise<void> {
    // A system leaves the set only once a sync that began after its last
    // write here had completed has ended (writing() notes a write again when
    // it settles): a second flush meanwhile syncs it too (joining the running
    // sync when that covers its writes), never skips it.
    const marked = [...this.written].map(([system, w]) => ({ system, w, mark: w.mark }))
    await Promise.all(marked.map(({ system }) => system.sync()))
    // A storage server's machine that restarted before these syncs may have
    // taken writes of this volume with it: reported to this flush, once
    // (errseq), whichever volume's sync first met the restart.
    let lost: unknown = null
    for (const { system, w, mark } of marked) {
      try {
        system.lossesSince(w.losses, `writes of this volume`)
      } catch (err) {
        lost ??= err
      }
      w.losses = system.writeLosses
      if (w.mark === mark && this.written.get(system) === w) this.written.delete(system)
    }
    if (lost) {
      this.writesLost(lost)
      throw lost
    }
    await this.maps.sync()
  }

  /** Releases everything (volume delete). */
  async destroy(): Promise<void> {
    await this.truncate(0)
    await Promise.all([...this.maintenance.values()])
    this.closed = true
  }

  /** Waits for scheduled background work (tests, shutdown). */
  async settle(): Promise<void> {
    while (this.maintenance.size > 0) await Promise.all([...this.maintenance.values()])
  }

  close(): void {
    this.closed = true
  }

  // ---- for the extent operations (extent-ops.ts)

  /** Waits until a newly allocated extent's slot is cleared and recorded (never for maintenance, which needs the lock the caller holds). */
  async settled(extent: number): Promise<void> {
    await this.afterReady(extent)
    const recording = this.recording.get(extent)
    if (recording) await recording
  }

  // ---- reads

  private async readWhole(extent: number, entry: WholeExtent, inExtent: number, n: number, into: Buffer, offset: number): Promise<void> {
    await this.afterReady(extent)
    await this.pool.get(entry.sid).readRun(entry.slot * EXTENT_CHUNKS + inExtent, n, into, offset)
  }

  private async readFragments(entry: FragmentedExtent, inExtent: number, n: number, into: Buffer, offset: number): Promise<void> {
    into.fill(0, offset, offset + n * CHUNK_SIZE)
    const bySystem = new Map<number, { pcas: number[]; at: number[] }>()
    for (let c = 0; c < n; c++) {
      const frag = entry.frags.get(inExtent + c)
      if (!frag) continue
      let group = bySystem.get(frag.sid)
      if (!group) bySystem.set(frag.sid, (group = { pcas: [], at: [] }))
      group.pcas.push(frag.pca)
      group.at.push(offset + c * CHUNK_SIZE)
    }
    await Promise.all(
      [...bySystem].map(async ([sid, group]) => {
        const values = await this.pool.get(sid).readMany(group.pcas)
        values.forEach((v, i) => v?.copy(into, group.at[i]))
      }),
    )
  }

  // ---- writes

  /**
   * Decides where each chunk of a write goes and allocates what is missing.
   * All-or-nothing: if the pool cannot hold the write, every allocation made
   * for it is undone and POOL_FULL is thrown before any data is written.
   */
  private plan(first: number, count: number, data: Buffer): WritePlan {
    const run = (first === this.runEnd ? this.runChunks : 0) + count
    const plan: WritePlan = {
      writes: new Map(),
      ready: [],
      durable: [],
      newWhole: [],
      fragmentsAdded: new Set(),
      added: [],
      recorded: new Set(),
      fragmentsDropped: [],
      maybeEmpty: new Set(),
      inPlace: true,
    }
    const undo: (() => void)[] = []
    let withData = 0
    try {
      forEachExtent(first, count, (extent, inExtent, n, offset) => (withData += this.planExtent(plan, undo, extent, inExtent, n, data, offset, run >= WHOLE_AT)))
    } catch (err) {
      for (const u of undo.reverse()) u()
      throw err
    }
    // Zeros (a discard by writing) end the run, as a discard does.
    this.runEnd = first + count
    this.runChunks = withData > 0 ? Math.min(run, EXTENT_CHUNKS) : 0
    for (const w of plan.newWhole) this.prepareWhole(plan, w)
    return plan
  }

  /** Plans one extent's part of a write; returns its non-zero chunks. */
  private planExtent(plan: WritePlan, undo: (() => void)[], extent: number, inExtent: number, n: number, data: Buffer, offset: number, inRun: boolean): number {
    let entry = this.map.get(extent)
    const zero: boolean[] = new Array(n)
    let nonZero = 0
    for (let c = 0; c < n; c++) {
      zero[c] = isZeroChunk(data, offset + c * CHUNK_SIZE)
      if (!zero[c]) nonZero++
    }
    if (!entry) {
      if (nonZero === 0) return 0
      if (nonZero >= WHOLE_AT || inRun) entry = this.allocateWhole(plan, undo, extent)
      if (!entry) {
        entry = { kind: 'fragments', frags: new Map() }
        this.map.set(extent, entry)
        undo.push(() => this.map.delete(extent))
      }
    }
    if (entry.kind === 'whole') {
      const system = this.pool.get(entry.sid)
      const base = entry.slot * EXTENT_CHUNKS + inExtent
      const writes = writesFor(plan, system)
      for (let c = 0; c < n; c++) {
        writes.push({ pca: base + c, data: zero[c] ? null : data.subarray(offset + c * CHUNK_SIZE, offset + (c + 1) * CHUNK_SIZE) })
      }
      if (nonZero < n) {
        plan.maybeEmpty.add(extent)
        plan.inPlace = false
      }
      // A slot another write is still preparing: wait for its clear and record.
      const clearing = this.clearing.get(extent)
      if (clearing) plan.ready.push(clearing)
      const recording = this.recording.get(extent)
      if (recording) plan.durable.push(recording)
      return nonZero
    }
    const frags = entry.frags
    plan.inPlace = false
    for (let c = 0; c < n; c++) {
      const chunk = inExtent + c
      let frag = frags.get(chunk)
      if (zero[c]) {
        if (frag) {
          writesFor(plan, this.pool.get(frag.sid)).push({ pca: frag.pca, data: null })
          plan.fragmentsDropped.push({ extent, chunk, frag })
        }
        continue
      }
      if (!frag) {
        const placement = this.pool.allocateFragment(this.placement())
        if (!placement) throw this.poolFull()
        frag = { sid: placement.system.sid, pca: placement.address }
        this.map.addFragment(entry, chunk, frag)
        const added = frag
        undo.push(() => {
          this.map.removeFragment(extent, chunk, added)
          this.pool.releaseFragment(added.sid, added.pca)
        })
        plan.fragmentsAdded.add(extent)
        plan.added.push({ extent, chunk, frag })
      }
      writesFor(plan, this.pool.get(frag.sid)).push({ pca: frag.pca, data: data.subarray(offset + c * CHUNK_SIZE, offset + (c + 1) * CHUNK_SIZE) })
    }
    if (frags.size >= PROMOTE_AT) this.schedule(extent)
    return nonZero
  }

  private allocateWhole(plan: WritePlan, undo: (() => void)[], extent: number): WholeExtent | undefined {
    const placement = this.pool.allocateSlot(this.placement())
    if (!placement) return undefined
    const entry: WholeExtent = { kind: 'whole', sid: placement.system.sid, slot: placement.address }
    this.map.set(extent, entry)
    undo.push(() => {
      this.map.delete(extent)
      this.pool.releaseSlot(entry.sid, entry.slot)
    })
    plan.newWhole.push({ extent, system: placement.system, entry, recorded: false })
    return entry
  }

  /**
   * Starts clearing a new slot and then writing its record. Called only once
   * the plan can no longer be undone, so a clear never runs on a slot that
   * was given back and handed to someone else.
   */
  private prepareWhole(plan: WritePlan, w: NewWhole): void {
    const extent = w.extent
    const clearing = this.writing(w.system, (s) => s.clearSlot(w.entry.slot))
    const recording = clearing.then(() => this.map.persist(extent))
    this.clearing.set(extent, clearing)
    this.recording.set(extent, recording)
    w.prepared = { clearing, recording }
    // A failed clear or record stays in place, failing every write and read
    // that joins the slot, until this write's rollBack takes the slot back.
    recording.then(
      () => {
        w.recorded = true
        this.forgetPreparation(extent, clearing, recording)
      },
      () => {},
    )
    plan.ready.push(clearing)
    plan.durable.push(recording)
  }

  private forgetPreparation(extent: number, clearing: Promise<void>, recording: Promise<void>): void {
    if (this.clearing.get(extent) === clearing) this.clearing.delete(extent)
    if (this.recording.get(extent) === recording) this.recording.delete(extent)
  }

  /**
   * After a failed write: takes back what the write allocated whose record it
   * did not see written, writes those extents' records again, then frees the
   * space once they are durable (freeOnceReleased). If that record fails too
   * the space stays held (free-space tables are rebuilt from the records at
   * start), so it is never handed out while a record on disk may still name it.
   */
  private async rollBack(plan: WritePlan): Promise<void> {
    const freed = new Map<number, (() => void)[]>()
    const free = (extent: number, release: () => void) => {
      const list = freed.get(extent)
      if (list) list.push(release)
      else freed.set(extent, [release])
    }
    for (const w of plan.newWhole) {
      if (w.recorded) continue
      if (w.prepared) this.forgetPreparation(w.extent, w.prepared.clearing, w.prepared.recording)
      if (this.map.get(w.extent) !== w.entry) continue
      this.map.delete(w.extent)
      free(w.extent, () => this.pool.releaseSlot(w.entry.sid, w.entry.slot))
    }
    for (const { extent, chunk, frag } of plan.added) {
      if (plan.recorded.has(extent) || !this.map.removeFragment(extent, chunk, frag)) continue
      free(extent, () => this.pool.releaseFragment(frag.sid, frag.pca))
    }
    await Promise.all(
      [...freed].map(async ([extent, releases]) => {
        try {
          await this.map.persist(extent)
          await this.maps.sync()
        } catch (err) {
          this.onFailure({ what: 'rollback', extent, err })
          return
        }
        for (const release of releases) release()
      }),
    )
  }

  /** Forgets dropped fragments (their data is already gone) and frees them. */
  private async dropFragments(dropped: { extent: number; chunk: number; frag: Fragment }[]): Promise<void> {
    const removed = dropped.filter(({ extent, chunk, frag }) => this.map.removeFragment(extent, chunk, frag))
    const extents = [...new Set(removed.map((r) => r.extent))]
    const results = await Promise.allSettled(extents.map((e) => this.map.persist(e)))
    const failed = new Set(extents.filter((_, i) => results[i]!.status === 'rejected'))
    const freeing: Fragment[] = []
    for (const { extent, chunk, frag } of removed) {
      if (!failed.has(extent)) {
        freeing.push(frag)
        continue
      }
      // The extent's record still names the fragment (its data is dropped:
      // it reads as zeros either way): so does the map again.
      let entry = this.map.get(extent)
      if (!entry) this.map.set(extent, (entry = { kind: 'fragments', frags: new Map() }))
      if (entry.kind !== 'fragments' || entry.frags.has(chunk)) continue
      this.map.addFragment(entry, chunk, frag)
    }
    if (freeing.length) await this.freeOnceReleased(() => freeing.forEach((f) => this.pool.releaseFragment(f.sid, f.pca)))
    const failure = results.find((r) => r.status === 'rejected')
    if (failure) throw failure.reason
  }

  // ---- extent maintenance (under the extent's exclusive lock)

  private schedule(extent: number): void {
    if (this.maintenance.has(extent) || this.closed) return
    let what: ThinFailure['what'] = 'release'
    const run = Promise.resolve()
      .then(() =>
        this.locks.with(extent * EXTENT_CHUNKS, (extent + 1) * EXTENT_CHUNKS, 'exclusive', () => {
          if (this.map.get(extent)?.kind === 'fragments') what = 'promote'
          return this.maintain(extent)
        }),
      )
      .catch((err: unknown) => {
        // Maintenance only reclaims space; a failure leaves a consistent map
        // and the next write to the extent schedules it again.
        this.onFailure({ what, extent, err })
      })
      .finally(() => this.maintenance.delete(extent))
    this.maintenance.set(extent, run)
  }

  private async maintain(extent: number): Promise<void> {
    const entry = this.map.get(extent)
    if (!entry || this.closed) return
    if (entry.kind === 'whole') {
      await this.afterReady(extent)
      const system = this.pool.get(entry.sid)
      if (!(await system.hasData(entry.slot * EXTENT_CHUNKS, EXTENT_CHUNKS))) await this.releaseWhole(extent, entry, false)
    } else if (entry.frags.size >= PROMOTE_AT) {
      await this.promote(extent, entry)
    }
  }

  /** Copies an extent's fragments into a whole slot and frees them. */
  private async promote(extent: number, entry: FragmentedExtent): Promise<void> {
    const placement = this.pool.allocateSlot(this.placement())
    if (!placement) return
    const whole: WholeExtent = { kind: 'whole', sid: placement.system.sid, slot: placement.address }
    try {
      // Durable before the record that points at it (the MapStore would
      // sync it before the batch too; syncing here first means a failed
      // sync only frees the slot, with no record written either way), and
      // not switched to if a restart of the server's machine may have taken it.
      await writeDurably([placement.system], `the promoted copy of extent ${extent}`, async () => {
        await this.writing(placement.system, (s) => s.clearSlot(whole.slot))
        const buf = Buffer.allocUnsafe(EXTENT_SIZE)
        const chunks = [...entry.frags.keys()]
        await this.readFragments(entry, 0, EXTENT_CHUNKS, buf, 0)
        await placement.system.write(chunks.map((c) => ({ pca: whole.slot * EXTENT_CHUNKS + c, data: buf.subarray(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE) })))
      })
    } catch (err) {
      this.pool.releaseSlot(whole.sid, whole.slot)
      throw err
    }
    const old = [...entry.frags.values()]
    this.map.set(extent, whole)
    try {
      await this.map.persist(extent)
    } catch (err) {
      // The record still names the fragments: so does the map again, and the
      // slot is freed once a record says so (it stays held otherwise).
      this.map.set(extent, entry)
      await this.map.persist(extent).then(
        () => this.pool.releaseSlot(whole.sid, whole.slot),
        () => {},
      )
      throw err
    }
    // The fragments' data goes only once the record pointing away from them is durable.
    await this.maps.sync()
    await this.writeGrouped(old.map((f) => ({ sid: f.sid, pca: f.pca, data: null })))
    for (const f of old) this.pool.releaseFragment(f.sid, f.pca)
  }

  /** Drops a whole extent's data (if asked), its record, then its slot. */
  private async releaseWhole(extent: number, entry: WholeExtent, clear: boolean): Promise<void> {
    await this.afterReady(extent)
    if (clear) await this.writing(this.pool.get(entry.sid), (s) => s.clearRange(entry.slot * EXTENT_CHUNKS, EXTENT_CHUNKS))
    if (this.map.get(extent) !== entry) return
    this.map.delete(extent)
    try {
      await this.map.persist(extent)
    } catch (err) {
      // The record still names the (cleared) slot: so does the map again.
      if (!this.map.has(extent)) this.map.set(extent, entry)
      throw err
    }
    await this.freeOnceReleased(() => this.pool.releaseSlot(entry.sid, entry.slot))
  }

  /**
   * Frees space once the records that stopped pointing at it are durable (a
   * map-store sync after them). Freed at once, a new owner's data could
   * become durable (its own fsync syncs its storage system before the map
   * store; a background sync flushes a memtable; its record's dependency
   * sync) while the old record, not yet replaced on disk, still named the
   * space: after a power cut the old owner read the new owner's data
   * (test/system/migration-crash.test.ts, "never fsynced ... power cut": an
   * extent emptied by zeros showed another extent's data). If the sync fails
   * the space stays held (the free-space tables are rebuilt from the records
   * at start) and the error goes to the caller.
   */
  private async freeOnceReleased(free: () => void): Promise<void> {
    await this.maps.sync()
    free()
  }

  // ---- helpers

  /**
   * Runs `op` (a write, deletion or clear) on `system`, noted as written so
   * the next flush syncs it — noted again once `op` has settled. A flush
   * forgets a system only if no note came after the one it saw, and a sync
   * covers only writes completed when it began: noted at issue alone, a flush
   * that ran while the write was still on its way into the store forgot the
   * system, and the writer's own fsync then skipped it (a power cut took an
   * fsynced file; test/relay/concurrent-flush.test.ts).
   */
  writing<T>(system: StorageSystem, op: (system: StorageSystem) => Promise<T>): Promise<T> {
    const note = () => {
      const w = this.written.get(system)
      if (w) w.mark = ++this.marks
      else this.written.set(system, { mark: ++this.marks, losses: system.writeLosses })
    }
    note()
    const work = op(system)
    work.then(note, note)
    return work
  }

  private async afterReady(extent: number): Promise<void> {
    const clearing = this.clearing.get(extent)
    if (clearing) await clearing
  }

  private async writeGrouped(chunks: { sid: number; pca: number; data: Buffer | null }[]): Promise<void> {
    const bySystem = new Map<number, ChunkWrite[]>()
    for (const c of chunks) {
      let list = bySystem.get(c.sid)
      if (!list) bySystem.set(c.sid, (list = []))
      list.push({ pca: c.pca, data: c.data })
    }
    await Promise.all([...bySystem].map(([sid, list]) => this.writing(this.pool.get(sid), (s) => s.write(list))))
  }

  private poolFull(): VvfsError {
    const t = this.pool.totals()
    return new VvfsError('POOL_FULL', `the pool is full (${t.allocated} of ${t.capacity} bytes allocated)`)
  }

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', 'the volume is closed')
  }
}

function writesFor(plan: WritePlan, system: StorageSystem): ChunkWrite[] {
  let list = plan.writes.get(system)
  if (!list) plan.writes.set(system, (list = []))
  return list
}

