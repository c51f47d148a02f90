/**
 * A discard of a whole huge (thin) volume walks what the volume holds, not
 * every extent of its range (lib/relay/thin.ts forEachMappedExtent, the read
 * cache's drop): a peer's discard entry over a 2^53-byte replica, or a host's
 * punch-hole over a 1 PiB volume, used to spin the event loop for minutes —
 * FUSE, the control socket and the wire all stalled — and again at each redo.
 */
import { expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { memorySystems, stacksPerTest } from '../helpers/stack.js'

const SIZE = 2 ** 50
const openStack = stacksPerTest('vvfs-huge-discard-')

it('a discard of a whole 1 PiB volume ends at once (2^30 extents, two allocated) and leaves zeros where the data was', { timeout: 20_000 }, async () => {
  const s = await openStack({ systems: 1, capacity: 16 * EXTENT_SIZE, size: SIZE, systemsFrom: memorySystems })
  await s.volume.write(0, Buffer.alloc(CHUNK_SIZE, 1))
  await s.volume.write(SIZE - CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, 2))
  // Read once so the read cache holds an extent the discard must drop.
  const back = Buffer.alloc(CHUNK_SIZE)
  await s.volume.read(0, CHUNK_SIZE, back)
  expect(back[0]).toBe(1)
  await s.volume.discard(0, SIZE)
  for (const at of [0, SIZE - CHUNK_SIZE]) {
    await s.volume.read(at, CHUNK_SIZE, back)
    expect(back.every((b) => b === 0), `bytes at ${at}`).toBe(true)
  }
  expect(s.map.extentCount()).toBe(0)
})
