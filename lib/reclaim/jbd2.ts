/**
 * jbd2: reads the log of an ext4 journal without replaying it, to learn which
 * file-system blocks the committed-but-not-checkpointed transactions will
 * still overwrite, and the logged copies of the blocks the caller asks for.
 *
 * Owns: the jbd2 on-disk format (big-endian, unlike ext4) and crc32c, which
 * ext4 shares (this module is the leaf, so the checksum lives here).
 *
 * Never: writes or replays anything, and never returns a log it could not
 * walk with certainty — a block that claims to belong to the log but fails
 * its checksum is an error, not the end of the log. Stopping early would
 * under-report blocks in use, which is the one mistake reclaim cannot undo;
 * going on too long only over-reports them. That is why the v1
 * (journal_checksum without metadata_csum) whole-transaction crc32 is not
 * verified: where it fails jbd2 replays less than we count, never more.
 */
import { VvfsError } from '../errors.js'

const JBD2_MAGIC = 0xc03b3998

const BLOCKTYPE_DESCRIPTOR = 1
const BLOCKTYPE_COMMIT = 2
const BLOCKTYPE_SUPERBLOCK_V1 = 3
const BLOCKTYPE_SUPERBLOCK_V2 = 4
const BLOCKTYPE_REVOKE = 5

const COMPAT_CHECKSUM = 0x1
const KNOWN_COMPAT = COMPAT_CHECKSUM

const INCOMPAT_REVOKE = 0x1
const INCOMPAT_64BIT = 0x2
const INCOMPAT_ASYNC_COMMIT = 0x4
const INCOMPAT_CSUM_V2 = 0x8
const INCOMPAT_CSUM_V3 = 0x10
const INCOMPAT_FAST_COMMIT = 0x20
const KNOWN_INCOMPAT = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3 | INCOMPAT_FAST_COMMIT

const TAG_FLAG_ESCAPE = 0x1
const TAG_FLAG_SAME_UUID = 0x2
const TAG_FLAG_LAST_TAG = 0x8

const JBD2_CRC32C_CHKSUM = 4

// ---------------------------------------------------------------------------
// crc32c (Castagnoli), in the "raw" form ext4 and jbd2 use: no final inversion,
// the caller passes the seed (~0 for a fresh checksum, or a running value).

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    t[i] = c >>> 0
  }
  return t
})()

export function crc32c(seed: number, data: Uint8Array, start = 0, end = data.length): number {
  let crc = seed >>> 0
  for (let i = start; i < end; i++) crc = CRC32C_TABLE[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)
  return crc >>> 0
}

function be32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4)
  b.writeUInt32BE(value >>> 0, 0)
  return b
}

/** crc32c over a block with the 4 bytes at `at` taken as zero. */
function crc32cSkipping(seed: number, block: Buffer, at: number): number {
  let crc = crc32c(seed, block, 0, at)
  crc = crc32c(crc, ZERO4)
  return crc32c(crc, block, at + 4, block.length)
}
const ZERO4 = Buffer.alloc(4)

// ---------------------------------------------------------------------------

export interface JournalDevice {
  /** Blocks in the journal file; log blocks are numbered 0..blocks-1. */
  readonly blocks: number
  readonly blockSize: number
  /** Reads one journal block (a logical block of the journal inode). */
  read(logical: number): Promise<Buffer>
}

export interface JournalSuperblock {
  version: 1 | 2
  blockSize: number
  maxLen: number
  first: number
  sequence: number
  /** 0 when the log is empty (everything checkpointed). */
  start: number
  errno: number
  compat: number
  incompat: number
  roCompat: number
  uuid: Buffer
  numFcBlocks: number
}

export interface JournalLog {
  superblock: JournalSuperblock
  /** Transactions in the log that reached their commit block. */
  committedTransactions: number
  /**
   * Every file-system block a log block targets: committed transactions and
   * the unfinished one after them (an unfinished transaction is not replayed,
   * but holding its blocks back costs nothing and survives a misjudged end).
   */
  targets: Set<number>
  /** Logged copies (unescaped), oldest first, of the targets `wantCopy` chose; committed transactions only. */
  copies: Map<number, Buffer[]>
}

export function parseJournalSuperblock(buf: Buffer, fsBlockSize: number): JournalSuperblock {
  if (buf.readUInt32BE(0) !== JBD2_MAGIC) throw new VvfsError('FS_CORRUPT', 'the journal has no jbd2 superblock (bad magic)')
  const type = buf.readUInt32BE(4)
  if (type !== BLOCKTYPE_SUPERBLOCK_V1 && type !== BLOCKTYPE_SUPERBLOCK_V2) {
    throw new VvfsError('FS_CORRUPT', `the journal superblock has block type ${type}`)
  }
  const version = type === BLOCKTYPE_SUPERBLOCK_V1 ? 1 : 2
  // A v1 superblock has no feature fields; whatever bytes are there mean nothing.
  const compat = version === 2 ? buf.readUInt32BE(0x24) : 0
  const incompat = version === 2 ? buf.readUInt32BE(0x28) : 0
  const roCompat = version === 2 ? buf.readUInt32BE(0x2c) : 0
  const sb: JournalSuperblock = {
    version,
    blockSize: buf.readUInt32BE(0x0c),
    maxLen: buf.readUInt32BE(0x10),
    first: buf.readUInt32BE(0x14),
    sequence: buf.readUInt32BE(0x18),
    start: buf.readUInt32BE(0x1c),
    errno: buf.readInt32BE(0x20),
    compat,
    incompat,
    roCompat,
    uuid: Buffer.from(buf.subarray(0x30, 0x40)),
    numFcBlocks: version === 2 ? buf.readUInt32BE(0x54) : 0,
  }
  if (sb.blockSize !== fsBlockSize) {
    throw new VvfsError('FS_CORRUPT', `the journal block size ${sb.blockSize} differs from the file system's ${fsBlockSize}`)
  }
  if (hasCsumV2or3(sb)) {
    if (buf[0x50] !== JBD2_CRC32C_CHKSUM) throw new VvfsError('NOT_SUPPORTED', `journal checksum type ${buf[0x50]} is not crc32c`)
    const stored = buf.readUInt32BE(0xfc)
    const computed = crc32cSkipping(0xffffffff, buf.subarray(0, 1024), 0xfc)
    if (stored !== computed) throw new VvfsError('FS_CORRUPT', 'the journal superblock fails its checksum')
  }
  return sb
}

function hasCsumV2or3(sb: JournalSuperblock): boolean {
  return (sb.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3)) !== 0
}

/** Whether the jbd2 superblock says the log holds transactions not yet written back. */
export function journalIsDirty(sb: JournalSuperblock): boolean {
  return sb.start !== 0
}

interface Tag {
  target: number
  logBlock: number
  flags: number
  checksum: number
}

/**
 * Walks the log from s_start/s_sequence exactly as jbd2's PASS_SCAN does:
 * a block belongs to the log while it carries the jbd2 magic and the expected
 * sequence; a transaction counts once its commit block is found.
 */
export async function readJournalLog(
  dev: JournalDevice,
  opts: { fsBlockSize: number; fsBlocks: number; wantCopy: (target: number) => boolean },
): Promise<JournalLog> {
  const sb = parseJournalSuperblock(await dev.read(0), opts.fsBlockSize)
  const log: JournalLog = { superblock: sb, committedTransactions: 0, targets: new Set(), copies: new Map() }
  if (sb.maxLen > dev.blocks || sb.first < 1 || sb.first >= sb.maxLen) {
    throw new VvfsError('FS_CORRUPT', `journal geometry is impossible (first ${sb.first}, maxlen ${sb.maxLen}, file ${dev.blocks} blocks)`)
  }
  if (sb.errno !== 0) {
    // The journal was aborted: the kernel flags the file system as having
    // errors on the next mount and e2fsck must look at it first.
    throw new VvfsError('FS_CORRUPT', `the journal records error ${sb.errno}; run e2fsck first`)
  }
  if (!journalIsDirty(sb)) return log

  if ((sb.incompat & ~KNOWN_INCOMPAT) !== 0 || (sb.compat & ~KNOWN_COMPAT) !== 0) {
    throw new VvfsError('NOT_SUPPORTED', `the journal has unknown features (compat 0x${sb.compat.toString(16)}, incompat 0x${sb.incompat.toString(16)}) and needs recovery`)
  }
  if (sb.incompat & INCOMPAT_FAST_COMMIT) {
    // Fast-commit replay allocates and frees blocks from logical records;
    // working that out here would be a second implementation of ext4.
    throw new VvfsError('NOT_SUPPORTED', 'the journal uses fast commits and needs recovery; mount or e2fsck the file system first')
  }
  if (sb.incompat & INCOMPAT_ASYNC_COMMIT) {
    // With async commit a commit block can precede its data, and only the v1
    // checksum tells the two apart; we do not verify v1 checksums.
    throw new VvfsError('NOT_SUPPORTED', 'the journal uses async commit and needs recovery; mount or e2fsck the file system first')
  }
  if (sb.start < sb.first || sb.start >= sb.maxLen) {
    throw new VvfsError('FS_CORRUPT', `the journal's log start ${sb.start} is outside [${sb.first}, ${sb.maxLen})`)
  }

  const csum = hasCsumV2or3(sb)
  const csumV3 = (sb.incompat & INCOMPAT_CSUM_V3) !== 0
  const is64 = (sb.incompat & INCOMPAT_64BIT) !== 0
  const tailSize = csum ? 4 : 0
  const bs = sb.blockSize
  // journal_tag_bytes(): the v2 size quirk (+2 on a 12-byte tag) is the format.
  const tagBytes = csumV3 ? 16 : 12 + ((sb.incompat & INCOMPAT_CSUM_V2) !== 0 ? 2 : 0) - (is64 ? 0 : 4)
  const seed = crc32c(0xffffffff, sb.uuid)
  const wrap = (b: number) => (b >= sb.maxLen ? b - (sb.maxLen - sb.first) : b)

  let block = sb.start
  let sequence = sb.sequence
  let pending: Tag[] = []
  let walked = 0
  for (;;) {
    // Sequence numbers only grow, so a genuine log cannot be longer than the
    // journal; a longer one is a loop in corrupt data.
    if (walked > sb.maxLen) throw new VvfsError('FS_CORRUPT', 'the journal log is longer than the journal')
    const buf = await dev.read(block)
    if (buf.readUInt32BE(0) !== JBD2_MAGIC || buf.readUInt32BE(8) !== sequence) break
    const type = buf.readUInt32BE(4)
    if (type === BLOCKTYPE_DESCRIPTOR) {
      if (csum && buf.readUInt32BE(bs - 4) !== crc32cSkipping(seed, buf, bs - 4)) {
        throw new VvfsError('FS_CORRUPT', `journal descriptor block ${block} (transaction ${sequence}) fails its checksum`)
      }
      const tags = parseTags(buf, { tagBytes, tailSize, is64, csumV3, csum })
      let next = wrap(block + 1)
      for (const t of tags) {
        pending.push({ ...t, logBlock: next })
        next = wrap(next + 1)
      }
      walked += 1 + tags.length
      block = next
      continue
    }
    if (type === BLOCKTYPE_COMMIT) {
      if (csum && buf.readUInt32BE(16) !== crc32cSkipping(seed, buf, 16)) {
        // jbd2 treats a commit block that fails its checksum as the end of
        // the log: the transaction did not commit.
        break
      }
      for (const t of pending) {
        if (t.target >= opts.fsBlocks) {
          throw new VvfsError('FS_CORRUPT', `journal transaction ${sequence} logs block ${t.target}, beyond the file system`)
        }
        log.targets.add(t.target)
        const want = opts.wantCopy(t.target)
        if (!want && !csum) continue
        const data = await dev.read(t.logBlock)
        if (csum) {
          const c = crc32c(crc32c(seed, be32(sequence)), data)
          if ((csumV3 ? c : c & 0xffff) !== t.checksum) {
            // jbd2 would skip this block and fail the recovery.
            throw new VvfsError('FS_CORRUPT', `journal block ${t.logBlock} (for block ${t.target}, transaction ${sequence}) fails its checksum; run e2fsck first`)
          }
        }
        if (!want) continue
        const copy = Buffer.from(data)
        if (t.flags & TAG_FLAG_ESCAPE) copy.writeUInt32BE(JBD2_MAGIC, 0)
        const list = log.copies.get(t.target)
        if (list) list.push(copy)
        else log.copies.set(t.target, [copy])
      }
      pending = []
      log.committedTransactions++
      sequence = (sequence + 1) >>> 0
      block = wrap(block + 1)
      walked++
      continue
    }
    if (type === BLOCKTYPE_REVOKE) {
      // Revocations only stop older copies from being replayed; the blocks
      // they name stay held back here, which is the conservative side.
      if (csum && buf.readUInt32BE(bs - 4) !== crc32cSkipping(seed, buf, bs - 4)) {
        throw new VvfsError('FS_CORRUPT', `journal revoke block ${block} (transaction ${sequence}) fails its checksum`)
      }
      const count = buf.readUInt32BE(12)
      if (count < 16 || count > bs - tailSize) throw new VvfsError('FS_CORRUPT', `journal revoke block ${block} has a bad record count ${count}`)
      block = wrap(block + 1)
      walked++
      continue
    }
    // jbd2 ends the scan at an unknown block type with the right magic and
    // sequence; so do we (nothing after it is replayed).
    break
  }
  // The unfinished transaction: not replayed, but its in-range targets are
  // held back anyway (see JournalLog.targets).
  for (const t of pending) if (t.target < opts.fsBlocks) log.targets.add(t.target)
  return log
}

function parseTags(
  buf: Buffer,
  f: { tagBytes: number; tailSize: number; is64: boolean; csumV3: boolean; csum: boolean },
): Omit<Tag, 'logBlock'>[] {
  const tags: Omit<Tag, 'logBlock'>[] = []
  const end = buf.length - f.tailSize
  let off = 12
  while (off + f.tagBytes <= end) {
    const lo = buf.readUInt32BE(off)
    // t_flags is a be16 at offset 6 in both tag layouts (in tag3 it is the
    // low half of a be32 at offset 4).
    const flags = buf.readUInt16BE(off + 6)
    const hi = f.is64 ? buf.readUInt32BE(off + 8) : 0
    const checksum = f.csumV3 ? buf.readUInt32BE(off + 12) : f.csum ? buf.readUInt16BE(off + 4) : 0
    tags.push({ target: hi * 0x1_0000_0000 + lo, flags, checksum })
    off += f.tagBytes
    if (!(flags & TAG_FLAG_SAME_UUID)) off += 16
    if (flags & TAG_FLAG_LAST_TAG) break
  }
  return tags
}
