/**
 * RangeLock: the per-chunk locks of one volume — the only locks of the data
 * path. Host reads take a range shared, host writes and discards take it
 * exclusive, and the layers below take a whole extent exclusive for their
 * maintenance (releasing an empty extent, promoting fragments, copying an
 * extent for a migration), so host I/O to an extent waits for at most the
 * one copy of that extent.
 *
 * Grants are FIFO among overlapping requests: a request waits for every
 * earlier request it conflicts with, granted or not, so a stream of readers
 * cannot starve a copy. Requests on disjoint ranges never wait for each other.
 *
 * Never: held across a call that itself waits for a lock on the same volume
 * (a layer under a host write must schedule extent work, not await it).
 */

export type LockMode = 'shared' | 'exclusive'

interface Request {
  start: number
  end: number
  exclusive: boolean
  granted: boolean
  grant: () => void
}

export type Release = () => void

export class RangeLock {
  private queue: Request[] = []

  /** Locks chunks [start, end). */
  acquire(start: number, end: number, mode: LockMode): Promise<Release> {
    const req: Request = { start, end, exclusive: mode === 'exclusive', granted: false, grant: () => {} }
    const release: Release = () => this.release(req)
    if (!this.conflictsBefore(req, this.queue.length)) {
      req.granted = true
      this.queue.push(req)
      return Promise.resolve(release)
    }
    this.queue.push(req)
    return new Promise<Release>((resolve) => {
      req.grant = () => resolve(release)
    })
  }

  async with<T>(start: number, end: number, mode: LockMode, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(start, end, mode)
    try {
      return await fn()
    } finally {
      release()
    }
  }

  /** Requests granted or waiting (for tests and stats). */
  get size(): number {
    return this.queue.length
  }

  private release(req: Request): void {
    const i = this.queue.indexOf(req)
    if (i < 0) return
    this.queue.splice(i, 1)
    for (let j = 0; j < this.queue.length; j++) {
      const r = this.queue[j]!
      if (!r.granted && !this.conflictsBefore(r, j)) {
        r.granted = true
        r.grant()
      }
    }
  }

  private conflictsBefore(req: Request, index: number): boolean {
    for (let i = 0; i < index; i++) {
      const other = this.queue[i]!
      if (other.start < req.end && req.start < other.end && (other.exclusive || req.exclusive)) return true
    }
    return false
  }
}
