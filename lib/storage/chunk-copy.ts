/**
 * Copies chunks between storage systems' stores: the data mover of
 * migrations. A chunk missing at the source is deleted at the destination,
 * so the destination becomes an exact copy.
 *
 * `stream` copies in 128 KiB batches (little memory: the `direct` mode);
 * `whole` reads everything first into one buffer and writes one batch (the
 * `memory` mode: fewer, larger LevelDB writes).
 *
 * Runs where it is called: in the migration worker thread (chunk-mover-worker)
 * in the daemon, on the main thread in in-process tests. Never decides what
 * to copy: the caller holds the locks and owns both allocations.
 */
import type { ClassicLevel } from 'classic-level'
import { CHUNK_SIZE, isZeroChunk } from '../layout.js'
import { dataKey } from './storage-system.js'

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
  const buf = Buffer.allocUnsafe(step * CHUNK_SIZE)
  let bytes = 0
  for (let i = 0; i < fromPcas.length; i += step) {
    const src = fromPcas.slice(i, i + step)
    // Into one buffer (patches/: classic-level); a missing chunk reads as zeros,
    // and a zero chunk is not stored, so zeros become deletions.
    await from.getMany(src.map(dataKey), { into: buf, stride: CHUNK_SIZE } as never)
    const ops = src.map((_, j) => {
      const key = dataKey(toPcas[i + j]!)
      if (isZeroChunk(buf, j * CHUNK_SIZE)) return { type: 'del' as const, key }
      bytes += CHUNK_SIZE
      return { type: 'put' as const, key, value: buf.subarray(j * CHUNK_SIZE, (j + 1) * CHUNK_SIZE) }
    })
    await to.batch(ops)
  }
  return bytes
}
