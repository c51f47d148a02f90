/**
 * Builds jbd2 journals in memory, block by block, for the log cases a kernel
 * will not produce on demand: a log that wraps past the end of the journal,
 * an escaped bitmap copy, every tag format, damaged checksums. Real logs
 * (from the kernel, checked against debugfs logdump) are in ext4.test.ts;
 * these only pin down the corners.
 */
import { crc32c, type JournalDevice } from '../../lib/reclaim/jbd2.js'

export const JBD2_MAGIC = 0xc03b3998
export const INCOMPAT = { REVOKE: 0x1, BIT64: 0x2, ASYNC_COMMIT: 0x4, CSUM_V2: 0x8, CSUM_V3: 0x10, FAST_COMMIT: 0x20 }

export type LogEntry =
  | { kind: 'descriptor'; tags: { target: number; data: Buffer }[] }
  | { kind: 'commit' }
  | { kind: 'revoke'; blocks: number[] }

export interface SyntheticJournal extends JournalDevice {
  blocksData: Buffer[]
  /** Journal block each entry (and each data block) landed in, in order. */
  placed: number[]
}

const UUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex')

export function buildJournal(
  opts: { blockSize: number; blocks: number; first: number; start: number; sequence: number; incompat: number; errno?: number },
  log: LogEntry[],
): SyntheticJournal {
  const bs = opts.blockSize
  const blocks = Array.from({ length: opts.blocks }, () => Buffer.alloc(bs))
  const csum = (opts.incompat & (INCOMPAT.CSUM_V2 | INCOMPAT.CSUM_V3)) !== 0
  const v3 = (opts.incompat & INCOMPAT.CSUM_V3) !== 0
  const is64 = (opts.incompat & INCOMPAT.BIT64) !== 0
  const tagBytes = v3 ? 16 : 12 + ((opts.incompat & INCOMPAT.CSUM_V2) !== 0 ? 2 : 0) - (is64 ? 0 : 4)
  const seed = crc32c(0xffffffff, UUID)

  const sb = blocks[0]!
  sb.writeUInt32BE(JBD2_MAGIC, 0)
  sb.writeUInt32BE(4, 4)
  sb.writeUInt32BE(bs, 0x0c)
  sb.writeUInt32BE(opts.blocks, 0x10)
  sb.writeUInt32BE(opts.first, 0x14)
  sb.writeUInt32BE(opts.sequence, 0x18)
  sb.writeUInt32BE(opts.start, 0x1c)
  sb.writeInt32BE(opts.errno ?? 0, 0x20)
  sb.writeUInt32BE(opts.incompat, 0x28)
  UUID.copy(sb, 0x30)
  if (csum) {
    sb[0x50] = 4
    sb.writeUInt32BE(crc32c(0xffffffff, sb.subarray(0, 1024)), 0xfc)
  }

  const placed: number[] = []
  let at = opts.start
  let sequence = opts.sequence
  const next = () => {
    const b = at
    placed.push(b)
    at = at + 1 >= opts.blocks ? opts.first : at + 1
    return blocks[b]!
  }
  const header = (buf: Buffer, type: number) => {
    buf.writeUInt32BE(JBD2_MAGIC, 0)
    buf.writeUInt32BE(type, 4)
    buf.writeUInt32BE(sequence, 8)
  }
  // The checksum tail is still zero when the block's checksum is taken.
  const tail = (buf: Buffer) => {
    if (csum) buf.writeUInt32BE(crc32c(seed, buf), bs - 4)
  }

  for (const entry of log) {
    if (entry.kind === 'descriptor') {
      const d = next()
      header(d, 1)
      let off = 12
      entry.tags.forEach((t, i) => {
        const escaped = t.data.readUInt32BE(0) === JBD2_MAGIC
        const onLog = Buffer.from(t.data)
        if (escaped) onLog.writeUInt32BE(0, 0)
        const flags = (escaped ? 1 : 0) | (i > 0 ? 2 : 0) | (i === entry.tags.length - 1 ? 8 : 0)
        d.writeUInt32BE(t.target % 0x1_0000_0000, off)
        if (is64) d.writeUInt32BE(Math.floor(t.target / 0x1_0000_0000), off + 8)
        const c = crc32c(crc32c(seed, be32(sequence)), onLog)
        if (v3) {
          d.writeUInt32BE(flags, off + 4)
          d.writeUInt32BE(c, off + 12)
        } else {
          d.writeUInt16BE(flags, off + 6)
          if (csum) d.writeUInt16BE(c & 0xffff, off + 4)
        }
        off += tagBytes
        if (i === 0) {
          UUID.copy(d, off)
          off += 16
        }
        onLog.copy(next())
      })
      tail(d)
    } else if (entry.kind === 'commit') {
      const c = next()
      header(c, 2)
      if (csum) c.writeUInt32BE(crc32c(seed, c), 16)
      sequence++
    } else {
      const r = next()
      header(r, 5)
      const width = is64 ? 8 : 4
      entry.blocks.forEach((b, i) => {
        if (is64) r.writeBigUInt64BE(BigInt(b), 16 + i * width)
        else r.writeUInt32BE(b, 16 + i * width)
      })
      r.writeUInt32BE(16 + entry.blocks.length * width, 12)
      tail(r)
    }
  }

  return {
    blocks: opts.blocks,
    blockSize: bs,
    blocksData: blocks,
    placed,
    async read(logical) {
      return Buffer.from(blocks[logical]!)
    },
  }
}

function be32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  return b
}

/** A block of `bs` bytes filled with `fill`, optionally starting with the jbd2 magic. */
export function dataBlock(bs: number, fill: number, magic = false): Buffer {
  const b = Buffer.alloc(bs, fill)
  if (magic) b.writeUInt32BE(JBD2_MAGIC, 0)
  return b
}
