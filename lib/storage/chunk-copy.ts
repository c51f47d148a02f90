/**
 * Copies chunks between two ChunkStores: the data mover of migrations. A
 * chunk missing at the source is deleted at the destination, so the
 * destination becomes an exact copy.
 *
 * `stream` copies in 128 KiB batches, reading the next while writing the
 * last (little memory: the `direct` mode);
 * `whole` reads everything first into one buffer and writes one batch (the
 * `memory` mode: fewer, larger store writes).
 *
 * Each batch is read into one buffer (readRun for a run of consecutive
 * source chunks, the usual case; readMany for scattered fragments) and
 * written as views of that buffer, zero chunks as deletions — which the
 * LevelDB store turns into one batchChunks (patches/: classic-level), as
 * fast as writing the three buffers by hand.
 *
 * Runs where it is called: in the migration worker thread (chunk-mover-worker)
 * over two LevelDB stores it opened by path, or on the main thread over any
 * two stores (chunk-mover.ts). Never decides what to copy: the caller holds
 * the locks and owns both allocations. Writes are logged and not synced:
 * the caller reports them to the destination (wroteElsewhere) and syncs it
 * before any record points at the copy.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE, isZeroChunk } from '../layout.js'
import type { ChunkStore, ChunkWrite } from './chunk-store.js'

export type CopyStyle = 'stream' | 'whole'

export interface CopyRequest {
  fromSid: number
  fromPcas: number[]
  toSid: number
  toPcas: number[]
  style: CopyStyle
}

const STREAM_BATCH = 32

/** Whether `pcas` from `i` for `n` are consecutive addresses. */
function consecutive(pcas: number[], i: number, n: number): boolean {
  for (let j = 1; j < n; j++) if (pcas[i + j] !== pcas[i]! + j) return false
  return true
}

/** Reads source chunks [i, i + n) of `pcas` into `buf` (zeros where none is stored). */
async function readBatch(from: ChunkStore, pcas: number[], i: number, n: number, buf: Buffer): Promise<Buffer> {
  if (consecutive(pcas, i, n)) {
    await from.readRun(pcas[i]!, n, buf)
    return buf
  }
  const got = await from.readMany(pcas.slice(i, i + n))
  for (let j = 0; j < n; j++) {
    const v = got[j]
    if (v === undefined) buf.fill(0, j * CHUNK_SIZE, (j + 1) * CHUNK_SIZE)
    else v.copy(buf, j * CHUNK_SIZE)
  }
  return buf
}

/** Returns the number of data bytes copied. */
export async function copyChunks(from: ChunkStore, to: ChunkStore, fromPcas: number[], toPcas: number[], style: CopyStyle): Promise<number> {
  if (fromPcas.length !== toPcas.length) throw new VvfsError('INVALID_ARGUMENT', 'copyChunks: source and destination counts differ')
  if (fromPcas.length === 0) return 0
  const step = style === 'whole' ? fromPcas.length : STREAM_BATCH
  // Two buffers: the next batch is read while the last one is written.
  const bufs = [Buffer.allocUnsafe(step * CHUNK_SIZE), Buffer.allocUnsafe(step * CHUNK_SIZE)]
  const read = (i: number, buf: Buffer) => readBatch(from, fromPcas, i, Math.min(step, fromPcas.length - i), buf)
  let bytes = 0
  let next = read(0, bufs[0]!)
  try {
    for (let i = 0, n = 0; i < fromPcas.length; i += step, n++) {
      const buf = await next
      if (i + step < fromPcas.length) next = read(i + step, bufs[(n + 1) % 2]!)
      const count = Math.min(step, fromPcas.length - i)
      // A zero chunk is not stored, so zeros become deletions.
      const writes: ChunkWrite[] = new Array(count)
      for (let j = 0; j < count; j++) {
        const zero = isZeroChunk(buf, j * CHUNK_SIZE)
        writes[j] = { pca: toPcas[i + j]!, data: zero ? null : buf.subarray(j * CHUNK_SIZE, (j + 1) * CHUNK_SIZE) }
        if (!zero) bytes += CHUNK_SIZE
      }
      await to.apply({ writes })
    }
  } finally {
    // A failed write leaves the next read running: its failure is not news.
    next.catch(() => {})
  }
  return bytes
}
