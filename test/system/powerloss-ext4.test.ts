/**
 * ext4 on a loop-attached volume through power cuts under the daemon
 * (test/helpers/powercut.ts: SIGKILL, then the state directory loses every
 * byte not synced). A writer creates and replaces files, fsyncing each and
 * its directory, and logs every fsynced file's checksum outside the state
 * directory; the power is cut at a random moment. After the restart the
 * journal is replayed the way a machine does on its next boot — by mounting
 * (the kernel replays it and processes the orphan list) and unmounting —
 * then `e2fsck -fn` (which repairs nothing) must find the file system clean,
 * and every fsynced file must read back by checksum. Two rounds: the second
 * cut hits a file system that already went through one.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, cleanupAll, detachLoop, fsck, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { contentOf } from '../helpers/files-content.mjs'
import { describeDamage, verifyTree, type Tree } from '../helpers/files.js'

const WRITER = resolve(import.meta.dirname, '../helpers/fsync-writer.mjs')

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon({ powerLoss: true })
  for (const name of ['s1', 's2', 's3']) await d.client.call('storage.add', { name, capacity: '512M' })
  await d.client.call('volume.create', { name: 'disk', size: '256M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

/** Each file the writers fsynced, with the checksum of its last fsynced content. */
const fsynced: Tree = new Map()
/** ... and the seed and length that content came from (fsync-writer.mjs). */
const contents = new Map<string, { seed: string; length: number }>()
/** A replacement renamed in, perhaps, but not yet logged as fsynced: after a cut the file may hold it instead. */
const replacing = new Map<string, { sha256: string; seed: string; length: number }>()

function readWriterLog(log: string): number {
  if (!existsSync(log)) return 0
  const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean)
  for (const l of lines) {
    const { name, sha256, seed, length, replacing: pending } = JSON.parse(l) as { name: string; sha256: string; seed: string; length: number; replacing?: true }
    if (pending) {
      replacing.set(name, { sha256, seed, length })
      continue
    }
    replacing.delete(name)
    fsynced.set(name, sha256)
    contents.set(name, { seed, length })
  }
  return lines.filter((l) => !l.includes('"replacing"')).length
}

/** Files that hold neither their last fsynced content nor the replacement logged after it; one that holds the replacement expects it from now on. */
function lostFiles(root: string): string[] {
  return verifyTree(root, fsynced).filter((name) => {
    const next = replacing.get(name)
    if (!next || verifyTree(root, new Map([[name, next.sha256]])).length) return true
    fsynced.set(name, next.sha256)
    contents.set(name, next)
    replacing.delete(name)
    return false
  })
}

async function waitForLines(path: string, lines: number, ms: number): Promise<void> {
  const end = Date.now() + ms
  const count = () => (existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean).length : 0)
  while (count() < lines && Date.now() < end) await new Promise((r) => setTimeout(r, 100))
}

describe('ext4 on a volume, through power cuts under the daemon', () => {
  const at = () => join(d.dir, 'ext4')

  for (const round of [1, 2]) {
    it(`keeps every file fsynced before power cut ${round}, and is clean under e2fsck -fn after the journal replay`, async () => {
      let dev = attachLoop(d.file('disk'))
      if (round === 1) sh('mkfs.ext4', ['-q', '-F', dev])
      mountExt4(dev, at())
      const log = join(d.dir, `fsynced-${round}.log`)
      const writer = spawn(process.execPath, [WRITER, at(), log, `r${round}`, '30'], { stdio: 'ignore' })
      // Meanwhile bulk O_DIRECT writes nobody fsyncs (the second round
      // overwrites the first's blocks in place) reach the daemon between the
      // writer's fsyncs: what the cut takes from the state directory.
      // 64 MiB over and over (dd alone may finish before the cut), until dd fails.
      const dd = `dd if=/dev/urandom of=${join(at(), 'bulk')} bs=256k count=256 oflag=direct conv=notrunc`
      const bulk = spawn('sh', ['-c', `while ${dd} 2>/dev/null; do :; done`], { stdio: 'ignore', detached: true })
      const exited = [writer, bulk].map((p) => new Promise((r) => p.once('exit', r)))
      // The cut lands at a random moment once a few files are fsynced (on a
      // loaded machine 2.5 s was once too few for three).
      await waitForLines(log, 3, 60_000)
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 2000)))
      const cut = await d.powerCut()
      // The file system on the dead volume goes too: its writers, its mount
      // (lazily, if a writer still held files), its loop device.
      writer.kill('SIGKILL')
      try {
        process.kill(-bulk.pid!, 'SIGKILL')
      } catch {
        // the loop already ended at dd's first failed write
      }
      await Promise.all(exited)
      umount(at())
      detachLoop(dev)

      await d.restart()
      expect(readWriterLog(log)).toBeGreaterThan(2)
      expect(cut.droppedBytes).toBeGreaterThan(0)
      dev = attachLoop(d.file('disk'))
      try {
        mountExt4(dev, at())
        umount(at())
        const r = fsck(dev)
        expect(r.code, r.out).toBe(0)
        mountExt4(dev, at())
        try {
          const lost = lostFiles(at())
          const damage = lost.map((name) => describeDamage(join(at(), name), contentOf(contents.get(name)!.seed, contents.get(name)!.length)))
          expect(lost, damage.join('\n')).toEqual([])
        } finally {
          umount(at())
        }
      } finally {
        detachLoop(dev)
      }
    })
  }
})
