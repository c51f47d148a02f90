// The process a power-cut unit test cuts the power under (test/unit/powercut.test.ts):
// it writes files, syncs some of them, prints "ready" and waits to be SIGKILLed.
// Usage: node powercut-child.mjs files DIR   (files in DIR, the cases of the test)
//        node powercut-child.mjs store DIR   (a storage system at DIR: chunks 0-3
//                                             written with sync, 4-7 logged without)
//        node powercut-child.mjs switch DIR  (a storage system at DIR: logged writes of
//                                             chunks 0..N-1 just past one memtable, so
//                                             LevelDB switches logs, then a sync)
//        node powercut-child.mjs names DIR   (the same name changes in DIR/nosync and in
//                                             DIR/dirsync, and only the second fsynced)
//        node powercut-child.mjs durable DIR (writeFileDurably of DIR/config, "new")
//        node powercut-child.mjs maps DIR    (a new volume map store at DIR, nothing written)
//        node powercut-child.mjs recreate DIR (DIR/d with a file, removed whole, made anew
//                                             with another file, then DIR/sibling synced)
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'

const [mode, dir] = process.argv.slice(2)
const at = (name) => join(dir, name)
const write = (fd, ch, n) => writeSync(fd, Buffer.alloc(n, ch))

if (mode === 'files') {
  // Synced, then more that is not.
  let fd = openSync(at('synced'), 'w')
  write(fd, 'a', 100)
  fsyncSync(fd)
  write(fd, 'b', 50)
  // Never synced.
  const never = openSync(at('never'), 'w')
  write(never, 'c', 70)
  // fdatasync through libuv's thread pool, then more.
  const fh = await open(at('async'), 'w')
  await fh.write(Buffer.alloc(40, 'd'))
  await fh.datasync()
  await fh.write(Buffer.alloc(10, 'e'))
  // fsync from a worker thread.
  await new Promise((resolve, reject) => {
    const w = new Worker(
      `const fs = require('node:fs'); const fd = fs.openSync(${JSON.stringify(at('worker'))}, 'w');
       fs.writeSync(fd, Buffer.alloc(33, 'w')); fs.fsyncSync(fd); fs.writeSync(fd, Buffer.alloc(7, 'v'))`,
      { eval: true },
    )
    w.once('exit', resolve)
    w.once('error', reject)
  })
  // The catalog's way: a temporary file, synced, renamed over the old one.
  fd = openSync(at('replaced.tmp'), 'w')
  write(fd, 'N', 25)
  fdatasyncSync(fd)
  closeSync(fd)
  renameSync(at('replaced.tmp'), at('replaced'))
  // Appended to a file that existed before, not synced.
  fd = openSync(at('existing'), 'a')
  write(fd, 'x', 20)
  // Emptied (O_TRUNC) and rewritten in place, not synced.
  fd = openSync(at('overwritten'), 'w')
  write(fd, 'o', 5)
  // A synced file is deleted; a new one (ext4 likely reuses its inode) is not synced.
  fd = openSync(at('gone'), 'w')
  write(fd, 'g', 64)
  fsyncSync(fd)
  closeSync(fd)
  unlinkSync(at('gone'))
  fd = openSync(at('reused'), 'w')
  write(fd, 'r', 64)
} else if (mode === 'store') {
  const { StorageSystem } = await import('../../dist/lib/storage/storage-system.js')
  const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
  const chunks = (from) => Array.from({ length: 4 }, (_, i) => ({ pca: from + i, data: Buffer.alloc(4096, from + i + 1) }))
  await system.write(chunks(0), { sync: true })
  await system.write(chunks(4))
} else if (mode === 'switch') {
  const { StorageSystem } = await import('../../dist/lib/storage/storage-system.js')
  const { STORE_OPTIONS } = await import('../../dist/lib/storage/level-store.js')
  const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 1024 * 1024 * 1024, create: false })
  // A memtable holds writeBufferSize bytes of entries (4 KiB value + key + ~20 bytes each): go
  // 2% past it, so the switch comes shortly before the sync and its table is still being written.
  const n = Math.ceil((STORE_OPTIONS.writeBufferSize / 4096) * 1.02)
  for (let pca = 0; pca < n; pca += 16) {
    await system.write(Array.from({ length: Math.min(16, n - pca) }, (_, i) => ({ pca: pca + i, data: Buffer.alloc(4096, (pca + i) % 251) })))
  }
  await system.sync()
  process.stdout.write(`chunks ${n}\n`)
} else if (mode === 'names') {
  // Each directory holds "doc" (old) and "deleted" (doomed) from before.
  for (const sub of ['nosync', 'dirsync']) {
    const in_ = (name) => join(dir, sub, name)
    // A file's fsync commits everything in its directory up to its creation,
    // so the changes meant to be lost come after the last synced creation.
    let fd = openSync(in_('synced'), 'w')
    write(fd, 's', 10)
    fsyncSync(fd)
    fd = openSync(in_('doc.tmp'), 'w')
    write(fd, 'n', 3)
    fsyncSync(fd)
    closeSync(fd)
    renameSync(in_('doc.tmp'), in_('doc'))
    fd = openSync(in_('fresh'), 'w')
    write(fd, 'f', 10)
    unlinkSync(in_('deleted'))
    mkdirSync(in_('newdir'))
    closeSync(openSync(in_('newdir/inner'), 'w'))
    if (sub === 'dirsync') {
      fd = openSync(join(dir, sub), 'r')
      fsyncSync(fd)
      closeSync(fd)
    }
  }
} else if (mode === 'durable') {
  const { writeFileDurably } = await import('../../dist/lib/durable-file.js')
  await writeFileDurably(join(dir, 'config'), 'new')
} else if (mode === 'maps') {
  const { MapStore } = await import('../../dist/lib/relay/map-store.js')
  await MapStore.open(dir)
} else if (mode === 'recreate') {
  const { rmSync } = await import('node:fs')
  rmSync(at('d'), { recursive: true })
  mkdirSync(at('d'))
  closeSync(openSync(at('d/new'), 'w'))
  const fd = openSync(at('sibling'), 'w')
  write(fd, 's', 5)
  fsyncSync(fd)
} else {
  throw new Error(`unknown mode ${mode}`)
}
process.stdout.write('ready\n')
globalThis.setInterval(() => {}, 1000)
