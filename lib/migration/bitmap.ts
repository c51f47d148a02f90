/**
 * CopyBitmap: one bit per extent of one volume in one job — the per-unit
 * transfer progress of claim 4 ("copy") or the extents written since their
 * switch ("dirty", for rollback). Persisted in the MapStore in pages of 4096
 * bits, each a versioned, checksummed record, written as the bits change:
 * a job resumes after kill -9 from its bitmap without recopying what is done.
 */
import {
  bitmapPageKey as pageKey,
  bitmapPrefix,
  decodeBitmapPage,
  encodeBitmapPage,
  PAGE_BITS,
  PAGE_BYTES,
  parseBitmapPageKey,
  type BitmapKind,
} from '../relay/key-space.js'
import type { MapPut, MapStore } from '../relay/map-store.js'

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
    for await (const [key, value] of maps.scan(bitmapPrefix(kind, jobNo, volNo, phase))) {
      const { seq, bits } = decodeBitmapPage(value, `${kind} bitmap page of job ${jobNo}`)
      maps.noteSeq(seq)
      bm.pages.set(parseBitmapPageKey(key).page, bits)
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
  mark(index: number): MapPut {
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
    return encodeBitmapPage(this.maps.nextSeq(), this.pages.get(p)!)
  }
}

function popcount(b: number): number {
  let n = 0
  for (; b; b &= b - 1) n++
  return n
}
