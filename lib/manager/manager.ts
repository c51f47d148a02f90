/**
 * Manager: the control plane. It holds the catalog, validates every
 * management operation, then changes the relay stack and the host mounts,
 * and restores all of it from the state directory at start.
 *
 * Management operations run one at a time (a queue), so two control
 * clients never interleave catalog changes. Host I/O never waits for it.
 *
 * Owns: the catalog, the pool's storage systems, the MapStore, the host
 * mounts. Never: moves data itself (the relay does) or speaks the protocol.
 */
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { mkdir, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { EventBody, EventType, FaultInfo, HostInfo, JobInfo, PoolStatus, StorageInfo, VolumeDetail, VolumeInfo, VvfsEvent } from '../control/schema.js'
import { asVvfsError, VvfsError } from '../errors.js'
import { HostMount, type HostView, type MountTimeouts } from '../fuse/host-mount.js'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../layout.js'
import type { Logger } from '../log.js'
import { releaseSpace, type ExtentEntry } from '../relay/extent-entry.js'
import { extentPrefix } from '../relay/key-space.js'
import { MapStore } from '../relay/map-store.js'
import { buildVolumeStack } from '../relay/stack.js'
import { readVolumeMaps } from '../relay/volume-map.js'
import { Pool } from '../storage/pool.js'
import { StorageSystem } from '../storage/storage-system.js'
import { checkName, formatSize, parseSize } from '../units.js'
import { MAX_CAPACITY } from '../storage/free-space.js'
import { draftOf, FileCatalog, type CatalogData, type CatalogStore, type Committed, type HostRecord, type PoolSettings, type StorageRecord, type VolumeRecord } from './catalog.js'
import { SpaceWatch } from './space-watch.js'
import { DEFAULT_COMPACT_IDLE_MS, StoreCompaction } from './compaction.js'
import { DEFAULT_MEMORY_BUDGET, MemoryBudget } from '../storage/memory-budget.js'
import { ownMemory } from '../proc-memory.js'
import { reclaimVolume, type ReclaimResult } from './reclaim.js'
import { VolumeHandle } from './volume-handle.js'
import { volumeMapView } from './extent-runs.js'
import { JobManager } from './jobs.js'
import { readCache } from '../fuse/read-cache.js'
import type { CopyMode } from '../migration/job.js'
import type { ConsolidationPolicy } from '../migration/planner.js'
import { WorkerChunkMover, type ChunkMover } from '../storage/chunk-mover.js'
import { FaultInjector, type FaultSpec } from '../storage/fault-injector.js'
// issue 13: replication
import { ReplicationService } from '../replication/service.js'
import type { PrimaryPair } from '../replication/primary.js'
import type { JobRecord, ReplicateJobRecord } from '../migration/job.js'
import type { ReplicationInfo } from '../control/schema.js'
// issue 14: storage systems on storage servers
import { addRemoteSystem, fenceRemoteSystem, openRemoteSystem, remoteEpoch, remoteLink, remoteStoreOf } from '../storage/remote/systems.js'
import { VolumeMapLog } from '../relay/map-log.js'
// issue 15: several relays, one catalog in etcd
import type { ClusterOptions } from '../cluster/options.js'
import { ClusterRelay, type RelayInfo } from '../cluster/relay.js'
import { ForeignSpace, type ForeignVolume } from '../cluster/foreign-space.js'
import { EtcdCatalog } from './etcd-catalog.js'

export const DEFAULT_HOST = 'local'

export interface ManagerOptions {
  stateDir: string
  /** Mount directory of the default host `local`. */
  mountDir: string
  log: Logger
  /** Mount hosts over FUSE (tests of the control plane may turn it off). */
  mount?: boolean
  timeouts?: MountTimeouts
  /** How long open volume files get to close at shutdown before they are cut off. */
  graceMs?: number
  /** Accept `fault.*` requests (I/O-error injection, for tests). */
  allowFaults?: boolean
  /** Compact a local store this long after its last write when it is bloated (issue 17; 0: never; default DEFAULT_COMPACT_IDLE_MS). */
  compactIdleMs?: number
  /** Issue 17: the daemon-wide budget for the local stores' memtables and block caches, in bytes (default DEFAULT_MEMORY_BUDGET). */
  memoryBytes?: number
  /** Issue 13: the daemon's peer key file (the default key of `replicate start`). */
  peerKey?: string
  /** Issue 15: the catalog in etcd, this relay's name (absent: the file catalog in the state directory). */
  cluster?: ClusterOptions
}

export class Manager implements HostView {
  readonly events = new EventEmitter()
  readonly startedAt = new Date()
  private readonly handles = new Map<string, VolumeHandle>()
  private readonly mounts = new Map<string, HostMount>()
  private queue: Promise<unknown> = Promise.resolve()
  private closing = false
  readonly spaceWatch: SpaceWatch
  readonly jobs: JobManager
  private readonly mover: ChunkMover
  /** Host reads and writes served so far (background work steps back while it moves). */
  private hostOps = 0
  /** Makes unlogged writes durable within UNLOGGED_MAX_AGE_MS even when no host fsyncs. */
  private readonly writeBack: NodeJS.Timeout
  /** Injected storage faults; null unless started with allowFaults. */
  private readonly faults: FaultInjector | null
  /** `storage compact` and the idle compaction policy (issue 17). */
  private readonly compaction: StoreCompaction
  /** Issue 13: replication pairs, both roles, and the peer listener. */
  readonly replication: ReplicationService
  /** Issue 15: this daemon as a relay of a cluster (--etcd); null when alone. */
  private cluster: ClusterRelay | null = null
  /** Issue 15: the map log the MapStore appends to (in a cluster). */
  private mapLogs: VolumeMapLog | null = null
  /** Issue 15: space of volumes not served here, on this relay's storage servers (lib/cluster/foreign-space.ts). */
  private readonly foreignSpace: ForeignSpace

  private constructor(
    readonly stateDir: string,
    private readonly catalog: CatalogStore,
    readonly pool: Pool,
    private readonly maps: MapStore,
    private readonly log: Logger,
    private readonly opts: ManagerOptions,
    /** Issue 17: what the local stores' memtables and caches share (lib/storage/memory-budget.ts). */
    private readonly memory: MemoryBudget,
  ) {
    this.foreignSpace = new ForeignSpace(pool, log)
    this.spaceWatch = new SpaceWatch(pool, () => catalog.read().data.pool, (c) => {
      this.log.warn({ event: 'pool.threshold', ...c }, `pool usage crossed ${c.warnPercent}%`)
      this.emit('pool.threshold', { ...c })
    })
    pool.onChange = () => this.spaceWatch.changed()
    this.compaction = new StoreCompaction(
      pool,
      log,
      opts.compactIdleMs ?? DEFAULT_COMPACT_IDLE_MS,
      (r) => this.emit('storage.compacted', { ...r }),
      (p) => this.emit('storage.compact_progress', { ...p }),
    )
    this.writeBack = setInterval(() => {
      if (!this.closing) this.compaction.tick()
      for (const system of pool.list()) {
        system.syncIfStale().catch((err: unknown) => {
          const e = asVvfsError(err)
          this.log.error({ event: 'storage.sync_failed', storage: system.name, code: e.code, err: e.message }, 'background sync failed')
        })
      }
    }, 1000)
    this.writeBack.unref()
    this.faults = opts.allowFaults
      ? new FaultInjector((f) => {
          this.log.warn({ event: 'fault.injected', ...f, code: f.error === 'ENOSPC' ? 'STORAGE_FULL' : f.error === 'EIO' ? 'IO_ERROR' : undefined }, `injected ${f.error} into a ${f.op} of storage system ${f.storage}`)
          this.emit('fault.injected', { ...f })
        })
      : null
    this.mover = WorkerChunkMover.create((sid) => pool.get(sid))
    this.replication = this.replicationService()
    this.jobs = new JobManager({
      replication: this.replication.resources(),
      catalog,
      pool,
      maps,
      mover: this.mover,
      log,
      movable: (volNo) => this.byNo(volNo),
      volumeNo: (name) => this.volumeNamed(name).record.no,
      volumeName: (volNo) => catalog.read().data.volumes.find((v) => v.no === volNo)?.name ?? `#${volNo}`,
      systemSid: (name) => this.storageRecord(name).sid,
      systemName: (sid) => this.systemName(sid),
      emit: (type, body) => this.emit(type, body),
      hostOps: () => this.hostOps,
    })
    // What the manager derives from the catalog follows each commit: the
    // volume records its handles keep, the storage systems' placement flags.
    catalog.watch(catalog.read().rev, (s) => this.followCatalog(s.data))
  }

  private followCatalog(data: Committed<CatalogData>): void {
    for (const rec of data.volumes) {
      const handle = this.handles.get(rec.name)
      if (handle?.record.no !== rec.no) continue
      const fresh = draftOf<VolumeRecord>(rec)
      for (const key of Object.keys(handle.record) as (keyof VolumeRecord)[]) if (!(key in fresh)) delete handle.record[key]
      Object.assign(handle.record, fresh)
    }
    for (const rec of data.storage) {
      if (!this.pool.has(rec.sid)) continue
      const system = this.pool.get(rec.sid)
      system.reserve = rec.reserve ?? false
      system.draining = rec.draining ?? false
    }
  }

  private byNo(volNo: number) {
    for (const h of this.handles.values()) {
      if (h.record.no === volNo) return { volNo, name: h.name, extents: h.extents, layer: h.layer }
    }
    return undefined
  }

  private storageRecord(name: string): Committed<StorageRecord> {
    const rec = this.catalog.read().data.storage.find((s) => s.name === name)
    if (!rec) throw new VvfsError('STORAGE_NOT_FOUND', `no storage system named ${name}`)
    return rec
  }

  /** Opens the state directory (creating it if new) and restores everything in it. */
  static async open(opts: ManagerOptions): Promise<Manager> {
    const stateDir = resolve(opts.stateDir)
    await mkdir(stateDir, { recursive: true, mode: 0o700 })
    // The map store's LevelDB lock is the state directory's lock.
    const maps = await MapStore.open(join(stateDir, 'maps'))
    let manager: Manager | undefined
    let catalog: CatalogStore | undefined
    try {
      catalog = await openCatalog(stateDir, opts.cluster)
      const pool = new Pool()
      const memory = new MemoryBudget(opts.memoryBytes ?? DEFAULT_MEMORY_BUDGET) // issue 17
      for (const rec of catalog.read().data.storage) {
        if (!rec.remote && rec.relay !== undefined && rec.relay !== opts.cluster?.relayId) continue // issue 15: another relay's local store
        const system = rec.remote // issue 14
          ? await openRemoteSystem({ ...rec, remote: rec.remote }, opts.log)
          : await StorageSystem.open({ sid: rec.sid, name: rec.name, path: rec.path, capacity: rec.capacity, create: false, memory })
        system.reserve = rec.reserve ?? false
        system.draining = rec.draining ?? false
        pool.add(system)
      }
      // issue 15: the relay's lease before anything is served
      // Each fence raised: this relay alone changes those servers until another fences higher; it learns what other volumes hold there.
      const cluster = opts.cluster ? await ClusterRelay.start(opts.cluster, opts.log, (token) => fencePool(pool, token).then(() => manager?.holdForeignSpace())) : null
      manager = new Manager(stateDir, catalog, pool, maps, opts.log, opts, memory)
      manager.warnOverBudget()
      manager.cluster = cluster
      if (cluster) maps.mirror = manager.mapLog() // issue 15: map batches logged on storage servers
      if (cluster) cluster.onVolumesLost = (ids) => void manager?.dropLostVolumes(ids) // issue 15
      await manager.restore()
      return manager
    } catch (err) {
      if (manager) await manager.close().catch(() => {})
      else {
        await maps.close().catch(() => {})
        await catalog?.close?.().catch(() => {})
      }
      throw err
    }
  }

  get isNew(): boolean {
    return this.catalog.isNew
  }

  get settings(): Committed<PoolSettings> {
    return this.catalog.read().data.pool
  }

  // ---- start and stop

  private async restore(): Promise<void> {
    const data = this.catalog.read().data
    const byNo = new Map<number, Committed<VolumeRecord>>()
    for (const rec of data.volumes) byNo.set(rec.no, rec)

    const ready = data.volumes.filter((v) => v.state === 'ready')
    // issue 15: in a cluster, only the volumes this relay owns are served here, their maps rebuilt from the map log
    const served = this.cluster ? await this.cluster.claimAtStart(ready) : null
    if (served) for (const rec of ready.filter((v) => served.has(v.id))) await this.rebuildMap(rec)
    // Read every map record; live volumes' stacks adopt theirs, the rest are cleaned.
    const { entries, stray } = await readVolumeMaps(this.maps, (volNo, extent) => {
      const rec = byNo.get(volNo)
      return rec !== undefined && rec.state === 'ready' && extent * EXTENT_SIZE < rec.size
    })
    for (const rec of ready.filter((v) => served?.has(v.id) ?? true)) this.handles.set(rec.name, this.makeHandle(draftOf<VolumeRecord>(rec), entries.get(rec.no)))
    // Space held by migration jobs is marked before stray records are cleaned.
    // Replication jobs replay their journals here, before the mounts (issue 13).
    await this.jobs.restore(this.cluster ? (volNo) => this.byNo(volNo) !== undefined : undefined) // issue 15: the served volumes' jobs only
    await this.replication.open()
    await this.cleanStray(stray)
    // Anything past a volume's end (a shrink cut short by a crash) reads as zeros.
    for (const handle of this.handles.values()) await handle.volume.resize(handle.record.size)
    const deleting = data.volumes.filter((v) => v.state === 'deleting')
    if (deleting.length) {
      await this.catalog.update((d) => void (d.volumes = d.volumes.filter((v) => v.state === 'ready')))
      this.log.info({ event: 'volume.delete_finished', volumes: deleting.map((v) => v.name) }, 'finished interrupted deletes')
    }

    // The default host follows --mount.
    const mountDir = resolve(this.opts.mountDir)
    await this.catalog.update((d) => {
      const local = d.hosts.find((h) => h.name === DEFAULT_HOST)
      if (!local) d.hosts.unshift({ name: DEFAULT_HOST, mount: mountDir, createdAt: new Date().toISOString() })
      else local.mount = mountDir
    })
    const now = this.catalog.read().data
    this.spaceWatch.rearm()
    if (this.opts.mount !== false) for (const host of now.hosts) await this.mountHost(host)
    this.jobs.start()
    await this.cluster?.watchReleased((volumeId) => void this.takeOver(volumeId)) // issue 15
    this.log.info(
      { event: 'daemon.restored', volumes: this.handles.size, storage: now.storage.length, hosts: now.hosts.length, strayRecords: stray.length },
      'state restored',
    )
  }

  /** Drops map records nobody owns, and their data where no live record shares it. */
  private async cleanStray(stray: { key: Buffer; entry: ExtentEntry | null }[]): Promise<void> {
    for (const { entry } of stray) {
      if (entry?.kind === 'whole') {
        const system = this.pool.has(entry.sid) ? this.pool.get(entry.sid) : undefined
        if (system?.table.isSlotFree(entry.slot)) await system.clearRange(entry.slot * EXTENT_CHUNKS, EXTENT_CHUNKS)
      }
      // A stray fragment's chunk is overwritten before it is handed out again.
    }
    await this.maps.deleteNow(stray.map((s) => s.key))
  }

  private async mountHost(host: Committed<HostRecord>): Promise<void> {
    const lost = () => this.emit('host.unmounted', { name: host.name, mount: host.mount, external: true })
    const mount = new HostMount(host.name, host.mount, this, this.log, this.opts.timeouts, lost)
    await mount.mount()
    this.mounts.set(host.name, mount)
  }

  /** Unmounts, lets background work finish and closes every store. */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    // Operations already queued (a takeover that adds a volume, a delete) end first, for at most the grace period: the
    // volumes closed below are then all there are.
    let grace: NodeJS.Timeout | undefined
    await Promise.race([this.queue, new Promise((r) => (grace = setTimeout(r, this.opts.graceMs ?? 5000)))])
    clearTimeout(grace)
    clearInterval(this.writeBack)
    // Injected faults end here: what is stopping gets flushed for real.
    this.faults?.clear()
    this.spaceWatch.close()
    this.compaction.stop()
    await this.compaction.idle()
    await this.jobs.close()
    await Promise.all([...this.mounts.values()].map((mount) => mount.unmount(this.opts.graceMs ?? 5000)))
    this.mounts.clear()
    await this.replication.close()
    for (const handle of this.handles.values()) {
      await handle.volume.drain().catch((err: unknown) => {
        const e = asVvfsError(err)
        this.log.error({ event: 'volume.write_failed', volume: handle.name, code: e.code, err: e.message }, 'a write acknowledged before shutdown failed')
      })
      await handle.thin.settle()
      handle.thin.close()
    }
    await this.mover.close()
    // issue 15: the map log is on storage servers: synced before they close
    if (this.maps.mirror) {
      await this.maps.sync().catch((err: unknown) => {
        const e = asVvfsError(err)
        this.log.error({ event: 'relay.map_log_sync_failed', code: e.code, err: e.message }, 'the map log could not be synced at shutdown')
      })
      this.maps.mirror = null
    }
    for (const system of this.pool.list()) {
      // A remote system whose server is down cannot sync: that must not keep the others from closing (issue 14).
      await system.close().catch((err: unknown) => {
        const e = asVvfsError(err)
        this.log.error({ event: 'storage.close_failed', storage: system.name, code: e.code, err: e.message }, 'storage system did not close cleanly')
      })
    }
    await this.maps.close()
    // issue 15: the lease is revoked (the volumes are free at once), then the etcd clients close
    await this.cluster?.close().catch((err: unknown) => {
      this.log.error({ event: 'relay.leave_failed', err: (err as Error).message }, 'could not revoke the relay lease: it expires by itself')
    })
    await this.catalog.close?.()
    this.log.info({ event: 'daemon.closed' }, 'state closed')
  }

  // ---- HostView (what the FUSE mounts ask)

  volumes(host: string): VolumeHandle[] {
    return [...this.handles.values()].filter((v) => v.record.hosts.includes(host))
  }

  volume(host: string, name: string): VolumeHandle | undefined {
    const v = this.handles.get(name)
    return v && v.record.hosts.includes(host) ? v : undefined
  }

  space(): { capacity: number; free: number } {
    return this.pool.totals()
  }

  // ---- status

  status() {
    const t = this.pool.totals()
    return {
      stateDir: this.stateDir,
      startedAt: this.startedAt.toISOString(),
      uptimeSeconds: Math.round((Date.now() - this.startedAt.getTime()) / 1000),
      pool: t,
      storage: this.catalog.read().data.storage.length,
      hosts: this.catalog.read().data.hosts.length,
      volumes: this.handles.size,
      readCache: (({ served, published }) => ({ served, published }))(readCache.stats()),
      memory: this.memoryStatus(),
    }
  }

  /** `status`'s memory: the process's, and how the storage systems' budget is divided (issue 17). */
  private memoryStatus() {
    const { rss, heapUsed, heapTotal, external } = process.memoryUsage()
    const { writeBufferSize, cacheSize, overBudget } = this.memory.currentShare()
    return { rss, peakRss: ownMemory().peakRss, heapUsed, heapTotal, external, budget: this.memory.bytes, held: this.memory.held(), stores: this.memory.size, writeBufferSize, cacheSize, overBudget }
  }

  // ---- storage systems

  addStorage(p: { name: string; capacity?: number; path?: string; reserve?: boolean; remote?: string; peerKey?: string }): Promise<StorageInfo> {
    return this.serial(async () => {
      if (this.catalog.read().data.storage.some((s) => s.name === p.name)) throw new VvfsError('STORAGE_EXISTS', `storage system ${p.name} already exists`)
      if (p.remote !== undefined) return this.addRemoteStorage({ ...p, remote: p.remote }) // issue 14
      if (p.capacity === undefined) throw new VvfsError('INVALID_SIZE', 'a local storage system needs --capacity')
      if (p.capacity < EXTENT_SIZE) throw new VvfsError('INVALID_SIZE', `capacity must be at least one extent (${EXTENT_SIZE} bytes)`)
      if (p.capacity > MAX_CAPACITY) {
        throw new VvfsError('CAPACITY_TOO_LARGE', `capacity ${formatSize(p.capacity)} is more than one storage system may have (${formatSize(MAX_CAPACITY)}); add several`)
      }
      const path = resolve(p.path ?? join(this.stateDir, 'storage', p.name))
      const clashes = (d: Committed<CatalogData>) => {
        const clash = d.storage.find((s) => !s.remote && (s.path === path || path.startsWith(s.path + '/') || s.path.startsWith(path + '/')))
        if (clash) throw new VvfsError('STORAGE_PATH_IN_USE', `${path} overlaps storage system ${clash.name} at ${clash.path}`)
      }
      const sid = await this.takeStorageId(p.name, clashes)
      const rec: StorageRecord = { sid, name: p.name, path, capacity: p.capacity, createdAt: new Date().toISOString(), ...(p.reserve ? { reserve: true } : {}) }
      if (this.cluster) rec.relay = this.cluster.relayId // issue 15
      const system = await StorageSystem.open({ ...rec, create: true, memory: this.memory })
      this.warnOverBudget()
      return this.recordNewStorage(rec, system, clashes)
    })
  }

  /**
   * Takes the next storage id (committed: a store records its id, so the id
   * is fixed before the store is made), checking the name and `more` on the
   * data it commits to.
   */
  private async takeStorageId(name: string, more?: (d: Committed<CatalogData>) => void): Promise<number> {
    const { result } = await this.catalog.update((d) => {
      checkNewStorage(d, name)
      more?.(d)
      return d.nextSid++
    })
    return result
  }

  /** Records a storage system just opened (closing it if that fails) and puts it in the pool. */
  private async recordNewStorage(rec: StorageRecord, system: StorageSystem, more?: (d: Committed<CatalogData>) => void): Promise<StorageInfo> {
    system.reserve = rec.reserve ?? false
    try {
      await this.catalog.update((d) => {
        checkNewStorage(d, rec.name)
        more?.(d)
        d.storage.push(rec)
      })
    } catch (err) {
      await system.close().catch(() => {})
      throw err
    }
    this.pool.add(system)
    this.log.info({ event: 'storage.added', name: rec.name, capacity: rec.capacity, path: rec.path }, 'storage system added')
    const info = this.storageInfo(system)
    this.emit('storage.added', { storage: info })
    return info
  }

  listStorage(): StorageInfo[] {
    return this.pool.list().map((s) => this.storageInfo(s))
  }

  /** `storage list`: listStorage with each store's bytes on disk (issue 17: du of a local store's directory). */
  async listStorageWithDisk(): Promise<StorageInfo[]> {
    return Promise.all(this.pool.list().map(async (s) => ({ ...this.storageInfo(s), diskBytes: await s.diskBytes() })))
  }

  /** Issue 17: says so when the local stores are too many for the memory budget's floors. */
  private warnOverBudget(): void {
    const share = this.memory.currentShare()
    if (!share.overBudget) return
    const stores = this.memory.size
    this.log.warn({ event: 'memory.over_budget', stores, budget: this.memory.bytes, ...share }, `${stores} local storage systems need more than the memory budget of ${this.memory.bytes} bytes (daemon --memory)`)
  }

  /**
   * `storage compact` (issue 17): outside the manager's queue, which it would
   * hold for as long as LevelDB merges. Without `wait` it answers once the
   * compaction has started; its end is the `storage.compacted` event (or a
   * storage.compact_failed log line).
   */
  async compactStorage(p: { name: string; wait?: boolean }): Promise<{ storage: string; started: boolean; beforeBytes?: number; afterBytes?: number; ms?: number; completed?: boolean }> {
    if (this.closing) throw new VvfsError('SHUTTING_DOWN', 'the daemon is shutting down')
    const system = this.pool.get(this.storageRecord(p.name).sid)
    if (!system.compactable) throw new VvfsError('NOT_SUPPORTED', `storage system ${p.name} is not a local store: only a local store can be compacted`)
    const running = this.compaction.compactNow(system, 'command')
    if (p.wait) {
      const r = await running
      return { storage: r.storage, started: true, beforeBytes: r.beforeBytes, afterBytes: r.afterBytes, ms: r.ms, completed: r.completed }
    }
    running.catch((err: unknown) => {
      const e = asVvfsError(err)
      this.log.error({ event: 'storage.compact_failed', storage: p.name, code: e.code, err: e.message }, `compaction of storage system ${p.name} failed`)
    })
    return { storage: p.name, started: true }
  }

  removeStorage(name: string): Promise<{ removed: string }> {
    return this.serial(async () => {
      const rec = this.storageRecord(name)
      const system = this.pool.get(rec.sid)
      if (!system.table.isEmpty) {
        const users = this.volumesOn(rec.sid)
        throw new VvfsError('STORAGE_IN_USE', `storage system ${name} holds extents of ${users.length ? users.join(', ') : 'a volume'}; drain it first`, {
          details: { volumes: users, allocated: system.table.allocated },
        })
      }
      this.pool.delete(rec.sid)
      this.faults?.forget(rec.sid)
      await this.mover.forget(rec.sid)
      // issue 14: an empty remote system whose server is gone for good can still be removed
      await system.close().catch((err: unknown) => {
        if (!rec.remote) throw err
        this.log.warn({ event: 'storage.close_failed', storage: name, code: asVvfsError(err).code, err: asVvfsError(err).message }, 'remote storage system removed without a final sync')
      })
      await this.catalog.update((d) => void (d.storage = d.storage.filter((s) => s.sid !== rec.sid)))
      if (!rec.remote) await rm(rec.path, { recursive: true, force: true }) // a server keeps its data (issue 14)
      this.log.info({ event: 'storage.removed', name }, 'storage system removed')
      this.emit('storage.removed', { name })
      return { removed: name }
    })
  }

  // ---- issue 14: storage systems on storage servers

  /** `storage add --remote`: connects and claims the server before anything is recorded; its capacity is the server's unless given. */
  private async addRemoteStorage(p: { name: string; capacity?: number; reserve?: boolean; remote: string; peerKey?: string }): Promise<StorageInfo> {
    if (!p.peerKey) throw new VvfsError('INVALID_ARGUMENT', 'a remote storage system needs --peer-key')
    const clashes = (d: Committed<CatalogData>) => {
      const clash = d.storage.find((s) => s.remote?.address === p.remote)
      if (clash) throw new VvfsError('STORAGE_PATH_IN_USE', `${p.remote} is storage system ${clash.name} already`)
    }
    clashes(this.catalog.read().data)
    if (p.capacity !== undefined && p.capacity > MAX_CAPACITY) throw new VvfsError('CAPACITY_TOO_LARGE', `capacity ${formatSize(p.capacity)} is more than one storage system may have`)
    const remote = { address: p.remote, peerKey: resolve(p.peerKey), epoch: 0 }
    const sid = await this.takeStorageId(p.name, clashes)
    const { system, capacity, epoch } = await addRemoteSystem({ sid, name: p.name, capacity: p.capacity, remote }, this.log)
    if (capacity < EXTENT_SIZE || capacity > MAX_CAPACITY) {
      await system.close().catch(() => {})
      throw new VvfsError('INVALID_SIZE', `capacity ${formatSize(capacity)} is not between one extent and ${formatSize(MAX_CAPACITY)}`)
    }
    const rec: StorageRecord = { sid, name: p.name, path: p.remote, capacity, createdAt: new Date().toISOString(), remote: { ...remote, epoch }, ...(p.reserve ? { reserve: true } : {}) }
    // issue 15: a server added to a relay that owns volumes is fenced at its token before anything is written there
    // (it wrote with token 0, which a later owner's fence refuses but an older one's would not)
    if (this.cluster && this.cluster.fenceToken > 0) {
      await fenceRemoteSystem(system, this.cluster.fenceToken).catch(async (err: unknown) => {
        await system.close().catch(() => {})
        throw err
      })
    }
    return this.recordNewStorage(rec, system, clashes)
  }

  /** `storage fence`: the daemon's epoch for the system is recorded first, then the server's fence raised to it. */
  fenceStorage(p: { name: string; epoch: number }): Promise<StorageInfo & { fence: number }> {
    return this.serial(async () => {
      const rec = this.storageRecord(p.name)
      const system = this.pool.get(rec.sid)
      if (!rec.remote) throw new VvfsError('NOT_SUPPORTED', `storage system ${p.name} is local: only a storage server keeps a fence`)
      if (p.epoch > rec.remote.epoch) {
        await this.catalog.update((d) => {
          const r = d.storage.find((s) => s.sid === rec.sid)?.remote
          if (r && p.epoch > r.epoch) r.epoch = p.epoch
        })
      }
      const fence = await fenceRemoteSystem(system, p.epoch)
      this.log.info({ event: 'storage.fenced', name: p.name, epoch: p.epoch, fence }, 'storage system fenced')
      return { ...this.storageInfo(system), fence }
    })
  }

  // ---- end issue 14

  private storageInfo(system: StorageSystem): StorageInfo {
    const f = system.table.figures()
    const link = remoteLink(system) // issue 14
    return {
      name: system.name,
      id: system.sid,
      path: system.path,
      location: link ? link.location : 'local',
      connection: link ? link.state : 'local',
      rttMs: link?.rttMs === null || !link ? null : Math.round(link.rttMs * 1000) / 1000,
      epoch: remoteEpoch(system),
      role: system.reserve ? 'reserve' : system.draining ? 'draining' : 'normal',
      capacity: f.capacity,
      allocated: f.allocated,
      free: f.free,
      usedPercent: percent(f.allocated, f.capacity),
      largestFreeRun: f.largestFreeRun,
      wholeExtents: f.wholeSlots,
      fragments: f.fragments,
      volumes: this.volumesOn(system.sid),
    }
  }

  private volumesOn(sid: number): string[] {
    return [...this.handles.values()].filter((v) => v.map.allocationBySystem().has(sid)).map((v) => v.name)
  }

  private systemName(sid: number): string {
    return this.pool.has(sid) ? this.pool.get(sid).name : `#${sid}`
  }

  // ---- pool

  poolStatus(): PoolStatus {
    const s = this.catalog.read().data.pool
    const t = this.pool.totals()
    const volumeBytes = [...this.handles.values()].reduce((sum, v) => sum + v.size, 0)
    let largest = 0
    const systems = this.pool.list().map((system) => {
      const f = system.table.figures()
      if (f.largestFreeRun > largest) largest = f.largestFreeRun
      const sizeHere = [...this.handles.values()].reduce((sum, v) => sum + (v.map.allocationBySystem().has(system.sid) ? v.size : 0), 0)
      return {
        name: system.name,
        capacity: f.capacity,
        allocated: f.allocated,
        free: f.free,
        usedPercent: percent(f.allocated, f.capacity),
        largestFreeRun: f.largestFreeRun,
        overcommit: ratio(sizeHere, f.capacity),
      }
    })
    return {
      ...t,
      usedPercent: percent(t.allocated, t.capacity),
      largestFreeRun: largest,
      overcommit: ratio(volumeBytes, t.capacity),
      volumeBytes,
      warnPercent: s.warnPercent,
      fullMode: s.fullMode,
      queueTimeoutMs: s.queueTimeoutMs,
      queuedWriters: this.spaceWatch.queued,
      heldByJobs: this.jobs.heldBytes(),
      systems,
    }
  }

  setPool(p: Partial<PoolSettings>): Promise<PoolStatus> {
    return this.serial(async () => {
      await this.catalog.update((d) => void Object.assign(d.pool, Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined))))
      const s = this.catalog.read().data.pool
      this.spaceWatch.rearm()
      this.log.info({ event: 'pool.settings', ...s }, 'pool settings changed')
      this.emit('pool.settings', { settings: { ...s } })
      return this.poolStatus()
    })
  }

  // ---- hosts

  addHost(p: { name: string; mount: string }): Promise<HostInfo> {
    return this.serial(async () => {
      const mount = resolve(p.mount)
      const check = (d: Committed<CatalogData>) => {
        if (d.hosts.some((h) => h.name === p.name)) throw new VvfsError('HOST_EXISTS', `host ${p.name} already exists`)
        const clash = d.hosts.find((h) => h.mount === mount)
        if (clash) throw new VvfsError('INVALID_ARGUMENT', `${mount} is already the mount of host ${clash.name}`)
      }
      check(this.catalog.read().data)
      if (mount === this.stateDir || mount.startsWith(this.stateDir + '/')) throw new VvfsError('INVALID_ARGUMENT', 'a host cannot mount inside the state directory')
      const rec: HostRecord = { name: p.name, mount, createdAt: new Date().toISOString() }
      if (this.opts.mount !== false) await this.mountHost(rec)
      try {
        await this.catalog.update((d) => {
          check(d)
          d.hosts.push(rec)
        })
      } catch (err) {
        await this.mounts.get(rec.name)?.unmount()
        this.mounts.delete(rec.name)
        throw err
      }
      this.log.info({ event: 'host.added', name: rec.name, mount }, 'host added')
      const info = this.hostInfo(rec)
      this.emit('host.added', { host: info })
      return info
    })
  }

  listHosts(): HostInfo[] {
    return this.catalog.read().data.hosts.map((h) => this.hostInfo(h))
  }

  removeHost(name: string): Promise<{ removed: string }> {
    return this.serial(async () => {
      this.host(name)
      const open = this.volumes(name).filter((v) => v.isOpen(name))
      if (open.length) throw new VvfsError('HOST_BUSY', `host ${name} has open volume files: ${open.map((v) => v.name).join(', ')}`)
      await this.catalog.update((d) => {
        for (const v of d.volumes) v.hosts = v.hosts.filter((h) => h !== name)
        d.hosts = d.hosts.filter((h) => h.name !== name)
      })
      await this.mounts.get(name)?.unmount()
      this.mounts.delete(name)
      this.log.info({ event: 'host.removed', name }, 'host removed')
      this.emit('host.removed', { name })
      return { removed: name }
    })
  }

  /**
   * Mounts a host again after someone else unmounted it (nothing to do if it
   * is mounted). Refused while files stay open on the detached mount (a loop
   * device still attached to a volume file): they are served until closed.
   */
  remountHost(name: string): Promise<HostInfo> {
    return this.serial(async () => {
      const rec = this.host(name)
      const old = this.mounts.get(name)
      if (old?.mounted) return this.hostInfo(rec)
      if (this.opts.mount === false) throw new VvfsError('NOT_SUPPORTED', 'this manager does not mount hosts')
      if (old && old.openFiles > 0) {
        throw new VvfsError('HOST_BUSY', `${old.openFiles} files are still open on host ${name}'s detached mount; close them (detach loop devices) first`)
      }
      await old?.unmount()
      this.mounts.delete(name)
      await this.mountHost(rec)
      this.log.info({ event: 'host.remounted', name, mount: rec.mount }, 'host mounted again')
      const info = this.hostInfo(rec)
      this.emit('host.mounted', { host: info })
      return info
    })
  }

  private hostInfo(h: Committed<HostRecord>): HostInfo {
    return { name: h.name, mount: h.mount, mounted: this.mounts.get(h.name)?.mounted ?? false, volumes: this.volumes(h.name).map((v) => v.name) }
  }

  // ---- volumes

  createVolume(p: { name: string; size: number; hosts?: string[]; replicaOf?: string }): Promise<VolumeInfo> {
    return this.serial(async () => {
      const hosts = [...new Set(p.hosts ?? [DEFAULT_HOST])]
      const { result: rec } = await this.catalog.update((d) => {
        if (this.handles.has(p.name) || d.volumes.some((v) => v.name === p.name)) throw new VvfsError('VOLUME_EXISTS', `volume ${p.name} already exists`)
        for (const h of hosts) if (!d.hosts.some((r) => r.name === h)) throw new VvfsError('HOST_NOT_FOUND', `no host named ${h}`)
        const rec: VolumeRecord = { name: p.name, id: randomUUID(), no: d.nextVolumeNo++, size: p.size, hosts, createdAt: new Date().toISOString(), state: 'ready' }
        if (p.replicaOf !== undefined) rec.replicaOf = p.replicaOf
        if (this.cluster) {
          // issue 15: the relay serving it, and the storage server keeping its map log (the first remote one)
          rec.relay = this.cluster.relayId
          const log = this.pool.list().find((sys) => remoteStoreOf(sys) !== null)
          if (log) rec.mapLog = log.sid
        }
        d.volumes.push(rec)
        return structuredClone(rec)
      })
      await this.cluster?.takeNew(rec.id, rec.name) // issue 15: owned (and fenced) before it is served
      const handle = this.makeHandle(rec)
      this.handles.set(rec.name, handle)
      this.log.info({ event: 'volume.created', name: rec.name, id: rec.id, size: rec.size, hosts }, 'volume created')
      const info = this.volumeInfo(handle)
      this.emit('volume.created', { volume: info })
      return info
    })
  }

  listVolumes(): VolumeInfo[] {
    return [...this.handles.values()].sort((a, b) => a.name.localeCompare(b.name)).map((v) => this.volumeInfo(v))
  }

  showVolume(name: string, perExtent = false): VolumeDetail {
    const v = this.volumeNamed(name)
    const bySystem = [...v.map.allocationBySystem()].map(([sid, allocated]) => ({ storage: this.systemName(sid), allocated }))
    const view = volumeMapView(v.map.extentMap(), (sid) => this.systemName(sid), perExtent)
    return { ...this.volumeInfo(v), allocatedBySystem: bySystem, extents: v.map.extentCount(), map: view.runs, extentMap: view.extents, open: v.openCounts() }
  }

  async mapOf(name: string, offset: number) {
    const v = this.volumeNamed(name)
    if (offset >= v.size) throw new VvfsError('OUT_OF_RANGE', `offset ${offset} is past the end of volume ${name} (${v.size} bytes)`)
    const loc = v.map.locate(Math.floor(offset / CHUNK_SIZE))
    const stored = loc.sid !== undefined && loc.pca !== undefined ? await v.map.isStored(loc.sid, loc.pca) : false
    return {
      volume: name,
      offset,
      extent: loc.extent,
      extentOffset: loc.extent * EXTENT_SIZE,
      state: loc.kind,
      storage: loc.sid === undefined ? undefined : this.systemName(loc.sid),
      slot: loc.slot,
      chunkAddress: loc.pca,
      stored,
      migrating: this.jobs.activeJobOf(v.record.no) !== undefined,
    }
  }

  reclaim(name: string, opts: { dryRun: boolean; force: boolean }): Promise<ReclaimResult> {
    return this.serial(async () => {
      const v = this.volumeNamed(name)
      const r = await reclaimVolume(v, opts)
      this.log.info({ event: 'volume.reclaimed', ...r, journal: undefined }, `reclaim of ${name}: ${r.releasedBytes} bytes ${opts.dryRun ? 'would be ' : ''}released`)
      if (!opts.dryRun) this.emit('volume.reclaimed', { name, releasedBytes: r.releasedBytes })
      return r
    })
  }

  resizeVolume(name: string, size: number): Promise<VolumeInfo> {
    return this.serial(async () => {
      const v = this.volumeNamed(name)
      await v.resize(size)
      return this.volumeInfo(v)
    })
  }

  deleteVolume(name: string): Promise<{ deleted: string; released: number }> {
    return this.serial(async () => {
      const v = this.volumeNamed(name)
      const job = this.jobs.activeJobOf(v.record.no)
      if (job) throw new VvfsError('VOLUME_BUSY', `volume ${name} is in job ${job.id} (${job.status}); cancel it or wait for it`)
      // Issue 13: a replicated volume's pair goes first; a secondary's pair goes with its volume.
      const pair = this.replication.pairOfVolume(v.record.no)
      if (pair) throw new VvfsError('VOLUME_BUSY', `volume ${name} is replicated (pair ${pair}); vvfs replicate stop ${pair} first`)
      if (v.isOpen()) {
        throw new VvfsError('VOLUME_BUSY', `volume ${name} is open (${Object.keys(v.openCounts()).join(', ')}); close it (detach loop devices) first`, {
          details: { open: v.openCounts() },
        })
      }
      const released = v.allocatedBytes
      const no = v.record.no
      await this.updateVolume(no, (rec) => void (rec.state = 'deleting'))
      this.handles.delete(name)
      readCache.forget(v.record.no)
      // Writes answered before the last close may still be on their way; one
      // that failed no longer matters, the volume goes.
      await v.volume.drain().catch(() => {})
      await v.thin.destroy()
      // Its release records too: the catalog tells a standby the volume is gone.
      const records: Buffer[] = []
      for await (const [key] of this.maps.scan(extentPrefix(v.record.no))) records.push(key)
      await this.maps.deleteNow(records)
      await this.catalog.update((d) => void (d.volumes = d.volumes.filter((r) => r.no !== no)))
      if (v.record.replicaOf !== undefined) await this.replication.secondaries.forget(v.record.replicaOf)
      await this.cluster?.release(v.id) // issue 15
      this.log.info({ event: 'volume.deleted', name, released }, 'volume deleted')
      this.emit('volume.deleted', { name, id: v.id, released })
      return { deleted: name, released }
    })
  }

  mapVolume(name: string, host: string): Promise<VolumeInfo> {
    return this.serial(async () => {
      const v = this.volumeNamed(name)
      this.host(host)
      await this.updateVolume(v.record.no, (rec) => {
        if (rec.hosts.includes(host)) throw new VvfsError('ALREADY_MAPPED', `volume ${name} is already mapped to host ${host}`)
        rec.hosts.push(host)
      })
      this.log.info({ event: 'volume.mapped', name, host }, 'volume mapped')
      this.emit('volume.mapped', { name, host })
      return this.volumeInfo(v)
    })
  }

  unmapVolume(name: string, host: string): Promise<VolumeInfo> {
    return this.serial(async () => {
      const v = this.volumeNamed(name)
      this.host(host)
      if (!v.record.hosts.includes(host)) throw new VvfsError('NOT_MAPPED', `volume ${name} is not mapped to host ${host}`)
      if (v.isOpen(host)) throw new VvfsError('VOLUME_BUSY', `volume ${name} is open on host ${host}`)
      await this.updateVolume(v.record.no, (rec) => {
        if (!rec.hosts.includes(host)) throw new VvfsError('NOT_MAPPED', `volume ${name} is not mapped to host ${host}`)
        rec.hosts = rec.hosts.filter((h) => h !== host)
      })
      this.log.info({ event: 'volume.unmapped', name, host }, 'volume unmapped')
      this.emit('volume.unmapped', { name, host })
      return this.volumeInfo(v)
    })
  }

  volumeNamed(name: string): VolumeHandle {
    const v = this.handles.get(name)
    if (!v) throw new VvfsError('VOLUME_NOT_FOUND', `no volume named ${name}`)
    return v
  }

  volumeInfo(v: VolumeHandle): VolumeInfo {
    return {
      name: v.name,
      id: v.id,
      size: v.size,
      allocated: v.allocatedBytes,
      hosts: [...v.record.hosts],
      state: v.state,
      createdAt: v.record.createdAt,
      // Only where the file is now: a host someone unmounted shows none.
      files: v.record.hosts
        .map((h) => this.catalog.read().data.hosts.find((r) => r.name === h))
        .filter((h) => h !== undefined && this.mounts.get(h.name)?.mounted)
        .map((h) => join(h!.mount, v.name)),
    }
  }

  // ---- migration

  migrate(p: { volume: string; to: string; mode?: CopyMode; keep?: number; rate?: number }): Promise<JobInfo> {
    return this.serial(() => this.jobs.startMigration({ volume: p.volume, to: p.to, mode: p.mode ?? 'direct', keepMs: p.keep ?? 0, rate: p.rate ?? 0 }))
  }

  drain(p: { name: string; mode?: CopyMode; keep?: number; rate?: number }): Promise<JobInfo> {
    return this.serial(() =>
      this.jobs.startDrain({ system: p.name, mode: p.mode ?? 'direct', keepMs: p.keep ?? 0, rate: p.rate ?? 0 }),
    )
  }

  undrain(name: string): Promise<StorageInfo> {
    return this.serial(async () => {
      const rec = this.storageRecord(name)
      const busy = this.jobs.list().find((j) => j.kind === 'drain' && j.from === name && j.status !== 'concluded')
      if (busy) throw new VvfsError('JOB_STATE', `storage system ${name} is being drained by job ${busy.id}; cancel it first`)
      await this.catalog.update((d) => {
        const s = d.storage.find((x) => x.sid === rec.sid)
        if (s) delete s.draining
      })
      this.spaceWatch.changed()
      return this.storageInfo(this.pool.get(rec.sid))
    })
  }

  policy(p: Partial<{ enabled: boolean; fragmentation: number; minRun: number; interval: number }>): Promise<ConsolidationPolicy> {
    return this.serial(async () => {
      await this.catalog.update((d) => {
        const c = d.consolidation
        if (p.enabled !== undefined) c.enabled = p.enabled
        if (p.fragmentation !== undefined) c.fragmentation = p.fragmentation
        if (p.minRun !== undefined) c.minRun = p.minRun
        if (p.interval !== undefined) c.intervalMs = Math.max(1000, p.interval)
      })
      const c = this.catalog.read().data.consolidation
      this.log.info({ event: 'policy.settings', ...c }, 'consolidation policy changed')
      return { ...c }
    })
  }

  // ---- replication (issue 13)

  private replicationService(): ReplicationService {
    const replica = (name: string, pair: string) => {
      const h = this.handles.get(name)
      return h && h.record.replicaOf === pair ? h.volume : undefined
    }
    return new ReplicationService(
      this.stateDir,
      {
        replica,
        createReplica: async (name, size, pair) => {
          if (!replica(name, pair)) await this.createVolume({ name: checkName(name), size, replicaOf: pair })
          return replica(name, pair)!
        },
        checkReplica: (name, pair) => {
          checkName(name)
          if (!replica(name, pair) && this.catalog.read().data.volumes.some((v) => v.name === name)) throw new VvfsError('VOLUME_EXISTS', `volume ${name} already exists`)
        },
        resizeReplica: async (name, size) => void (await this.resizeVolume(name, size)),
        journalLayer: (volNo) => [...this.handles.values()].find((h) => h.record.no === volNo)?.journal,
        volumeSize: (volNo) => [...this.handles.values()].find((h) => h.record.no === volNo)?.size ?? 0,
        allocatedExtents: (volNo) => [...this.handles.values()].find((h) => h.record.no === volNo)?.map.extentIndexes() ?? [],
        home: (volNo) => {
          const rec = this.catalog.read().data.volumes.find((v) => v.no === volNo)
          return rec?.home !== undefined ? this.systemName(rec.home) : 'relay'
        },
        jobs: () => this.catalog.read().data.jobs as unknown as readonly JobRecord[],
        emitState: (body) => this.emit('replication.state', body),
        // issue 13.7: failover
        failoverVolume: (name) => {
          const h = this.handles.get(name)
          return h && { name, no: h.record.no, size: h.size, layer: h.journal, openForWrite: () => h.isOpenForWrite(), blockWriters: (why) => h.blockWriters(why) }
        },
        setReplicaOf: async (name, pair) => {
          const h = this.volumeNamed(name)
          if (h.record.replicaOf === pair) return
          await this.updateVolume(h.record.no, (r) => {
            if (pair === undefined) delete r.replicaOf
            else r.replicaOf = pair
          })
          if (pair === undefined) delete h.record.replicaOf
          else h.record.replicaOf = pair
        },
        primaryOf: (pair) => this.replicationPrimaries().find((p) => p.job.pair === pair),
        primaries: () => this.replicationPrimaries(),
        stopPair: async (pair) => {
          const job = this.replication.jobOf(pair)
          if (!job) return
          this.jobs.cancel(job.id)
          await this.jobs.settled(job.id)
        },
        startReverse: async (p) => void (await this.jobs.startReplication({ volumes: p.volumes, group: p.group ?? undefined, to: p.to, pair: p.pair, peerKey: p.peerKey, chain: [...p.chain], journalDir: p.journalDir })),
        peerKeyFile: () => this.opts.peerKey,
        emitFailover: (body) => this.emit('replication.failover', body),
        exclusive: (fn) => this.serial(fn),
      },
      this.log,
    )
  }

  replicateStart(p: { volume: string; also?: string[]; group?: string; to: string; as?: string; peerKey?: string; rate?: number; journalLimit?: number; journalPolicy?: 'bitmap' | 'throttle' }): Promise<ReplicationInfo> {
    return this.serial(async () => {
      const peerKey = p.peerKey ?? this.opts.peerKey
      if (!peerKey) throw new VvfsError('INVALID_ARGUMENT', 'name the peer\'s key file (--peer-key FILE), or start the daemon with --peer-key')
      const names = [p.volume, ...(p.also ?? [])]
      for (const name of names) {
        const v = this.volumeNamed(name)
        if (v.record.replicaOf !== undefined) throw new VvfsError('VOLUME_READ_ONLY', `volume ${name} is itself a replication secondary`)
      }
      const job = await this.jobs.startReplication({ volumes: names, group: p.group, to: p.to, pair: p.as, peerKey, rate: p.rate, journalLimit: p.journalLimit, journalPolicy: p.journalPolicy })
      return this.replication.list().find((r) => r.job === job.id)!
    })
  }

  /** Whether this daemon replicates now, as a primary or a secondary (gc-tuning.ts adaptHeapGrowth). */
  replicating(): boolean {
    return this.replication.active
  }

  /** Issue 13.7: the primary pairs running here, with their jobs. */
  private replicationPrimaries(): { job: ReplicateJobRecord; pair: PrimaryPair }[] {
    const out: { job: ReplicateJobRecord; pair: PrimaryPair }[] = []
    for (const [id, pair] of this.replication.pairs) {
      const job = this.catalog.read().data.jobs.find((j) => j.id === id) as ReplicateJobRecord | undefined
      if (job && job.status !== 'concluded') out.push({ job, pair })
    }
    return out
  }

  /** Issue 13.7: promote, demote, reverse, resolve (lib/replication/failover.ts); answers the pair's row here. */
  async replicateFailover(verb: 'promote' | 'demote' | 'reverse' | 'resolve', p: { pair: string; force?: boolean; to?: string; peerKey?: string; discard?: 'local' | 'peer' }): Promise<ReplicationInfo> {
    const f = this.replication.failover
    if (verb === 'promote') await f.promote(p.pair, p.force ?? false)
    else if (verb === 'demote') await f.demote(p.pair)
    else if (verb === 'reverse') await f.reverse(p.pair, { to: p.to, peerKey: p.peerKey })
    else await f.resolve(p.pair, p.discard!, { to: p.to, peerKey: p.peerKey })
    const rows = this.replication.list().filter((r) => r.pair === p.pair)
    return rows.find((r) => r.role === 'primary') ?? rows[0]!
  }

  /** stop, pause or resume a pair (its job). */
  replicateVerb(verb: 'stop' | 'pause' | 'resume', pair: string): Promise<ReplicationInfo> {
    return this.serial(async () => {
      const job: ReplicateJobRecord | undefined = this.replication.jobOf(pair)
      if (!job) throw new VvfsError('PAIR_NOT_FOUND', `no replication pair named ${pair} runs from this daemon`)
      const before = this.replication.list().find((r) => r.job === job.id)!
      if (verb === 'stop') {
        this.jobs.cancel(job.id)
        await this.jobs.settled(job.id)
        return { ...before, state: 'stopped' }
      }
      if (verb === 'pause') this.jobs.pause(job.id)
      else this.jobs.resume(job.id)
      return this.replication.list().find((r) => r.job === job.id) ?? before
    })
  }

  // ---- injected faults (--allow-faults)

  addFault(p: FaultSpec & { storage: string }): FaultInfo {
    const rule = this.faultInjector().add(this.pool.get(this.storageRecord(p.storage).sid), p)
    this.log.warn({ event: 'fault.added', ...rule }, `fault ${rule.id} added to storage system ${rule.storage}`)
    return rule
  }

  listFaults(): FaultInfo[] {
    return this.faultInjector().list()
  }

  clearFaults(id?: number): number[] {
    const cleared = this.faultInjector().clear(id)
    this.log.warn({ event: 'fault.cleared', cleared }, `faults cleared: ${cleared.join(', ') || 'none'}`)
    return cleared
  }

  private faultInjector(): FaultInjector {
    if (!this.faults) throw new VvfsError('FAULTS_DISABLED', 'fault injection is off: start the daemon with --allow-faults')
    return this.faults
  }

  consolidationPolicy(): ConsolidationPolicy {
    return { ...this.catalog.read().data.consolidation }
  }

  /** Sets up the default demo state of `make run` (only on a new state directory). */
  async bootstrapDemo(): Promise<void> {
    for (const name of ['ss1', 'ss2', 'ss3']) await this.addStorage({ name, capacity: parseSize('4G') })
    await this.createVolume({ name: checkName('demo'), size: parseSize('1G') })
  }

  // ---- helpers

  /** A live volume: its stack (lib/relay/stack.ts) over the entries found at start, if any. */
  private makeHandle(rec: VolumeRecord, entries?: Map<number, ExtentEntry>): VolumeHandle {
    this.foreignSpace.forget(rec.no) // issue 15: its own map marks its space from here on
    const stack = buildVolumeStack({
      volNo: rec.no,
      size: rec.size,
      pool: this.pool,
      maps: this.maps,
      entries: entries?.entries(),
      space: this.spaceWatch,
      mover: this.mover,
      readAhead: { mirror: readCache.mirror(rec.no) },
      placement: () => {
        const rule = this.jobs.placementFor(rec.no)
        if (rule.only !== undefined || rule.exclude) return rule
        return rec.home !== undefined && this.pool.has(rec.home) ? { prefer: rec.home } : {}
      },
      onFailure: (f) => {
        const e = asVvfsError(f.err)
        this.log.error({ event: `volume.${f.what}_failed`, volume: rec.name, extent: f.extent, code: e.code, err: e.message }, `volume ${rec.name}: ${f.what} failed at extent ${f.extent}`)
      },
    })
    return new VolumeHandle(rec, stack, {
      hostIo: () => {
        this.hostOps++
      },
      // issue 15: a relay acknowledges only within its lease window, only volumes it owns
      acknowledge: this.cluster ? ((cluster) => (what) => cluster.acknowledge(what, rec.id, rec.name))(this.cluster) : undefined,
      jobState: () => {
        const j = this.jobs.activeJobOf(rec.no)
        return j ? (j.status === 'paused' ? 'migration-paused' : 'migrating') : undefined
      },
      persistSize: (_h, size) => this.updateVolume(rec.no, (r) => void (r.size = size)),
      resized: (h, from, to) => {
        this.log.info({ event: 'volume.resized', name: h.name, from, to }, 'volume resized')
        this.emit('volume.resized', { name: h.name, from, to })
      },
    })
  }

  private host(name: string): Committed<HostRecord> {
    const h = this.catalog.read().data.hosts.find((r) => r.name === name)
    if (!h) throw new VvfsError('HOST_NOT_FOUND', `no host named ${name}`)
    return h
  }

  // ---- issue 15: relays in a cluster

  /** The cluster's relays, their leases and the volumes each owns; NOT_SUPPORTED without --etcd. */
  relays(): Promise<RelayInfo[]> {
    if (!this.cluster) throw new VvfsError('NOT_SUPPORTED', 'this daemon is not in a cluster (start it with --etcd URL --relay-id NAME)')
    return this.cluster.relays()
  }

  /** The map log of a cluster relay: routes each volume's records to its VolumeRecord.mapLog server. */
  private mapLog(): VolumeMapLog {
    const log = new VolumeMapLog({
      logOf: (volNo) => {
        const rec = this.catalog.read().data.volumes.find((v) => v.no === volNo)
        // Only a volume this relay owns is logged (its other records are a cache: never written to another owner's log).
        if (rec?.mapLog === undefined || !this.cluster?.holds(rec.id)) return null
        const store = this.pool.has(rec.mapLog) ? remoteStoreOf(this.pool.get(rec.mapLog)) : null
        if (!store) throw new VvfsError('STORAGE_NOT_FOUND', `the storage server keeping volume ${rec.name}'s map log (#${rec.mapLog}) is not in this relay's pool`)
        return store
      },
      jobVolume: (jobNo) => this.catalog.read().data.jobs.find((j) => j.id === jobNo)?.volNos[0],
      // Each open description of the volume hears it at its next fsync, whoever's sync met it.
      writesLost: (volNo, err) => {
        for (const h of this.handles.values()) if (h.record.no === volNo) h.volume.writeBackFailed(err)
      },
    })
    this.mapLogs = log
    return log
  }

  /**
   * Issue 15: marks in the free-space tables what every volume this relay
   * neither serves nor owns holds on the storage servers of its pool, read
   * from their map logs (ForeignSpace). Called each time it raised the fence.
   */
  private async holdForeignSpace(): Promise<void> {
    const cluster = this.cluster
    const mapLogs = this.mapLogs
    if (!cluster || !mapLogs) return
    const volumes: ForeignVolume[] = []
    for (const rec of this.catalog.read().data.volumes) {
      if (cluster.holds(rec.id) || this.byNo(rec.no) !== undefined || rec.mapLog === undefined || !this.pool.has(rec.mapLog)) continue
      const store = remoteStoreOf(this.pool.get(rec.mapLog))
      if (store) volumes.push({ no: rec.no, name: rec.name, entries: () => mapLogs.entriesOf(rec.no, store) })
    }
    await this.foreignSpace.refresh(volumes)
  }

  /** Issue 15: replaces the cached map of a volume this relay owns (fenced) with its map log's. */
  private async rebuildMap(rec: Committed<VolumeRecord>): Promise<void> {
    if (rec.mapLog === undefined || !this.mapLogs) return
    const store = this.pool.has(rec.mapLog) ? remoteStoreOf(this.pool.get(rec.mapLog)) : null
    if (!store) throw new VvfsError('STORAGE_NOT_FOUND', `the storage server keeping volume ${rec.name}'s map log (#${rec.mapLog}) is not in this relay's pool`)
    const records = await this.mapLogs.rebuild(this.maps, rec.no, store)
    this.log.info({ event: 'relay.map_loaded', volume: rec.name, records }, `volume ${rec.name}: map rebuilt from its map log (${records} records)`)
  }

  /**
   * Issue 15: a volume lost its owner (lease expired, or released): if its
   * map log is reachable here, claim it, fence, rebuild its map from the
   * log, serve it (its file appears in this relay's host mounts) and record
   * this relay as its relay. Another relay may win the claim: then nothing.
   */
  private takeOver(volumeId: string): Promise<void> {
    return this.serial(() => this.takeOverNow(volumeId)).catch((err: unknown) => {
      const e = asVvfsError(err)
      this.log.error({ event: 'relay.takeover_failed', volume: volumeId, code: e.code, err: e.message }, 'could not take a volume over')
    })
  }

  /** takeOver() inside the serial queue. */
  private async takeOverNow(volumeId: string): Promise<void> {
    const cluster = this.cluster
    const rec = this.catalog.read().data.volumes.find((v) => v.id === volumeId)
    if (!cluster || !rec || rec.state !== 'ready' || rec.mapLog === undefined || !this.pool.has(rec.mapLog) || this.handles.has(rec.name)) return
    const target = await cluster.handoverTarget(rec.id)
    if (target !== undefined && target !== cluster.relayId) return // `volume move` to another relay
    const started = Date.now()
    const owner = await cluster.takeOver(rec.id, rec.name)
    if (!owner) return
    try {
      await this.rebuildMap(rec)
      const { entries } = await readVolumeMaps(this.maps, (_volNo, extent) => extent * EXTENT_SIZE < rec.size, rec.no)
      const handle = this.makeHandle(draftOf<VolumeRecord>(rec), entries.get(rec.no))
      // Served from here on, but its changes wait until its jobs are adopted: a replication pair's journal must number every
      // change after the point it goes on from (a move's hand-over point leaves nothing to resync the ones it missed).
      const release = handle.journal.holdChanges()
      this.handles.set(rec.name, handle)
      let jobs: number[]
      try {
        await this.updateVolume(rec.no, (r) => void (r.relay = cluster.relayId))
        jobs = await this.jobs.adoptJobsOf(rec.no, release)
      } finally {
        release()
      }
      this.log.info({ event: 'relay.volume_taken', volume: rec.name, token: owner.token, jobs, ms: Date.now() - started }, `took volume ${rec.name} over (token ${owner.token})`)
    } catch (err) {
      this.handles.delete(rec.name)
      await cluster.release(rec.id).catch(() => {})
      throw err
    }
  }

  /**
   * Issue 15, `vvfs volume move NAME --relay R`: this relay stops
   * acknowledging the volume's I/O (FENCED: the host sees EIO), drains it,
   * syncs the map log, stops serving it and gives its space back to its own
   * tables, names R in etcd and releases the volume; R takes it over (the
   * others leave it to R). Returns once R serves it (its catalog record
   * names R), with the gap: from when this relay stopped acknowledging.
   * If R has not taken it within HANDOVER_WAIT_MS this relay takes it back.
   */
  moveVolume(name: string, to: string): Promise<{ volume: string; from: string; to: string; token: number; gapMs: number }> {
    return this.serial(async () => {
      const cluster = this.cluster
      if (!cluster) throw new VvfsError('NOT_SUPPORTED', 'this daemon is not in a cluster (start it with --etcd URL --relay-id NAME)')
      const v = this.volumeNamed(name)
      if (!cluster.owns(v.id)) throw new VvfsError('NOT_OWNER', `relay ${cluster.relayId} does not own volume ${name}`)
      if (to === cluster.relayId) throw new VvfsError('INVALID_ARGUMENT', `volume ${name} is already served by relay ${to}`)
      if (v.record.mapLog === undefined) throw new VvfsError('NOT_SUPPORTED', `volume ${name} has no map log (it was made without a storage server in the pool): only its relay can serve it`)
      const job = this.jobs.activeJobOf(v.record.no)
      if (job) throw new VvfsError('VOLUME_BUSY', `volume ${name} is in job ${job.id} (${job.status}); wait for it, or let a takeover resume it`)
      if (!(await cluster.hasRelay(to))) throw new VvfsError('RELAY_NOT_FOUND', `no relay ${to} in the cluster`)
      const stoppedAt = Date.now()
      cluster.stopServing(v.id)
      try {
        await v.volume.drain()
        await v.thin.settle()
        await this.maps.sync()
      } catch (err) {
        cluster.resumeServing(v.id)
        throw err
      }
      // Its replication pair goes with it (R goes on as a new epoch, without a resync if the secondary caught up here); nothing here ships for it after the handover.
      await this.jobs.dropJobsOf(v.record.no, { handover: true })
      this.handles.delete(name)
      readCache.forget(v.record.no)
      v.thin.close()
      for (const e of v.map.extentIndexes()) releaseSpace(this.pool, v.map.get(e)!)
      await cluster.handOver(v.id, to)
      const end = Date.now() + HANDOVER_WAIT_MS
      for (;;) {
        const rec = this.catalog.read().data.volumes.find((r) => r.id === v.id)
        const owner = (await cluster.ownership.owners()).find((o) => o.volumeId === v.id)
        if (rec?.relay === to && owner?.relay === to) {
          const gapMs = Date.now() - stoppedAt
          await cluster.clearHandover(v.id)
          this.log.info({ event: 'volume.moved', volume: name, from: cluster.relayId, to, token: owner.token, gapMs }, `volume ${name} handed over to relay ${to}`)
          return { volume: name, from: cluster.relayId, to, token: owner.token, gapMs }
        }
        if (Date.now() > end) break
        await new Promise((r) => setTimeout(r, 20))
      }
      await cluster.clearHandover(v.id)
      await this.takeOverNow(v.id)
      throw new VvfsError('TIMEOUT', `relay ${to} did not take volume ${name} within ${HANDOVER_WAIT_MS / 1000}s${this.handles.has(name) ? '; this relay serves it again' : ''}`)
    })
  }

  /**
   * Issue 15: this relay's lease expired — the volumes it owned may be
   * another relay's now. Their jobs stop, their files leave this relay's
   * mounts, their space goes back to this relay's tables (taken over again
   * later, they are adopted again). Writes still under way fail (FENCED or
   * refused by the fenced servers), and are logged.
   */
  private dropLostVolumes(volumeIds: string[]): Promise<void> {
    return this.serial(async () => {
      for (const v of [...this.handles.values()].filter((h) => volumeIds.includes(h.id))) {
        await this.jobs.dropJobsOf(v.record.no)
        this.handles.delete(v.name)
        readCache.forget(v.record.no)
        await v.volume.drain().catch((err: unknown) => {
          const e = asVvfsError(err)
          this.log.warn({ event: 'volume.write_failed', volume: v.name, code: e.code, err: e.message }, `volume ${v.name}: a write under way when the lease was lost failed`)
        })
        // Its background work (promotions, releases) ends before its space is given back, as at a move: they change the same map.
        await v.thin.settle().catch(() => undefined)
        v.thin.close()
        for (const e of v.map.extentIndexes()) releaseSpace(this.pool, v.map.get(e)!)
        this.log.warn({ event: 'relay.volume_lost', volume: v.name }, `volume ${v.name} is no longer served here: this relay's lease expired`)
      }
    }).catch((err: unknown) => {
      const e = asVvfsError(err)
      this.log.error({ event: 'relay.drop_failed', code: e.code, err: e.message }, 'could not stop serving the volumes of an expired lease')
    })
  }

  /** Changes one volume's catalog record (its handle's copy follows the commit). */
  private async updateVolume(volNo: number, change: (rec: VolumeRecord) => void): Promise<void> {
    await this.catalog.update((d) => {
      const rec = d.volumes.find((r) => r.no === volNo)
      if (!rec) throw new VvfsError('VOLUME_NOT_FOUND', `volume #${volNo} is no longer in the catalog`)
      change(rec)
    })
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(new VvfsError('SHUTTING_DOWN', 'the daemon is shutting down'))
    const next = this.queue.then(fn)
    this.queue = next.catch(() => {})
    return next
  }

  private emit<T extends EventType>(type: T, body: EventBody<T>): void {
    const event = { type, time: new Date().toISOString(), ...body } as VvfsEvent
    this.events.emit('event', event)
  }
}

/** Issue 15: how long `volume move` waits for the named relay to serve the volume before taking it back. */
const HANDOVER_WAIT_MS = 10_000

function percent(part: number, whole: number): number {
  return whole === 0 ? 0 : Math.round((1000 * part) / whole) / 10
}

function ratio(part: number, whole: number): number {
  return whole === 0 ? 0 : Math.round((100 * part) / whole) / 100
}

/** A new storage system's name must be free in the data it is committed to. */
/** Issue 15: raises the fence of every storage server in the pool to `token` (local systems have none). */
async function fencePool(pool: Pool, token: number): Promise<void> {
  for (const system of pool.list()) if (remoteEpoch(system) !== null) await fenceRemoteSystem(system, token)
}

/** Issue 15: the catalog in etcd with --etcd, else the state directory's file. */
function openCatalog(stateDir: string, cluster: ClusterOptions | undefined): Promise<CatalogStore> {
  if (!cluster) return FileCatalog.open(stateDir)
  return EtcdCatalog.open({ endpoints: cluster.endpoints, prefix: cluster.prefix })
}

function checkNewStorage(d: Committed<CatalogData>, name: string): void {
  if (d.storage.some((s) => s.name === name)) throw new VvfsError('STORAGE_EXISTS', `storage system ${name} already exists`)
}
