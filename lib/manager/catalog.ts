/**
 * Catalog: the settings the manager holds (the claims' "first information") —
 * storage systems, hosts, volumes, pool settings and jobs — persisted as one
 * JSON file in the state directory and restored at start.
 *
 * A save writes a temporary file, fsyncs it and renames it over the old one,
 * so after kill -9 the catalog is the old or the new one, never a mix. Saves
 * run one at a time in call order.
 *
 * Owns: STATE/catalog.json. Never: holds volume maps (the relay's MapStore).
 */
import type { RemoteRecord } from '../storage/remote/systems.js'
import { open, readFile, rename } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { VvfsError } from '../errors.js'
import type { JobRecord } from '../migration/job.js'
import { DEFAULT_POLICY, type ConsolidationPolicy } from '../migration/planner.js'

export interface StorageRecord {
  sid: number
  name: string
  path: string
  capacity: number
  createdAt: string
  /** Designated for staged transfers: takes no ordinary allocations. */
  reserve?: boolean
  /** Being (or drained): takes no new allocations. */
  draining?: boolean
  /** Issue 14: a storage system on a storage server (`path` is then its ADDR:PORT). */
  remote?: RemoteRecord
}

export interface HostRecord {
  name: string
  mount: string
  createdAt: string
}

export interface VolumeRecord {
  name: string
  id: string
  /** Small number that keys the volume's map records; never reused. */
  no: number
  size: number
  hosts: string[]
  createdAt: string
  /** 'deleting' survives a crash in the middle of a delete, which start finishes. */
  state: 'ready' | 'deleting'
  /** The storage system a migration consolidated the volume onto: new extents go there first. */
  home?: number
}

export type PoolFullMode = 'error' | 'queue'

export interface PoolSettings {
  warnPercent: number
  fullMode: PoolFullMode
  queueTimeoutMs: number
}

export interface CatalogData {
  format: 1
  nextVolumeNo: number
  nextSid: number
  storage: StorageRecord[]
  hosts: HostRecord[]
  volumes: VolumeRecord[]
  pool: PoolSettings
  consolidation: ConsolidationPolicy
  nextJobNo: number
  jobs: JobRecord[]
}

export const DEFAULT_POOL_SETTINGS: PoolSettings = { warnPercent: 80, fullMode: 'error', queueTimeoutMs: 60_000 }

function emptyCatalog(): CatalogData {
  return {
    format: 1,
    nextVolumeNo: 1,
    nextSid: 1,
    nextJobNo: 1,
    storage: [],
    hosts: [],
    volumes: [],
    pool: { ...DEFAULT_POOL_SETTINGS },
    consolidation: { ...DEFAULT_POLICY },
    jobs: [],
  }
}

export class Catalog {
  private saving: Promise<void> = Promise.resolve()

  private constructor(
    readonly path: string,
    readonly data: CatalogData,
    readonly isNew: boolean,
  ) {}

  static async load(stateDir: string): Promise<Catalog> {
    const path = join(stateDir, 'catalog.json')
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        const catalog = new Catalog(path, emptyCatalog(), true)
        await catalog.save()
        return catalog
      }
      throw new VvfsError('IO_ERROR', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
    }
    let data: CatalogData
    try {
      data = JSON.parse(text) as CatalogData
    } catch (err) {
      throw new VvfsError('STATE_CORRUPT', `${path} is not valid JSON: ${(err as Error).message}`, { cause: err })
    }
    if (data.format !== 1) throw new VvfsError('STATE_CORRUPT', `${path} has unknown format ${String(data.format)}`)
    data.pool = { ...DEFAULT_POOL_SETTINGS, ...(data.pool ?? {}) }
    data.consolidation = { ...DEFAULT_POLICY, ...(data.consolidation ?? {}) }
    data.jobs ??= []
    data.nextJobNo ??= 1
    return new Catalog(path, data, false)
  }

  /** Persists the current data; resolves when it is durable. */
  save(): Promise<void> {
    const text = JSON.stringify(this.data, null, 2) + '\n'
    const next = this.saving.then(() => this.write(text))
    this.saving = next.catch(() => {})
    return next
  }

  private async write(text: string): Promise<void> {
    const tmp = `${this.path}.tmp`
    try {
      const file = await open(tmp, 'w', 0o600)
      try {
        await file.writeFile(text)
        await file.sync()
      } finally {
        await file.close()
      }
      await rename(tmp, this.path)
      const dir = await open(dirname(this.path), 'r')
      try {
        await dir.sync()
      } finally {
        await dir.close()
      }
    } catch (err) {
      throw new VvfsError('IO_ERROR', `cannot write ${this.path}: ${(err as Error).message}`, { cause: err })
    }
  }
}
