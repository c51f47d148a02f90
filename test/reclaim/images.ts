/**
 * Real ext2/3/4 images for the reclaim tests, built with mke2fs and filled
 * with debugfs (no mount) or through a loop mount, and the e2fsprogs views
 * (dumpe2fs, debugfs) the reader is checked against. Loop devices and mounts
 * go through test/helpers/daemon.ts so cleanupAll() undoes them even when a
 * test fails.
 */
import { open, type FileHandle } from 'node:fs/promises'
import { writeFileSync } from 'node:fs'
import type { ByteSource, FreeRange } from '../../lib/reclaim/ext4.js'
import { sh } from '../helpers/daemon.js'

export interface FileSource extends ByteSource {
  close(): Promise<void>
}

/** A ByteSource over an image file; reads past its end return zeros. */
export async function fileSource(path: string): Promise<FileSource> {
  const fh: FileHandle = await open(path, 'r')
  const { size } = await fh.stat()
  return {
    size,
    async read(offset, length) {
      const buf = Buffer.alloc(length)
      let done = 0
      while (done < length && offset + done < size) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
      return buf
    },
    close: () => fh.close(),
  }
}

export function mkfs(path: string, size: string, args: string[] = [], cmd = 'mkfs.ext4'): void {
  sh('rm', ['-f', path])
  sh('truncate', ['-s', size, path])
  sh(cmd, ['-q', '-F', ...args, path])
}

export function debugfs(img: string, request: string, write = false): string {
  return sh('debugfs', [...(write ? ['-w'] : []), '-R', request, img])
}

/** A file of `bytes` non-zero bytes (debugfs makes holes of zero blocks). */
export function patternFile(path: string, bytes: number, seed: number): void {
  const buf = Buffer.alloc(bytes)
  let x = (seed * 2654435761 + 1) >>> 0
  for (let i = 0; i < bytes; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    buf.writeUInt32LE((x | 0x01010101) >>> 0, Math.min(i, bytes - 4))
  }
  writeFileSync(path, buf)
}

/** Block ranges [first, last] inclusive, sorted and merged. */
export type BlockRanges = [number, number][]

export function merge(ranges: BlockRanges): BlockRanges {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0])
  const out: BlockRanges = []
  for (const [a, b] of sorted) {
    const last = out[out.length - 1]
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b)
    else out.push([a, b])
  }
  return out
}

function parseRangeList(text: string): BlockRanges {
  const out: BlockRanges = []
  for (const part of text.split(',')) {
    const t = part.trim()
    if (!t) continue
    const [a, b] = t.split('-')
    out.push([Number(a), Number(b ?? a)])
  }
  return out
}

export interface DumpInfo {
  blockSize: number
  free: BlockRanges
  /** Every block dumpe2fs names as superblock, descriptors, reserved GDT, bitmaps or inode tables. */
  metadata: BlockRanges
  groups: { first: number; last: number; blockUninit: boolean }[]
  uninitGroups: number
}

export function dumpe2fs(img: string): DumpInfo {
  const text = sh('dumpe2fs', [img])
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(text)![1])
  const free: BlockRanges = []
  const metadata: BlockRanges = []
  const groups: DumpInfo['groups'] = []
  for (const line of text.split('\n')) {
    const g = /^Group \d+: \(Blocks (\d+)-(\d+)\)/.exec(line)
    if (g) groups.push({ first: Number(g[1]), last: Number(g[2]), blockUninit: line.includes('BLOCK_UNINIT') })
    const f = /^\s+Free blocks: (.*)$/.exec(line)
    if (f) free.push(...parseRangeList(f[1]!))
    for (const m of line.matchAll(/(?:superblock at|Group descriptors at|Reserved GDT blocks at|Block bitmap at|Inode bitmap at|Inode table at) (\d+)(?:-(\d+))?/g)) {
      metadata.push([Number(m[1]), Number(m[2] ?? m[1])])
    }
  }
  return { blockSize, free: merge(free), metadata: merge(metadata), groups, uninitGroups: groups.filter((g) => g.blockUninit).length }
}

/** Every block of a file or inode, data and map ("debugfs stat"), e.g. spec "/a" or "<8>". */
export function inodeBlocks(img: string, spec: string): BlockRanges {
  const text = debugfs(img, `stat ${spec}`)
  // debugfs reports a missing file on stderr and exits 0: never read that as "no blocks".
  if (!/^Inode: \d+/m.test(text)) throw new Error(`debugfs stat ${spec} found nothing in ${img}`)
  const section = text.split(/\n(?:EXTENTS|BLOCKS):\n/)[1] ?? ''
  const out: BlockRanges = []
  for (const m of section.matchAll(/\([^)]*\):(\d+)(?:-(\d+))?/g)) out.push([Number(m[1]), Number(m[2] ?? m[1])])
  return merge(out)
}

/** File-system blocks that `debugfs logdump` finds logged in the journal. */
export function loggedBlocks(img: string): { blocks: number[]; commits: number; escaped: number } {
  const text = sh('debugfs', ['-R', 'logdump -a', img])
  const tags = [...text.matchAll(/FS block (\d+) logged at journal block \d+ \(flags 0x([0-9a-f]+)\)/g)]
  const commits = [...text.matchAll(/type 2 \(commit block\)/g)].length
  return { blocks: tags.map((m) => Number(m[1])), commits, escaped: tags.filter((m) => parseInt(m[2]!, 16) & 1).length }
}

export function toBlockRanges(ranges: FreeRange[], blockSize: number): BlockRanges {
  return ranges.map((r) => [r.offset / blockSize, (r.offset + r.length) / blockSize - 1])
}

/** Ranges of `inner` not covered by `outer` (both merged). */
export function uncovered(inner: BlockRanges, outer: BlockRanges): BlockRanges {
  const out: BlockRanges = []
  let j = 0
  for (const [a0, b] of inner) {
    let a = a0
    while (j < outer.length && outer[j]![1] < a) j++
    let k = j
    while (a <= b) {
      const o = outer[k]
      if (!o || o[0] > b) {
        out.push([a, b])
        break
      }
      if (o[0] > a) out.push([a, o[0] - 1])
      a = Math.max(a, o[1] + 1)
      k++
    }
  }
  return out
}

/** Ranges where `a` and `b` meet. */
export function intersect(a: BlockRanges, b: BlockRanges): BlockRanges {
  const out: BlockRanges = []
  let i = 0
  let j = 0
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i]![0], b[j]![0])
    const hi = Math.min(a[i]![1], b[j]![1])
    if (lo <= hi) out.push([lo, hi])
    if (a[i]![1] < b[j]![1]) i++
    else j++
  }
  return out
}

export function blocksToRanges(blocks: number[]): BlockRanges {
  return merge(blocks.map((b) => [b, b]))
}
