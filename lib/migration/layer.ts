/**
 * MigrateLayer: the migration layer of the relay stack (volume → migrate →
 * thin). While a job holds source extents of this volume (switched to a new
 * place, the old one kept for cancel/rollback), a write or discard to such an
 * extent first marks it dirty — durably, before the write is acknowledged —
 * so a rollback knows what to copy back. Everything else passes through.
 *
 * Routing itself needs no work here: a job switches the volume map extent by
 * extent as its copy bitmap advances, under the extent's exclusive lock, so
 * an extent not yet copied is read and written at the source and one already
 * copied at the destination; a host I/O to the extent being copied waits for
 * that one copy.
 */
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../layout.js'
import { writeAfter, type ChunkLayer, type Write } from '../relay/chunk-layer.js'
import type { CopyBitmap } from './bitmap.js'
import type { RetainedSources } from './retained.js'

export interface DirtyTracking {
  retained: RetainedSources
  dirty: CopyBitmap
}

export class MigrateLayer implements ChunkLayer {
  tracking: DirtyTracking | null = null

  constructor(
    private readonly lower: ChunkLayer,
    private readonly volNo: number,
  ) {}

  read(first: number, count: number, into: Buffer): Promise<void> {
    return this.lower.read(first, count, into)
  }

  write(first: number, data: Buffer, after?: Promise<void>): Write {
    if (!this.tracking) return this.lower.write(first, data, after)
    // The dirty mark is durable before the write is even accepted.
    return writeAfter(this.markDirty(first, data.length / CHUNK_SIZE), () => this.lower.write(first, data, after))
  }

  async discard(first: number, count: number): Promise<void> {
    if (this.tracking) await this.markDirty(first, count)
    return this.lower.discard(first, count)
  }

  async truncate(chunkCount: number): Promise<void> {
    const t = this.tracking
    if (t) await Promise.all([...t.retained.volume(this.volNo).keys()].filter((e) => (e + 1) * EXTENT_CHUNKS > chunkCount).map((e) => t.dirty.set(e)))
    return this.lower.truncate(chunkCount)
  }

  flush(): Promise<void> {
    return this.lower.flush()
  }

  private async markDirty(first: number, count: number): Promise<void> {
    const t = this.tracking!
    const last = Math.floor((first + count - 1) / EXTENT_CHUNKS)
    const marks: Promise<void>[] = []
    for (let e = Math.floor(first / EXTENT_CHUNKS); e <= last; e++) {
      if (t.retained.has(this.volNo, e) && !t.dirty.has(e)) marks.push(t.dirty.set(e))
    }
    if (marks.length) await Promise.all(marks)
  }
}
