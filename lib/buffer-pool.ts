/**
 * BufferPool: big buffers kept for reuse, by size class. Why, twice over:
 *   - on this VM a new buffer of 128 KiB or more costs its page faults every
 *     time (glibc gives such sizes back to the kernel when freed): a new
 *     1 MiB buffer filled 1.3–2.6 ms against 0.04–0.24 ms for a reused one;
 *   - every new ArrayBuffer counts towards V8's external-memory trigger,
 *     which starts a full mark-compact every 64 MiB allocated: replicating
 *     1 MiB sequential writes ran one every ~50 ms on both daemons, 23 % of
 *     the primary's CPU and 35 % of the secondary's (perf, bench/replication.ts
 *     end to end, 2026-12-05).
 * Used for request bodies a server receives (WireServerOptions.requestBodies),
 * bodies a client encodes (the remote store's batches) and a volume's
 * write-behind copies.
 *
 * Size classes: a request is served by a buffer of its length rounded up to
 * a multiple of an eighth of its power of two (at most 12.5 % more), given out as a
 * view of exactly the length asked for; multiples of 64 KiB up to 1 MiB are
 * classes of their own. So messages of varying lengths reuse each other's
 * buffers.
 *
 * Owns: at most `maxBytes` of idle buffers (a buffer given back makes room
 * by dropping idle ones of other classes); takes back only views it handed
 * out (a view into a socket's chunk must never be reused).
 *
 * Concurrency: single-threaded (the event loop); a buffer is either idle
 * here or its taker's until given back, once.
 */
export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>()
  private idleBytes = 0
  /** Each view handed out → the whole class-sized buffer behind it. */
  private readonly ours = new WeakMap<Buffer, Buffer>()

  /** @param minBytes smaller buffers are not pooled (the allocator's own pool serves them); @param maxBytes idle bytes kept at most. */
  constructor(
    readonly minBytes: number,
    private readonly maxBytes: number,
  ) {}

  /** A buffer of exactly `length` bytes (contents undefined): a reused one when one of its class is idle. */
  take(length: number): Buffer {
    if (length < this.minBytes) return Buffer.allocUnsafe(length)
    const size = sizeClass(length)
    let whole = this.idle.get(size)?.pop()
    if (whole) this.idleBytes -= size
    else whole = Buffer.allocUnsafeSlow(size)
    const view = whole.subarray(0, length)
    this.ours.set(view, whole)
    return view
  }

  /** Gives back a buffer from take() that nothing reads or writes any more; anything else is ignored. */
  give(b: Buffer): void {
    const whole = this.ours.get(b)
    if (!whole) return
    this.ours.delete(b)
    if (whole.length > this.maxBytes) return
    // Room from idle buffers of other classes, the oldest class first: a pool left full of one size (a burst of
    // 4 KiB writes) would otherwise refuse every other size for good, and each of those would be a new buffer.
    for (const [size, list] of this.idle) {
      if (this.idleBytes + whole.length <= this.maxBytes) break
      if (size === whole.length) continue
      while (list.length > 0 && this.idleBytes + whole.length > this.maxBytes) {
        list.pop()
        this.idleBytes -= size
      }
      if (list.length === 0) this.idle.delete(size)
    }
    if (this.idleBytes + whole.length > this.maxBytes) return
    let list = this.idle.get(whole.length)
    if (!list) this.idle.set(whole.length, (list = []))
    list.push(whole)
    this.idleBytes += whole.length
  }

  /** Idle bytes held (for tests). */
  get held(): number {
    return this.idleBytes
  }
}

/** The class of a buffer of `length` bytes: rounded up to an eighth of its power of two. */
export function sizeClass(length: number): number {
  if (length <= 8) return length
  const step = 2 ** (Math.floor(Math.log2(length)) - 3)
  return Math.ceil(length / step) * step
}
