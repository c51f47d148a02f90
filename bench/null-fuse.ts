/**
 * The null FUSE daemon: the ceiling of a Node FUSE file server. One regular
 * file whose reads return zeros and whose writes are dropped, served by the
 * same (patched) fuse-native with the same options HostMount passes, and the
 * same set of operations, so the kernel treats it as it treats a vvfs mount
 * (e.g. it keeps asking getxattr because the op exists). What is left of the
 * cost is the per-request hand-off into the JS thread — everything vvfs adds
 * on top shows as the ratio to this.
 *
 * Run as its own process (`node dist/bench/null-fuse.js --mount DIR
 * [--size BYTES] [--name FILE] [--stats FILE]`); prints one JSON line
 * `{"ready":true,...}` once mounted; unmounts on SIGTERM/SIGINT and then
 * writes how many requests of each kind it answered to --stats.
 *
 * Must never: keep any data, or diverge from HostMount's mount options —
 * `MOUNT_OPTIONS` mirrors lib/fuse/host-mount.ts and run.ts warns when the
 * source there no longer matches.
 */
import Fuse, { type Ops, type Options, type Stat } from 'fuse-native'
import { constants, writeFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

/** As HostMount.mount() passes them (timeouts included: fuse-native arms a timer per request either way). */
export const MOUNT_OPTIONS: Options = {
  force: true,
  mkdir: true,
  maxWrite: 128 * 1024,
  fsname: 'vvfs-null',
  timeout: { default: 30_000, read: 120_000, write: 120_000, fsync: 120_000, fallocate: 120_000, truncate: 120_000, ftruncate: 120_000, release: 120_000 },
}

const ENOENT = 2
const EPERM = 1
const EBADF = 9
const EOPNOTSUPP = 95

function main(): void {
  const { values } = parseArgs({
    options: {
      mount: { type: 'string' },
      size: { type: 'string', default: String(4 * 1024 ** 3) },
      name: { type: 'string', default: 'null' },
      stats: { type: 'string' },
    },
  })
  if (!values.mount) {
    process.stderr.write('usage: null-fuse --mount DIR [--size BYTES] [--name FILE] [--stats FILE]\n')
    process.exit(2)
  }
  const mountPoint = values.mount
  const size = Number(values.size)
  const filePath = '/' + values.name
  const counts: Record<string, number> = {}
  const count = (op: string) => (counts[op] = (counts[op] ?? 0) + 1)
  const now = new Date()
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const fileStat = (): Stat => ({ mode: constants.S_IFREG | 0o600, uid, gid, size, nlink: 1, blocks: 0, blksize: 4096, atime: now, mtime: now, ctime: now })
  const handles = new Set<number>()
  let nextHandle = 1

  // One op per HostMount op, answering as cheaply as possible.
  const ops: Ops = {
    init: (cb) => cb(0),
    statfs: (_path, cb) => {
      count('statfs')
      cb(0, { bsize: 4096, frsize: 4096, blocks: size / 4096, bfree: size / 4096, bavail: size / 4096, files: 1, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 64 })
    },
    getattr: (path, cb) => {
      count('getattr')
      if (path === '/') return cb(0, { mode: constants.S_IFDIR | 0o755, uid, gid, size: 4096, nlink: 2, atime: now, mtime: now, ctime: now })
      if (path !== filePath) return cb(-ENOENT)
      cb(0, fileStat())
    },
    readdir: (path, cb) => {
      count('readdir')
      if (path !== '/') return cb(-ENOENT)
      cb(0, ['.', '..', filePath.slice(1)])
    },
    access: (path, _mode, cb) => cb(path === '/' || path === filePath ? 0 : -ENOENT),
    open: (path, _flags, cb) => {
      count('open')
      if (path !== filePath) return cb(-ENOENT)
      const fd = nextHandle++
      handles.add(fd)
      cb(0, fd)
    },
    create: (_path, _mode, cb) => cb(-EPERM),
    release: (_path, fd, cb) => {
      handles.delete(fd)
      cb(0)
    },
    read: (_path, fd, buf, len, _pos, cb) => {
      count('read')
      if (!handles.has(fd)) return cb(-EBADF)
      buf.fill(0, 0, len)
      cb(len)
    },
    write: (_path, fd, _buf, len, _pos, cb) => {
      count('write')
      if (!handles.has(fd)) return cb(-EBADF)
      cb(len)
    },
    truncate: (_path, _size, cb) => cb(0),
    ftruncate: (_path, _fd, _size, cb) => cb(0),
    fsync: (_path, _datasync, _fd, cb) => {
      count('fsync')
      cb(0)
    },
    flush: (_path, _fd, cb) => {
      count('flush')
      cb(0)
    },
    fallocate: (_path, _fd, _mode, _offset, _length, cb) => {
      count('fallocate')
      cb(0)
    },
    getxattr: (_path, name, _position, cb) => {
      // By name: the kernel asks for security.capability before each write.
      count(`getxattr(${name})`)
      cb(0, null)
    },
    listxattr: (_path, cb) => cb(0, []),
    setxattr: (_path, _name, _value, _position, _flags, cb) => cb(-EOPNOTSUPP),
    removexattr: (_path, _name, cb) => cb(-EOPNOTSUPP),
    utimens: (path, _atime, _mtime, cb) => cb(path === filePath ? 0 : -ENOENT),
    chmod: (_path, _mode, cb) => cb(-EPERM),
    chown: (_path, _uid, _gid, cb) => cb(-EPERM),
    unlink: (_path, cb) => cb(-EPERM),
    rename: (_src, _dest, cb) => cb(-EPERM),
    mkdir: (_path, _mode, cb) => cb(-EPERM),
    rmdir: (_path, cb) => cb(-EPERM),
  }

  const fuse = new Fuse(mountPoint, ops, MOUNT_OPTIONS)
  fuse.mount((err) => {
    if (err) {
      process.stderr.write(`null-fuse: cannot mount ${mountPoint}: ${err.message}\n`)
      process.exit(1)
    }
    process.stdout.write(JSON.stringify({ ready: true, pid: process.pid, file: mountPoint + filePath, size }) + '\n')
  })

  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    fuse.unmount((err) => {
      if (err) process.stderr.write(`null-fuse: unmount failed: ${err.message}\n`)
      if (values.stats) writeFileSync(values.stats, JSON.stringify(counts) + '\n')
      process.exit(err ? 1 : 0)
    })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

// run.ts imports MOUNT_OPTIONS from here; only `node null-fuse.js` serves.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main()
