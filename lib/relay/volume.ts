/**
 * Volume: the byte-addressed face of one volume — the top of the relay.
 * Byte ranges become chunk spans here, once: an unaligned head or tail chunk
 * is read, patched and written whole (read-modify-write) under the chunk's
 * exclusive lock, so two partial writes to one chunk never lose each other.
 * Everything below sees whole chunks only.
 *
 * State: the size. Bytes past the size inside the last chunk are kept zero,
 * so growing the volume again shows zeros there.
 *
 * Concurrency: reads lock their chunks shared, writes/discards exclusive,
 * resize locks from the lower of the old and new end to infinity.
 *
 * Write-behind: a write is answered once the layers below have accepted it
 * (its space is allocated), while the data is still on its way into LevelDB
 * — like a disk's write cache, bounded to WRITE_BEHIND bytes. The write keeps
 * its chunks locked until stored, so every later read or write of them sees
 * it; flush (fsync) waits for all of them and reports a failed one (as Linux
 * reports a failed write-back at fsync). Why: the kernel sends a FUSE file's
 * O_DIRECT writes one at a time, so waiting for each LevelDB write made a
 * sequential writer wait ~150 µs per 128 KiB (bench: seq write).
 *
 * Failed write-backs are reported as Linux's errseq_t does: the volume counts
 * them, and each open file description holds an ErrorCursor sampled at open.
 * A drain or flush with a cursor reports the latest failure once to that
 * description if one happened since it last looked — so a reader's close
 * (blkid, md5sum) never takes the error away from the writer's fsync.
 */
import { BufferPool } from '../buffer-pool.js'
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE } from '../layout.js'
import type { ChunkLayer } from './chunk-layer.js'
import { RangeLock } from './range-lock.js'

const END = Number.MAX_SAFE_INTEGER

/** Bytes of acknowledged writes that may still be on their way to storage. */
export const WRITE_BEHIND = 8 * 1024 * 1024
/** Copies of writes from this size on are made in reused buffers (smaller ones come from Node's own pool). */
const REUSED_COPY_MIN_BYTES = 4096

/** What one open file description has learned of failed write-backs: the count it has seen. */
export interface ErrorCursor {
  seen: number
}

/** A flush's error saying acknowledged writes were lost below (StorageSystem.lossesSince, the map log): counted by writeBackFailed. */
export function isWritesLost(err: unknown): boolean {
  return err instanceof VvfsError && err.details?.reason === 'writes-lost'
}

export class Volume {
  readonly locks: RangeLock
  /** Acknowledged writes still being stored. */
  private readonly behind = new Set<Promise<void>>()
  private behindBytes = 0
  /** Acknowledged writes that failed so far, and the latest of them. */
  private failures = 0
  private lastFailure: unknown = null
  /** The cursor of callers that hold none (in-process users, shutdown). */
  private readonly ownCursor: ErrorCursor = { seen: 0 }
  /** Buffers for the copies of acknowledged writes, reused: a new one per write (a replica's 256 KiB entries) fed V8's external-memory GC trigger (lib/buffer-pool.ts). */
  private readonly copies: BufferPool

  constructor(
    private readonly lower: ChunkLayer,
    private currentSize: number,
    locks?: RangeLock,
    /** Bytes allowed in write-behind; 0 answers every write only once stored. */
    private readonly writeBehind = WRITE_BEHIND,
  ) {
    this.locks = locks ?? new RangeLock()
    this.copies = new BufferPool(REUSED_COPY_MIN_BYTES, writeBehind)
  }

  get size(): number {
    return this.currentSize
  }

  /** Reads up to `length` bytes at `offset` into `into`; short at the end of the volume. */
  async read(offset: number, length: number, into: Buffer): Promise<number> {
    checkRange(offset, length)
    if (offset >= this.currentSize || length === 0) return 0
    const len = Math.min(length, this.currentSize - offset)
    const first = Math.floor(offset / CHUNK_SIZE)
    const end = Math.ceil((offset + len) / CHUNK_SIZE)
    const release = await this.locks.acquire(first, end, 'shared')
    try {
      if (offset % CHUNK_SIZE === 0 && len % CHUNK_SIZE === 0) {
        await this.lower.read(first, end - first, into.subarray(0, len))
      } else {
        const span = Buffer.allocUnsafe((end - first) * CHUNK_SIZE)
        await this.lower.read(first, end - first, span)
        const skip = offset - first * CHUNK_SIZE
        span.copy(into, 0, skip, skip + len)
      }
      return len
    } finally {
      release()
    }
  }

  async write(offset: number, data: Buffer): Promise<number> {
    checkRange(offset, data.length)
    if (data.length === 0) return 0
    if (offset + data.length > this.currentSize) {
      throw new VvfsError('OUT_OF_RANGE', `write of ${data.length} bytes at ${offset} goes past the end of the volume (${this.currentSize} bytes)`)
    }
    const first = Math.floor(offset / CHUNK_SIZE)
    let end = Math.ceil((offset + data.length) / CHUNK_SIZE)
    const release = await this.locks.acquire(first, end, 'exclusive')
    // A shrink queued before this write ran first: what lies past the new end
    // is dropped, as if the write had come first and the shrink cut it (stored
    // there, it would show through the next grow instead of zeros).
    const kept = Math.min(data.length, this.currentSize - offset)
    if (kept <= 0) {
      release()
      return data.length
    }
    const landed = kept < data.length ? data.subarray(0, kept) : data
    end = Math.ceil((offset + kept) / CHUNK_SIZE)
    let chunks: Buffer
    try {
      chunks = await this.wholeChunks(first, end, offset, landed)
    } catch (err) {
      release()
      throw err
    }
    if (this.behindBytes + chunks.length > this.writeBehind) {
      try {
        await this.lower.write(first, chunks).stored
      } finally {
        release()
      }
    } else {
      await this.writeBehindOf(first, chunks, chunks === landed, release)
    }
    return data.length
  }

  /** Stores `chunks` in the background once accepted; the lock is released when stored. */
  private writeBehindOf(first: number, chunks: Buffer, lent: boolean, release: () => void): Promise<void> {
    // The host's buffer is only lent until the write is answered: keep a
    // copy, in a reused buffer.
    const pooled = lent ? this.copies.take(chunks.length) : null
    if (pooled) chunks.copy(pooled)
    const own = pooled ?? chunks
    this.behindBytes += own.length
    const write = this.lower.write(first, own)
    const work: Promise<void> = write.stored
      .then(
        () => undefined,
        // Refused before acceptance: the writer's error; after: a failed write-back.
        (err: unknown) =>
          write.accepted.then(
            () => {
              this.failures++
              this.lastFailure = err
            },
            () => {
              throw err
            },
          ),
      )
      .finally(() => {
        this.behind.delete(stored)
        this.behindBytes -= own.length
        release()
        if (pooled) this.copies.give(pooled)
      })
    // What drain waits for: a refusal before acceptance is the writer's to
    // report, not a later flush's.
    const stored = work.then(
      () => undefined,
      () => undefined,
    )
    this.behind.add(stored)
    return Promise.race([write.accepted, work])
  }

  /** A cursor for a new open file description: it learns of failures from now on. */
  errorCursor(): ErrorCursor {
    return { seen: this.failures }
  }

  /**
   * Waits for the writes answered so far to be stored; throws the latest
   * failure `cursor` has not seen yet (once: the cursor moves past it). Only
   * those writes: a writer that keeps writing must not hold off an fsync of
   * what came before it.
   */
  async drain(cursor: ErrorCursor = this.ownCursor): Promise<void> {
    await Promise.all([...this.behind])
    if (cursor.seen < this.failures) {
      cursor.seen = this.failures
      throw this.lastFailure
    }
  }

  /** Makes [offset, offset + length) read as zeros and frees the whole chunks in it. */
  async discard(offset: number, length: number): Promise<void> {
    checkRange(offset, length)
    const stop = Math.min(offset + length, this.currentSize)
    if (offset >= stop) return
    const first = Math.floor(offset / CHUNK_SIZE)
    const end = Math.ceil(stop / CHUNK_SIZE)
    const release = await this.locks.acquire(first, end, 'exclusive')
    try {
      const wholeFirst = Math.ceil(offset / CHUNK_SIZE)
      const wholeEnd = stop === this.currentSize ? end : Math.floor(stop / CHUNK_SIZE)
      if (wholeFirst < wholeEnd) await this.lower.discard(wholeFirst, wholeEnd - wholeFirst)
      // Partial chunks at either end keep their other bytes: zero only the range.
      if (offset % CHUNK_SIZE !== 0) {
        const headEnd = Math.min(wholeFirst * CHUNK_SIZE, stop)
        await this.zeroWithin(first, offset, headEnd)
      }
      if (wholeEnd * CHUNK_SIZE < stop && wholeEnd >= wholeFirst) {
        await this.zeroWithin(wholeEnd, wholeEnd * CHUNK_SIZE, stop)
      }
    } finally {
      release()
    }
  }

  async resize(newSize: number): Promise<void> {
    const from = Math.floor(Math.min(newSize, this.currentSize) / CHUNK_SIZE)
    const release = await this.locks.acquire(from, END, 'exclusive')
    try {
      if (newSize < this.currentSize) {
        await this.lower.truncate(Math.ceil(newSize / CHUNK_SIZE))
        if (newSize % CHUNK_SIZE !== 0) await this.zeroWithin(Math.floor(newSize / CHUNK_SIZE), newSize, (Math.floor(newSize / CHUNK_SIZE) + 1) * CHUNK_SIZE)
      }
      this.currentSize = newSize
      await this.lower.resized?.(newSize)
    } finally {
      release()
    }
  }

  async flush(cursor?: ErrorCursor): Promise<void> {
    await this.drain(cursor)
    try {
      await this.lower.flush()
    } catch (err) {
      // Counted by writeBackFailed (the layer that found it): reported below, once to each description.
      if (!isWritesLost(err)) throw err
    }
    await this.drain(cursor)
  }

  /**
   * Acknowledged writes found lost below the volume after they were stored
   * (a storage server's machine restarted before a sync covered them: the
   * thin layer's and the map log's errseq). Counted as a failed write-back,
   * so every open description hears it once at its next flush or fsync —
   * whoever's flush (another description's close, a journal trim) met it.
   */
  writeBackFailed(err: unknown): void {
    this.failures++
    this.lastFailure = err
  }

  /** [offset, offset + length) was read from a copy above the relay (lib/fuse's read cache). */
  readServed(offset: number, length: number): void {
    if (length <= 0 || !this.lower.observe) return
    const first = Math.floor(offset / CHUNK_SIZE)
    this.lower.observe(first, Math.ceil((offset + length) / CHUNK_SIZE) - first)
  }

  /** Zeros bytes [from, to) of one chunk, keeping the rest (caller holds the lock). */
  private async zeroWithin(chunk: number, from: number, to: number): Promise<void> {
    const buf = Buffer.allocUnsafe(CHUNK_SIZE)
    await this.lower.read(chunk, 1, buf)
    buf.fill(0, from - chunk * CHUNK_SIZE, to - chunk * CHUNK_SIZE)
    await this.lower.write(chunk, buf).stored
  }

  /** The write as whole chunks: the data itself when aligned, else patched over the old chunks. */
  private async wholeChunks(first: number, end: number, offset: number, data: Buffer): Promise<Buffer> {
    const headPartial = offset % CHUNK_SIZE !== 0
    const tailPartial = (offset + data.length) % CHUNK_SIZE !== 0
    if (!headPartial && !tailPartial) return data
    const span = Buffer.allocUnsafe((end - first) * CHUNK_SIZE)
    const reads: Promise<void>[] = []
    if (headPartial) reads.push(this.lower.read(first, 1, span.subarray(0, CHUNK_SIZE)))
    if (tailPartial && (end - 1 !== first || !headPartial)) {
      reads.push(this.lower.read(end - 1, 1, span.subarray((end - 1 - first) * CHUNK_SIZE)))
    }
    await Promise.all(reads)
    data.copy(span, offset - first * CHUNK_SIZE)
    return span
  }
}

function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new VvfsError('OUT_OF_RANGE', `invalid range: offset ${offset}, length ${length}`)
  }
}
