/**
 * VolumeHandle: one live volume — its catalog record, its relay stack and who
 * has its file open on which host. What a host mount serves and what the
 * manager checks before a delete or unmap.
 *
 * Size changes are serialized here and made durable in the catalog before
 * data may exist past the old end (grow: record first; shrink: data first),
 * so a crash never leaves map entries past the recorded size that matter.
 */
import { VvfsError } from '../errors.js'
import type { ServedVolume } from '../fuse/host-mount.js'
import type { ExtentOps } from '../relay/extent-ops.js'
import type { ReadAhead } from '../relay/readahead.js'
import type { VolumeStack } from '../relay/stack.js'
import type { ThinLayer } from '../relay/thin.js'
import type { ErrorCursor, Volume } from '../relay/volume.js'
import type { VolumeMap } from '../relay/volume-map.js'
import type { MigrateLayer } from '../migration/layer.js'
import { MAX_SIZE } from '../units.js'
import type { VolumeRecord } from './catalog.js'
import type { JournalLayer } from '../replication/journal-layer.js'

export interface VolumeHooks {
  /** Called for every host read and write. */
  hostIo(): void
  /** 'migrating' while a job moves the volume. */
  jobState(): string | undefined
  /** Persists a new size of the record (the catalog). */
  persistSize(handle: VolumeHandle, size: number): Promise<void>
  resized(handle: VolumeHandle, from: number, to: number): void
  /** Issue 15: throws (FENCED) when this relay may no longer acknowledge a write or fsync of the volume. */
  acknowledge?(what: 'a write' | 'an fsync' | 'a read'): void
}

export class VolumeHandle implements ServedVolume {
  private readonly opens = new Map<string, { readers: number; writers: number }>()
  private sizing: Promise<void> = Promise.resolve()
  private writersBlocked: string | null = null
  modifiedAt: Date

  readonly map: VolumeMap
  readonly thin: ThinLayer
  readonly extents: ExtentOps
  readonly layer: MigrateLayer
  readonly volume: Volume
  /** The read-ahead layer, when the stack has one. */
  readonly readAhead: ReadAhead | undefined
  /** Issue 13: the replication journal layer (passes through unless a pair is attached). */
  readonly journal: JournalLayer

  constructor(
    readonly record: VolumeRecord,
    stack: VolumeStack,
    private readonly hooks: VolumeHooks,
  ) {
    this.map = stack.map
    this.thin = stack.thin
    this.extents = stack.extents
    this.layer = stack.migrate
    this.volume = stack.volume
    this.readAhead = stack.readAhead
    this.journal = stack.journal
    this.modifiedAt = new Date(record.createdAt)
  }

  get name(): string {
    return this.record.name
  }
  get id(): string {
    return this.record.id
  }
  get size(): number {
    return this.volume.size
  }
  get allocatedBytes(): number {
    return this.map.allocatedBytes
  }
  get createdAt(): Date {
    return new Date(this.record.createdAt)
  }
  get state(): string {
    return this.hooks.jobState() ?? (this.writersBlocked ? 'reclaiming' : this.isOpen() ? 'open' : 'ready')
  }

  open(host: string, writable: boolean): void {
    if (writable && this.record.replicaOf !== undefined)
      throw new VvfsError('VOLUME_READ_ONLY', `volume ${this.name} is the replication secondary of pair ${this.record.replicaOf}: read-only (vvfs replicate promote ${this.record.replicaOf} makes it writable)`)
    if (writable && this.writersBlocked) throw new VvfsError('VOLUME_BUSY', this.writersBlocked)
    const o = this.opens.get(host) ?? { readers: 0, writers: 0 }
    if (writable) o.writers++
    else o.readers++
    this.opens.set(host, o)
  }

  close(host: string, writable: boolean): void {
    const o = this.opens.get(host)
    if (!o) return
    if (writable) o.writers = Math.max(0, o.writers - 1)
    else o.readers = Math.max(0, o.readers - 1)
    if (o.readers + o.writers === 0) this.opens.delete(host)
  }

  /** Refuses writable opens until the returned function is called (reclaim). */
  blockWriters(why: string): () => void {
    if (this.writersBlocked) throw new VvfsError('VOLUME_BUSY', this.writersBlocked)
    this.writersBlocked = why
    return () => {
      this.writersBlocked = null
    }
  }

  isOpen(host?: string): boolean {
    return host === undefined ? this.opens.size > 0 : this.opens.has(host)
  }

  isOpenForWrite(): boolean {
    for (const o of this.opens.values()) if (o.writers > 0) return true
    return false
  }

  openCounts(): Record<string, { readers: number; writers: number }> {
    return Object.fromEntries(this.opens)
  }

  read(offset: number, length: number, into: Buffer): Promise<number> {
    this.hooks.hostIo()
    // Issue 15: a relay that lost the volume (or its lease window) answers FENCED, not a map another relay may have changed.
    try {
      this.hooks.acknowledge?.('a read')
    } catch (err) {
      return Promise.reject(err)
    }
    return this.volume.read(offset, length, into)
  }

  get cacheKey(): number {
    return this.record.no
  }

  readServed(offset: number, length: number): void {
    this.hooks.hostIo()
    this.volume.readServed(offset, length)
  }

  async write(offset: number, data: Buffer): Promise<number> {
    this.hooks.hostIo()
    // Like a regular file, a write past the end grows the volume.
    if (offset + data.length > this.volume.size) await this.resizeTo(offset + data.length, true)
    const n = await this.volume.write(offset, data)
    this.modifiedAt = new Date()
    this.hooks.acknowledge?.('a write')
    return n
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.volume.discard(offset, length)
    this.modifiedAt = new Date()
  }

  resize(size: number): Promise<void> {
    return this.resizeTo(size, false)
  }

  errorCursor(): ErrorCursor {
    return this.volume.errorCursor()
  }

  flush(cursor?: ErrorCursor): Promise<void> {
    const acknowledge = this.hooks.acknowledge
    return acknowledge ? this.volume.flush(cursor).then(() => acknowledge('an fsync')) : this.volume.flush(cursor)
  }

  drain(cursor?: ErrorCursor): Promise<void> {
    return this.volume.drain(cursor)
  }

  private resizeTo(size: number, growOnly: boolean): Promise<void> {
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_SIZE) {
      return Promise.reject(new VvfsError('INVALID_SIZE', `size ${size} is not valid`))
    }
    const next = this.sizing.then(async () => {
      const from = this.volume.size
      if (size === from || (growOnly && size < from)) return
      if (size > from) {
        await this.hooks.persistSize(this, size)
        await this.volume.resize(size)
      } else {
        await this.volume.resize(size)
        await this.hooks.persistSize(this, size)
      }
      this.modifiedAt = new Date()
      this.hooks.resized(this, from, size)
    })
    this.sizing = next.catch(() => {})
    return next
  }
}
