/**
 * ChunkLayer: the one interface every layer under the volume speaks, as
 * s3backer's block stores and nbdkit's filters do. Addresses are chunk
 * indexes of one volume; buffers hold whole chunks. A layer changes only what
 * it must and passes the rest to the layer it wraps.
 */
export interface ChunkLayer {
  /** Fills `into` (count chunks) with the data, zeros where none was written. */
  read(first: number, count: number, into: Buffer): Promise<void>
  /**
   * Writes data.length / CHUNK_SIZE chunks from `first`. `accepted`, when
   * given, is called once the write has its space (it can then fail only by
   * an I/O error), before the data is stored; `data` stays in use until the
   * returned promise settles.
   */
  write(first: number, data: Buffer, accepted?: () => void): Promise<void>
  /** Drops chunks [first, first + count): they read as zeros and free their space. */
  discard(first: number, count: number): Promise<void>
  /** Drops every chunk at or past `chunkCount` (a shrink). */
  truncate(chunkCount: number): Promise<void>
  /** Makes every acknowledged write durable. */
  flush(): Promise<void>
  /** Chunks [first, first + count) were read from a copy above this layer (a layer that follows readers learns of it). */
  observe?(first: number, count: number): void
}
