// Mounts and unmounts a FUSE file system ROUNDS times while a child floods
// this process with SIGCHLD, and after each unmount checks that a child's
// exit is still seen. libfuse ends its worker threads with pthread_cancel;
// a signal handler of libuv's caught in one of them at that moment used to
// leave libuv's signal lock taken: every later signal handler then blocked,
// and the process hung (a daemon stopping waits for `fusermount -uz`).
// Prints "round N" after each round and "done" at the end.
// Usage: node fuse-signal-storm.mjs MOUNTPOINT ROUNDS
import Fuse from 'fuse-native'
import { execFile, spawn } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { stat } from 'node:fs/promises'

const [mnt, rounds] = [process.argv[2], Number(process.argv[3])]
mkdirSync(mnt, { recursive: true })
const root = { mode: 0o40755, uid: 0, gid: 0, size: 0, nlink: 2, atime: new Date(), mtime: new Date(), ctime: new Date() }
const ops = {
  getattr: (path, cb) => (path === '/' ? cb(0, root) : cb(Fuse.ENOENT)),
  readdir: (path, cb) => cb(0, []),
}
const call = (fn) => new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())))
const storm = spawn('bash', ['-c', `while kill -CHLD ${process.pid} 2>/dev/null; do :; done`], { stdio: 'ignore' })
try {
  for (let i = 0; i < rounds; i++) {
    const fuse = new Fuse(mnt, ops, { force: true })
    await call((cb) => fuse.mount(cb))
    // Requests in parallel: libfuse starts more workers, each one more thread a signal can land in.
    await Promise.all(Array.from({ length: 8 }, (_, j) => stat(`${mnt}/${j}`).catch(() => {})))
    await call((cb) => fuse.unmount(cb))
    // A child's exit is seen only through SIGCHLD's handler.
    await call((cb) => execFile('true', cb))
    console.log(`round ${i}`)
  }
  console.log('done')
} finally {
  storm.kill('SIGKILL')
}
