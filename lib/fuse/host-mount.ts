/**
 * HostMount: one FUSE mount — a host's view of the volumes mapped to it, each
 * a regular file of the volume's size. The only module that imports
 * fuse-native, and the only place where error codes become errno.
 *
 * What a file shows: its size; st_blocks = the volume's allocated bytes / 512
 * (so `du` and `ls -s` show real consumption, as qemu's FUSE export does);
 * xattrs user.vvfs.{id,allocated,state}; statfs = the pool's free-space
 * table (so `df` on the mount shows capacity and free space).
 *
 * Every operation answers: errors become errno (ENOSPC for a full pool, EIO
 * otherwise) and fuse-native's per-operation timeout answers ETIMEDOUT if a
 * lower layer ever stalls, so the kernel is never left hanging.
 *
 * A mount someone else detaches (`umount`, `fusermount -u`, a cleanup
 * script's lazy unmount) is noticed within MOUNT_CHECK_MS by reading
 * /proc/self/mountinfo: the host then reads as unmounted and `onLost` runs;
 * with no file open the FUSE side is let go at once, else at unmount (a
 * lazily detached mount keeps serving files still open on it until then).
 * Unmounting a mount that is already gone still ends its FUSE side (our
 * fuse-native patch), so stop never waits on it.
 */
import Fuse, { type Ops, type Stat } from 'fuse-native'
import { constants } from 'node:fs'
import { open, readdir, readFile, realpath, stat, type FileHandle } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { basename, dirname, join } from 'node:path'
import { asVvfsError, VvfsError } from '../errors.js'
import { CHUNK_SIZE } from '../layout.js'
import type { Logger } from '../log.js'
import type { ErrorCursor } from '../relay/volume.js'
import { ERRNO, errnoOf } from './errno.js'
import { readCache, type CachedVolume } from './read-cache.js'

/** What a host mount needs of a volume. */
export interface ServedVolume extends CachedVolume {
  readonly name: string
  readonly id: string
  readonly size: number
  readonly allocatedBytes: number
  readonly state: string
  readonly createdAt: Date
  readonly modifiedAt: Date
  open(host: string, writable: boolean): void
  close(host: string, writable: boolean): void
  read(offset: number, length: number, into: Buffer): Promise<number>
  write(offset: number, data: Buffer): Promise<number>
  discard(offset: number, length: number): Promise<void>
  resize(size: number): Promise<void>
  /** A new open file's view of failed write-backs (it learns of those after this). */
  errorCursor(): ErrorCursor
  /** Stores and makes durable; rejects with a failed write-back this file has not been told of. */
  flush(errors?: ErrorCursor): Promise<void>
  /** Waits for acknowledged writes to be stored; rejects with a failed one this file has not been told of. */
  drain(errors?: ErrorCursor): Promise<void>
}

/** What a host mount needs of the manager. */
export interface HostView {
  volumes(host: string): ServedVolume[]
  volume(host: string, name: string): ServedVolume | undefined
  space(): { capacity: number; free: number }
}

const O_ACCMODE = 3
const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02
const FALLOC_FL_ZERO_RANGE = 0x10

/** fuse-native replies ETIMEDOUT past these; they bound a stalled operation. */
export interface MountTimeouts {
  io: number
  other: number
}

/** One open file description (a FUSE file handle). */
interface Handle {
  volume: ServedVolume
  writable: boolean
  /** Failed write-backs this description has been told of (each learns of each once). */
  errors: ErrorCursor
}

/**
 * How often a mount checks that it is still in /proc/self/mountinfo. A check
 * (async read and parse, 22 mounts) took 1.1 ms of wall time on the loaded
 * test VM, most of it the thread pool's round trip; once a second is noise,
 * and an administrator's `umount` shows in `host list` within a second.
 */
const MOUNT_CHECK_MS = 1000

/** Open-file numbers, unique in the process: the read cache knows files by them across mounts. */
let nextHandle = 1

/**
 * fuse-native as patched (patches/) and built by scripts/build-native.mjs
 * links Debian's libfuse 3; a stock or prebuilt binary links libfuse 2, whose
 * protocol has no asynchronous direct I/O (patches/README.md). Measured
 * with Debian 12's 3.14.
 */
const MIN_LIBFUSE = 300

export class HostMount {
  private fuse: Fuse | null = null
  private readonly handles = new Map<number, Handle>()
  private readonly uid = process.getuid?.() ?? 0
  private readonly gid = process.getgid?.() ?? 0
  private readonly mountedAt = new Date()
  /** Requests being answered now; shutdown waits for them. */
  private inflight = 0
  private drained: (() => void)[] = []
  /** The kernel's id of this FUSE connection (/sys/fs/fuse/connections/ID). */
  private connection: number | undefined
  /** Where the mount shows in /proc/self/mountinfo: the resolved mount point and its device (major:minor). */
  private mountedPath = ''
  private device = ''
  private watch: NodeJS.Timeout | undefined
  /** Detached by someone else (seen in mountinfo); the FUSE side may still serve open files. */
  private lost = false
  private unmounting: Promise<void> | undefined
  /** This connection's fusectl files (to abort it at unmount, to see it end), if fusectl is there. */
  private abortFile: FileHandle | undefined
  private connectionIno: number | undefined

  constructor(
    readonly host: string,
    readonly mountPoint: string,
    private readonly view: HostView,
    private readonly log: Logger,
    private readonly timeouts: MountTimeouts = { io: 120_000, other: 30_000 },
    /** Called once when the mount is found detached by someone else. */
    private readonly onLost: (mount: HostMount) => void = () => {},
  ) {}

  get mounted(): boolean {
    return this.fuse !== null && !this.lost
  }

  /** Files still open on this mount's FUSE connection. */
  get openFiles(): number {
    return this.handles.size
  }

  async mount(): Promise<void> {
    const libfuse = typeof Fuse.libfuseVersion === 'function' ? Fuse.libfuseVersion() : 0
    if (libfuse < MIN_LIBFUSE) {
      throw new VvfsError('MOUNT_FAILED', `fuse-native is not vvfs's build against libfuse 3 (it reports ${libfuse || 'no libfuse version'}): run make setup (needs libfuse3-dev)`)
    }
    const t = this.timeouts
    const fuse = new Fuse(this.mountPoint, this.tracked(this.ops()), {
      force: true,
      mkdir: true,
      // 128 KiB, not the 1 MiB libfuse 3 allows: 10 s of 1 MiB direct writes
      // at queue depth 4 (bench/scripts/seqwrite-cpu.sh) ran 469-511 MB/s in
      // 6 of 6 runs with 128 KiB requests, and 295-336 in 7 of 8 with 1 MiB,
      // the stores' compactions running within the 10 s (docs/performance.md, "libfuse 3").
      maxWrite: 128 * 1024,
      fsname: `vvfs-${this.host}`,
      timeout: { default: t.other, read: t.io, write: t.io, fsync: t.io, fallocate: t.io, truncate: t.io, ftruncate: t.io, release: t.io },
    })
    await new Promise<void>((resolve, reject) =>
      fuse.mount((err) => (err ? reject(new VvfsError('MOUNT_FAILED', `cannot mount host ${this.host} at ${this.mountPoint}: ${err.message}`, { cause: err })) : resolve())),
    )
    this.fuse = fuse
    await ensureFusectl()
    try {
      // Asynchronously: a synchronous stat would wait for this very thread to answer the kernel.
      const dev = (await stat(this.mountPoint)).dev
      this.connection = (dev & 0xff) | ((dev >> 12) & 0xfff00)
      this.device = `${(dev >> 8) & 0xfff}:${this.connection}`
      // Once this connection ends its number is free for another mount (any
      // daemon's): the abort file is held open from now (bound to ours), and
      // the directory's inode number (never reused) tells ours from a successor.
      const dir = `/sys/fs/fuse/connections/${this.connection}`
      this.abortFile = await open(`${dir}/abort`, 'w').catch(() => undefined)
      this.connectionIno = await stat(dir).then((st) => st.ino, () => undefined)
    } catch {
      this.connection = undefined
    }
    // The parent, not the mount point: resolving that would ask this very mount.
    this.mountedPath = join(await realpath(dirname(this.mountPoint)).catch(() => dirname(this.mountPoint)), basename(this.mountPoint))
    this.watch = setInterval(() => void this.checkMounted(), MOUNT_CHECK_MS).unref()
    this.log.info({ event: 'host.mounted', host: this.host, mount: this.mountPoint }, 'host mounted')
  }

  /** Notices a mount detached by someone else (see the file comment). */
  private async checkMounted(): Promise<void> {
    if (!this.fuse) return
    if (this.lost) return this.checkDetached()
    let info: string
    try {
      info = await readFile('/proc/self/mountinfo', 'utf8')
    } catch {
      return
    }
    const mounts = mountsOf(info)
    // Ours: this path on our device (not another file system mounted there since).
    if (!this.fuse || this.lost || mounts.has(`${this.device} ${this.mountedPath}`) || (!this.device && mounts.has(` ${this.mountedPath}`))) return
    this.lost = true
    this.log.warn({ event: 'host.lost', host: this.host, mount: this.mountPoint, openFiles: this.handles.size }, `host ${this.host}'s mount at ${this.mountPoint} was unmounted by someone else (vvfs host remount ${this.host} brings it back)`)
    this.onLost(this)
    await this.checkDetached()
  }

  /**
   * A detached mount serves the files still open on it until they close —
   * or until the kernel ends the connection (the last of them closed and the
   * file system went away): then their releases may never arrive, so they
   * count as closed once the connection's fusectl directory is gone. With none
   * open, the FUSE side is let go.
   */
  private async checkDetached(): Promise<void> {
    if (this.handles.size > 0 && this.connectionIno !== undefined) {
      const ino = await stat(`/sys/fs/fuse/connections/${this.connection}`).then((st) => st.ino, () => undefined)
      if (ino !== this.connectionIno && this.handles.size > 0) {
        this.log.warn({ event: 'host.files_closed', host: this.host, files: this.handles.size }, 'the detached mount\'s connection ended: its open files count as closed')
        for (const [fd, handle] of this.handles) {
          this.handles.delete(fd)
          readCache.unbind(fd, handle.volume)
          handle.volume.close(this.host, handle.writable)
        }
      }
    }
    if (this.handles.size === 0) await this.unmount()
  }

  /**
   * Stops serving. The mount is detached at once (lazily: files still open,
   * such as a loop device's, keep reaching us); then open files get up to
   * `graceMs` to close. What is still open then is cut off: the connection is
   * aborted so the kernel fails its requests (as if the daemon had died) and
   * libfuse's threads end before the process does — a process that exits
   * with them still serving can crash in them.
   */
  unmount(graceMs = 0): Promise<void> {
    // Once: a stop may come while a lost mount is being let go.
    return (this.unmounting ??= this.detach(graceMs))
  }

  private async detach(graceMs: number): Promise<void> {
    const fuse = this.fuse
    if (!fuse) return
    this.fuse = null
    clearInterval(this.watch)
    await new Promise<void>((resolve) =>
      fuse.unmount((err) => {
        if (err) this.log.warn({ event: 'host.unmount_failed', host: this.host, err: err.message }, 'unmount failed')
        resolve()
      }),
    )
    const until = Date.now() + graceMs
    while (this.handles.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50))
    if (this.handles.size > 0) {
      const open = [...new Set([...this.handles.values()].map((h) => h.volume.name))]
      this.log.warn({ event: 'host.cut_off', host: this.host, volumes: open }, `volume files still open on ${this.host} are cut off (their I/O now fails)`)
    }
    await this.abortFile?.write('1').catch(() => {})
    await this.abortFile?.close().catch(() => {})
    await this.idle(5000)
    this.log.info({ event: 'host.unmounted', host: this.host, mount: this.mountPoint }, 'host unmounted')
  }

  /** Resolves when no request is being answered (or after `timeoutMs`). */
  private idle(timeoutMs: number): Promise<void> {
    if (this.inflight === 0) return Promise.resolve()
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs)
      this.drained.push(() => {
        clearTimeout(t)
        resolve()
      })
    })
  }

  /** Counts every request until its answer, so shutdown can wait for them. */
  private tracked(ops: Ops): Ops {
    const out: Ops = {}
    for (const [name, fn] of Object.entries(ops)) {
      if (typeof fn !== 'function' || name === 'init') {
        out[name] = fn
        continue
      }
      out[name] = ((...args: unknown[]) => {
        const cb = args[args.length - 1] as (...r: unknown[]) => void
        this.inflight++
        args[args.length - 1] = (...r: unknown[]) => {
          if (--this.inflight === 0) for (const wake of this.drained.splice(0)) wake()
          cb(...r)
        }
        ;(fn as (...a: unknown[]) => void)(...args)
      }) as never
    }
    return out
  }

  private lookup(path: string): ServedVolume | undefined {
    return path.length > 1 && path.indexOf('/', 1) < 0 ? this.view.volume(this.host, path.slice(1)) : undefined
  }

  private stat(volume: ServedVolume): Stat {
    return {
      mode: constants.S_IFREG | 0o600,
      uid: this.uid,
      gid: this.gid,
      size: volume.size,
      nlink: 1,
      blocks: Math.ceil(volume.allocatedBytes / 512),
      blksize: CHUNK_SIZE,
      atime: volume.modifiedAt,
      mtime: volume.modifiedAt,
      ctime: volume.modifiedAt,
    }
  }

  private ops(): Ops {
    const handleOf = (fd: number) => this.handles.get(fd)
    const done = (op: string, cb: (err: number) => void, p: Promise<unknown>) =>
      p.then(
        () => cb(0),
        (err) => cb(this.fail(op, err)),
      )
    const byPath = (op: string, path: string, cb: (err: number) => void, fn: (v: ServedVolume) => Promise<unknown>) => {
      const volume = this.lookup(path)
      if (!volume) return cb(-ERRNO.ENOENT)
      done(op, cb, fn(volume))
    }
    const denied = (cb: (err: number) => void) => cb(-ERRNO.EPERM)

    return {
      init: (cb) => cb(0),
      statfs: (_path, cb) => {
        const { capacity, free } = this.view.space()
        // statfs counts in 32-bit blocks: grow the fragment size with the pool.
        let frsize = CHUNK_SIZE
        while (capacity / frsize > 0xffffffff) frsize *= 2
        const blocks = Math.floor(capacity / frsize)
        const bfree = Math.floor(free / frsize)
        const files = this.view.volumes(this.host).length
        cb(0, { bsize: CHUNK_SIZE, frsize, blocks, bfree, bavail: bfree, files, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 64 })
      },
      getattr: (path, cb) => {
        if (path === '/') {
          return cb(0, { mode: constants.S_IFDIR | 0o755, uid: this.uid, gid: this.gid, size: 4096, nlink: 2, atime: this.mountedAt, mtime: this.mountedAt, ctime: this.mountedAt })
        }
        const volume = this.lookup(path)
        if (!volume) return cb(-ERRNO.ENOENT)
        cb(0, this.stat(volume))
      },
      readdir: (path, cb) => {
        if (path !== '/') return cb(-ERRNO.ENOENT)
        cb(0, ['.', '..', ...this.view.volumes(this.host).map((v) => v.name)])
      },
      access: (path, _mode, cb) => cb(path === '/' || this.lookup(path) ? 0 : -ERRNO.ENOENT),
      open: (path, flags, cb) => {
        const volume = this.lookup(path)
        if (!volume) return cb(-ERRNO.ENOENT)
        const writable = (flags & O_ACCMODE) !== constants.O_RDONLY
        try {
          volume.open(this.host, writable)
        } catch (err) {
          return cb(this.fail('open', err))
        }
        const fd = nextHandle++
        this.handles.set(fd, { volume, writable, errors: volume.errorCursor() })
        readCache.bind(fd, volume)
        cb(0, fd)
      },
      create: (_path, _mode, cb) => cb(-ERRNO.EPERM),
      release: (_path, fd, cb) => {
        const handle = handleOf(fd)
        if (handle) {
          this.handles.delete(fd)
          readCache.unbind(fd, handle.volume)
          handle.volume.close(this.host, handle.writable)
        }
        cb(0)
      },
      read: (_path, fd, buf, len, pos, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(-ERRNO.EBADF)
        handle.volume.read(pos, len, buf).then(cb, (err) => cb(this.fail('read', err)))
      },
      write: (_path, fd, buf, len, pos, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(-ERRNO.EBADF)
        handle.volume.write(pos, len === buf.length ? buf : buf.subarray(0, len)).then(cb, (err) => cb(this.fail('write', err)))
      },
      truncate: (path, size, cb) => byPath('truncate', path, cb, (v) => v.resize(size)),
      ftruncate: (_path, fd, size, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(-ERRNO.EBADF)
        done('ftruncate', cb, handle.volume.resize(size))
      },
      fsync: (_path, _datasync, fd, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(-ERRNO.EBADF)
        done('fsync', cb, handle.volume.flush(handle.errors))
      },
      // The close of a file opened for writing makes its writes durable
      // (as NFS does at close); every close reports a write answered earlier
      // that then failed while this file was open, if this file has not
      // been told yet. Write-behind and unlogged writes make that worth it.
      flush: (_path, fd, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(0)
        done('flush', cb, handle.writable ? handle.volume.flush(handle.errors) : handle.volume.drain(handle.errors))
      },
      fallocate: (_path, fd, mode, offset, length, cb) => {
        const handle = handleOf(fd)
        if (!handle) return cb(-ERRNO.EBADF)
        done('fallocate', cb, this.fallocate(handle.volume, mode, offset, length))
      },
      getxattr: (path, name, _position, cb) => {
        if (path === '/') return cb(0, null)
        const volume = this.lookup(path)
        if (!volume) return cb(-ERRNO.ENOENT)
        const value = xattrs(volume)[name]
        cb(0, value === undefined ? null : Buffer.from(value))
      },
      listxattr: (path, cb) => {
        if (path === '/') return cb(0, [])
        const volume = this.lookup(path)
        if (!volume) return cb(-ERRNO.ENOENT)
        cb(0, Object.keys(xattrs(volume)))
      },
      setxattr: (_path, _name, _value, _position, _flags, cb) => cb(-ERRNO.EOPNOTSUPP),
      removexattr: (_path, _name, cb) => cb(-ERRNO.EOPNOTSUPP),
      utimens: (path, _atime, _mtime, cb) => cb(this.lookup(path) ? 0 : -ERRNO.ENOENT),
      chmod: (_path, _mode, cb) => denied(cb),
      chown: (_path, _uid, _gid, cb) => denied(cb),
      unlink: (_path, cb) => denied(cb),
      rename: (_src, _dest, cb) => denied(cb),
      mkdir: (_path, _mode, cb) => denied(cb),
      rmdir: (_path, cb) => denied(cb),
    }
  }

  /**
   * PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (what a loop device sends for discard
   * and write-zeroes) free the range; a plain allocation inside the file is
   * a no-op on a thin volume; allocation past the end grows the volume.
   */
  private async fallocate(volume: ServedVolume, mode: number, offset: number, length: number): Promise<void> {
    const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0
    const known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
    if ((mode & ~known) !== 0) throw new VvfsError('NOT_SUPPORTED', `fallocate mode 0x${mode.toString(16)} is not supported`)
    if ((mode & FALLOC_FL_PUNCH_HOLE) !== 0 && !keepSize) throw new VvfsError('NOT_SUPPORTED', 'PUNCH_HOLE needs KEEP_SIZE')
    const end = offset + length
    if (!keepSize && end > volume.size) await volume.resize(end)
    if ((mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0) await volume.discard(offset, length)
  }

  private fail(op: string, err: unknown): number {
    const errno = errnoOf(err)
    const e = asVvfsError(err)
    // A storage failure (not a full pool, which is the writer's to handle) is logged with its code.
    if (errno === -ERRNO.EIO || e.code === 'STORAGE_FULL') {
      this.log.error({ event: 'fuse.error', host: this.host, op, code: e.code, errno: -errno, err: e.message }, e.code === 'STORAGE_FULL' ? 'storage full' : 'I/O error')
    }
    return errno
  }
}

/** The fusectl file system (for aborting a connection at shutdown) is not mounted everywhere. */
async function ensureFusectl(): Promise<void> {
  const dir = '/sys/fs/fuse/connections'
  try {
    if ((await readdir(dir)).length > 0) return
    await new Promise<void>((resolve) => execFile('mount', ['-t', 'fusectl', 'none', dir], () => resolve()))
  } catch {
    // No fusectl: shutdown then cannot cut off open files, only wait for them.
  }
}

/**
 * The mounts in a /proc/self/mountinfo text as "major:minor path" (fields 3
 * and 5, octal escapes decoded), and as " path" for a lookup by path alone.
 */
function mountsOf(info: string): Set<string> {
  const out = new Set<string>()
  for (const line of info.split('\n')) {
    const fields = line.split(' ')
    if (fields.length < 5) continue
    const path = fields[4]!.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
    out.add(`${fields[2]} ${path}`)
    out.add(` ${path}`)
  }
  return out
}

function xattrs(volume: ServedVolume): Record<string, string> {
  return {
    'user.vvfs.id': volume.id,
    'user.vvfs.allocated': String(volume.allocatedBytes),
    'user.vvfs.state': volume.state,
  }
}
