/** A tree of files with known checksums, written into and verified under a directory. */
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'

export type Tree = Map<string, string>

export function writeTree(root: string, opts: { files: number; maxSize: number; seedDirs?: number }): Tree {
  const tree: Tree = new Map()
  const dirs = opts.seedDirs ?? 4
  for (let i = 0; i < opts.files; i++) {
    const dir = join(root, `d${i % dirs}`, `s${i % 3}`)
    mkdirSync(dir, { recursive: true })
    const size = i % 5 === 0 ? 0 : Math.floor(Math.random() * opts.maxSize)
    // Mix random and compressible/zero-filled content.
    const data = i % 4 === 0 ? Buffer.alloc(size, i & 0xff) : i % 7 === 0 ? Buffer.alloc(size) : randomBytes(size)
    const path = join(dir, `f${i}.bin`)
    writeFileSync(path, data)
    tree.set(path.slice(root.length), sha(data))
  }
  return tree
}

export function verifyTree(root: string, tree: Tree): string[] {
  const bad: string[] = []
  for (const [rel, sum] of tree) {
    try {
      if (sha(readFileSync(join(root, rel))) !== sum) bad.push(rel)
    } catch {
      bad.push(rel)
    }
  }
  return bad
}

export function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/**
 * What a damaged file holds, block by block, against the content its seed
 * gives (files-content.mjs): runs of wrong blocks, each said to be zeros or
 * other bytes — what a failed durability check reports besides the name.
 */
export function describeDamage(path: string, expected: Buffer, blockSize = 1024): string {
  let actual: Buffer
  try {
    actual = readFileSync(path)
  } catch (err) {
    return `${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`
  }
  const parts: string[] = []
  if (actual.length !== expected.length) parts.push(`size ${actual.length}, expected ${expected.length}`)
  const blocks = Math.ceil(Math.max(actual.length, expected.length) / blockSize)
  let run: { from: number; to: number; what: string } | null = null
  const flush = () => {
    if (run) parts.push(`blocks ${run.from}-${run.to}: ${run.what}`)
    run = null
  }
  for (let b = 0; b < blocks; b++) {
    const a = actual.subarray(b * blockSize, (b + 1) * blockSize)
    const e = expected.subarray(b * blockSize, (b + 1) * blockSize)
    const what = a.equals(e) ? null : a.every((x) => x === 0) ? 'zeros' : 'other bytes'
    if (run && run.what === what && run.to === b - 1) run.to = b
    else {
      flush()
      if (what) run = { from: b, to: b, what }
    }
  }
  flush()
  return `${path} (${blocks} blocks of ${blockSize}): ${parts.join('; ') || 'identical'}`
}

/** Writes `data` at `offset` of an existing file (a volume file in a mount). */
export function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = openSync(file, 'r+')
  try {
    writeSync(fd, data, 0, data.length, offset)
  } finally {
    closeSync(fd)
  }
}
