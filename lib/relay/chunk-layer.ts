/**
 * ChunkLayer: the one interface every layer under the volume speaks, as
 * s3backer's block stores and nbdkit's filters do. Addresses are chunk
 * indexes of one volume; buffers hold whole chunks. A layer changes only what
 * it must and passes the rest to the layer it wraps.
 *
 * A write has two outcomes (Write): *accepted* — the layers below hold its
 * space, so it can now fail only by an I/O error, and Volume may answer the
 * host (write-behind) — and *stored*. A layer passes its lower layer's Write
 * up, or makes its own from it: a journal layer (DESIGN.md, "The stack")
 * answers `accepted` only once both its lower layer accepted and its own
 * record is durable, e.g. `{ accepted: Promise.all([lower.accepted,
 * logged]).then(() => {}), stored: lower.stored }`.
 *
 * Rejections: `accepted` rejects only when the write is refused before it
 * was accepted, with the same error as `stored`; whoever makes an `accepted`
 * that can reject marks it handled (acceptance(), writeAfter()), so a caller
 * that waits only for `stored` leaves no unhandled rejection behind.
 */
export interface Write {
  /** Resolves once the write is accepted (its space is held); rejects if it is refused before that. */
  readonly accepted: Promise<void>
  /** Resolves once the write is stored; rejects with its error. The written buffer stays in use until it settles. */
  readonly stored: Promise<void>
}

export interface ChunkLayer {
  /** Fills `into` (count chunks) with the data, zeros where none was written. */
  read(first: number, count: number, into: Buffer): Promise<void>
  /**
   * Writes data.length / CHUNK_SIZE chunks from `first`; see Write. With
   * `after`, the data reaches storage only once it resolves (the journal's
   * write-ahead: its entry synced first); acceptance does not wait for it,
   * and its rejection fails the write as a failed write-back.
   */
  write(first: number, data: Buffer, after?: Promise<void>): Write
  /** Drops chunks [first, first + count): they read as zeros and free their space. */
  discard(first: number, count: number): Promise<void>
  /** Drops every chunk at or past `chunkCount` (a shrink). */
  truncate(chunkCount: number): Promise<void>
  /** Makes every acknowledged write durable. */
  flush(): Promise<void>
  /** Chunks [first, first + count) were read from a copy above this layer (a layer that follows readers learns of it). */
  observe?(first: number, count: number): void
  /** The volume's size is now `bytes` (a grow or a shrink), told under the volume's whole-range lock (issue 13: the journal numbers it). */
  resized?(bytes: number): Promise<void>
}

const ignore = (): void => {}

/** The `accepted` half of a Write, for the layer that decides it. */
export interface Acceptance {
  readonly accepted: Promise<void>
  accept(): void
  /** The write is refused before acceptance (no-op once accepted). */
  refuse(err: unknown): void
}

export function acceptance(): Acceptance {
  let accept!: () => void
  let reject!: (err: unknown) => void
  const accepted = new Promise<void>((resolve, rej) => {
    accept = resolve
    reject = rej
  })
  return {
    accepted,
    accept,
    refuse: (err) => {
      accepted.catch(ignore)
      reject(err)
    },
  }
}

/** A Write that starts once `before` resolves (a layer's own work first, e.g. a dirty mark); refused if `before` fails. */
export function writeAfter(before: Promise<void>, start: () => Write): Write {
  const write = before.then(start)
  const accepted = write.then((w) => w.accepted)
  accepted.catch(ignore)
  return { accepted, stored: write.then((w) => w.stored) }
}
