import { describe, expect, it } from 'vitest'
import type { ExtentEntry } from '../../lib/relay/extent-entry.js'
import { decodeExtentRecord, encodeExtentRecord } from '../../lib/relay/key-space.js'

describe('volume map records', () => {
  it('round-trip whole and fragmented extents with their version', () => {
    const whole: ExtentEntry = { kind: 'whole', sid: 3, slot: 123456 }
    const frags: ExtentEntry = { kind: 'fragments', frags: new Map([[0, { sid: 1, pca: 2 ** 40 + 7 }], [255, { sid: 65535, pca: 0 }]]) }
    for (const [seq, entry] of [[1, whole], [2 ** 47, frags]] as const) {
      const back = decodeExtentRecord(encodeExtentRecord(seq, entry))
      expect(back.seq).toBe(seq)
      expect(back.entry).toEqual(entry)
    }
  })

  it('round-trip a release, so a standby learns an extent holds nothing any more', () => {
    expect(decodeExtentRecord(encodeExtentRecord(77, null))).toEqual({ seq: 77, entry: null })
  })

  it('refuse a record whose checksum does not match (any flipped bit)', () => {
    const buf = encodeExtentRecord(9, { kind: 'whole', sid: 1, slot: 2 })
    for (let i = 0; i < buf.length * 8; i++) {
      const bad = Buffer.from(buf)
      bad[i >> 3]! ^= 1 << (i & 7)
      expect(() => decodeExtentRecord(bad)).toThrow(/corrupt/)
    }
  })
})
