/**
 * The ext4 reader behind `vvfs volume reclaim`: its free set must equal
 * e2fsprogs' on clean file systems, never contain a block a file, the
 * metadata or a pending journal transaction uses, and it must refuse what it
 * cannot read with certainty.
 */
import { copyFileSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { readExt4FreeSpace, type ByteSource, type Ext4FreeSpace } from '../../lib/reclaim/ext4.js'
import { readJournalLog } from '../../lib/reclaim/jbd2.js'
import { attachLoop, cleanupAll, detachLoop, mountExt4, removeDir, sh, tempDir, umount } from '../helpers/daemon.js'
import {
  blocksToRanges,
  debugfs,
  dumpe2fs,
  fileSource,
  inodeBlocks,
  intersect,
  loggedBlocks,
  merge,
  mkfs,
  patternFile,
  toBlockRanges,
  uncovered,
  type BlockRanges,
} from './images.js'
import { buildJournal, dataBlock, INCOMPAT, JBD2_MAGIC, type LogEntry } from './jbd2-log.js'

let dir: string

beforeAll(() => {
  dir = tempDir('vvfs-reclaim-')
  patternFile(join(dir, 'small'), 20_000, 1)
  patternFile(join(dir, 'medium'), 3 * 1024 * 1024 + 5000, 2)
  patternFile(join(dir, 'large'), 40 * 1024 * 1024, 3)
  // Every 1 KiB starts with the jbd2 magic: journalled, each block is escaped.
  const escape = Buffer.alloc(256 * 1024, 0x5a)
  for (let i = 0; i < escape.length; i += 1024) escape.writeUInt32BE(0xc03b3998, i)
  writeFileSync(join(dir, 'escape'), escape)
})

afterAll(async () => {
  await cleanupAll()
  removeDir(dir)
})

async function readImage(path: string): Promise<Ext4FreeSpace> {
  const src = await fileSource(path)
  try {
    return await readExt4FreeSpace(src)
  } finally {
    await src.close()
  }
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'no error'
  } catch (err) {
    if (err instanceof VvfsError) return err.code
    throw err
  }
}

function bufferSource(buf: Buffer): ByteSource {
  return {
    size: buf.length,
    async read(offset, length) {
      const out = Buffer.alloc(length)
      if (offset < buf.length) buf.copy(out, 0, offset, Math.min(buf.length, offset + length))
      return out
    },
  }
}

/** Fills an image through debugfs: files of several sizes, some of them deleted again. */
function populate(img: string, big: boolean): string[] {
  const cmds = [
    'mkdir /d',
    `write ${join(dir, 'small')} /a`,
    `write ${join(dir, 'medium')} /b`,
    `write ${join(dir, 'small')} /d/c`,
    `write ${join(dir, 'medium')} /d/e`,
    ...(big ? [`write ${join(dir, 'large')} /f`] : []),
    `write ${join(dir, 'small')} /g`,
    'rm /b',
    'rm /d/c',
  ]
  writeFileSync(join(dir, 'cmds'), cmds.join('\n') + '\n')
  sh('debugfs', ['-w', '-f', join(dir, 'cmds'), img])
  return ['/a', '/d', '/d/e', '/g', ...(big ? ['/f'] : [])]
}

function checkAgainstE2fsprogs(img: string, fs: Ext4FreeSpace, files: string[]): void {
  const dump = dumpe2fs(img)
  const ours = toBlockRanges(fs.freeRanges, fs.blockSize)
  expect(fs.blockSize).toBe(dump.blockSize)
  expect(ours).toEqual(dump.free)
  expect(fs.freeBlocks).toBe(dump.free.reduce((n, [a, b]) => n + b - a + 1, 0))
  for (const f of files) expect(intersect(inodeBlocks(img, f), ours), `blocks of ${f}`).toEqual([])
  expect(intersect(dump.metadata, ours), 'metadata').toEqual([])
  if (fs.journal.present) expect(intersect(inodeBlocks(img, '<8>'), ours), 'journal').toEqual([])
  // Sorted, merged, inside the file system.
  for (let i = 0; i < fs.freeRanges.length; i++) {
    const r = fs.freeRanges[i]!
    expect(r.length).toBeGreaterThan(0)
    expect(r.offset + r.length).toBeLessThanOrEqual(fs.blocksCount * fs.blockSize)
    if (i > 0) expect(r.offset).toBeGreaterThan(fs.freeRanges[i - 1]!.offset + fs.freeRanges[i - 1]!.length)
  }
}

const LAYOUTS: { name: string; size: string; args: string[]; cmd?: string; big?: boolean; after?: (img: string) => void; uninit?: boolean }[] = [
  { name: 'default small (1K blocks, flex_bg, 64bit, metadata_csum)', size: '64M', args: [], uninit: true },
  { name: '4K blocks, several groups, short last group', size: '600M', args: ['-b', '4096'], big: true, uninit: true },
  { name: '1K blocks, many groups', size: '250M', args: ['-b', '1024'], big: true, uninit: true },
  { name: '2K blocks', size: '128M', args: ['-b', '2048'] },
  { name: '64K blocks', size: '256M', args: ['-b', '65536'] },
  { name: '32-bit descriptors (^64bit)', size: '300M', args: ['-O', '^64bit'], big: true, uninit: true },
  { name: 'no flex_bg', size: '300M', args: ['-O', '^flex_bg', '-b', '1024'], big: true, uninit: true },
  { name: 'crc16 descriptors (^metadata_csum, uninit_bg)', size: '300M', args: ['-O', '^metadata_csum,uninit_bg'], uninit: true },
  { name: 'no descriptor checksums at all', size: '200M', args: ['-O', '^metadata_csum,^uninit_bg'] },
  { name: 'meta_bg', size: '300M', args: ['-b', '1024', '-O', 'meta_bg,^resize_inode'], big: true, uninit: true },
  { name: 'sparse_super2', size: '300M', args: ['-O', 'sparse_super2', '-E', 'num_backup_sb=2'], uninit: true },
  { name: 'no sparse_super (a backup in every group)', size: '100M', args: ['-O', '^sparse_super,^resize_inode'] },
  { name: 'lazy itable init, 128-byte inodes, small flex groups', size: '300M', args: ['-E', 'lazy_itable_init=1', '-I', '128', '-G', '4'], uninit: true },
  { name: 'MMP', size: '100M', args: [], after: (img) => sh('tune2fs', ['-O', 'mmp', '-E', 'mmp_update_interval=1', img]) },
  {
    name: 'grown offline by resize2fs (descriptors grow into moved metadata)',
    size: '100M',
    args: ['-b', '1024', '-O', '^resize_inode'],
    after: (img) => {
      truncateSync(img, 1 << 30)
      sh('resize2fs', [img])
    },
  },
  { name: 'ext3 (indirect-mapped journal)', size: '100M', args: [], cmd: 'mkfs.ext3' },
  { name: 'ext2 (no journal)', size: '100M', args: [], cmd: 'mkfs.ext2' },
]

describe('a clean ext2/3/4 file system', () => {
  for (const layout of LAYOUTS) {
    it(`agrees block for block with dumpe2fs, and no file or metadata block is free: ${layout.name}`, async () => {
      const img = join(dir, 'layout.img')
      mkfs(img, layout.size, layout.args, layout.cmd)
      const files = populate(img, layout.big === true)
      layout.after?.(img)
      const fs = await readImage(img)
      checkAgainstE2fsprogs(img, fs, files)
      if (layout.uninit) expect(dumpe2fs(img).uninitGroups, 'BLOCK_UNINIT groups exercised').toBeGreaterThan(0)
      expect(fs.journal.clean).toBe(true)
      expect(fs.journal.pendingTransactions).toBe(0)
    })
  }
})

/** e2fsck -fy: replays the journal and repairs; exit 0 or 1 is a usable file system. */
function fsck(img: string): void {
  try {
    sh('e2fsck', ['-fy', img])
  } catch (err) {
    const status = (err as { status?: number }).status
    if (status !== 1) throw err
  }
}

function blocksIn(ranges: BlockRanges): number {
  return ranges.reduce((n, [a, b]) => n + b - a + 1, 0)
}

describe('what the reader treats as free', () => {
  it("a deleted file's blocks are reported free and nothing in use is", async () => {
    const img = join(dir, 'deleted.img')
    mkfs(img, '64M', ['-L', 'reclaim-me', '-U', '6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b'])
    debugfs(img, `write ${join(dir, 'medium')} /gone`, true)
    debugfs(img, `write ${join(dir, 'small')} /kept`, true)
    const gone = inodeBlocks(img, '/gone')
    expect(blocksIn(gone)).toBeGreaterThan(3000)
    const before = toBlockRanges((await readImage(img)).freeRanges, 1024)
    expect(intersect(gone, before)).toEqual([])
    debugfs(img, 'rm /gone', true)
    const fs = await readImage(img)
    const after = toBlockRanges(fs.freeRanges, fs.blockSize)
    expect(uncovered(gone, after)).toEqual([])
    expect(intersect(inodeBlocks(img, '/kept'), after)).toEqual([])
    // Exactly the deleted file's blocks became free.
    expect(fs.freeBlocks - blocksIn(before)).toBe(blocksIn(gone))
    // The boot block and the superblock are never free.
    expect(fs.freeRanges[0]!.offset).toBeGreaterThanOrEqual(2048)
    expect({ label: fs.label, uuid: fs.uuid }).toEqual({ label: 'reclaim-me', uuid: '6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b' })
  })

  it('holds back a whole BLOCK_UNINIT group it cannot vouch for', async () => {
    const img = join(dir, 'doubt.img')
    const inGroup = (fs: Ext4FreeSpace, g: { first: number; last: number }) => intersect(toBlockRanges(fs.freeRanges, fs.blockSize), [[g.first, g.last]])
    // An uninitialised group whose descriptor counts other free blocks than ext4 would compute.
    mkfs(img, '100M', ['-b', '1024', '-O', '^metadata_csum,uninit_bg'])
    let dump = dumpe2fs(img)
    let g = dump.groups.findIndex((x, i) => x.blockUninit && i > 0)
    expect(g).toBeGreaterThan(0)
    expect(blocksIn(intersect(dump.free, [[dump.groups[g]!.first, dump.groups[g]!.last]]))).toBeGreaterThan(0)
    debugfs(img, `set_bg ${g} free_blocks_count 1000`, true)
    debugfs(img, `set_bg ${g} checksum calc`, true)
    let fs = await readImage(img)
    expect(inGroup(fs, dump.groups[g]!)).toEqual([])
    expect(inGroup(fs, dump.groups[g + 1]!)).not.toEqual([])
    // BLOCK_UNINIT without descriptor checksums: the kernel would ignore the flag.
    mkfs(img, '100M', ['-b', '1024', '-O', '^metadata_csum,^uninit_bg'])
    dump = dumpe2fs(img)
    g = 5
    expect(blocksIn(intersect(dump.free, [[dump.groups[g]!.first, dump.groups[g]!.last]]))).toBeGreaterThan(0)
    debugfs(img, `set_bg ${g} flags 2`, true)
    fs = await readImage(img)
    expect(inGroup(fs, dump.groups[g]!)).toEqual([])
    expect(inGroup(fs, dump.groups[g + 1]!)).not.toEqual([])
  })
})

describe('a file system written by the kernel', () => {
  it('agrees with dumpe2fs after files are written and deleted through a mount', async () => {
    const img = join(dir, 'kernel.img')
    const mnt = join(dir, 'mnt-kernel')
    mkfs(img, '300M', ['-b', '1024', '-G', '4'])
    const dev = attachLoop(img)
    try {
      mountExt4(dev, mnt, ['noinit_itable'])
      try {
        for (let i = 0; i < 12; i++) copyFileSync(join(dir, i % 3 === 0 ? 'large' : 'medium'), join(mnt, `f${i}`))
        sh('sync', [])
        for (let i = 0; i < 12; i += 2) sh('rm', [join(mnt, `f${i}`)])
      } finally {
        umount(mnt)
      }
    } finally {
      detachLoop(dev)
    }
    const fs = await readImage(img)
    checkAgainstE2fsprogs(img, fs, ['/f1', '/f3', '/f5', '/f7', '/f9', '/f11'])
    expect(fs.journal).toEqual({ present: true, clean: true, pendingTransactions: 0, blocksHeldByLog: 0 })
  })
})

const JOURNALS: { name: string; cmd?: string; mkfs: string[]; mount: string[]; escaped?: boolean }[] = [
  { name: '4K blocks, 64-bit tags, checksum v3', mkfs: ['-b', '4096'], mount: [] },
  {
    name: '1K blocks, 32-bit tags, v1 checksums, data=journal with escaped blocks',
    mkfs: ['-b', '1024', '-O', '^metadata_csum,^64bit', '-J', 'size=32'],
    mount: ['journal_checksum', 'data=journal'],
    escaped: true,
  },
  { name: '4K blocks, data=journal, checksum v3 over escaped blocks', mkfs: ['-b', '4096', '-J', 'size=32'], mount: ['data=journal'], escaped: true },
  { name: 'ext3 with 2K blocks: indirect-mapped journal, no checksums', cmd: 'mkfs.ext3', mkfs: ['-b', '2048'], mount: [] },
]

/**
 * Copies a device or file the kernel may be writing to as it stood at one
 * instant: two copies in a row that are identical mean no write landed in any
 * region between its first and second read, so each region held the copied
 * bytes when the first copy ended. A single `cp` of a live backing file can
 * read a transaction's log blocks before the kernel wrote them and its commit
 * block after, an image no crash leaves (the commit is written after its
 * blocks complete); the 1K-block variant's reader then met garbage where a
 * logged superblock belonged and refused the image ("different layout").
 */
function copyAtOneInstant(from: string, to: string): void {
  const again = `${to}.again`
  // jbd2 writes most log blocks through buffers outside the block device's
  // page cache, so a page of the log cached by an earlier read goes stale: each
  // read starts by dropping the clean cached pages (dirty ones, the kernel's
  // view of metadata not yet written back, stay).
  const copy = (dst: string) => {
    sh('dd', [`if=${from}`, 'iflag=nocache', 'count=0', 'status=none'])
    sh('dd', [`if=${from}`, `of=${dst}`, 'bs=1M', 'conv=sparse', 'status=none'])
  }
  for (let attempt = 0; attempt < 20; attempt++) {
    copy(to)
    copy(again)
    const same = readFileSync(to).equals(readFileSync(again))
    rmSync(again)
    if (same) return
    sh('sleep', ['0.3'])
  }
  throw new Error(`${from} kept changing while copied: no image of one instant`)
}

/**
 * Gives `target` (the image as it was before a mount) the superblock and
 * journal of `source` (a copy taken while mounted): the disk of a crash in
 * which nothing was written back since the mount. Valid only while the
 * kernel never moved the log's tail, which is checked.
 */
function transplantJournal(source: string, target: string): void {
  const from = readFileSync(source)
  const to = readFileSync(target)
  const blockSize = 1024 << from.readUInt32LE(1024 + 0x18)
  const jsb = Number(/(\d+)/.exec(debugfs(target, 'bmap <8> 0'))![1]) * blockSize
  if (from.readUInt32BE(jsb + 0x1c) !== from.readUInt32BE(jsb + 0x14)) throw new Error('the kernel checkpointed the journal; the fixture is not a pre-writeback crash')
  from.copy(to, 1024, 1024, 2048)
  for (const [a, b] of inodeBlocks(target, '<8>')) from.copy(to, a * blockSize, a * blockSize, (b + 1) * blockSize)
  writeFileSync(target, to)
}

for (const variant of JOURNALS) {
  describe(`a file system whose journal was not written back (${variant.name})`, () => {
    // Images taken while mounted with commit=1. `crash` and `crash2` copy
    // the loop device's backing file (what the disk holds; the kernel may
    // or may not have written bitmaps back yet), `live` copies /dev/loopN
    // (the kernel's page cache). `stale` is a crash in which nothing was
    // written back since mount, built deterministically: the image as it was
    // before mounting, plus the live superblock and journal.
    const images: Record<'crash' | 'crash2' | 'live' | 'stale', string> = { crash: '', crash2: '', live: '', stale: '' }

    beforeAll(() => {
      const base = join(dir, 'journal.img')
      const mnt = join(dir, 'mnt-journal')
      for (const k of Object.keys(images) as (keyof typeof images)[]) images[k] = join(dir, `journal-${k}.img`)
      mkfs(base, '128M', variant.mkfs, variant.cmd)
      debugfs(base, `write ${join(dir, 'medium')} /old`, true)
      copyFileSync(base, images.stale)
      const write = (src: string, name: string) => sh('dd', [`if=${join(dir, src)}`, `of=${join(mnt, name)}`, 'bs=1M', 'conv=fsync', 'status=none'])
      const dev = attachLoop(base)
      try {
        mountExt4(dev, mnt, ['commit=1', 'noinit_itable', ...variant.mount])
        try {
          write('medium', 'a')
          write('escape', 'b')
          sh('rm', [join(mnt, 'old')])
          sh('sleep', ['1.2'])
          copyAtOneInstant(base, images.crash)
          copyAtOneInstant(dev, images.live)
          sh('rm', [join(mnt, 'b')])
          sh('sleep', ['1.2'])
          copyAtOneInstant(base, images.crash2)
        } finally {
          umount(mnt)
        }
      } finally {
        detachLoop(dev)
      }
      transplantJournal(images.crash, images.stale)
    })

    it('reports the pending transactions and holds back every block they log', async () => {
      for (const img of Object.values(images)) {
        const fs = await readImage(img)
        const logged = loggedBlocks(img)
        expect(fs.journal.present).toBe(true)
        expect(fs.journal.clean).toBe(false)
        expect(fs.journal.pendingTransactions).toBeGreaterThan(0)
        expect(fs.journal.pendingTransactions).toBe(logged.commits)
        expect(fs.journal.blocksHeldByLog).toBe(new Set(logged.blocks).size)
        expect(intersect(blocksToRanges(logged.blocks), toBlockRanges(fs.freeRanges, fs.blockSize))).toEqual([])
        if (variant.escaped) expect(logged.escaped, 'escaped blocks in the log').toBeGreaterThan(0)
      }
    })

    it('keeps files allocated only in the log in use, though the on-disk bitmaps call their blocks free', async () => {
      const replayed = join(dir, 'journal-replayed.img')
      copyFileSync(images.stale, replayed)
      fsck(replayed)
      const fileBlocks = merge([...inodeBlocks(replayed, '/a'), ...inodeBlocks(replayed, '/b')])
      // The premise: reading the bitmaps alone would release these blocks.
      expect(blocksIn(fileBlocks)).toBeGreaterThan(800)
      expect(blocksIn(intersect(fileBlocks, dumpe2fs(images.stale).free))).toBe(blocksIn(fileBlocks))
      const fs = await readImage(images.stale)
      expect(intersect(fileBlocks, toBlockRanges(fs.freeRanges, fs.blockSize))).toEqual([])
    })

    it('is conservative: e2fsck replaying the log frees a superset of what it reports free', async () => {
      for (const img of Object.values(images)) {
        const replayed = join(dir, 'journal-replayed.img')
        copyFileSync(img, replayed)
        fsck(replayed)
        const after = await readImage(replayed)
        checkAgainstE2fsprogs(replayed, after, ['/a'])
        expect(after.journal.clean).toBe(true)
        const before = await readImage(img)
        expect(uncovered(toBlockRanges(before.freeRanges, before.blockSize), toBlockRanges(after.freeRanges, after.blockSize))).toEqual([])
        expect(before.freeBlocks).toBeLessThanOrEqual(after.freeBlocks)
      }
    })
  })
}

describe('a journal holding fast commits', () => {
  it('is NOT_SUPPORTED while they are pending (their replay allocates blocks from logical records)', async () => {
    const img = join(dir, 'fc.img')
    const snap = join(dir, 'fc-crash.img')
    const mnt = join(dir, 'mnt-fc')
    mkfs(img, '128M', ['-O', 'fast_commit'])
    const dev = attachLoop(img)
    try {
      mountExt4(dev, mnt, ['commit=30'])
      try {
        for (const name of ['x', 'y']) sh('dd', [`if=${join(dir, 'medium')}`, `of=${join(mnt, name)}`, 'bs=64k', 'conv=fsync', 'status=none'])
        copyAtOneInstant(img, snap)
      } finally {
        umount(mnt)
      }
    } finally {
      detachLoop(dev)
    }
    expect(await codeOf(readImage(snap))).toBe('NOT_SUPPORTED')
    // Once unmounted the log is written back, and the file system is readable.
    checkAgainstE2fsprogs(img, await readImage(img), ['/x', '/y'])
  })
})

describe('the jbd2 log walker on hand-built logs', () => {
  const bs = 1024
  const TAG_FORMATS: [string, number][] = [
    ['checksum v3, 64-bit', INCOMPAT.CSUM_V3 | INCOMPAT.BIT64],
    ['checksum v3, 32-bit', INCOMPAT.CSUM_V3],
    ['checksum v2 (the 10/14-byte tag), 64-bit', INCOMPAT.CSUM_V2 | INCOMPAT.BIT64],
    ['checksum v2, 32-bit', INCOMPAT.CSUM_V2],
    ['no checksums, 64-bit', INCOMPAT.BIT64],
    ['no checksums, 32-bit', 0],
  ]
  const BITMAP = 100
  const bitmapV1 = dataBlock(bs, 0x0f, true) // starts with the jbd2 magic: escaped in the log
  const bitmapV2 = dataBlock(bs, 0xf0)
  // T7 wraps past the journal's end (32 blocks, log area 1..31), T8 revokes,
  // T9 never commits.
  const LOG: LogEntry[] = [
    { kind: 'descriptor', tags: [{ target: BITMAP, data: bitmapV1 }, { target: 101, data: dataBlock(bs, 1) }, { target: 102, data: dataBlock(bs, 2) }] },
    { kind: 'commit' },
    { kind: 'descriptor', tags: [{ target: BITMAP, data: bitmapV2 }, { target: 200, data: dataBlock(bs, 3) }] },
    { kind: 'revoke', blocks: [101] },
    { kind: 'commit' },
    { kind: 'descriptor', tags: [{ target: 300, data: dataBlock(bs, 4) }] },
  ]
  // Index into `placed` of each block the log above writes.
  const AT = { desc7: 0, data7: [1, 2, 3], commit7: 4, desc8: 5, data8: [6, 7], revoke8: 8, commit8: 9, desc9: 10 }
  const build = (incompat: number, extra: { errno?: number } = {}) =>
    buildJournal({ blockSize: bs, blocks: 32, first: 1, start: 29, sequence: 7, incompat: incompat | INCOMPAT.REVOKE, ...extra }, LOG)
  const walk = (dev: ReturnType<typeof build>) => readJournalLog(dev, { fsBlockSize: bs, fsBlocks: 1000, wantCopy: (b) => b === BITMAP })

  for (const [name, incompat] of TAG_FORMATS) {
    it(`walks a log that wraps past the journal's end, with escaped blocks and SAME_UUID tags: ${name}`, async () => {
      const dev = build(incompat)
      expect(dev.placed[AT.data7[2]!]).toBe(1) // T7's last data block wrapped to the start of the log area
      const log = await walk(dev)
      expect(log.committedTransactions).toBe(2)
      expect([...log.targets].sort((a, b) => a - b)).toEqual([BITMAP, 101, 102, 200, 300])
      const copies = log.copies.get(BITMAP)!
      expect(copies).toHaveLength(2)
      expect(copies[0]!.readUInt32BE(0)).toBe(JBD2_MAGIC)
      expect(copies[0]!.equals(bitmapV1)).toBe(true)
      expect(copies[1]!.equals(bitmapV2)).toBe(true)
    })
  }

  it('refuses a committed logged block that fails its checksum', async () => {
    const dev = build(INCOMPAT.CSUM_V3 | INCOMPAT.BIT64)
    dev.blocksData[dev.placed[AT.data7[1]!]!]![100] ^= 1
    expect(await codeOf(walk(dev))).toBe('FS_CORRUPT')
  })

  it('refuses a descriptor or revoke block that fails its checksum', async () => {
    for (const at of [AT.desc7, AT.revoke8]) {
      const dev = build(INCOMPAT.CSUM_V3)
      dev.blocksData[dev.placed[at]!]![500] ^= 1
      expect(await codeOf(walk(dev))).toBe('FS_CORRUPT')
    }
  })

  it('ends the log at a commit block that fails its checksum, as jbd2 does, still holding its blocks', async () => {
    const dev = build(INCOMPAT.CSUM_V3)
    dev.blocksData[dev.placed[AT.commit8]!]![40] ^= 1
    const log = await walk(dev)
    expect(log.committedTransactions).toBe(1)
    expect(log.copies.get(BITMAP)).toHaveLength(1)
    expect(log.targets.has(200)).toBe(true)
    expect(log.targets.has(300)).toBe(false)
  })

  it('refuses logs it cannot replay with certainty: async commit, fast commit, a recorded journal error', async () => {
    expect(await codeOf(walk(build(INCOMPAT.CSUM_V3 | INCOMPAT.ASYNC_COMMIT)))).toBe('NOT_SUPPORTED')
    expect(await codeOf(walk(build(INCOMPAT.CSUM_V3 | INCOMPAT.FAST_COMMIT)))).toBe('NOT_SUPPORTED')
    expect(await codeOf(walk(build(INCOMPAT.CSUM_V3, { errno: -5 })))).toBe('FS_CORRUPT')
  })
})

describe('input that is not an ext2/3/4 file system', () => {
  it('is FS_UNKNOWN: zeros, random bytes, a FAT boot sector, a tiny device', async () => {
    expect(await codeOf(readExt4FreeSpace(bufferSource(Buffer.alloc(4 << 20))))).toBe('FS_UNKNOWN')
    const random = Buffer.alloc(4 << 20)
    for (let i = 0; i < random.length; i += 4) random.writeUInt32LE((Math.random() * 0x1_0000_0000) >>> 0, i)
    random.writeUInt16LE(0x1234, 1024 + 0x38)
    expect(await codeOf(readExt4FreeSpace(bufferSource(random)))).toBe('FS_UNKNOWN')
    const fat = Buffer.alloc(4 << 20)
    fat.write('\xeb\x3c\x90mkfs.fat', 0, 'latin1')
    fat.writeUInt16LE(512, 11)
    fat.write('FAT16   ', 54, 'latin1')
    fat.writeUInt16LE(0xaa55, 510)
    expect(await codeOf(readExt4FreeSpace(bufferSource(fat)))).toBe('FS_UNKNOWN')
    expect(await codeOf(readExt4FreeSpace(bufferSource(Buffer.alloc(1500))))).toBe('FS_UNKNOWN')
  })

  it('is FS_UNKNOWN when the image is truncated below the file system it holds', async () => {
    const img = join(dir, 'truncated.img')
    mkfs(img, '64M', [])
    truncateSync(img, 32 << 20)
    expect(await codeOf(readImage(img))).toBe('FS_UNKNOWN')
    truncateSync(img, 1800)
    expect(await codeOf(readImage(img))).toBe('FS_UNKNOWN')
  })
})

describe('damaged or unsupported ext4', () => {
  function patch(img: string, offset: number, bytes: Buffer): void {
    const buf = readFileSync(img)
    bytes.copy(buf, offset)
    writeFileSync(img, buf)
  }

  /** Byte offset of group g's descriptor in an image with 4K blocks and classic (non-meta_bg) layout. */
  function descAt(img: string, g: number): number {
    const sb = readFileSync(img).subarray(1024, 2048)
    const size = sb.readUInt32LE(0x60) & 0x80 ? sb.readUInt16LE(0xfe) : 32
    return 4096 + g * size
  }

  function u32(v: number): Buffer {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(v >>> 0)
    return b
  }

  it('is FS_CORRUPT when a group descriptor fails its checksum (metadata_csum)', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '64M', ['-b', '4096'])
    // Descriptors start at block 1; flip the block bitmap of group 0.
    patch(img, 4096, u32(readFileSync(img).readUInt32LE(4096) + 1))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is FS_CORRUPT when a group descriptor points outside the device (no checksums to catch it)', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '300M', ['-b', '4096', '-O', '^metadata_csum,^uninit_bg'])
    patch(img, descAt(img, 1), u32(0x7fff0000))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is FS_CORRUPT when two groups claim the same bitmap block', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '300M', ['-b', '4096', '-O', '^metadata_csum,^uninit_bg'])
    patch(img, descAt(img, 1), readFileSync(img).subarray(4096, 4100))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is FS_CORRUPT when a block bitmap fails its checksum', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '64M', ['-b', '4096'])
    const bitmap = readFileSync(img).readUInt32LE(4096)
    patch(img, bitmap * 4096 + 3000, Buffer.from([0x5a]))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is FS_CORRUPT when a bitmap (without checksums) marks an inode table free', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '64M', ['-b', '4096', '-O', '^metadata_csum,^uninit_bg'])
    const buf = readFileSync(img)
    const bitmap = buf.readUInt32LE(4096)
    const itable = buf.readUInt32LE(4096 + 8)
    patch(img, bitmap * 4096 + (itable >> 3), Buffer.from([buf[bitmap * 4096 + (itable >> 3)]! & ~(1 << (itable & 7))]))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it("is FS_CORRUPT when a clean file system's descriptor counts other free blocks than its bitmap", async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '100M', ['-b', '1024'])
    const g = dumpe2fs(img).groups.findIndex((x) => !x.blockUninit)
    debugfs(img, `set_bg ${g} free_blocks_count 7`, true)
    debugfs(img, `set_bg ${g} checksum calc`, true)
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is FS_CORRUPT when the superblock fails its checksum or records errors', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '64M', [])
    patch(img, 1024 + 0x78, Buffer.from('relabelled'))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
    mkfs(img, '64M', ['-O', '^metadata_csum'])
    patch(img, 1024 + 0x3a, Buffer.from([0x03, 0x00]))
    expect(await codeOf(readImage(img))).toBe('FS_CORRUPT')
  })

  it('is NOT_SUPPORTED for bigalloc, an external journal, a journal device, and unknown features', async () => {
    const img = join(dir, 'bad.img')
    mkfs(img, '128M', ['-O', 'bigalloc', '-C', '65536'])
    expect(await codeOf(readImage(img))).toBe('NOT_SUPPORTED')
    mkfs(img, '16M', ['-O', 'journal_dev'], 'mke2fs')
    expect(await codeOf(readImage(img))).toBe('NOT_SUPPORTED')
    mkfs(img, '64M', ['-O', '^metadata_csum'])
    patch(img, 1024 + 0xe0, u32(0)) // s_journal_inum: the journal lives elsewhere
    expect(await codeOf(readImage(img))).toBe('NOT_SUPPORTED')
    mkfs(img, '64M', ['-O', '^metadata_csum'])
    const incompat = readFileSync(img).readUInt32LE(1024 + 0x60)
    patch(img, 1024 + 0x60, u32(incompat | 0x1000000))
    expect(await codeOf(readImage(img))).toBe('NOT_SUPPORTED')
  })
})
