/**
 * ReadCache: the extents a volume's read-ahead has fetched, offered to the
 * FUSE threads (patches/: fuse-native's read cache) so that a read lying in
 * them is answered there, without the two thread hand-offs into JavaScript
 * and back that cost a 128 KiB sequential read most of its time.
 *
 * Owns: the process's one native read cache — which open file reads which
 * volume, what is published, and reporting the reads served there back to
 * their volumes (their read-ahead keeps following the reader; the migration
 * copy sees host I/O).
 *
 * Never: publishes on its own. What is published, and its withdrawal before
 * the data may change or its buffer be reused, is ReadAhead's (its
 * ExtentMirror contract); a withdrawal returns only once no FUSE thread
 * reads that buffer any more.
 */
import Fuse from 'fuse-native'
import { EXTENT_SIZE } from '../layout.js'
import type { ExtentMirror } from '../relay/readahead.js'

/** What a served read is reported to. */
export interface CachedVolume {
  /** The volume's number: its key in the native cache. */
  readonly cacheKey: number
  /** [offset, offset + length) was read from the cache. */
  readServed(offset: number, length: number): void
}

/** Served reads taken from the native side per drain call (vol, offset, length each). */
const DRAIN_BATCH = 256

class ReadCache {
  private started = false
  /** Bound open files per volume number, and the volume they report to. */
  private readonly volumes = new Map<number, { volume: CachedVolume; files: number }>()
  private readonly events = new Float64Array(DRAIN_BATCH * 3)

  /** The mirror a volume's ReadAhead publishes its fetched extents to. */
  mirror(volumeNo: number): ExtentMirror {
    return {
      publish: (extent, data) => Fuse.readCache.publish(volumeNo, extent * EXTENT_SIZE, data, EXTENT_SIZE),
      withdraw: (extent) => Fuse.readCache.withdraw(volumeNo, extent * EXTENT_SIZE),
    }
  }

  /** Open file `fh` reads `volume`: its reads may be served from the cache. */
  bind(fh: number, volume: CachedVolume): void {
    this.start()
    const entry = this.volumes.get(volume.cacheKey) ?? { volume, files: 0 }
    entry.files++
    this.volumes.set(volume.cacheKey, entry)
    Fuse.readCache.bind(fh, volume.cacheKey)
  }

  unbind(fh: number, volume: CachedVolume): void {
    Fuse.readCache.unbind(fh)
    const entry = this.volumes.get(volume.cacheKey)
    if (entry && --entry.files <= 0) this.volumes.delete(volume.cacheKey)
  }

  /** Drops everything published for a volume (it is deleted). */
  forget(volumeNo: number): void {
    Fuse.readCache.withdrawVolume(volumeNo)
  }

  stats(): { served: number; unreported: number; published: number } {
    return Fuse.readCache.stats()
  }

  private start(): void {
    if (this.started) return
    this.started = true
    Fuse.readCache.init(() => this.report())
  }

  /** Hands the reads served since the last call to their volumes. */
  private report(): void {
    for (;;) {
      const n = Fuse.readCache.drain(this.events)
      for (let i = 0; i < n; i++) {
        const entry = this.volumes.get(this.events[i * 3]!)
        entry?.volume.readServed(this.events[i * 3 + 1]!, this.events[i * 3 + 2]!)
      }
      if (n < DRAIN_BATCH) return
    }
  }
}

/** The process's read cache (the native one is process-wide too). */
export const readCache = new ReadCache()
