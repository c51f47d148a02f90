/**
 * ReadAhead: a layer that notices a sequential reader and reads the extents
 * ahead of it before they are asked for, several at a time.
 *
 * Why: a reader at queue depth 1 (dd, a buffered loop device; with libfuse 2,
 * before patches/ moved fuse-native to libfuse 3, every O_DIRECT reader) sends
 * its requests one at a time, so it waits for each 128 KiB LevelDB lookup in turn;
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
 * A mirror (lib/fuse's ReadCache) may serve reads of fetched extents above
 * this layer: an extent is published there once fetched, while its fetch
 * still holds the lock, and withdrawn whenever it leaves the cache — before
 * anything may change it, and before its buffer is reused. Reads served there
 * are reported through observe(), so the window keeps moving.
 *
 * Never: serves a read it has not fully cached (that goes below), holds
 * more than WINDOW extents, or publishes the volume's last extent (it may
 * end inside a chunk, and a mirror would serve past the end of the volume).
 */
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE, forEachHeldExtent } from '../layout.js'
import type { ChunkLayer, Write } from './chunk-layer.js'
import type { RangeLock } from './range-lock.js'

/** Extents fetched ahead of a sequential reader. */
export const WINDOW = 4
/** Consecutive sequential reads before fetching ahead. */
const STREAK = 2

/** Sequential streams told apart (a reader interleaved with other I/O, say read-modify-writes). */
const STREAMS = 4

/** Where fetched extents may also be served from; see the header. */
export interface ExtentMirror {
  /** Offers extent `extent`'s data (EXTENT_SIZE bytes); false if it was not taken. */
  publish(extent: number, data: Buffer): boolean
  /** Stops serving extent `extent`; on return nothing reads its buffer any more. */
  withdraw(extent: number): void
}

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
  /** Reads the mirror served. */
  private mirrored = 0
  /** Extents published to the mirror. */
  private readonly published = new Set<number>()

  constructor(
    private readonly lower: ChunkLayer,
    private readonly locks: RangeLock,
    /** The volume's size in chunks (no fetch past the end). */
    private readonly chunks: () => number,
    private readonly mirror?: ExtentMirror,
  ) {}

  get stats(): { hits: number; misses: number; mirrored: number; cached: number } {
    return { hits: this.hits, misses: this.misses, mirrored: this.mirrored, cached: this.cache.size }
  }

  async read(first: number, count: number, into: Buffer): Promise<void> {
    const [firstExtent, lastExtent] = this.follow(first, count)
    if (this.cache.size > 0 && (await this.fromCache(first, count, into, firstExtent, lastExtent))) {
      this.hits++
      return
    }
    this.misses++
    await this.lower.read(first, count, into)
  }

  /** A read of these chunks was served by the mirror: the reader moves on as if it had come here. */
  observe(first: number, count: number): void {
    this.mirrored++
    this.follow(first, count)
  }

  write(first: number, data: Buffer, after?: Promise<void>): Write {
    this.drop(first, data.length / CHUNK_SIZE)
    return this.lower.write(first, data, after)
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

  /**
   * Moves the window for a read of [first, first + count): the stream it
   * continues (its streak grows) or a new one; returns the extents it spans.
   */
  private follow(first: number, count: number): [number, number] {
    // A read may also start in the chunk the last one ended in: the kernel
    // splits an O_DIRECT read from a buffer that is not page-aligned at a
    // byte that is not chunk-aligned.
    const i = this.streams.findIndex((s) => s.next === first || s.next === first + 1)
    const stream = i >= 0 ? this.streams.splice(i, 1)[0]! : { next: first, streak: -1 }
    stream.next = first + count
    stream.streak++
    this.streams.unshift(stream)
    if (this.streams.length > STREAMS) this.streams.pop()
    const firstExtent = Math.floor(first / EXTENT_CHUNKS)
    const lastExtent = Math.floor((first + count - 1) / EXTENT_CHUNKS)
    // Keep only the window in front of a sequential reader: what it has
    // passed, or jumped away from, will not be read again soon.
    if (stream.streak > 0) for (const e of this.cache.keys()) if (e < firstExtent || e > lastExtent + WINDOW) this.evict(e)
    if (stream.streak >= STREAK) this.fetchAhead(lastExtent)
    return [firstExtent, lastExtent]
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
      // Published while the lock still keeps writers out, and only if still
      // cached: an eviction meanwhile has already withdrawn it.
      if (this.mirror && this.cache.get(e) === fetch && start + EXTENT_CHUNKS < this.chunks() && this.mirror.publish(e, buf)) this.published.add(e)
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
    forEachHeldExtent(this.cache, first, count, (e) => this.evict(e))
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
    if (this.published.delete(e)) this.mirror!.withdraw(e)
    void fetch.data.then((buf) => {
      if (buf && this.spare.length <= WINDOW) this.spare.push(buf)
    })
  }
}
