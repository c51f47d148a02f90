/**
 * CopyBitmap: one bit per extent of one volume in one job — the per-unit
 * transfer progress of claim 4 ("copy") or the extents written since their
 * switch ("dirty", for rollback). Persisted in the MapStore in pages of 4096
 * bits, each a versioned, checksummed record, written as the bits change:
 * a job resumes after kill -9 from its bitmap without recopying what is done.
 */
import { crc32 } from 'node:zlib'
import { VvfsError } from '../errors.js'
import type { MapStore } from '../relay/map-store.js'

const PAGE_BITS = 4096
const PAGE_BYTES = PAGE_BITS / 8
const FORMAT = 1

export type BitmapKind = 'copy' | 'dirty'
const PREFIX: Record<BitmapKind, number> = { copy: 0x62 /* b */, dirty: 0x64 /* d */ }

export function bitmapPrefix(kind: BitmapKind, jobNo: number): Buffer {
  const key = Buffer.alloc(5)
  key[0] = PREFIX[kind]
  key.writeUInt32BE(jobNo, 1)
  return key
}

function pageKey(kind: BitmapKind, jobNo: number, volNo: number, phase: number, page: number): Buffer {
  const key = Buffer.alloc(14)
  key[0] = PREFIX[kind]
  key.writeUInt32BE(jobNo, 1)
  key.writeUInt32BE(volNo, 5)
  key[9] = phase
  key.writeUInt32BE(page, 10)
  return key
}

export class CopyBitmap {
  private readonly pages = new Map<number, Buffer>()
  private ones = 0

  private constructor(
    private readonly maps: MapStore,
    readonly kind: BitmapKind,
    readonly jobNo: number,
    readonly volNo: number,
    readonly phase: number,
  ) {}

  static async load(maps: MapStore, kind: BitmapKind, jobNo: number, volNo: number, phase = 0): Promise<CopyBitmap> {
    const bm = new CopyBitmap(maps, kind, jobNo, volNo, phase)
    const prefix = pageKey(kind, jobNo, volNo, phase, 0).subarray(0, 10)
    for await (const [key, value] of maps.scan(prefix)) {
      const end = value.length - 4
      if (value.length !== 1 + 6 + PAGE_BYTES + 4 || value[0] !== FORMAT || crc32(value.subarray(0, end)) !== value.readUInt32BE(end)) {
        throw new VvfsError('STATE_CORRUPT', `${kind} bitmap page of job ${jobNo} is corrupt`)
      }
      maps.noteSeq(value.readUIntBE(1, 6))
      const bits = Buffer.from(value.subarray(7, 7 + PAGE_BYTES))
      bm.pages.set(key.readUInt32BE(10), bits)
      for (const byte of bits) bm.ones += popcount(byte)
    }
    return bm
  }

  has(index: number): boolean {
    const page = this.pages.get(Math.floor(index / PAGE_BITS))
    if (!page) return false
    const bit = index % PAGE_BITS
    return (page[bit >> 3]! & (1 << (bit & 7))) !== 0
  }

  get count(): number {
    return this.ones
  }

  /** Sets the bit and resolves once its page is written in the MapStore. */
  set(index: number): Promise<void> {
    if (this.has(index)) return Promise.resolve()
    return this.maps.putMany([this.mark(index)])
  }

  /** Sets the bit and returns its page's record write, for a batch of the caller's (a migration's switch). */
  mark(index: number): { key: Buffer; produce: () => Buffer } {
    const p = Math.floor(index / PAGE_BITS)
    let page = this.pages.get(p)
    if (!page) this.pages.set(p, (page = Buffer.alloc(PAGE_BYTES)))
    if (!this.has(index)) {
      const bit = index % PAGE_BITS
      page[bit >> 3]! |= 1 << (bit & 7)
      this.ones++
    }
    return { key: pageKey(this.kind, this.jobNo, this.volNo, this.phase, p), produce: () => this.encode(p) }
  }

  /** Removes every page (the job is over). */
  async remove(): Promise<void> {
    const keys = [...this.pages.keys()].map((p) => pageKey(this.kind, this.jobNo, this.volNo, this.phase, p))
    this.pages.clear()
    this.ones = 0
    await Promise.all(keys.map((k) => this.maps.put(k, () => null)))
  }

  private encode(p: number): Buffer {
    const page = this.pages.get(p)!
    const buf = Buffer.alloc(1 + 6 + PAGE_BYTES + 4)
    buf[0] = FORMAT
    buf.writeUIntBE(this.maps.nextSeq(), 1, 6)
    page.copy(buf, 7)
    buf.writeUInt32BE(crc32(buf.subarray(0, 7 + PAGE_BYTES)), 7 + PAGE_BYTES)
    return buf
  }
}

function popcount(b: number): number {
  let n = 0
  for (; b; b &= b - 1) n++
  return n
}
