/**
 * Power cuts for tests: what a directory (a daemon's state) would hold after
 * the power failed, given the sync log the powercut interposer
 * (native/powercut/powercut.c, loaded with LD_PRELOAD) wrote while processes
 * worked in it. The model is LevelDB's db/fault_injection_test.cc: every file
 * keeps the bytes it had when it was last fsync'd/fdatasync'd and loses the
 * rest; a file never synced since it was created is left empty.
 *
 * Why truncation is faithful here: every file in a vvfs state directory is
 * append-only (LevelDB's logs, tables, MANIFEST, LOG; the catalog is written
 * as a new temporary file, fsynced, then renamed over the old one), so the
 * unsynced part of a file is always its tail. An open(O_TRUNC) or ftruncate
 * is logged and modelled as "the truncation is durable, what followed it is
 * not" until the next sync. O_SYNC/O_DSYNC opens and sync()/syncfs() are
 * logged and refused here (not modelled) rather than silently mis-modelled.
 *
 * Names (create, rename, unlink) are kept as they were at the cut, which is
 * ext4 data=ordered: namespace changes go into one ordered journal, and every
 * fsync/fdatasync that has metadata to write (a new file, a new size) commits
 * all earlier ones with it; what a power cut typically leaves is exactly the
 * zero-length or short files of data not yet written back, which this models.
 * (Losing an unsynced rename or unlink is not modelled: undoing an unlink
 * needs data the file system no longer has.)
 *
 * Tracking is cumulative across clean restarts: a daemon's orderly exit
 * syncs nothing by itself, so the durable sizes are those at the start of
 * tracking (or of the last cut) and what was synced since, whatever process
 * did it. Files are identified by device and inode, so renames need no
 * following; the interposer logs "gone" when an inode loses its last name,
 * because ext4 reuses inode numbers at once.
 *
 * Concurrency: cut() must run after every process writing the log and the
 * directory is dead (the caller SIGKILLs the daemon and waits for it).
 */
import { existsSync, lstatSync, readdirSync, readFileSync, renameSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

const ROOT = resolve(import.meta.dirname, '../..')
export const POWERCUT_SOURCE = join(ROOT, 'native/powercut/powercut.c')
/** Built by scripts/build-native.mjs (npm ci's postinstall, so `make setup`). */
export const POWERCUT_LIBRARY = join(ROOT, 'native/powercut/build/powercut.so')

/** The environment that runs a process under the interposer, logging to `log`. */
export function powercutEnv(log: string): NodeJS.ProcessEnv {
  if (!existsSync(POWERCUT_LIBRARY) || statSync(POWERCUT_LIBRARY).mtimeMs < statSync(POWERCUT_SOURCE).mtimeMs) {
    throw new Error(`${POWERCUT_LIBRARY} is missing or older than its source: run node scripts/build-native.mjs`)
  }
  const preload = [process.env.LD_PRELOAD, POWERCUT_LIBRARY].filter(Boolean).join(' ')
  return { LD_PRELOAD: preload, VVFS_POWERCUT_LOG: log }
}

export interface CutReport {
  /** Files that lost bytes, with what they kept and what they had. */
  truncated: { path: string; kept: number; had: number }[]
  droppedBytes: number
}

interface FileFact {
  path: string
  size: number
}

function key(dev: bigint | string, ino: bigint | string): string {
  return `${dev}:${ino}`
}

/** Every regular file under dir, by device:inode. */
function regularFiles(dir: string): Map<string, FileFact> {
  const out = new Map<string, FileFact>()
  if (!existsSync(dir)) return out
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name)
      const st = lstatSync(p, { bigint: true })
      if (st.isDirectory()) walk(p)
      else if (st.isFile()) out.set(key(st.dev, st.ino), { path: p, size: Number(st.size) })
    }
  }
  walk(dir)
  return out
}

/**
 * Tracks one directory: what is durable in it as of now (its files at their
 * current sizes: the test treats the start as the last sync of everything),
 * plus what the processes that append to `log` sync from now on.
 */
export class PowerCutTracker {
  private durableAtStart = new Map<string, number>()
  private cuts = 0

  constructor(
    readonly dir: string,
    readonly log: string,
  ) {
    this.markDurable()
  }

  /** Everything in the directory as of now is on disk; the log starts over. */
  private markDurable(): void {
    this.durableAtStart = new Map([...regularFiles(this.dir)].map(([k, f]) => [k, f.size]))
    writeFileSync(this.log, '')
  }

  /** What each file keeps: its size at start, then the last sync or truncation logged since. */
  durableSizes(): Map<string, number> {
    const durable = new Map(this.durableAtStart)
    const lines = existsSync(this.log) ? readFileSync(this.log, 'utf8').split('\n') : []
    for (const line of lines) {
      if (!line) continue
      const [what, dev, ino, size] = line.split(' ')
      const k = key(dev!, ino!)
      switch (what) {
        case 'sync':
          durable.set(k, Number(size))
          break
        case 'truncate':
          durable.set(k, Math.min(durable.get(k) ?? 0, Number(size)))
          break
        case 'gone':
          durable.delete(k)
          break
        default:
          throw new Error(`power cut: "${line}" in ${this.log} is not modelled (see test/helpers/powercut.ts)`)
      }
    }
    return durable
  }

  /**
   * The power fails: every file loses what was not synced. Call only when
   * the processes writing there are dead. Tracking then starts over from
   * what the cut left.
   */
  cut(): CutReport {
    const durable = this.durableSizes()
    const report: CutReport = { truncated: [], droppedBytes: 0 }
    for (const [k, f] of regularFiles(this.dir)) {
      const kept = durable.get(k) ?? 0
      if (f.size <= kept) continue
      truncateSync(f.path, kept)
      report.truncated.push({ path: f.path, kept, had: f.size })
      report.droppedBytes += f.size - kept
    }
    // Kept for a post-mortem (VVFS_KEEP_TEST_DIRS=1): what was synced before this cut, and what it dropped.
    this.cuts++
    renameSync(this.log, `${this.log}.${this.cuts}`)
    writeFileSync(`${this.log}.${this.cuts}.cut`, report.truncated.map((t) => `${t.path} kept ${t.kept} of ${t.had}\n`).join(''))
    this.markDurable()
    return report
  }
}
