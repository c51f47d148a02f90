// Writes files into a directory (a file system on a vvfs volume), each
// fsynced with its directory, and after each fsync appends the file's name
// and checksum to a log kept elsewhere: the log lists what must survive a
// crash. Every fourth step replaces an earlier file the safe way (temporary
// file, fsync, rename, fsync of the directory), logged first as `replacing`:
// until the step is logged, either content is right. Runs until an I/O error (the
// daemon under the file system died) or a time limit. Each file's content is
// generated from a seed the log keeps (contentOf), so a checker can tell which
// blocks of a damaged file are wrong, and what they hold instead.
// Usage: node fsync-writer.mjs DIR LOG PREFIX SECONDS
import { createHash, randomBytes } from 'node:crypto'
import { contentOf } from './files-content.mjs'
import { appendFileSync, closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs'
import { join } from 'node:path'

const [dir, log, prefix, secondsArg] = process.argv.slice(2)
const end = Date.now() + Number(secondsArg) * 1000
const fsyncPath = (path, flags) => {
  const fd = openSync(path, flags)
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}
const writeDurably = (path, data) => {
  const fd = openSync(path, 'w')
  try {
    writeSync(fd, data)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

const names = []
try {
  for (let i = 0; Date.now() < end; i++) {
    const seed = randomBytes(16).toString('hex')
    const data = contentOf(seed, 1 + Math.floor(Math.random() * 256 * 1024))
    const record = (name, extra = {}) => JSON.stringify({ name, sha256: createHash('sha256').update(data).digest('hex'), seed, length: data.length, ...extra }) + '\n'
    let name
    if (i % 4 === 3) {
      name = names[Math.floor(Math.random() * names.length)]
      // Once renamed, the new content may be what a crash leaves even before
      // this step is logged: say so first (the checker accepts either).
      appendFileSync(log, record(name, { replacing: true }))
      writeDurably(join(dir, `${name}.tmp`), data)
      renameSync(join(dir, `${name}.tmp`), join(dir, name))
    } else {
      name = `${prefix}-${i}`
      writeDurably(join(dir, name), data)
      names.push(name)
    }
    fsyncPath(dir, 'r')
    appendFileSync(log, record(name))
  }
} catch (err) {
  process.stdout.write(`writer stopped: ${err.code ?? err.message}\n`)
}
