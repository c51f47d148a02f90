/**
 * File-system-aware reclaim (claims 8 and 17): read the ext4 file system on a
 * volume — superblock, group descriptors, block bitmaps and its journal, so
 * that nothing still pending in the log is taken for free — and release every
 * chunk whose blocks ext4 marks free. Works with no discard from the host.
 *
 * It is only safe while nothing writes to the volume: a block ext4 allocates
 * between our read and our release would be lost. So it is refused while the
 * volume file is open for writing (an attached loop device counts), unless
 * the caller says the file system is frozen (`--force` after `fsfreeze`);
 * while it runs, new writable opens are refused.
 *
 * Only whole 4 KiB chunks inside free ranges are released.
 */
import { VvfsError } from '../errors.js'
import { CHUNK_SIZE } from '../layout.js'
import { readExt4FreeSpace, type Ext4FreeSpace } from '../reclaim/ext4.js'
import type { VolumeHandle } from './volume-handle.js'

export interface ReclaimResult {
  volume: string
  filesystem: 'ext4'
  uuid: string
  label: string
  blockSize: number
  /** Bytes ext4 counts free. */
  fsFreeBytes: number
  /** Allocated bytes released (or, with dryRun, that would be). */
  releasedBytes: number
  /** Stored data chunks dropped, in bytes. */
  droppedBytes: number
  dryRun: boolean
  journal: Ext4FreeSpace['journal']
}

/** What reclaim uses of a volume: its byte face, its open state and its extent operations. */
export type ReclaimableVolume = Pick<VolumeHandle, 'name' | 'size' | 'allocatedBytes' | 'isOpenForWrite' | 'openCounts' | 'blockWriters' | 'read' | 'discard' | 'extents'>

/**
 * How long reclaim waits for writers to close before refusing: `losetup -d`
 * returns before the kernel's release of the file reaches the daemon (FUSE
 * sends RELEASE in the background); under load test/system/reclaim.test.ts
 * saw the loop device still counted right after it was detached.
 */
const WRITERS_CLOSE_MS = 2000

export async function reclaimVolume(v: ReclaimableVolume, opts: { dryRun: boolean; force: boolean }): Promise<ReclaimResult> {
  for (const end = Date.now() + WRITERS_CLOSE_MS; v.isOpenForWrite() && !opts.force && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20))
  if (v.isOpenForWrite() && !opts.force) {
    throw new VvfsError(
      'VOLUME_BUSY',
      `volume ${v.name} is open for writing (${Object.keys(v.openCounts()).join(', ')}; an attached loop device counts): ` +
        'unmount the file system and detach it, or freeze it (fsfreeze -f) and pass --force',
    )
  }
  const release = v.blockWriters(`reclaim of ${v.name} in progress`)
  try {
    const fs = await readExt4FreeSpace({
      size: v.size,
      read: async (offset, length) => {
        const buf = Buffer.alloc(length)
        await v.read(offset, length, buf)
        return buf
      },
    })
    const ranges = fs.freeRanges
      .map((r) => ({ first: Math.ceil(r.offset / CHUNK_SIZE), end: Math.floor((r.offset + r.length) / CHUNK_SIZE) }))
      .filter((r) => r.end > r.first)
    let releasedBytes = 0
    let droppedBytes = 0
    if (opts.dryRun) {
      for (const r of ranges) {
        const w = await v.extents.wouldRelease(r.first, r.end - r.first)
        releasedBytes += w.allocation
        droppedBytes += w.chunks * CHUNK_SIZE
      }
    } else {
      const before = v.allocatedBytes
      for (const r of ranges) {
        droppedBytes += (await v.extents.wouldRelease(r.first, r.end - r.first)).chunks * CHUNK_SIZE
        await v.discard(r.first * CHUNK_SIZE, (r.end - r.first) * CHUNK_SIZE)
      }
      await v.extents.settle()
      releasedBytes = before - v.allocatedBytes
    }
    return {
      volume: v.name,
      filesystem: 'ext4',
      uuid: fs.uuid,
      label: fs.label,
      blockSize: fs.blockSize,
      fsFreeBytes: fs.freeBlocks * fs.blockSize,
      releasedBytes,
      droppedBytes,
      dryRun: opts.dryRun,
      journal: fs.journal,
    }
  } finally {
    release()
  }
}
