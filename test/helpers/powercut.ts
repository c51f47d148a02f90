/**
 * Power cuts for tests: what a directory (a daemon's state) would hold after
 * the power failed, given the log the powercut interposer
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
 * not" until the next sync. O_SYNC/O_DSYNC opens, sync()/syncfs() and
 * renameat2(RENAME_EXCHANGE) are logged and refused here (not modelled)
 * rather than silently mis-modelled.
 *
 * Names (names: 'synced', the default), harshly: a namespace change (a
 * create by open O_CREAT/fopen, mkdir, link, symlink; a rename; an unlink or
 * rmdir) is durable only once a sync that commits its directory began after
 * it, and the cut undoes every other one, newest first: a new name
 * disappears (a directory with everything under it), a renamed file goes
 * back to its old name and the file it replaced comes back, an unlinked file
 * comes back (from the interposer's shadow hard link, with the data it had
 * synced). What commits a directory: an fsync of the directory itself (of
 * both, for a rename); and, what ext4 does and LevelDB relies on (its
 * CURRENT is renamed with no directory fsync, its logs and tables are
 * created with none), an fsync/fdatasync of a file in it that has metadata
 * to commit — created, grown or truncated since its last sync — which
 * commits the journal with everything logged before it. Any sync also
 * commits the creation of the new directories above what it synced. Harsher
 * than ext4, whose journal commit covers every directory of the file system
 * and also comes every 5 s: here a commit covers only the synced file's own
 * directory, and time commits nothing. Sockets and fifos are not modelled
 * (their bind()/mknod is not logged, and they hold no data).
 * names: 'kept' is the old model, names as they were at the cut (ext4 with
 * a journal commit after the last change).
 *
 * Tracking is cumulative across clean restarts: a daemon's orderly exit
 * syncs nothing by itself, so the durable state is that at the start of
 * tracking (or of the last cut) and what was synced since, whatever process
 * did it. Files are identified by device and inode, so renames need no
 * following for their data; the interposer keeps an unlinked or replaced
 * inode alive in its shadow directory (the log's path + ".shadow"), so its
 * number is not reused, and logs "gone" when it could not.
 *
 * Concurrency: cut() must run after every process writing the log and the
 * directory is dead (the caller SIGKILLs the daemon and waits for it).
 */
import { existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'

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
  /** The namespace changes the cut undid, newest first ("rename A -> B"). */
  undone: string[]
}

/** How the cut treats names: 'synced' undoes changes no directory fsync covered, 'kept' keeps them as they were. */
export type NameModel = 'synced' | 'kept'

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

/** One log line and where it ends in the log (a directory sync covers the lines ending at or before its offset). */
interface LogLine {
  text: string
  end: number
}

function logLines(log: string): LogLine[] {
  if (!existsSync(log)) return []
  const buf = readFileSync(log)
  const out: LogLine[] = []
  for (let start = 0, nl = buf.indexOf(10); nl >= 0; start = nl + 1, nl = buf.indexOf(10, start)) {
    if (nl > start) out.push({ text: buf.toString('utf8', start, nl), end: nl + 1 })
  }
  return out
}

/** The first n space-separated fields of a line, and the rest (a path, which may hold spaces). */
function fields(text: string, n: number): { f: string[]; rest: string } {
  const f: string[] = []
  let at = 0
  for (let i = 0; i < n; i++) {
    const sp = text.indexOf(' ', at)
    if (sp < 0) throw new Error(`power cut: malformed log line "${text}"`)
    f.push(text.slice(at, sp))
    at = sp + 1
  }
  return { f, rest: text.slice(at) }
}

type NameChange =
  | { what: 'create'; kind: string; parent: string; ino: string; self: string; path: string; end: number }
  | { what: 'unlink'; kind: string; parent: string; ino: string; self: string; shadowed: boolean; path: string; end: number }
  | { what: 'rename'; parents: string[]; ino: string; displaced: string | null; from: string; to: string; end: number }

function lstatKey(path: string): string | null {
  try {
    const st = lstatSync(path, { bigint: true })
    return key(st.dev, st.ino)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

/**
 * Tracks one directory: what is durable in it as of now (its files at their
 * current sizes and names: the test treats the start as the last sync of
 * everything), plus what the processes that append to `log` sync from now on.
 */
export class PowerCutTracker {
  private durableAtStart = new Map<string, number>()
  private cuts = 0
  readonly names: NameModel

  constructor(
    readonly dir: string,
    readonly log: string,
    opts: { names?: NameModel } = {},
  ) {
    this.names = opts.names ?? 'synced'
    this.markDurable()
  }

  /** Where the interposer keeps unlinked and replaced inodes (native/powercut/powercut.c). */
  get shadowDir(): string {
    return `${this.log}.shadow`
  }

  /**
   * Everything in the directory as of now is on disk; the log starts over.
   * Also for a caller that synced every file and directory under `dir`
   * itself, in a process outside the interposer (a test checking the state
   * in its own process): syncs made there are unknown to the model, and the
   * next cut would otherwise drop bytes that process made durable.
   */
  markDurable(): void {
    this.durableAtStart = new Map([...regularFiles(this.dir)].map(([k, f]) => [k, f.size]))
    writeFileSync(this.log, '')
    rmSync(this.shadowDir, { recursive: true, force: true })
  }

  /** What each file keeps: its size at start, then the last sync or truncation logged since. */
  durableSizes(): Map<string, number> {
    const durable = new Map(this.durableAtStart)
    for (const { text: line } of logLines(this.log)) {
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
        case 'create':
        case 'unlink':
        case 'rename':
        case 'dirsync':
        case 'exchange':
        case 'unmodelled':
          break
        default:
          throw new Error(`power cut: "${line}" in ${this.log} is not modelled (see test/helpers/powercut.ts)`)
      }
    }
    return durable
  }

  /**
   * The namespace changes no sync made durable, oldest first. A change in a
   * directory is durable once a sync began after it was logged that commits
   * that directory: a directory sync of it (of both, for a rename), or a
   * sync of a file in it that has metadata to commit (created, grown or
   * truncated since its last sync: ext4 commits its journal, with everything
   * logged before, LevelDB relies on it for CURRENT); and a sync of a file
   * or directory commits the creation of every new directory above it.
   */
  undurableNameChanges(): NameChange[] {
    const covered = new Map<string, number>()
    const cover = (dir: string | undefined, upTo: number) => dir !== undefined && covered.set(dir, Math.max(covered.get(dir) ?? -1, upTo))
    const changes: NameChange[] = []
    const dirAt = new Map<string, string>() // directory path -> dev:ino, as the events name them
    const mkdirAt = new Map<string, { parent: string; end: number }>()
    const removedDir = new Map<string, { parent: string; end: number }>() // directory incarnation -> its removal
    const syncedSize = new Map(this.durableAtStart)
    // A removed directory's inode number is reused at once (no shadow keeps it): each removal starts a new incarnation.
    const removals = new Map<string, number>()
    const dk = (dev: string, ino: string) => {
      const k = key(dev, ino)
      return removals.has(k) ? `${k}#${removals.get(k)}` : k
    }
    const refuse = (line: string) => {
      throw new Error(`power cut: "${line}" in ${this.log} is not modelled (see test/helpers/powercut.ts)`)
    }
    // A sync of the directory at `dir` or of something under it, begun when the log ended at `covers`: the new directories above commit.
    const ancestorsCommit = (dir: string, covers: number) => {
      for (let d = dir; d !== dirname(d); d = dirname(d)) {
        const m = mkdirAt.get(d)
        if (m && m.end <= covers) cover(m.parent, m.end)
      }
    }
    for (const { text, end } of logLines(this.log)) {
      const what = text.slice(0, text.indexOf(' ') >>> 0)
      if (what === 'create') {
        const { f, rest } = fields(text, 6)
        const c: NameChange = { what: 'create', kind: f[1]!, parent: dk(f[2]!, f[3]!), ino: key(f[4]!, f[5]!), self: dk(f[4]!, f[5]!), path: rest, end }
        changes.push(c)
        dirAt.set(dirname(c.path), c.parent)
        if (c.kind === 'dir') {
          dirAt.set(c.path, c.self)
          mkdirAt.set(c.path, c)
        }
      } else if (what === 'unlink') {
        const { f, rest } = fields(text, 7)
        const u: NameChange = { what: 'unlink', kind: f[1]!, parent: dk(f[2]!, f[3]!), ino: key(f[4]!, f[5]!), self: dk(f[4]!, f[5]!), shadowed: f[6] === '1', path: rest, end }
        changes.push(u)
        dirAt.set(dirname(rest), u.parent)
        if (u.kind === 'dir') {
          removedDir.set(u.self, u)
          removals.set(key(f[4]!, f[5]!), (removals.get(key(f[4]!, f[5]!)) ?? 0) + 1)
        }
      } else if (what === 'rename') {
        const { f, rest } = fields(text, 9)
        const [from, to] = rest.split('\t') as [string, string]
        const displaced = f[7] === '-' ? null : f[7] === '?' ? '?' : key(f[7]!, f[8]!)
        changes.push({ what: 'rename', parents: [dk(f[1]!, f[2]!), dk(f[3]!, f[4]!)], ino: key(f[5]!, f[6]!), displaced, from, to, end })
        dirAt.set(dirname(from), dk(f[1]!, f[2]!))
        dirAt.set(dirname(to), dk(f[3]!, f[4]!))
      } else if (what === 'dirsync') {
        const { f, rest } = fields(text, 4)
        cover(dk(f[1]!, f[2]!), Number(f[3]))
        dirAt.set(rest, dk(f[1]!, f[2]!))
        ancestorsCommit(rest, Number(f[3]))
      } else if (what === 'sync') {
        const { f, rest } = fields(text, 5)
        const k = key(f[1]!, f[2]!)
        if (syncedSize.get(k) !== Number(f[3])) {
          cover(dirAt.get(dirname(rest)), Number(f[4]))
          ancestorsCommit(dirname(rest), Number(f[4]))
        }
        syncedSize.set(k, Number(f[3]))
      } else if (what === 'truncate') {
        syncedSize.delete(key(...(text.split(' ').slice(1, 3) as [string, string])))
      } else if (what === 'exchange' || what === 'unmodelled') {
        refuse(text)
      }
    }
    const durable = (dir: string, end: number) => (covered.get(dir) ?? -1) >= end
    // An unlink in a directory whose own removal is durable needs no undoing: the entry went with the directory —
    // as did those in directories under it (rm -r of a tree, and a sync of only the top's parent).
    const gone = (dir: string): boolean => {
      const rmdir = removedDir.get(dir)
      return rmdir !== undefined && (durable(rmdir.parent, rmdir.end) || gone(rmdir.parent))
    }
    return changes.filter((c) => (c.what === 'rename' ? !c.parents.every((p) => durable(p, c.end)) : !durable(c.parent, c.end) && !(c.what === 'unlink' && gone(c.parent))))
  }

  /** Undoes the changes, newest first; only those touching the tracked directory. */
  private undoNames(): string[] {
    const root = existsSync(this.dir) ? realpathSync(this.dir) : resolve(this.dir)
    const inside = (p: string) => p === root || p.startsWith(`${root}/`)
    const shadow = (k: string) => join(this.shadowDir, k.replace(':', '-'))
    const wrong = (c: NameChange, why: string) => new Error(`power cut: cannot undo ${JSON.stringify(c)}: ${why} (see test/helpers/powercut.ts)`)
    const undone: string[] = []
    for (const c of this.undurableNameChanges().reverse()) {
      if (c.what === 'create' && inside(c.path)) {
        const now = lstatKey(c.path)
        if (now === null) continue // under a directory whose creation was undone already
        if (now !== c.ino) throw wrong(c, `${c.path} is another inode now`)
        if (c.kind === 'dir') rmSync(c.path, { recursive: true })
        else unlinkSync(c.path)
        undone.push(`create ${c.path}`)
      } else if (c.what === 'unlink' && c.kind !== 'other' && inside(c.path)) {
        // Sockets and fifos (kind other) are not modelled: their bind()/mknod is not logged, and they hold no data.
        if (lstatKey(c.path) !== null) throw wrong(c, `${c.path} exists`)
        if (c.kind === 'dir') mkdirSync(c.path)
        else if (c.shadowed) linkSync(shadow(c.ino), c.path)
        else throw wrong(c, 'the interposer could not keep the file (not modelled)')
        undone.push(`unlink ${c.path}`)
      } else if (c.what === 'rename' && (inside(c.from) || inside(c.to))) {
        if (lstatKey(c.to) !== c.ino) throw wrong(c, `${c.to} is not the renamed inode`)
        if (lstatKey(c.from) !== null) throw wrong(c, `${c.from} exists`)
        if (c.displaced === '?') throw wrong(c, 'the replaced entry was not kept (not modelled)')
        renameSync(c.to, c.from)
        if (c.displaced) linkSync(shadow(c.displaced), c.to)
        undone.push(`rename ${c.from} -> ${c.to}`)
      }
    }
    return undone
  }

  /**
   * The power fails: names changed since their directory's last sync go back
   * (names: 'synced'), and every file loses what was not synced. Call only
   * when the processes writing there are dead. Tracking then starts over
   * from what the cut left.
   */
  cut(): CutReport {
    const durable = this.durableSizes()
    const undone = this.names === 'synced' ? this.undoNames() : []
    const report: CutReport = { truncated: [], droppedBytes: 0, undone }
    for (const [k, f] of regularFiles(this.dir)) {
      const kept = durable.get(k) ?? 0
      if (f.size <= kept) continue
      truncateSync(f.path, kept)
      report.truncated.push({ path: f.path, kept, had: f.size })
      report.droppedBytes += f.size - kept
    }
    // Kept for a post-mortem (VVFS_KEEP_TEST_DIRS=1): what was synced before this cut, and what it dropped and undid.
    this.cuts++
    renameSync(this.log, `${this.log}.${this.cuts}`)
    const lines = [...undone.map((u) => `undone ${u}`), ...report.truncated.map((t) => `${t.path} kept ${t.kept} of ${t.had}`)]
    writeFileSync(`${this.log}.${this.cuts}.cut`, lines.map((l) => `${l}\n`).join(''))
    this.markDurable()
    return report
  }
}
