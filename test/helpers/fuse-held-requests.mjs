// Mounts a FUSE file system with one file whose reads are held (not
// answered) until READERS of them are waiting in JavaScript (or for 2 s at
// most), lets READERS processes read it with O_DIRECT at once, and prints
// the most reads that were waiting together, as JSON: {"maxWaiting": N,
// "threadsAdded": T}, T being how many more threads the process has after
// BURSTS (default 1) such rounds than before the mount.
// Each waiting read holds one of libfuse's worker threads (libfuse 3.12+
// starts at most 10 unless told otherwise) and one of the kernel's
// background requests (with asynchronous direct I/O every O_DIRECT request
// is one; the kernel sends at most 12 at a time unless told otherwise).
// libfuse 3 keeps idle workers: a worker that ended and was started again
// would set up new thread locals and a uv_async handle, never freed.
// Usage: node fuse-held-requests.mjs MOUNTPOINT READERS [BURSTS]
import Fuse from 'fuse-native'
import { spawn } from 'node:child_process'
import { mkdirSync, readdirSync } from 'node:fs'
import { clearInterval, setInterval } from 'node:timers'

const [mnt, readers, bursts] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] ?? 1)]
const threads = () => readdirSync('/proc/self/task').length
const threadsBefore = threads()
mkdirSync(mnt, { recursive: true })
const now = new Date()
const root = { mode: 0o40755, uid: 0, gid: 0, size: 0, nlink: 2, atime: now, mtime: now, ctime: now }
const file = { mode: 0o100644, uid: 0, gid: 0, size: 1 << 20, nlink: 1, atime: now, mtime: now, ctime: now }
let waiting = []
let maxWaiting = 0
const answer = () => {
  const held = waiting
  waiting = []
  for (const { buf, len, cb } of held) {
    buf.fill(1, 0, len)
    cb(len)
  }
}
const giveUp = setInterval(answer, 2000)
const ops = {
  getattr: (path, cb) => (path === '/' ? cb(0, root) : path === '/f' ? cb(0, file) : cb(Fuse.ENOENT)),
  readdir: (path, cb) => cb(0, ['f']),
  open: (path, flags, cb) => cb(0, 42),
  release: (path, fd, cb) => cb(0),
  read: (path, fd, buf, len, pos, cb) => {
    waiting.push({ buf, len, cb })
    maxWaiting = Math.max(maxWaiting, waiting.length)
    if (waiting.length >= readers) answer()
  },
}
const call = (fn) => new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())))
const fuse = new Fuse(mnt, ops, { force: true, timeout: false })
// fuse-native holds no reference on the event loop while it mounts.
const alive = setInterval(() => {}, 1000)
await call((cb) => fuse.mount(cb))
let threadsAdded
try {
  // Separate processes: each read is a synchronous request of its own, which the kernel sends at once.
  for (let b = 0; b < bursts; b++) {
    const reads = Array.from({ length: readers }, (_, i) =>
      new Promise((resolve) => spawn('dd', [`if=${mnt}/f`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${i}`, 'iflag=direct'], { stdio: 'ignore' }).on('exit', resolve)))
    await Promise.all(reads)
  }
} finally {
  clearInterval(giveUp)
  answer()
  threadsAdded = threads() - threadsBefore
  await call((cb) => fuse.unmount(cb))
  clearInterval(alive)
}
console.log(JSON.stringify({ maxWaiting, threadsAdded }))
