/**
 * ext4 free space: which byte ranges of a device the ext2/3/4 file system on
 * it does not use. `vvfs volume reclaim` releases the storage behind exactly
 * these ranges, so releasing a block ext4 still uses destroys user data:
 * every answer here errs towards "in use". A block is reported free only
 * when its group's block bitmap says so, every logged copy of that bitmap in
 * a journal not yet written back says so, no logged block targets it, and it
 * is not fixed metadata (superblocks, descriptors, bitmaps, inode tables,
 * the journal, the MMP block).
 *
 * Owns: the ext2/3/4 on-disk format (little-endian) as far as allocation
 * goes — superblock, group descriptors (32/64-bit, meta_bg), block bitmaps
 * (flex_bg, BLOCK_UNINIT, sparse_super/sparse_super2 backups), and the
 * journal inode's block map (extents or ext3 indirect blocks). The jbd2 log
 * itself is jbd2.ts.
 *
 * Never: writes to the device, or guesses. An unknown feature, a failed
 * checksum, a descriptor pointing somewhere impossible, a group whose state
 * it cannot vouch for: it throws (NOT_SUPPORTED, FS_CORRUPT) or, for a
 * BLOCK_UNINIT group in doubt, holds the whole group back. It cannot see a
 * file system that is mounted while it reads (the kernel's newest state is
 * in memory): the caller must guarantee nothing writes to the device.
 */
import { VvfsError } from '../errors.js'
import { crc32c, readJournalLog, type JournalDevice } from './jbd2.js'

export interface ByteSource {
  /** Size of the device in bytes. */
  readonly size: number
  /** Reads exactly `length` bytes at `offset` (zeros past the end are fine to return). */
  read(offset: number, length: number): Promise<Buffer>
}

export interface FreeRange {
  offset: number
  length: number
}

export interface Ext4FreeSpace {
  blockSize: number
  blocksCount: number
  /** Free blocks counted from the bitmaps after the journal adjustments below. */
  freeBlocks: number
  /** Byte ranges ext4 marks free, sorted, merged, never overlapping anything in use. */
  freeRanges: FreeRange[]
  /**
   * pendingTransactions: committed transactions not yet written back.
   * blocksHeldByLog: distinct file-system blocks the log still targets; they
   * are never in freeRanges, whatever the bitmaps say.
   */
  journal: { present: boolean; clean: boolean; pendingTransactions: number; blocksHeldByLog: number }
  /** Human-readable label/uuid for messages. */
  uuid: string
  label: string
}

const SUPERBLOCK_OFFSET = 1024
const EXT4_MAGIC = 0xef53

const STATE_VALID = 0x1
const STATE_ERROR = 0x2

const COMPAT_DIR_PREALLOC = 0x1
const COMPAT_IMAGIC_INODES = 0x2
const COMPAT_HAS_JOURNAL = 0x4
const COMPAT_EXT_ATTR = 0x8
const COMPAT_RESIZE_INODE = 0x10
const COMPAT_DIR_INDEX = 0x20
const COMPAT_SPARSE_SUPER2 = 0x200
const COMPAT_FAST_COMMIT = 0x400
const COMPAT_STABLE_INODES = 0x800
const COMPAT_ORPHAN_FILE = 0x1000
// A compat feature may be ignored by a kernel that mounts the file system,
// but not by us: fast_commit (compat!) changes what replay allocates, and
// lazy_bg / exclude_* (snapshots) change what the bitmaps mean. So only the
// compat features below are known not to affect block allocation.
const KNOWN_COMPAT =
  COMPAT_DIR_PREALLOC |
  COMPAT_IMAGIC_INODES |
  COMPAT_HAS_JOURNAL |
  COMPAT_EXT_ATTR |
  COMPAT_RESIZE_INODE |
  COMPAT_DIR_INDEX |
  COMPAT_SPARSE_SUPER2 |
  COMPAT_FAST_COMMIT |
  COMPAT_STABLE_INODES |
  COMPAT_ORPHAN_FILE

const INCOMPAT_FILETYPE = 0x2
const INCOMPAT_RECOVER = 0x4
const INCOMPAT_JOURNAL_DEV = 0x8
const INCOMPAT_META_BG = 0x10
const INCOMPAT_EXTENTS = 0x40
const INCOMPAT_64BIT = 0x80
const INCOMPAT_MMP = 0x100
const INCOMPAT_FLEX_BG = 0x200
const INCOMPAT_EA_INODE = 0x400
const INCOMPAT_CSUM_SEED = 0x2000
const INCOMPAT_LARGEDIR = 0x4000
const INCOMPAT_INLINE_DATA = 0x8000
const INCOMPAT_ENCRYPT = 0x10000
const INCOMPAT_CASEFOLD = 0x20000
const KNOWN_INCOMPAT =
  INCOMPAT_FILETYPE |
  INCOMPAT_RECOVER |
  INCOMPAT_META_BG |
  INCOMPAT_EXTENTS |
  INCOMPAT_64BIT |
  INCOMPAT_MMP |
  INCOMPAT_FLEX_BG |
  INCOMPAT_EA_INODE |
  INCOMPAT_CSUM_SEED |
  INCOMPAT_LARGEDIR |
  INCOMPAT_INLINE_DATA |
  INCOMPAT_ENCRYPT |
  INCOMPAT_CASEFOLD

const RO_COMPAT_SPARSE_SUPER = 0x1
const RO_COMPAT_LARGE_FILE = 0x2
const RO_COMPAT_BTREE_DIR = 0x4
const RO_COMPAT_HUGE_FILE = 0x8
const RO_COMPAT_GDT_CSUM = 0x10
const RO_COMPAT_DIR_NLINK = 0x20
const RO_COMPAT_EXTRA_ISIZE = 0x40
const RO_COMPAT_QUOTA = 0x100
const RO_COMPAT_BIGALLOC = 0x200
const RO_COMPAT_METADATA_CSUM = 0x400
const RO_COMPAT_READONLY = 0x1000
const RO_COMPAT_PROJECT = 0x2000
const RO_COMPAT_SHARED_BLOCKS = 0x4000
const RO_COMPAT_VERITY = 0x8000
const RO_COMPAT_ORPHAN_PRESENT = 0x10000
// bigalloc (bitmaps count clusters) and has_snapshot (next3) change what a
// bitmap bit means; they and anything unknown are refused.
const KNOWN_RO_COMPAT =
  RO_COMPAT_SPARSE_SUPER |
  RO_COMPAT_LARGE_FILE |
  RO_COMPAT_BTREE_DIR |
  RO_COMPAT_HUGE_FILE |
  RO_COMPAT_GDT_CSUM |
  RO_COMPAT_DIR_NLINK |
  RO_COMPAT_EXTRA_ISIZE |
  RO_COMPAT_QUOTA |
  RO_COMPAT_METADATA_CSUM |
  RO_COMPAT_READONLY |
  RO_COMPAT_PROJECT |
  RO_COMPAT_SHARED_BLOCKS |
  RO_COMPAT_VERITY |
  RO_COMPAT_ORPHAN_PRESENT

// Features that decide where metadata lives: a logged superblock copy must
// agree with the on-disk one on these (see checkLoggedLayout).
const LAYOUT_COMPAT = COMPAT_SPARSE_SUPER2 | COMPAT_RESIZE_INODE
const LAYOUT_INCOMPAT = INCOMPAT_META_BG | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
const LAYOUT_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_BIGALLOC | RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM

const BG_BLOCK_UNINIT = 0x2

const EXT4_CRC32C_CHKSUM = 1
const EXTENT_MAGIC = 0xf30a
const INODE_FLAG_EXTENTS = 0x80000
const INODE_FLAG_INLINE_DATA = 0x10000000
const S_IFMT = 0xf000
const S_IFREG = 0x8000

/** Bitmap reads are batched up to this many bytes (flex_bg puts them side by side). */
const READ_BATCH_BYTES = 1 << 20

interface Superblock {
  blockSize: number
  blocksCount: number
  firstDataBlock: number
  blocksPerGroup: number
  inodesPerGroup: number
  inodeSize: number
  groups: number
  descSize: number
  descPerBlock: number
  /** Blocks of group descriptors (the s_gdb_count of the kernel). */
  gdbCount: number
  itbPerGroup: number
  compat: number
  incompat: number
  roCompat: number
  reservedGdtBlocks: number
  firstMetaBg: number
  backupBgs: [number, number]
  journalInum: number
  mmpBlock: number
  /** Seed of metadata_csum checksums. */
  csumSeed: number
  uuid: Buffer
  uuidText: string
  label: string
}

interface GroupDesc {
  blockBitmap: number
  inodeBitmap: number
  inodeTable: number
  freeBlocks: number
  flags: number
  blockBitmapCsum: number
}

/** A run of blocks ext4 uses for fixed metadata, whatever any bitmap says. */
interface MetaRange {
  start: number
  count: number
  what: string
}

// ---------------------------------------------------------------------------
// Checksums besides crc32c: the crc16 (ANSI, reflected 0xA001) of gdt_csum.

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1
    t[i] = c
  }
  return t
})()

function crc16(seed: number, data: Uint8Array, start = 0, end = data.length): number {
  let crc = seed & 0xffff
  for (let i = start; i < end; i++) crc = (CRC16_TABLE[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)) & 0xffff
  return crc
}

function le32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4)
  b.writeUInt32LE(value >>> 0, 0)
  return b
}

const has = (field: number, bit: number) => (field & bit) !== 0

// ---------------------------------------------------------------------------

class BlockReader {
  constructor(
    readonly src: ByteSource,
    readonly blockSize: number,
  ) {}

  async read(block: number, count = 1): Promise<Buffer> {
    return readExact(this.src, block * this.blockSize, count * this.blockSize)
  }
}

async function readExact(src: ByteSource, offset: number, length: number): Promise<Buffer> {
  const buf = await src.read(offset, length)
  if (buf.length !== length) {
    throw new VvfsError('IO_ERROR', `short read: ${buf.length} of ${length} bytes at ${offset}`)
  }
  return buf
}

function corrupt(message: string, details?: Record<string, unknown>): VvfsError {
  return new VvfsError('FS_CORRUPT', message, details ? { details } : {})
}

function unsupported(message: string): VvfsError {
  return new VvfsError('NOT_SUPPORTED', message)
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

function parseSuperblock(buf: Buffer, deviceSize: number): Superblock {
  if (buf.readUInt16LE(0x38) !== EXT4_MAGIC) throw new VvfsError('FS_UNKNOWN', 'no ext2/3/4 file system (bad superblock magic)')

  const logBlock = buf.readUInt32LE(0x18)
  if (logBlock > 6) throw corrupt(`superblock gives an impossible block size (log ${logBlock})`)
  const blockSize = 1024 << logBlock
  const revLevel = buf.readUInt32LE(0x4c)
  if (revLevel > 1) throw unsupported(`ext2 revision ${revLevel} is unknown`)
  const compat = buf.readUInt32LE(0x5c)
  const incompat = buf.readUInt32LE(0x60)
  const roCompat = buf.readUInt32LE(0x64)

  if (has(roCompat, RO_COMPAT_METADATA_CSUM)) {
    if (buf[0x175] !== EXT4_CRC32C_CHKSUM) throw unsupported(`metadata checksum type ${buf[0x175]} is not crc32c`)
    if (buf.readUInt32LE(0x3fc) !== crc32c(0xffffffff, buf, 0, 0x3fc)) throw corrupt('the superblock fails its checksum')
  }

  if (has(incompat, INCOMPAT_JOURNAL_DEV)) throw unsupported('this is an external journal device, not a file system')
  if (has(roCompat, RO_COMPAT_BIGALLOC)) throw unsupported('bigalloc file systems are not supported (bitmaps count clusters)')
  const badCompat = compat & ~KNOWN_COMPAT
  const badIncompat = incompat & ~KNOWN_INCOMPAT
  const badRoCompat = roCompat & ~KNOWN_RO_COMPAT
  if (badCompat || badIncompat || badRoCompat) {
    throw unsupported(
      `file system features not supported: compat 0x${badCompat.toString(16)}, incompat 0x${badIncompat.toString(16)}, ro_compat 0x${badRoCompat.toString(16)}`,
    )
  }

  const state = buf.readUInt16LE(0x3a)
  if (state & STATE_ERROR) throw corrupt('the file system records errors; run e2fsck first')
  if (!(state & STATE_VALID) && !has(compat, COMPAT_HAS_JOURNAL)) {
    // Without a journal the bitmaps of a file system that was not cleanly
    // unmounted can miss allocations. With one (a frozen file system, or one
    // that crashed), the log walk below holds back whatever is not yet in
    // the bitmaps.
    throw corrupt('the file system was not cleanly unmounted (or is mounted) and has no journal; run e2fsck first')
  }

  const is64 = has(incompat, INCOMPAT_64BIT)
  const blocksCount = buf.readUInt32LE(0x04) + (is64 ? buf.readUInt32LE(0x150) * 0x1_0000_0000 : 0)
  const firstDataBlock = buf.readUInt32LE(0x14)
  const blocksPerGroup = buf.readUInt32LE(0x20)
  const inodesPerGroup = buf.readUInt32LE(0x28)
  const inodesCount = buf.readUInt32LE(0x00)
  const inodeSize = revLevel === 0 ? 128 : buf.readUInt16LE(0x58)

  if (buf.readUInt32LE(0x1c) !== logBlock) throw corrupt('cluster size differs from block size without bigalloc')
  if (buf.readUInt32LE(0x24) !== blocksPerGroup) throw corrupt('clusters per group differs from blocks per group without bigalloc')
  // Without bigalloc mke2fs puts the superblock in block 1 of a 1K file
  // system and block 0 otherwise; every layout rule below assumes that.
  if (firstDataBlock !== (blockSize === 1024 ? 1 : 0)) throw unsupported(`first data block ${firstDataBlock} with ${blockSize}-byte blocks`)
  if (blocksPerGroup < 8 || blocksPerGroup > blockSize * 8 || blocksPerGroup % 8 !== 0) {
    throw corrupt(`impossible blocks per group: ${blocksPerGroup}`)
  }
  if (inodesPerGroup < 1 || inodesPerGroup > blockSize * 8) throw corrupt(`impossible inodes per group: ${inodesPerGroup}`)
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw corrupt(`impossible inode size: ${inodeSize}`)
  if (blocksCount <= firstDataBlock) throw corrupt(`impossible block count: ${blocksCount}`)
  if (blocksCount * blockSize > Number.MAX_SAFE_INTEGER) throw unsupported('file system too large for this reader')
  if (blocksCount * blockSize > deviceSize) {
    throw new VvfsError('FS_UNKNOWN', `the device (${deviceSize} bytes) is too small for the ext4 file system it holds (${blocksCount * blockSize} bytes)`, {
      details: { deviceBytes: deviceSize, fsBytes: blocksCount * blockSize },
    })
  }

  let descSize = 32
  if (is64) {
    descSize = buf.readUInt16LE(0xfe)
    if (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) throw corrupt(`impossible group descriptor size: ${descSize}`)
  }
  const groups = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup)
  if (inodesCount !== groups * inodesPerGroup) throw corrupt(`inode count ${inodesCount} is not ${groups} groups × ${inodesPerGroup}`)
  const descPerBlock = blockSize / descSize
  const gdbCount = Math.ceil(groups / descPerBlock)
  const reservedGdtBlocks = buf.readUInt16LE(0xce)
  if (reservedGdtBlocks > blockSize / 4) throw corrupt(`impossible reserved GDT blocks: ${reservedGdtBlocks}`)
  const firstMetaBg = has(incompat, INCOMPAT_META_BG) ? buf.readUInt32LE(0x104) : 0
  if (firstMetaBg > gdbCount) throw corrupt(`first meta_bg ${firstMetaBg} beyond ${gdbCount} descriptor blocks`)

  const journalInum = buf.readUInt32LE(0xe0)
  if (has(compat, COMPAT_HAS_JOURNAL) && journalInum === 0) throw unsupported('the file system uses an external journal device')
  if (has(compat, COMPAT_HAS_JOURNAL) && buf.readUInt32LE(0xe4) !== 0) throw corrupt('the file system names both a journal inode and a journal device')
  if (!has(compat, COMPAT_HAS_JOURNAL) && has(incompat, INCOMPAT_RECOVER)) throw corrupt('needs_recovery is set but there is no journal')

  const mmpBlock = has(incompat, INCOMPAT_MMP) ? buf.readUInt32LE(0x168) + buf.readUInt32LE(0x16c) * 0x1_0000_0000 : 0
  if (has(incompat, INCOMPAT_MMP) && (mmpBlock < firstDataBlock || mmpBlock >= blocksCount)) throw corrupt(`MMP block ${mmpBlock} outside the file system`)

  const uuid = Buffer.from(buf.subarray(0x68, 0x78))
  const labelBytes = buf.subarray(0x78, 0x88)
  const nul = labelBytes.indexOf(0)
  return {
    blockSize,
    blocksCount,
    firstDataBlock,
    blocksPerGroup,
    inodesPerGroup,
    inodeSize,
    groups,
    descSize,
    descPerBlock,
    gdbCount,
    itbPerGroup: Math.ceil((inodesPerGroup * inodeSize) / blockSize),
    compat,
    incompat,
    roCompat,
    reservedGdtBlocks,
    firstMetaBg,
    backupBgs: [buf.readUInt32LE(0x24c), buf.readUInt32LE(0x250)],
    journalInum,
    mmpBlock,
    csumSeed: has(incompat, INCOMPAT_CSUM_SEED) ? buf.readUInt32LE(0x270) : crc32c(0xffffffff, uuid),
    uuid,
    uuidText: formatUuid(uuid),
    label: labelBytes.subarray(0, nul < 0 ? 16 : nul).toString('utf8'),
  }
}

// ---------------------------------------------------------------------------
// Geometry, as the kernel computes it (fs/ext4/balloc.c, super.c).

function groupFirstBlock(sb: Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup
}

function groupBlocks(sb: Superblock, g: number): number {
  return Math.min(sb.blocksPerGroup, sb.blocksCount - groupFirstBlock(sb, g))
}

function isPowerOf(n: number, base: number): boolean {
  let p = base
  while (p < n) p *= base
  return p === n
}

/** ext4_bg_has_super(): does group g hold a superblock (and, outside meta_bg, a GDT) copy? */
function groupHasSuper(sb: Superblock, g: number): boolean {
  if (g === 0) return true
  if (has(sb.compat, COMPAT_SPARSE_SUPER2)) return g === sb.backupBgs[0] || g === sb.backupBgs[1]
  if (g <= 1 || !has(sb.roCompat, RO_COMPAT_SPARSE_SUPER)) return true
  if (g % 2 === 0) return false
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7)
}

function isMetaBgGroup(sb: Superblock, g: number): boolean {
  return has(sb.incompat, INCOMPAT_META_BG) && Math.floor(g / sb.descPerBlock) >= sb.firstMetaBg
}

/**
 * ext4_num_base_meta_blocks(): the blocks at the start of group g taken by
 * a superblock copy, descriptor blocks and reserved GDT blocks. The kernel
 * adds the reserved GDT blocks even with meta_bg (e2fsprogs does not);
 * mke2fs never combines the two, and taking the larger is the safe side.
 */
function baseMetaBlocks(sb: Superblock, g: number): number {
  const hasSuper = groupHasSuper(sb, g) ? 1 : 0
  if (!isMetaBgGroup(sb, g)) {
    if (!hasSuper) return 0
    const oldDescBlocks = has(sb.incompat, INCOMPAT_META_BG) ? sb.firstMetaBg : sb.gdbCount
    return 1 + oldDescBlocks + sb.reservedGdtBlocks
  }
  const inMeta = g % sb.descPerBlock
  const hasDesc = inMeta === 0 || inMeta === 1 || inMeta === sb.descPerBlock - 1
  return hasSuper + (hasDesc ? 1 : 0)
}

/** Where the primary copy of descriptor block i lives (descriptor_loc()). */
function descriptorBlock(sb: Superblock, i: number): number {
  if (!has(sb.incompat, INCOMPAT_META_BG) || i < sb.firstMetaBg) return sb.firstDataBlock + i + 1
  const g = i * sb.descPerBlock
  return groupFirstBlock(sb, g) + (groupHasSuper(sb, g) ? 1 : 0)
}

// ---------------------------------------------------------------------------
// Group descriptors.

function parseDesc(sb: Superblock, buf: Buffer, off: number): GroupDesc {
  const wide = sb.descSize >= 64
  const hi32 = (at: number) => (wide ? buf.readUInt32LE(off + at) * 0x1_0000_0000 : 0)
  const hi16 = (at: number) => (wide ? buf.readUInt16LE(off + at) * 0x1_0000 : 0)
  return {
    blockBitmap: buf.readUInt32LE(off + 0x00) + hi32(0x20),
    inodeBitmap: buf.readUInt32LE(off + 0x04) + hi32(0x24),
    inodeTable: buf.readUInt32LE(off + 0x08) + hi32(0x28),
    freeBlocks: buf.readUInt16LE(off + 0x0c) + hi16(0x2c),
    flags: buf.readUInt16LE(off + 0x12),
    // The high half exists only when the descriptor reaches it (0x3a).
    blockBitmapCsum: buf.readUInt16LE(off + 0x18) + (sb.descSize >= 0x3a ? buf.readUInt16LE(off + 0x38) * 0x1_0000 : 0),
  }
}

function hasDescCsum(sb: Superblock): boolean {
  return has(sb.roCompat, RO_COMPAT_METADATA_CSUM) || has(sb.roCompat, RO_COMPAT_GDT_CSUM)
}

/** ext4_group_desc_csum(); the stored value is at offset 0x1e. */
function descChecksum(sb: Superblock, g: number, buf: Buffer, off: number): number {
  const desc = buf.subarray(off, off + sb.descSize)
  if (has(sb.roCompat, RO_COMPAT_METADATA_CSUM)) {
    let c = crc32c(sb.csumSeed, le32(g))
    c = crc32c(c, desc, 0, 0x1e)
    c = crc32c(c, ZERO2)
    c = crc32c(c, desc, 0x20, sb.descSize)
    return c & 0xffff
  }
  let c = crc16(0xffff, sb.uuid)
  c = crc16(c, le32(g))
  c = crc16(c, desc, 0, 0x1e)
  if (has(sb.incompat, INCOMPAT_64BIT)) c = crc16(c, desc, 0x20, sb.descSize)
  return c
}
const ZERO2 = Buffer.alloc(2)

async function readGroupDescriptors(io: BlockReader, sb: Superblock): Promise<{ descs: GroupDesc[]; blocks: number[] }> {
  const descs: GroupDesc[] = []
  const blocks: number[] = []
  const csum = hasDescCsum(sb)
  for (let i = 0; i < sb.gdbCount; i++) {
    const loc = descriptorBlock(sb, i)
    if (loc >= sb.blocksCount) throw corrupt(`group descriptor block ${i} would be at ${loc}, beyond the file system`)
    blocks.push(loc)
  }
  // Outside meta_bg the descriptor blocks are contiguous: read them in batches.
  const perRead = Math.max(1, Math.floor(READ_BATCH_BYTES / sb.blockSize))
  for (let i = 0; i < blocks.length; ) {
    let n = 1
    while (i + n < blocks.length && n < perRead && blocks[i + n] === blocks[i]! + n) n++
    const buf = await io.read(blocks[i]!, n)
    for (let k = 0; k < n; k++) {
      for (let j = 0; j < sb.descPerBlock; j++) {
        const g = (i + k) * sb.descPerBlock + j
        if (g >= sb.groups) break
        const off = k * sb.blockSize + j * sb.descSize
        if (csum && buf.readUInt16LE(off + 0x1e) !== descChecksum(sb, g, buf, off)) throw corrupt(`group descriptor ${g} fails its checksum`, { group: g })
        descs.push(parseDesc(sb, buf, off))
      }
    }
    i += n
  }
  return { descs, blocks }
}

/** The fixed metadata of every group, checked for sanity and for overlaps. */
function fixedMetadata(sb: Superblock, descs: GroupDesc[]): MetaRange[] {
  const ranges: MetaRange[] = []
  const flex = has(sb.incompat, INCOMPAT_FLEX_BG)
  for (let g = 0; g < sb.groups; g++) {
    const start = groupFirstBlock(sb, g)
    const len = groupBlocks(sb, g)
    const base = baseMetaBlocks(sb, g)
    if (base > len) throw corrupt(`group ${g} is too small for its own superblock and descriptors`, { group: g })
    if (base > 0) ranges.push({ start, count: base, what: `superblock/descriptors of group ${g}` })
    const d = descs[g]!
    // Without flex_bg a group's bitmaps and inode table are inside it; with
    // flex_bg anywhere in the file system (ext4_check_descriptors()).
    const lo = flex ? sb.firstDataBlock : start
    const hi = flex ? sb.blocksCount : start + len
    const inside = (b: number, n: number) => b >= lo && b + n <= hi
    if (!inside(d.blockBitmap, 1)) throw corrupt(`block bitmap of group ${g} at ${d.blockBitmap} is outside its bounds`, { group: g })
    if (!inside(d.inodeBitmap, 1)) throw corrupt(`inode bitmap of group ${g} at ${d.inodeBitmap} is outside its bounds`, { group: g })
    if (!inside(d.inodeTable, sb.itbPerGroup)) throw corrupt(`inode table of group ${g} at ${d.inodeTable} is outside its bounds`, { group: g })
    ranges.push({ start: d.blockBitmap, count: 1, what: `block bitmap of group ${g}` })
    ranges.push({ start: d.inodeBitmap, count: 1, what: `inode bitmap of group ${g}` })
    ranges.push({ start: d.inodeTable, count: sb.itbPerGroup, what: `inode table of group ${g}` })
  }
  if (sb.mmpBlock) ranges.push({ start: sb.mmpBlock, count: 1, what: 'MMP block' })
  return ranges
}

function sortAndCheckOverlaps(ranges: MetaRange[]): MetaRange[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start)
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!
    const cur = sorted[i]!
    if (cur.start < prev.start + prev.count) {
      throw corrupt(`${cur.what} (block ${cur.start}) overlaps ${prev.what} (blocks ${prev.start}-${prev.start + prev.count - 1})`)
    }
  }
  return sorted
}

// ---------------------------------------------------------------------------
// The journal inode.

interface Mapping {
  /** Contiguous runs logical → physical, sorted by logical, no holes. */
  runs: { logical: number; physical: number; count: number }[]
  /** Blocks of the map itself (extent index/leaf blocks, indirect blocks). */
  mapBlocks: number[]
  blocks: number
}

async function readInode(io: BlockReader, sb: Superblock, descs: GroupDesc[], ino: number): Promise<{ raw: Buffer; seed: number }> {
  if (ino < 1 || ino > sb.groups * sb.inodesPerGroup) throw corrupt(`inode ${ino} does not exist`)
  const g = Math.floor((ino - 1) / sb.inodesPerGroup)
  const index = (ino - 1) % sb.inodesPerGroup
  const byteInTable = index * sb.inodeSize
  const block = descs[g]!.inodeTable + Math.floor(byteInTable / sb.blockSize)
  const buf = await io.read(block)
  const off = byteInTable % sb.blockSize
  const raw = Buffer.from(buf.subarray(off, off + sb.inodeSize))
  let seed = 0
  if (has(sb.roCompat, RO_COMPAT_METADATA_CSUM)) {
    seed = crc32c(crc32c(sb.csumSeed, le32(ino)), le32(raw.readUInt32LE(0x64)))
    const extra = sb.inodeSize > 128 ? raw.readUInt16LE(0x80) : 0
    const hasHi = sb.inodeSize > 128 && 128 + extra >= 0x84
    const copy = Buffer.from(raw)
    copy.writeUInt16LE(0, 0x7c)
    if (hasHi) copy.writeUInt16LE(0, 0x82)
    const computed = crc32c(seed, copy)
    const stored = raw.readUInt16LE(0x7c) + (hasHi ? raw.readUInt16LE(0x82) * 0x1_0000 : 0)
    if ((hasHi ? computed : computed & 0xffff) !== stored) throw corrupt(`inode ${ino} fails its checksum`)
  }
  return { raw, seed }
}

async function mapInode(io: BlockReader, sb: Superblock, ino: number, raw: Buffer, seed: number): Promise<Mapping> {
  if ((raw.readUInt16LE(0x00) & S_IFMT) !== S_IFREG) throw corrupt(`inode ${ino} is not a regular file`)
  const flags = raw.readUInt32LE(0x20)
  if (flags & INODE_FLAG_INLINE_DATA) throw corrupt(`inode ${ino} has inline data`)
  const size = raw.readUInt32LE(0x04) + raw.readUInt32LE(0x6c) * 0x1_0000_0000
  const blocks = Math.floor(size / sb.blockSize)
  const iblock = raw.subarray(0x28, 0x28 + 60)
  const runs: Mapping['runs'] = []
  const mapBlocks: number[] = []
  const inFs = (b: number, n: number) => b >= sb.firstDataBlock && b + n <= sb.blocksCount
  const addRun = (logical: number, physical: number, count: number) => {
    if (!inFs(physical, count)) throw corrupt(`inode ${ino} maps blocks ${physical}+${count} outside the file system`)
    const last = runs[runs.length - 1]
    if (last && last.logical + last.count === logical && last.physical + last.count === physical) last.count += count
    else runs.push({ logical, physical, count })
  }

  if (flags & INODE_FLAG_EXTENTS) {
    const walk = async (node: Buffer, depth: number | undefined, isRoot: boolean): Promise<void> => {
      if (node.readUInt16LE(0) !== EXTENT_MAGIC) throw corrupt(`inode ${ino}: bad extent header`)
      const entries = node.readUInt16LE(2)
      const max = node.readUInt16LE(4)
      const d = node.readUInt16LE(6)
      if (entries > max || 12 + 12 * max > node.length || d > 5 || (depth !== undefined && d !== depth)) {
        throw corrupt(`inode ${ino}: inconsistent extent header`)
      }
      if (!isRoot && has(sb.roCompat, RO_COMPAT_METADATA_CSUM)) {
        const tail = 12 + 12 * max
        if (tail + 4 > node.length || node.readUInt32LE(tail) !== crc32c(seed, node, 0, tail)) throw corrupt(`inode ${ino}: extent block fails its checksum`)
      }
      for (let i = 0; i < entries; i++) {
        const e = 12 + 12 * i
        if (d === 0) {
          const logical = node.readUInt32LE(e)
          const len = node.readUInt16LE(e + 4)
          // len > 32768 marks an unwritten extent; a journal has none.
          if (len > 32768) throw corrupt(`inode ${ino} has an unwritten extent`)
          if (len === 0) throw corrupt(`inode ${ino} has an empty extent`)
          const physical = node.readUInt32LE(e + 8) + node.readUInt16LE(e + 6) * 0x1_0000_0000
          addRun(logical, physical, len)
        } else {
          const child = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 0x1_0000_0000
          if (!inFs(child, 1)) throw corrupt(`inode ${ino}: extent index points outside the file system`)
          mapBlocks.push(child)
          await walk(await io.read(child), d - 1, false)
        }
      }
    }
    await walk(Buffer.from(iblock), undefined, true)
  } else {
    const perBlock = sb.blockSize / 4
    let logical = 0
    const walk = async (ptr: number, level: number): Promise<void> => {
      if (logical >= blocks) return
      if (ptr === 0) throw corrupt(`inode ${ino} has a hole at block ${logical}`)
      if (level === 0) {
        addRun(logical++, ptr, 1)
        return
      }
      if (!inFs(ptr, 1)) throw corrupt(`inode ${ino}: indirect block outside the file system`)
      mapBlocks.push(ptr)
      const buf = await io.read(ptr)
      for (let i = 0; i < perBlock && logical < blocks; i++) await walk(buf.readUInt32LE(i * 4), level - 1)
    }
    for (let i = 0; i < 12 && logical < blocks; i++) await walk(iblock.readUInt32LE(i * 4), 0)
    for (let level = 1; level <= 3 && logical < blocks; level++) await walk(iblock.readUInt32LE((11 + level) * 4), level)
  }

  runs.sort((a, b) => a.logical - b.logical)
  let expect = 0
  for (const r of runs) {
    if (r.logical !== expect) throw corrupt(`inode ${ino}: blocks ${expect}-${r.logical - 1} are not mapped`)
    expect += r.count
  }
  if (expect < blocks) throw corrupt(`inode ${ino}: only ${expect} of ${blocks} blocks are mapped`)
  return { runs, mapBlocks, blocks }
}

function journalDevice(io: BlockReader, map: Mapping): JournalDevice {
  const perRead = Math.max(1, Math.floor(READ_BATCH_BYTES / io.blockSize))
  let cache: { logical: number; count: number; buf: Buffer } | undefined
  return {
    blocks: map.blocks,
    blockSize: io.blockSize,
    async read(logical: number): Promise<Buffer> {
      if (cache && logical >= cache.logical && logical < cache.logical + cache.count) {
        const at = (logical - cache.logical) * io.blockSize
        return cache.buf.subarray(at, at + io.blockSize)
      }
      // Binary search for the run holding `logical`.
      let lo = 0
      let hi = map.runs.length - 1
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1
        if (map.runs[mid]!.logical <= logical) lo = mid
        else hi = mid - 1
      }
      const run = map.runs[lo]
      if (!run || logical < run.logical || logical >= run.logical + run.count || logical >= map.blocks) {
        throw corrupt(`journal block ${logical} is not mapped`)
      }
      const count = Math.min(perRead, run.logical + run.count - logical)
      const buf = await io.read(run.physical + (logical - run.logical), count)
      cache = { logical, count, buf }
      return buf.subarray(0, io.blockSize)
    },
  }
}

// ---------------------------------------------------------------------------

/**
 * A logged copy of a superblock or descriptor block must not move metadata
 * (online resize, tune2fs in flight): our layout comes from the on-disk
 * copies, and a layout the log changes is one we would get wrong.
 */
function checkLoggedLayout(sb: Superblock, sbRaw: Buffer, descs: GroupDesc[], gdtBlocks: number[], copies: Map<number, Buffer[]>): void {
  const sbBlock = Math.floor(SUPERBLOCK_OFFSET / sb.blockSize)
  const sbAt = SUPERBLOCK_OFFSET % sb.blockSize
  const geometry: [number, 2 | 4][] = [
    [0x04, 4], // blocks count
    [0x150, 4], // blocks count, high
    [0x14, 4], // first data block
    [0x18, 4], // block size
    [0x20, 4], // blocks per group
    [0x28, 4], // inodes per group
    [0x58, 2], // inode size
    [0xce, 2], // reserved GDT blocks
    [0xfe, 2], // descriptor size
    [0x104, 4], // first meta_bg
    [0x24c, 4], // sparse_super2 backups
    [0x250, 4],
  ]
  for (const copy of copies.get(sbBlock) ?? []) {
    const logged = copy.subarray(sbAt, sbAt + 1024)
    const same =
      logged.readUInt16LE(0x38) === EXT4_MAGIC &&
      geometry.every(([at, w]) => (w === 2 ? logged.readUInt16LE(at) === sbRaw.readUInt16LE(at) : logged.readUInt32LE(at) === sbRaw.readUInt32LE(at))) &&
      (logged.readUInt32LE(0x5c) & LAYOUT_COMPAT) === (sb.compat & LAYOUT_COMPAT) &&
      (logged.readUInt32LE(0x60) & LAYOUT_INCOMPAT) === (sb.incompat & LAYOUT_INCOMPAT) &&
      (logged.readUInt32LE(0x64) & LAYOUT_RO_COMPAT) === (sb.roCompat & LAYOUT_RO_COMPAT)
    if (!same) throw unsupported('the journal holds a superblock with a different layout (resize in progress?); mount or e2fsck the file system first')
  }
  // Descriptors past the last group are not compared: growth shows in the
  // logged superblock (online resize logs it in the same handle).
  gdtBlocks.forEach((block, i) => {
    for (const copy of copies.get(block) ?? []) {
      for (let j = 0; j < sb.descPerBlock && i * sb.descPerBlock + j < sb.groups; j++) {
        const g = i * sb.descPerBlock + j
        const logged = parseDesc(sb, copy, j * sb.descSize)
        const d = descs[g]!
        if (logged.blockBitmap !== d.blockBitmap || logged.inodeBitmap !== d.inodeBitmap || logged.inodeTable !== d.inodeTable) {
          throw unsupported(`the journal moves the metadata of group ${g}; mount or e2fsck the file system first`)
        }
      }
    }
  })
}

/** The checksum a group's bitmap must match once the log is replayed. */
function finalBitmapCsum(sb: Superblock, g: number, onDisk: GroupDesc, gdtBlocks: number[], copies: Map<number, Buffer[]>): number {
  const list = copies.get(gdtBlocks[Math.floor(g / sb.descPerBlock)]!)
  if (!list || list.length === 0) return onDisk.blockBitmapCsum
  return parseDesc(sb, list[list.length - 1]!, (g % sb.descPerBlock) * sb.descSize).blockBitmapCsum
}

function setBits(bits: Buffer, from: number, to: number): void {
  for (let i = from; i < to; i++) bits[i >> 3]! |= 1 << (i & 7)
}

function allBitsSet(bits: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (!(bits[i >> 3]! & (1 << (i & 7)))) return false
  return true
}

function countFree(bits: Buffer, len: number): number {
  let free = 0
  for (let i = 0; i < len; i++) if (!(bits[i >> 3]! & (1 << (i & 7)))) free++
  return free
}

/** Ranges of `sorted` (by start, non-overlapping) that meet [from, to). */
function* overlapping(sorted: MetaRange[], from: number, to: number): Generator<MetaRange> {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    const r = sorted[mid]!
    if (r.start + r.count <= from) lo = mid + 1
    else hi = mid
  }
  for (let i = lo; i < sorted.length && sorted[i]!.start < to; i++) yield sorted[i]!
}

export async function readExt4FreeSpace(src: ByteSource): Promise<Ext4FreeSpace> {
  if (src.size < SUPERBLOCK_OFFSET + 1024) throw new VvfsError('FS_UNKNOWN', `the device (${src.size} bytes) is too small to hold an ext2/3/4 file system`)
  const sbRaw = await readExact(src, SUPERBLOCK_OFFSET, 1024)
  const sb = parseSuperblock(sbRaw, src.size)
  const io = new BlockReader(src, sb.blockSize)
  const { descs, blocks: gdtBlocks } = await readGroupDescriptors(io, sb)
  const meta = fixedMetadata(sb, descs)

  const bitmapOwner = new Map<number, number>()
  descs.forEach((d, g) => bitmapOwner.set(d.blockBitmap, g))
  const sbBlock = Math.floor(SUPERBLOCK_OFFSET / sb.blockSize)
  const gdtSet = new Set(gdtBlocks)

  const journal = { present: false, clean: true, pendingTransactions: 0, blocksHeldByLog: 0 }
  let targets: number[] = []
  let copies = new Map<number, Buffer[]>()
  if (has(sb.compat, COMPAT_HAS_JOURNAL)) {
    journal.present = true
    const { raw, seed } = await readInode(io, sb, descs, sb.journalInum)
    const map = await mapInode(io, sb, sb.journalInum, raw, seed)
    for (const r of map.runs) meta.push({ start: r.physical, count: r.count, what: `journal blocks ${r.logical}-${r.logical + r.count - 1}` })
    for (const b of map.mapBlocks) meta.push({ start: b, count: 1, what: 'journal map block' })
    const log = await readJournalLog(journalDevice(io, map), {
      fsBlockSize: sb.blockSize,
      fsBlocks: sb.blocksCount,
      wantCopy: (b) => bitmapOwner.has(b) || gdtSet.has(b) || b === sbBlock,
    })
    // needs_recovery without a log can be a file system copied while
    // mounted: nothing to replay, but not a state to call clean.
    journal.clean = !has(sb.incompat, INCOMPAT_RECOVER) && log.superblock.start === 0
    journal.pendingTransactions = log.committedTransactions
    journal.blocksHeldByLog = log.targets.size
    targets = [...log.targets].sort((a, b) => a - b)
    copies = log.copies
  }
  const sortedMeta = sortAndCheckOverlaps(meta)
  checkLoggedLayout(sb, sbRaw, descs, gdtBlocks, copies)
  const logPending = !journal.clean

  const freeRanges: FreeRange[] = []
  let freeBlocks = 0
  const bs = sb.blockSize
  const bitmapBytes = sb.blocksPerGroup / 8
  const perRead = Math.max(1, Math.floor(READ_BATCH_BYTES / bs))
  let batch: { first: number; count: number; buf: Buffer } | undefined
  const readBitmap = async (g: number): Promise<Buffer> => {
    const block = descs[g]!.blockBitmap
    if (!batch || block < batch.first || block >= batch.first + batch.count) {
      // With flex_bg the bitmaps of a flex group sit side by side.
      let n = 1
      while (g + n < sb.groups && n < perRead && descs[g + n]!.blockBitmap === block + n) n++
      batch = { first: block, count: n, buf: await io.read(block, n) }
    }
    const at = (block - batch.first) * bs
    return Buffer.from(batch.buf.subarray(at, at + bitmapBytes))
  }
  let targetIdx = 0

  for (let g = 0; g < sb.groups; g++) {
    const d = descs[g]!
    const start = groupFirstBlock(sb, g)
    const len = groupBlocks(sb, g)
    const groupMeta = [...overlapping(sortedMeta, start, start + len)]
    let used: Buffer

    if (has(d.flags, BG_BLOCK_UNINIT) && (!hasDescCsum(sb) || g === sb.groups - 1)) {
      // The kernel ignores BLOCK_UNINIT without descriptor checksums, and
      // never sets it on the last group; a group in either state is one we
      // cannot vouch for.
      used = Buffer.alloc(bitmapBytes, 0xff)
    } else if (has(d.flags, BG_BLOCK_UNINIT)) {
      // ext4_init_block_bitmap(): base metadata at the group's start, plus —
      // beyond the kernel, which counts only the group's own tables — any
      // fixed metadata of any group that lies here.
      used = Buffer.alloc(bitmapBytes)
      setBits(used, 0, baseMetaBlocks(sb, g))
      for (const m of groupMeta) setBits(used, Math.max(m.start, start) - start, Math.min(m.start + m.count, start + len) - start)
      // What mke2fs and the kernel count as free in an uninitialised group
      // is exactly that; a different count means something we do not model.
      if (countFree(used, len) !== d.freeBlocks) used = Buffer.alloc(bitmapBytes, 0xff)
    } else {
      used = await readBitmap(g)
      const bitmapLogged = copies.has(d.blockBitmap)
      if (has(sb.roCompat, RO_COMPAT_METADATA_CSUM) && !bitmapLogged) {
        // Verified against the descriptor as it will be after replay: the
        // on-disk descriptor can lag a bitmap that was already written back.
        const expected = finalBitmapCsum(sb, g, d, gdtBlocks, copies)
        let c = crc32c(sb.csumSeed, used)
        if (sb.descSize < 0x3a) c &= 0xffff
        if (c !== expected) throw corrupt(`block bitmap of group ${g} fails its checksum`, { group: g })
      }
      for (const m of groupMeta) {
        const from = Math.max(m.start, start) - start
        const to = Math.min(m.start + m.count, start + len) - start
        if (!allBitsSet(used, from, to)) throw corrupt(`the block bitmap of group ${g} marks ${m.what} free`, { group: g })
      }
      if (!logPending && countFree(used, len) !== d.freeBlocks) {
        throw corrupt(`group ${g}: the bitmap counts ${countFree(used, len)} free blocks, the descriptor ${d.freeBlocks}`, { group: g })
      }
    }

    // Fixed metadata is in use whatever a bitmap says (already checked for
    // on-disk bitmaps; this covers held-back uninitialised groups' math).
    for (const m of groupMeta) setBits(used, Math.max(m.start, start) - start, Math.min(m.start + m.count, start + len) - start)
    // Blocks the log will write are in use; a logged copy of this group's
    // bitmap can only add blocks in use (free = free in every copy).
    while (targetIdx < targets.length && targets[targetIdx]! < start) targetIdx++
    for (let t = targetIdx; t < targets.length && targets[t]! < start + len; t++) setBits(used, targets[t]! - start, targets[t]! - start + 1)
    for (const copy of copies.get(d.blockBitmap) ?? []) {
      for (let i = 0; i < bitmapBytes; i++) used[i]! |= copy[i]!
    }

    // Emit runs of free blocks, merging across group boundaries.
    let i = 0
    while (i < len) {
      const byte = used[i >> 3]!
      if ((i & 7) === 0 && byte === 0xff) {
        i += 8
        continue
      }
      if (byte & (1 << (i & 7))) {
        i++
        continue
      }
      let j = i + 1
      while (j < len) {
        if ((j & 7) === 0 && used[j >> 3] === 0 && j + 8 <= len) {
          j += 8
          continue
        }
        if (used[j >> 3]! & (1 << (j & 7))) break
        j++
      }
      const count = j - i
      freeBlocks += count
      const offset = (start + i) * bs
      const last = freeRanges[freeRanges.length - 1]
      if (last && last.offset + last.length === offset) last.length += count * bs
      else freeRanges.push({ offset, length: count * bs })
      i = j
    }
  }

  return { blockSize: bs, blocksCount: sb.blocksCount, freeBlocks, freeRanges, journal, uuid: sb.uuidText, label: sb.label }
}
