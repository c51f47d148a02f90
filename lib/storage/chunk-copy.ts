/**
 * Copies chunks between storage systems' stores: the data mover of
 * migrations. A chunk missing at the source is deleted at the destination,
 * so the destination becomes an exact copy.
 *
 * `stream` copies in 128 KiB batches, reading the next while writing the
 * last (little memory: the `direct` mode);
 * `whole` reads everything first into one buffer and writes one batch (the
 * `memory` mode: fewer, larger LevelDB writes).
 *
 * Runs where it is called: in the migration worker thread (chunk-mover-worker)
 * in the daemon, on the main thread in in-process tests. Never decides what
 * to copy: the caller holds the locks and owns both allocations.
 */
import type { ClassicLevel } from 'classic-level'
import { CHUNK_SIZE, isZeroChunk } from '../layout.js'
import { dataKey, writeChunkRun } from './storage-system.js'

export type CopyStyle = 'stream' | 'whole'

export interface CopyRequest {
  fromSid: number
  fromPcas: number[]
  toSid: number
  toPcas: number[]
  style: CopyStyle
}

const STREAM_BATCH = 32

/** Returns the number of data bytes copied. */
export async function copyChunks(
  from: ClassicLevel<Buffer, Buffer>,
  to: ClassicLevel<Buffer, Buffer>,
  fromPcas: number[],
  toPcas: number[],
  style: CopyStyle,
): Promise<number> {
  if (fromPcas.length !== toPcas.length) throw new Error('copyChunks: source and destination counts differ')
  const step = style === 'whole' ? fromPcas.length : STREAM_BATCH
  // Two buffers: the next batch is read while the last one is written.
  const bufs = [Buffer.allocUnsafe(step * CHUNK_SIZE), Buffer.allocUnsafe(step * CHUNK_SIZE)]
  const read = (i: number, buf: Buffer): Promise<Buffer> =>
    // Into one buffer (patches/: classic-level); a missing chunk reads as zeros.
    from.getMany(fromPcas.slice(i, i + step).map(dataKey), { into: buf, stride: CHUNK_SIZE } as never).then(() => buf)
  let bytes = 0
  let next = read(0, bufs[0]!)
  for (let i = 0, n = 0; i < fromPcas.length; i += step, n++) {
    const buf = await next
    if (i + step < fromPcas.length) next = read(i + step, bufs[(n + 1) % 2]!)
    const count = Math.min(step, fromPcas.length - i)
    // A zero chunk is not stored, so zeros become deletions.
    const present = Buffer.alloc(count)
    for (let j = 0; j < count; j++) {
      if (isZeroChunk(buf, j * CHUNK_SIZE)) continue
      present[j] = 1
      bytes += CHUNK_SIZE
    }
    await writeChunkRun(to, toPcas.slice(i, i + step), buf.subarray(0, count * CHUNK_SIZE), present)
  }
  return bytes
}
