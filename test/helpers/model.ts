/**
 * The in-memory model of one volume that the model-based tests check the
 * relay against: a byte array of the volume's size, plus the rule that
 * relates allocation to content — every extent holding a non-zero chunk is
 * allocated, a fragmented extent holds exactly its non-zero chunks, a whole
 * extent is released once it holds none.
 */
import { expect } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE, ZERO_CHUNK } from '../../lib/layout.js'
import type { VolumeMap } from '../../lib/relay/volume-map.js'

export class VolumeModel {
  data: Buffer

  constructor(size: number) {
    this.data = Buffer.alloc(size)
  }

  get size(): number {
    return this.data.length
  }

  write(offset: number, buf: Buffer): void {
    if (offset + buf.length > this.data.length) this.resize(offset + buf.length)
    buf.copy(this.data, offset)
  }

  discard(offset: number, length: number): void {
    const end = Math.min(offset + length, this.data.length)
    if (offset < end) this.data.fill(0, offset, end)
  }

  resize(size: number): void {
    const next = Buffer.alloc(size)
    this.data.copy(next, 0, 0, Math.min(size, this.data.length))
    this.data = next
  }

  read(offset: number, length: number): Buffer {
    const end = Math.min(offset + length, this.data.length)
    return offset >= end ? Buffer.alloc(0) : Buffer.from(this.data.subarray(offset, end))
  }

  nonZeroChunks(extent: number): number {
    let n = 0
    for (let c = 0; c < EXTENT_CHUNKS; c++) {
      const at = extent * EXTENT_SIZE + c * CHUNK_SIZE
      if (at >= this.data.length) break
      const chunk = Buffer.alloc(CHUNK_SIZE)
      this.data.copy(chunk, 0, at, Math.min(at + CHUNK_SIZE, this.data.length))
      if (!chunk.equals(ZERO_CHUNK)) n++
    }
    return n
  }

  /** Checks the volume map against the content (call after volume.drain() and thin.settle()). */
  checkAllocation(map: VolumeMap): void {
    const extents = Math.ceil(this.data.length / EXTENT_SIZE)
    let expected = 0
    for (let e = 0; e < extents + 2; e++) {
      const n = e < extents ? this.nonZeroChunks(e) : 0
      const entry = map.get(e)
      if (n === 0) {
        expect(entry, `extent ${e} holds no data but is allocated`).toBeUndefined()
        continue
      }
      expect(entry, `extent ${e} holds data but is not allocated`).toBeDefined()
      if (entry!.kind === 'fragments') {
        expect(entry!.frags.size, `extent ${e}: fragments vs non-zero chunks`).toBe(n)
        expected += n * CHUNK_SIZE
      } else expected += EXTENT_SIZE
    }
    expect(map.allocatedBytes).toBe(expected)
  }
}

export function rng(seed: number) {
  let s = seed >>> 0 || 1
  const next = () => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s / 0x100000000
  }
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  }
}

/** Random write payloads: random bytes, all zeros, or zeros with a few non-zero chunks. */
export function payload(r: ReturnType<typeof rng>, length: number): Buffer {
  const kind = r.next()
  if (kind < 0.2) return Buffer.alloc(length)
  const buf = Buffer.alloc(length)
  if (kind < 0.4) {
    for (let i = 0; i < 3; i++) buf[r.int(0, length - 1)] = r.int(1, 255)
    return buf
  }
  let i = 0
  for (; i + 4 <= length; i += 4) buf.writeUInt32LE((r.next() * 0x100000000) >>> 0, i)
  for (; i < length; i++) buf[i] = r.int(0, 255)
  return buf
}

/** An offset/length pair biased towards chunk and extent boundaries. */
export function range(r: ReturnType<typeof rng>, size: number, maxLen: number): [number, number] {
  const anchors = [CHUNK_SIZE, EXTENT_SIZE]
  let offset: number
  const k = r.next()
  if (k < 0.3) {
    const unit = r.pick(anchors)
    offset = Math.max(0, Math.min(size - 1, Math.floor(r.int(0, size) / unit) * unit + r.int(-3, 3) * (r.next() < 0.5 ? 1 : 512)))
  } else offset = r.int(0, Math.max(0, size - 1))
  const len = r.next() < 0.3 ? r.pick([CHUNK_SIZE, 2 * CHUNK_SIZE, 128 * 1024, EXTENT_SIZE]) : r.int(1, maxLen)
  return [offset, Math.max(1, Math.min(len, size - offset))]
}
