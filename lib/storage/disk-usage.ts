/**
 * diskUsage: what a directory takes on disk, as `du -s --block-size=1` counts
 * it — the blocks allocated to each file (st_blocks × 512), not their
 * apparent sizes, summed over the tree (issue 17: `storage list`'s DISK, the
 * idle compaction policy's trigger).
 *
 * Concurrency: reads only; files that vanish while it walks (LevelDB deletes
 * tables after a compaction) are skipped, so the figure is of a moment
 * during the walk, which is all `du` promises too.
 *
 * Failure modes: a directory that cannot be read is IO_ERROR; a missing
 * top directory counts as 0 bytes.
 */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { VvfsError } from '../errors.js'

function vanished(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'ENOENT'
}

/** Bytes allocated on disk to `path` and everything under it. */
export async function diskUsage(path: string): Promise<number> {
  let st
  try {
    st = await lstat(path)
  } catch (err) {
    if (vanished(err)) return 0
    throw new VvfsError('IO_ERROR', `cannot stat ${path}: ${(err as Error).message}`, { cause: err })
  }
  let bytes = st.blocks * 512
  if (!st.isDirectory()) return bytes
  let names: string[]
  try {
    names = await readdir(path)
  } catch (err) {
    if (vanished(err)) return 0
    throw new VvfsError('IO_ERROR', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
  for (const name of names) bytes += await diskUsage(join(path, name))
  return bytes
}
