/**
 * writeFileDurably: a small file replaced so that after a crash or power cut
 * it holds either the old or the new content, durably before the call
 * returns (temp file, fsync, rename, fsync of the directory). Used for
 * state written rarely and whole: the file catalog, a storage server's
 * identity and fence, the failover records. Without the directory's fsync a
 * power cut can undo the rename after the caller went on (the powercut
 * harness, native/powercut, tracks file syncs, not directory entries, so no
 * test here sees the difference). No concurrency of its own: one writer
 * per path.
 */
import { open, rename } from 'node:fs/promises'
import { dirname } from 'node:path'

export async function writeFileDurably(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp`
  const fh = await open(tmp, 'w', 0o600)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
}
