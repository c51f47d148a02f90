/**
 * Issue 17 (ext4 on a loop device, the small-file job): the thin layer gives
 * a whole slot to an unallocated extent that a sequential run of writes
 * enters, even when each write is small — ext4's write-back of 20,000 small
 * files reached the volume as one stream of 4–128 KiB writes, each starting
 * where the last ended, and as fragments every write cost a map record with
 * a log sync and every extent a promotion that held the stream's writes
 * (unpack + sync 5.25 s against qcow2's 3.44). Scattered small writes (mkfs's
 * metadata) still get fragments, so a thin volume stays thin.
 *
 * In-process stack over in-memory stores (the policy is the thin layer's,
 * whatever the store), reopened to show the data and the map survive.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { WHOLE_AT } from '../../lib/relay/thin.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openStack, memorySystems, stacksPerTest, type Stack, type StackOptions } from '../helpers/stack.js'

const KiB = 1024
const stackOf = stacksPerTest('vvfs-sequential-allocation-')
const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

/** A write's data: its offset in every 8 bytes, so no two chunks are alike and none is zeros. */
function dataAt(offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length)
  for (let i = 0; i < length; i += 8) buf.writeBigUInt64LE(BigInt(offset + i + 1), i)
  return buf
}

/** Writes [from, to) as back-to-back writes of the sizes given, in turn. */
async function stream(stack: Stack, from: number, to: number, sizes: number[]): Promise<void> {
  let at = from
  for (let i = 0; at < to; i++) {
    const len = Math.min(sizes[i % sizes.length]!, to - at)
    await stack.volume.write(at, dataAt(at, len))
    at += len
  }
}

async function readsBack(stack: Stack, from: number, to: number): Promise<boolean> {
  const into = Buffer.alloc(to - from)
  await stack.volume.read(from, to - from, into)
  return into.equals(dataAt(from, to - from))
}

const kinds = (stack: Stack, extents: number[]) => extents.map((e) => stack.map.get(e)?.kind ?? 'unallocated')

describe('allocation of a sequential run of small writes', () => {
  it('a run of 4–16 KiB writes that enters new extents gets a whole slot for each, and reads back after a restart', async () => {
    const opts: StackOptions = { dir: tempDir('vvfs-sequential-allocation-'), systems: 2, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE, systemsFrom: memorySystems }
    dirs.push(opts.dir)
    const stack = await openStack(opts, true)
    // Starts 256 KiB before extent 1 (extent 0's part begins the run: fragments), runs through extents 1 and 2.
    const from = EXTENT_SIZE - 256 * KiB
    const to = 3 * EXTENT_SIZE
    const sizes = [4 * KiB, 8 * KiB, 16 * KiB, 12 * KiB]
    // The first write into each new extent: whole at once (64 fragments would be promoted later, in the background).
    await stream(stack, from, EXTENT_SIZE + 4 * KiB, sizes)
    expect(kinds(stack, [0, 1])).toEqual(['fragments', 'whole'])
    await stream(stack, EXTENT_SIZE + 4 * KiB, 2 * EXTENT_SIZE + 8 * KiB, sizes)
    expect(kinds(stack, [2])).toEqual(['whole'])
    await stream(stack, 2 * EXTENT_SIZE + 8 * KiB, to, sizes)
    await stack.volume.flush()
    await stack.thin.settle()
    expect(kinds(stack, [1, 2])).toEqual(['whole', 'whole'])
    expect(await readsBack(stack, from, to)).toBe(true)

    await stack.close()
    const reopened = await openStack(opts, false)
    try {
      expect(kinds(reopened, [1, 2])).toEqual(['whole', 'whole'])
      expect(await readsBack(reopened, from, to)).toBe(true)
    } finally {
      await reopened.close()
    }
  })

  it('scattered 4 KiB writes, a run shorter than WHOLE_AT and a run broken by a gap still get fragments', async () => {
    const stack = await stackOf({ systems: 1, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE, systemsFrom: memorySystems })
    // mkfs-like: one block here and there, in extents 0..3.
    for (const e of [0, 1, 2, 3]) await stack.volume.write(e * EXTENT_SIZE + 8 * CHUNK_SIZE, dataAt(e * EXTENT_SIZE + 8 * CHUNK_SIZE, CHUNK_SIZE))
    // A run of WHOLE_AT - 1 chunks across the border of extents 4 and 5.
    const short = 5 * EXTENT_SIZE - 8 * CHUNK_SIZE
    await stream(stack, short, short + (WHOLE_AT - 1) * CHUNK_SIZE, [CHUNK_SIZE])
    // A long run in extent 6, then, one chunk past its end (a gap), a write into extent 7.
    await stream(stack, 7 * EXTENT_SIZE - 2 * WHOLE_AT * CHUNK_SIZE, 7 * EXTENT_SIZE - CHUNK_SIZE, [8 * KiB])
    await stack.volume.write(7 * EXTENT_SIZE, dataAt(7 * EXTENT_SIZE, 8 * KiB))
    await stack.volume.flush()
    expect(kinds(stack, [0, 1, 2, 3, 4, 5, 7])).toEqual(Array(7).fill('fragments'))
    expect(await readsBack(stack, short, short + (WHOLE_AT - 1) * CHUNK_SIZE)).toBe(true)
  })
})
