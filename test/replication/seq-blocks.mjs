// Numbered 4 KiB blocks for the prefix-consistency test: write number `seq`
// goes to block offsetOf(seq) of the volume and carries its number, its
// offset and a CRC-32, so a reader can tell from an image which write each
// block holds and whether it is torn or misdirected. Shared by the writer
// (seq-writer.mjs) and the checks (prefix-kills.test.ts).
import { crc32 } from 'node:zlib'

export const BLOCK = 4096
const MAGIC = 0x56565253 // 'VVRS'

/** The block write `seq` lands on (spread over the volume, with overwrites). */
export function offsetOf(seq, blocks) {
  return (Math.imul(seq, 2654435761) >>> 0) % blocks
}

export function blockOf(seq, blocks) {
  const b = Buffer.alloc(BLOCK)
  const at = offsetOf(seq, blocks)
  b.writeUInt32BE(MAGIC, 0)
  b.writeUInt32BE(seq, 4)
  b.writeUInt32BE(Math.floor((at * BLOCK) / 2 ** 32), 8)
  b.writeUInt32BE((at * BLOCK) >>> 0, 12)
  for (let i = 20; i < BLOCK; i++) b[i] = (seq * 31 + i) & 0xff
  b.writeUInt32BE(crc32(Buffer.concat([b.subarray(0, 16), b.subarray(20)])), 16)
  return b
}

/** The number of the write block `index` of an image holds (0: never written); throws on a torn or misdirected block. */
export function seqOfBlock(image, index, blocks) {
  const b = image.subarray(index * BLOCK, (index + 1) * BLOCK)
  if (b.every((x) => x === 0)) return 0
  const bad = (why) => new Error(`block ${index}: ${why}`)
  if (b.readUInt32BE(0) !== MAGIC) throw bad('no magic (torn or foreign)')
  if (b.readUInt32BE(16) !== crc32(Buffer.concat([b.subarray(0, 16), b.subarray(20)]))) throw bad('checksum mismatch (torn)')
  const seq = b.readUInt32BE(4)
  const offset = b.readUInt32BE(8) * 2 ** 32 + b.readUInt32BE(12)
  if (offset !== index * BLOCK || offsetOf(seq, blocks) !== index) throw bad(`write ${seq} belongs at block ${offsetOf(seq, blocks)} (misdirected)`)
  return seq
}
