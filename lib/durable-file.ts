/**
 * Directory entries made durable. writeFileDurably: a small file replaced so
 * that after a crash or power cut it holds either the old or the new
 * content, durably before the call returns (temp file, fsync, rename, fsync
 * of the directory). Used for state written rarely and whole: the file
 * catalog, a storage server's identity and fence, the failover records.
 * Without the directory's fsync a power cut can undo the rename after the
 * caller went on (test/unit/powercut.test.ts shows it: the powercut harness
 * undoes name changes no directory fsync covered). openLevelDurably: a
 * LevelDB store opened, then its directory fsynced — LevelDB 1.20 renames
 * CURRENT onto the MANIFEST it just wrote without a directory fsync, and a
 * new store's first MANIFEST is never synced at all (NewDB), so a power cut
 * before the next journal commit left a new store whose CURRENT names an
 * empty MANIFEST: "Corruption: no meta-nextfile entry in descriptor", the
 * store does not open (powercut.test.ts, the new volume map store case).
 * removeDurably: a directory tree removed, the removal durable when it
 * returns (a secondary's dropped pair store came back after a power cut and
 * re-created its deleted volume: secondary-delete-powercut.test.ts).
 * No concurrency of its own: one writer per path.
 */
import { open, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'

/** Entries created, renamed or removed in `dir` before this call are durable once it returns. */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

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
  await syncDirectory(dirname(path))
}

/** Opens a LevelDB store at `path` and makes the open's CURRENT (and a new store's creation) durable; closes it if that fails. */
export async function openLevelDurably(db: { open(): Promise<void>; close(): Promise<void> }, path: string): Promise<void> {
  await db.open()
  try {
    await syncDirectory(path)
  } catch (err) {
    await db.close()
    throw err
  }
}

/** Removes `path` (a whole tree; nothing if it is not there) and fsyncs its parent: after a power cut it stays gone. */
export async function removeDurably(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true })
  await syncDirectory(dirname(path))
}
