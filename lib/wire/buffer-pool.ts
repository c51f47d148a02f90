/**
 * BufferPool: big buffers kept for reuse, by exact length. Why: on this VM a
 * new buffer of 128 KiB or more costs its page faults every time (glibc gives
 * such sizes back to the kernel when freed): a new 1 MiB buffer filled
 * 1.3–2.6 ms against 0.04–0.24 ms for a reused one. Used for request bodies
 * a server receives (WireServerOptions.requestBodies) and bodies a client
 * encodes (the remote store's batches).
 *
 * Owns: at most `maxBytes` of idle buffers; takes back only buffers it
 * handed out (a view into a socket's chunk must never be reused).
 *
 * Concurrency: single-threaded (the event loop); a buffer is either idle
 * here or its taker's until given back, once.
 */
export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>()
  private idleBytes = 0
  private readonly ours = new WeakSet<Buffer>()

  /** @param minBytes smaller buffers are not pooled (the allocator's own pool serves them); @param maxBytes idle bytes kept at most. */
  constructor(
    readonly minBytes: number,
    private readonly maxBytes: number,
  ) {}

  /** A buffer of exactly `length` bytes (contents undefined): a reused one when one is idle. */
  take(length: number): Buffer {
    if (length < this.minBytes) return Buffer.allocUnsafe(length)
    const b = this.idle.get(length)?.pop()
    if (b) {
      this.idleBytes -= length
      return b
    }
    const fresh = Buffer.allocUnsafeSlow(length)
    this.ours.add(fresh)
    return fresh
  }

  /** Gives back a buffer from take() that nothing reads or writes any more; anything else is ignored. */
  give(b: Buffer): void {
    if (!this.ours.has(b) || this.idleBytes + b.length > this.maxBytes) return
    let list = this.idle.get(b.length)
    if (!list) this.idle.set(b.length, (list = []))
    list.push(b)
    this.idleBytes += b.length
  }

  /** Idle bytes held (for tests). */
  get held(): number {
    return this.idleBytes
  }
}
