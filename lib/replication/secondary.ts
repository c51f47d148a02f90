/**
 * The secondary's pairs in a daemon: each pair is an Applier over a
 * ReplicaStore — a LevelDB directory of its own under
 * STATE/replication/secondary/<pair> — applying to read-only volumes of
 * this daemon (created by the pair's CREATE, visible in the mount).
 *
 * Atomicity of "applied number with the data" (issue 13.3): a batch's
 * changes and the new SecondaryState are one synced frame of the pair's redo
 * log (a SegmentDurableLog, journal-log.ts, in DIR/redo: its entries
 * numbered by a local counter — a received entry's record kept as it came,
 * with the primary's number inside, which redo does not use — the state as
 * the frame's meta); the changes
 * are then applied to the volumes in order. Every second (and at close) the
 * volumes are flushed and the log trimmed through the last local number
 * whose change they now hold durably. At open the records after the trim
 * point are applied again, in order, and flushed before the pair is served
 * and before the host mounts come up, so the image is always the primary's
 * writes 1..appliedSeq (or, during a resync, marked inconsistent). Applying
 * a change twice in order is harmless: every change sets bytes to given
 * contents. The pair's configuration is a LevelDB key in DIR, written once.
 *
 * The redo log was a LevelDB store until 2026-12-04: each applied byte went
 * to its log, again to a level-0 table every 4 MiB and was read once more by
 * the compaction that dropped it (bench/replication.ts, end to end: see
 * docs/limits.md). A store of that format is redone and its state moved
 * into the segment log at its first open (`upgrade`).
 *
 * Concurrency: the Applier runs one batch at a time; the store's apply is
 * only called from it. Pairs are created one at a time (a queue).
 *
 * Failure modes: a store that fails a batch rejects (IO_ERROR) and stays
 * failed — every later call rejects until the pair is opened again (a
 * daemon restart), as LevelDB does after a failed log write: after a failed
 * fdatasync nothing says which frames are durable, and a later sync that
 * succeeds would not make them so. A volume write that fails after the batch
 * is durable (or a flush that reports one) fails the store too: its record,
 * which says it is applied, is kept for the next open to redo, never trimmed
 * by a checkpoint meanwhile. A CREATE naming a volume that
 * exists and is not this pair's replica is refused (VOLUME_EXISTS).
 */
import { ClassicLevel } from 'classic-level'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Volume } from '../relay/volume.js'
import { Applier, isConsistent, type ApplyTarget, type SecondaryState, type TargetChange } from './applier.js'
import { decodeEntry, encodeEntryParts, readU53, writeU53 } from './entry.js'
import type { EpochChain } from './epoch.js'
import type { Hello } from './messages.js'
import { openLevelDurably, removeDurably } from '../durable-file.js'
import { SegmentDurableLog } from './journal-log.js'

/** What the daemon gives the secondary: its volumes. */
export interface ReplicaHost {
  /** The live volume named `name`, if it is a replica of `pair`. */
  replica(name: string, pair: string): Volume | undefined
  /** Creates read-only volume `name` of `size` as a replica of `pair` (VOLUME_EXISTS if the name is taken). */
  createReplica(name: string, size: number, pair: string): Promise<Volume>
  /** Throws what createReplica would for this name (invalid, or taken by a volume that is not this pair's replica), creating nothing. */
  checkReplica(name: string, pair: string): void
  resizeReplica(name: string, size: number): Promise<void>
}

export interface PairConfig {
  pair: string
  group: string | null
  /** The primary's volume numbers (entries carry them) → the local volume names. */
  volumes: { no: number; name: string; size: number }[]
  /** The primary's address as last seen (for status). */
  peer: string
  createdAt: string
  /** The primary's epoch chain when the pair was created (the Applier's start). */
  chain: EpochChain
}

const CONFIG_KEY = Buffer.from('m/config')
/** The state and redo records of a store made before the segment log (upgrade()). */
const LEGACY_STATE_KEY = Buffer.from('m/state')
const LEGACY_CHECKPOINT_KEY = Buffer.from('m/checkpoint')
const LEGACY_RECORD = 0x72 // 'r'
/** How often applied changes are flushed in the volumes and the redo records dropped. */
const CHECKPOINT_MS = 1000
/** Redo records read back at a time at open. */
const REDO_READ_BYTES = 16 * 1024 * 1024

const corrupt = (why: string) => new VvfsError('STATE_CORRUPT', `replica store: ${why}`)

/** One pair's durable state and redo log on the secondary; the Applier's target. */
export class ReplicaStore implements ApplyTarget {
  private lastRecord = 0
  private checkpoint = 0
  private lastCheckpointAt = Date.now()
  /** Set by a failed log commit: the store refuses everything after it (see the file comment). */
  private failed: VvfsError | null = null

  private constructor(
    private readonly db: ClassicLevel<Buffer, Buffer>,
    private readonly log: SegmentDurableLog,
    private readonly dir: string,
    readonly config: PairConfig,
    private readonly volumes: Map<number, Volume>,
    private readonly host: ReplicaHost,
  ) {}

  static async open(dir: string, config: PairConfig | null, host: ReplicaHost): Promise<ReplicaStore> {
    await mkdir(dir, { recursive: true })
    const db = new ClassicLevel<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer', compression: false, writeBufferSize: 4 * 1024 * 1024 })
    await openLevelDurably(db, dir)
    let log: SegmentDurableLog | null = null
    try {
      const raw = await db.get(CONFIG_KEY)
      const stored = raw ? (JSON.parse(raw.toString('utf8')) as PairConfig) : null
      const cfg = stored ?? config
      if (!cfg) throw corrupt(`${dir} has no pair configuration`)
      if (!stored) await db.put(CONFIG_KEY, Buffer.from(JSON.stringify(cfg)), { sync: true })
      const volumes = new Map<number, Volume>()
      for (const v of cfg.volumes) {
        const vol = host.replica(v.name, cfg.pair) ?? (await host.createReplica(v.name, v.size, cfg.pair))
        volumes.set(v.no, vol)
      }
      log = await SegmentDurableLog.open(join(dir, 'redo'))
      const store = new ReplicaStore(db, log, dir, cfg, volumes, host)
      await store.upgrade()
      await store.redo()
      return store
    } catch (err) {
      await log?.close().catch(() => undefined)
      await db.close().catch(() => undefined)
      throw err
    }
  }

  async load(): Promise<SecondaryState | null> {
    this.check()
    const { meta } = await this.log.load()
    return meta ? (JSON.parse(meta.toString('utf8')) as SecondaryState) : null
  }

  async apply(changes: TargetChange[], state: SecondaryState): Promise<void> {
    this.check()
    this.checkRanges(changes)
    let n = this.lastRecord
    // A received entry's record goes in as it came (its checksum was checked on receipt); the redo log numbers it by its own counter.
    const entries = changes.map((c) => ({ seq: ++n, parts: c.record ? [c.record] : encodeEntryParts({ ...c, seq: n, epoch: 1 }) }))
    await this.commit({ entries, meta: Buffer.from(JSON.stringify(state)) })
    this.lastRecord = n
    // The state says these are applied: one that did not land fails the store, so no checkpoint trims its record
    // before the next open redoes it (2026-12-04 review: a later checkpoint trimmed it, the pair reported it applied).
    await this.orFail(async () => {
      for (const c of changes) await this.applyToVolume(c)
    })
    if (Date.now() - this.lastCheckpointAt >= CHECKPOINT_MS) await this.makeCheckpoint()
  }

  /** Runs `work`; its failure fails the store for good (see the file comment), then rejects. */
  private async orFail(work: () => Promise<void>): Promise<void> {
    try {
      await work()
    } catch (err) {
      const e = err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `replica store: ${(err as Error).message}`, { cause: err })
      this.failed ??= new VvfsError('IO_ERROR', `replica store ${this.dir} failed a write earlier (${e.message}); it serves again once the daemon restarts`, { cause: e })
      throw e
    }
  }

  /** A synced commit to the redo log; a failure fails the store for good (see the file comment). */
  private commit(batch: Parameters<SegmentDurableLog['commit']>[0]): Promise<void> {
    return this.orFail(() => this.log.commit(batch, true))
  }

  private check(): void {
    if (this.failed) throw this.failed
  }

  /**
   * Refuses a batch with a change past its volume's end (sizes as the batch's
   * own resizes leave them) before any of it is stored: a stored record is
   * redone at every open, so one that cannot be applied would keep the pair
   * from opening. The primary's resync sent such writes (a grow while behind:
   * grow-while-behind.test.ts); a peer holding the key could too.
   */
  private checkRanges(changes: TargetChange[]): void {
    const sizes = new Map<number, number>()
    for (const c of changes) {
      const v = this.volumes.get(c.volume)
      if (!v) throw new VvfsError('VOLUME_NOT_FOUND', `replica store: no local volume for primary volume ${c.volume}`, { details: { reason: 'unknown-volume' } })
      if (c.kind === 'resize') sizes.set(c.volume, c.length)
      else if (c.kind !== 'flush') {
        const size = sizes.get(c.volume) ?? v.size
        if (c.offset + c.length > size)
          throw new VvfsError('OUT_OF_RANGE', `replica store: a ${c.kind} of ${c.length} bytes at ${c.offset} past the end of volume ${c.volume} (${size} bytes); nothing of the batch applied`, { details: { reason: 'past-end' } })
      }
    }
  }

  /**
   * A resync's copied data straight into the volumes (the Applier's
   * writeDirect): no redo record, not durable until flushDirect(). Checked
   * against the volumes' ends first: nothing of a change past the end is
   * written.
   */
  async writeDirect(changes: TargetChange[]): Promise<void> {
    this.check()
    this.checkRanges(changes)
    for (const c of changes) {
      if (c.kind === 'resize' || c.kind === 'flush') throw new VvfsError('PEER_PROTOCOL', `resync data of kind ${c.kind} cannot be written directly`)
      await this.applyToVolume(c)
    }
  }

  /**
   * Makes what writeDirect() wrote durable (the Applier's flushDirect): a
   * checkpoint first, so no redo record of a change applied before the
   * direct writes is redone over them at the next open, then every volume
   * flushed.
   */
  async flushDirect(): Promise<void> {
    this.check()
    await this.makeCheckpoint()
    for (const v of this.volumes.values()) await v.flush()
  }

  /** Flushes the volumes and drops the redo records they now hold durably. */
  async makeCheckpoint(): Promise<void> {
    this.check()
    this.lastCheckpointAt = Date.now()
    const through = this.lastRecord
    if (through === this.checkpoint) return
    // A flush reports a failed write-behind once: the store fails with it, or the next checkpoint would trim its record.
    await this.orFail(async () => {
      for (const v of this.volumes.values()) await v.flush()
    })
    await this.commit({ trimThrough: through })
    this.checkpoint = through
  }

  /** Closes the store without a checkpoint (its volume is gone) and deletes it, durably: a store back after a power cut would be opened as a pair again. */
  async drop(): Promise<void> {
    await this.log.close()
    await this.db.close()
    await removeDurably(this.dir)
  }

  async close(): Promise<void> {
    try {
      if (!this.failed) await this.makeCheckpoint()
    } finally {
      await this.log.close()
      await this.db.close()
    }
  }

  /** Applies the records after the trim point again (a crash may have left their data unstored). */
  private async redo(): Promise<void> {
    const contents = await this.log.load()
    this.checkpoint = this.lastRecord = contents.trimmedThrough
    const last = contents.retained.at(-1)?.seq ?? this.checkpoint
    for (let from = this.checkpoint + 1; from <= last; ) {
      const records = await this.log.read(from, last, REDO_READ_BYTES)
      if (records.length === 0) throw corrupt(`redo record ${from} is missing from ${this.dir}`)
      for (const r of records) {
        await this.applyToVolume(decodeEntry(r.record, 'STATE_CORRUPT', { view: true }))
        this.lastRecord = r.seq
      }
      from = this.lastRecord + 1
    }
    await this.makeCheckpoint()
  }

  /**
   * A store made before the segment log keeps its state and redo records in
   * its LevelDB: they are redone into the volumes, which are flushed, and the
   * state moves into the segment log (synced) before the LevelDB keys are
   * deleted — a crash in between redoes the same records again and moves the
   * same state, nothing newer having been applied meanwhile.
   */
  private async upgrade(): Promise<void> {
    const state = await this.db.get(LEGACY_STATE_KEY)
    if (!state) return
    const raw = await this.db.get(LEGACY_CHECKPOINT_KEY)
    const from = Buffer.alloc(9)
    from[0] = LEGACY_RECORD
    writeU53(from, 1, raw ? readU53(raw, 0, corrupt) : 0)
    for await (const [, v] of this.db.iterator({ gt: from, lt: Buffer.from([LEGACY_RECORD + 1]) })) await this.applyToVolume(decodeEntry(v, 'STATE_CORRUPT'))
    for (const v of this.volumes.values()) await v.flush()
    await this.commit({ meta: state })
    await this.db.clear({ gte: Buffer.from([LEGACY_RECORD]), lt: Buffer.from([LEGACY_RECORD + 1]) })
    await this.db.batch([{ type: 'del', key: LEGACY_STATE_KEY }, { type: 'del', key: LEGACY_CHECKPOINT_KEY }], { sync: true })
  }

  private async applyToVolume(c: TargetChange): Promise<void> {
    const v = this.volumes.get(c.volume)
    if (!v) throw new VvfsError('VOLUME_NOT_FOUND', `replica store: no local volume for primary volume ${c.volume}`)
    switch (c.kind) {
      case 'write':
        if (c.data) await v.write(c.offset, c.data)
        return
      case 'discard':
      case 'zero':
      case 'release':
        await v.discard(c.offset, c.length)
        return
      case 'resize': {
        const name = this.config.volumes.find((x) => x.no === c.volume)!.name
        if (c.length !== v.size) await this.host.resizeReplica(name, c.length)
        return
      }
      case 'flush':
        return
    }
  }
}


export interface SecondaryPairInfo {
  pair: string
  group: string | null
  volumes: string[]
  peer: string
  appliedSeq: number
  epoch: number
  consistent: boolean
  resyncing: boolean
}

/** Every secondary pair of a daemon. */
export class SecondaryPairs {
  private readonly pairs = new Map<string, { store: ReplicaStore; applier: Applier }>()
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly dir: string,
    private readonly host: ReplicaHost,
    private readonly log: Logger,
  ) {}

  /** Opens every pair found under the directory (redo included): before the mounts come up. */
  async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    for (const name of (await readdir(this.dir)).sort()) {
      const store = await ReplicaStore.open(join(this.dir, name), null, this.host)
      const applier = await Applier.open(store, { volumes: store.config.volumes.map((v) => v.no), chain: store.config.chain })
      this.pairs.set(store.config.pair, { store, applier })
      this.log.info({ event: 'replication.secondary_opened', pair: store.config.pair, appliedSeq: applier.status.appliedSeq }, 'secondary pair opened')
    }
  }

  lookup(pair: string): Applier | undefined {
    return this.pairs.get(pair)?.applier
  }

  /** CREATE: the pair if it exists (its volumes must match), else a new one with new read-only volumes. */
  create(h: Hello, peer: string): Promise<Applier> {
    const run = this.queue.then(async () => {
      const known = this.pairs.get(h.pair)
      if (known) {
        const want = h.volumes.map((v) => v.no).sort().join(',')
        const have = known.store.config.volumes.map((v) => v.no).sort().join(',')
        if (want !== have) throw new VvfsError('VOLUME_EXISTS', `pair ${h.pair} exists here with other volumes`, { details: { reason: 'pair-mismatch' } })
        return known.applier
      }
      const names = h.volumes.length === 1 ? [{ ...h.volumes[0]!, name: h.pair }] : h.volumes.map((v) => ({ ...v, name: `${h.pair}-${v.name}` }))
      const config: PairConfig = { pair: h.pair, group: h.group, volumes: names.map((v) => ({ no: v.no, name: v.name, size: v.size })), peer, createdAt: new Date().toISOString(), chain: h.chain }
      // Every name checked before any volume is made: a refused CREATE leaves no replica volumes behind (2026-12-04 review).
      if (new Set(config.volumes.map((v) => v.name)).size !== config.volumes.length) throw new VvfsError('INVALID_ARGUMENT', `pair ${h.pair}: two volumes would have one name`)
      for (const v of config.volumes) this.host.checkReplica(v.name, h.pair)
      for (const v of config.volumes) await this.host.createReplica(v.name, v.size, h.pair)
      const store = await ReplicaStore.open(join(this.dir, h.pair), config, this.host)
      const applier = await Applier.open(store, { volumes: config.volumes.map((v) => v.no), chain: h.chain })
      this.pairs.set(h.pair, { store, applier })
      this.log.info({ event: 'replication.secondary_created', pair: h.pair, volumes: config.volumes.map((v) => v.name), peer }, 'secondary pair created')
      return applier
    })
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Drops a pair and its store (its volume was deleted); a later CREATE starts it anew. */
  forget(pair: string): Promise<void> {
    const run = this.queue.then(async () => {
      const known = this.pairs.get(pair)
      if (!known) return
      this.pairs.delete(pair)
      await known.store.drop()
      this.log.info({ event: 'replication.secondary_removed', pair }, 'secondary pair removed with its volume')
    })
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Issue 13.7: the pair's configuration, if it is a secondary pair here. */
  config(pair: string): PairConfig | undefined {
    return this.pairs.get(pair)?.store.config
  }

  /** Issue 13.7 (promote): the pair's volumes flushed (a checkpoint) and its store dropped; the volumes stay. No-op for an unknown pair. */
  release(pair: string): Promise<void> {
    const run = this.queue.then(async () => {
      const known = this.pairs.get(pair)
      if (!known) return
      // Unknown to new requests first, then the batches in flight finish: no batch is cut by the drop.
      this.pairs.delete(pair)
      await known.applier.settled()
      await known.store.makeCheckpoint()
      await known.store.drop()
      this.log.info({ event: 'replication.secondary_released', pair }, 'secondary pair released (promoted)')
    })
    this.queue = run.catch(() => undefined)
    return run
  }

  /**
   * Issue 13.7 (reverse, resolve): the pair anew here at `state` (applied
   * number and chain) — a store it had is dropped first. Its volumes must be
   * replicas of the pair already.
   */
  adopt(config: PairConfig, state: SecondaryState): Promise<void> {
    const run = this.queue.then(async () => {
      const known = this.pairs.get(config.pair)
      if (known) {
        this.pairs.delete(config.pair)
        await known.applier.settled()
        await known.store.makeCheckpoint()
        await known.store.drop()
      }
      await rm(join(this.dir, config.pair), { recursive: true, force: true })
      const store = await ReplicaStore.open(join(this.dir, config.pair), config, this.host)
      const applier = await Applier.open(store, { volumes: config.volumes.map((v) => v.no), chain: state.chain, start: state })
      this.pairs.set(config.pair, { store, applier })
      this.log.info({ event: 'replication.secondary_adopted', pair: config.pair, volumes: config.volumes.map((v) => v.name), appliedSeq: state.appliedSeq }, 'secondary pair adopted')
    })
    this.queue = run.catch(() => undefined)
    return run
  }

  /** How many secondary pairs are open here. */
  get size(): number {
    return this.pairs.size
  }

  list(): SecondaryPairInfo[] {
    return [...this.pairs.values()].map(({ store, applier }) => {
      const s = applier.status
      const last = s.chain[s.chain.length - 1]
      return {
        pair: store.config.pair,
        group: store.config.group,
        volumes: store.config.volumes.map((v) => v.name),
        peer: store.config.peer,
        appliedSeq: s.appliedSeq,
        epoch: last?.epoch ?? 0,
        consistent: isConsistent(s),
        resyncing: s.resyncing,
      }
    })
  }

  /**
   * Closes every store once the batches in flight finished: a listener's
   * close does not wait for its handlers, and a checkpoint committed beside
   * an apply would write its frame at the same place in the redo log.
   */
  async close(): Promise<void> {
    await this.queue
    const known = [...this.pairs.values()]
    this.pairs.clear()
    for (const { applier, store } of known) {
      await applier.settled().catch(() => undefined)
      await store.close().catch(() => undefined)
    }
  }
}
