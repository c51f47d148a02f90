/**
 * ReadAhead: a layer that notices a sequential reader and reads the extents
 * ahead of it before they are asked for, several at a time.
 *
 * Why: a FUSE file served through libfuse 2 gets O_DIRECT requests one at a
 * time, so a sequential reader waits for each 128 KiB LevelDB lookup in turn;
 * fetching the next extents in parallel while the kernel hands over the
 * current one hides that wait (bench/README: seq read).
 *
 * State: up to WINDOW whole extents (1 MiB each) of this volume, fetched or
 * being fetched. A fetch holds the extent's chunks locked shared in the
 * volume's RangeLock, and every write, discard or truncate that reaches this
 * layer holds its chunks exclusive and drops the extents it touches — so a
 * cached extent is never older than the last write to it.
 *
 * A host read waits for a fetch only once the fetch holds its lock: a fetch
 * still queued may be queued behind a write that waits for this very read
 * (a deadlock the system tests found); such a read goes below itself.
 *
 * Never: serves a read it has not fully cached (that goes below), or holds
 * more than WINDOW extents.
 */
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../layout.js'
import type { ChunkLayer } from './chunk-layer.js'
import type { RangeLock } from './range-lock.js'

/** Extents fetched ahead of a sequential reader. */
export const WINDOW = 4
/** Consecutive sequential reads before fetching ahead. */
const STREAK = 2

/** Sequential streams told apart (a reader interleaved with other I/O, say read-modify-writes). */
const STREAMS = 4

interface Fetch {
  /** Set once the fetch holds its lock (from then on it waits for nothing). */
  locked: boolean
  data: Promise<Buffer | null>
}

export class ReadAhead implements ChunkLayer {
  private readonly cache = new Map<number, Fetch>()
  /**
   * Extent buffers to reuse: a fresh 1 MiB buffer per fetched extent made
   * V8's garbage collector 16% of the main thread in a sequential read.
   */
  private readonly spare: Buffer[] = []
  /** Where each recent stream's next read would start, and how many reads it has made in a row. */
  private streams: { next: number; streak: number }[] = []
  private hits = 0
  private misses = 0

  constructor(
    private readonly lower: ChunkLayer,
    private readonly locks: RangeLock,
    /** The volume's size in chunks (no fetch past the end). */
    private readonly chunks: () => number,
  ) {}

  get stats(): { hits: number; misses: number; cached: number } {
    return { hits: this.hits, misses: this.misses, cached: this.cache.size }
  }

  async read(first: number, count: number, into: Buffer): Promise<void> {
    const stream = this.follow(first, count)
    const sequential = stream.streak > 0
    const firstExtent = Math.floor(first / EXTENT_CHUNKS)
    const lastExtent = Math.floor((first + count - 1) / EXTENT_CHUNKS)
    // Keep only the window in front of a sequential reader: what it has
    // passed, or jumped away from, will not be read again soon.
    if (sequential) for (const e of this.cache.keys()) if (e < firstExtent || e > lastExtent + WINDOW) this.evict(e)
    if (stream.streak >= STREAK) this.fetchAhead(lastExtent)
    if (this.cache.size > 0 && (await this.fromCache(first, count, into, firstExtent, lastExtent))) {
      this.hits++
      return
    }
    this.misses++
    await this.lower.read(first, count, into)
  }

  write(first: number, data: Buffer, accepted?: () => void): Promise<void> {
    this.drop(first, data.length / CHUNK_SIZE)
    return this.lower.write(first, data, accepted)
  }

  discard(first: number, count: number): Promise<void> {
    this.drop(first, count)
    return this.lower.discard(first, count)
  }

  truncate(chunkCount: number): Promise<void> {
    for (const e of this.cache.keys()) this.evict(e)
    this.streams = []
    return this.lower.truncate(chunkCount)
  }

  /** The stream this read continues (its streak grows), or a new one (streak 0). */
  private follow(first: number, count: number): { next: number; streak: number } {
    const i = this.streams.findIndex((s) => s.next === first)
    const stream = i >= 0 ? this.streams.splice(i, 1)[0]! : { next: first, streak: -1 }
    stream.next = first + count
    stream.streak++
    this.streams.unshift(stream)
    if (this.streams.length > STREAMS) this.streams.pop()
    return stream
  }

  flush(): Promise<void> {
    return this.lower.flush()
  }

  private async fromCache(first: number, count: number, into: Buffer, firstExtent: number, lastExtent: number): Promise<boolean> {
    for (let e = firstExtent; e <= lastExtent; e++) if (!this.cache.get(e)?.locked) return false
    for (let e = firstExtent; e <= lastExtent; e++) {
      const fetch = this.cache.get(e)
      const buf = fetch?.locked ? await fetch.data : null
      if (!buf) return false
      const from = Math.max(first, e * EXTENT_CHUNKS)
      const to = Math.min(first + count, (e + 1) * EXTENT_CHUNKS)
      buf.copy(into, (from - first) * CHUNK_SIZE, (from - e * EXTENT_CHUNKS) * CHUNK_SIZE, (to - e * EXTENT_CHUNKS) * CHUNK_SIZE)
    }
    return true
  }

  private fetchAhead(current: number): void {
    const end = Math.ceil(this.chunks() / EXTENT_CHUNKS)
    for (let e = current; e <= current + WINDOW && e < end; e++) {
      if (this.cache.has(e)) continue
      if (this.cache.size >= WINDOW + 1) break
      const fetch: Fetch = { locked: false, data: Promise.resolve(null) }
      fetch.data = this.fetch(e, fetch)
      this.cache.set(e, fetch)
    }
  }

  private async fetch(e: number, fetch: Fetch): Promise<Buffer | null> {
    const start = e * EXTENT_CHUNKS
    const count = Math.min(EXTENT_CHUNKS, this.chunks() - start)
    if (count <= 0) return null
    const release = await this.locks.acquire(start, start + count, 'shared')
    fetch.locked = true
    try {
      const buf = this.spare.pop() ?? Buffer.allocUnsafe(EXTENT_SIZE)
      try {
        await this.lower.read(start, count, buf)
      } catch (err) {
        this.spare.push(buf)
        throw err
      }
      // Past the end of the volume is zeros (it stays so if the volume grows).
      if (count < EXTENT_CHUNKS) buf.fill(0, count * CHUNK_SIZE)
      return buf
    } catch {
      // A failed fetch only means the reader goes below itself.
      if (this.cache.get(e) === fetch) this.cache.delete(e)
      return null
    } finally {
      release()
    }
  }

  private drop(first: number, count: number): void {
    if (this.cache.size === 0) return
    const last = Math.floor((first + count - 1) / EXTENT_CHUNKS)
    for (let e = Math.floor(first / EXTENT_CHUNKS); e <= last; e++) this.evict(e)
  }

  /**
   * Forgets a cached extent; its buffer is reused once its fetch is done. A
   * reader already waiting for that fetch copies out first: its reaction to
   * the fetch was registered before this one, and it copies synchronously.
   */
  private evict(e: number): void {
    const fetch = this.cache.get(e)
    if (!fetch) return
    this.cache.delete(e)
    void fetch.data.then((buf) => {
      if (buf && this.spare.length <= WINDOW) this.spare.push(buf)
    })
  }
}
