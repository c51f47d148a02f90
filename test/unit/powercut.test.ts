/**
 * The power-cut tool itself (native/powercut/powercut.c + test/helpers/powercut.ts):
 * a process under the interposer writes files, syncs some bytes and not
 * others, is SIGKILLed, and after the cut exactly the synced bytes remain —
 * whichever thread synced, through renames, truncations and reused inodes.
 * And on a real LevelDB store: a logged write that was not synced survives a
 * kill -9 (the page cache does) but not a power cut; one a later sync covered
 * survives both, even when LevelDB switched logs in between. Names: a
 * create, rename or unlink its directory's fsync did not cover is undone by
 * the cut (a new file goes, a renamed file goes back, a deleted one returns),
 * so writeFileDurably's directory fsync is what keeps its new content.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { MapStore } from '../../lib/relay/map-store.js'
import { STORE_OPTIONS } from '../../lib/storage/level-store.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { PowerCutTracker, powercutEnv, type NameModel } from '../helpers/powercut.js'

const CHILD = resolve(import.meta.dirname, '../helpers/powercut-child.mjs')
const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

function fresh(): { dir: string; work: string } {
  const dir = tempDir('vvfs-powercut-')
  dirs.push(dir)
  return { dir, work: join(dir, 'work') }
}

/** Runs the child until it says ready, then SIGKILLs it and waits. */
async function killedChild(mode: 'files' | 'store' | 'switch' | 'names' | 'durable' | 'maps' | 'recreate', work: string, env: NodeJS.ProcessEnv): Promise<void> {
  const child = spawn(process.execPath, [CHILD, mode, work], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  let err = ''
  child.stderr.on('data', (b) => (err += String(b)))
  const exited = new Promise((r) => child.once('exit', r))
  await new Promise<void>((ok, fail) => {
    child.stdout.on('data', (b) => String(b).includes('ready') && ok())
    child.once('exit', (code) => fail(new Error(`child exited with ${code} before it was ready: ${err}`)))
  })
  child.kill('SIGKILL')
  await exited
}

/** The child's 'names' case: DIR/nosync and DIR/dirsync each with "doc" (old) and "deleted" from before. */
function namesFixture(names: NameModel): { work: string; tracker: PowerCutTracker } {
  const { dir, work } = fresh()
  for (const sub of ['nosync', 'dirsync']) {
    mkdirSync(join(work, sub), { recursive: true })
    writeFileSync(join(work, sub, 'doc'), 'old')
    writeFileSync(join(work, sub, 'deleted'), 'D'.repeat(7))
  }
  return { work, tracker: new PowerCutTracker(work, join(dir, 'powercut.log'), { names }) }
}

const bytes = (path: string) => (existsSync(path) ? readFileSync(path, 'latin1') : null)

describe('a power cut', () => {
  it('leaves every file with exactly the bytes synced before it, whoever synced them', async () => {
    const { dir, work } = fresh()
    mkdirSync(work)
    writeFileSync(join(work, 'existing'), 'E'.repeat(10))
    writeFileSync(join(work, 'overwritten'), 'O'.repeat(30))
    writeFileSync(join(work, 'replaced'), 'R'.repeat(20))
    // Names as they were at the cut (the old model): this case is about file data.
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'), { names: 'kept' })
    await killedChild('files', work, powercutEnv(tracker.log))
    // Before the cut the page cache has it all.
    expect(bytes(join(work, 'synced'))).toBe('a'.repeat(100) + 'b'.repeat(50))
    // The deleted file and the one renamed over were kept by a shadow hard
    // link (so no new file reuses their inodes before the cut).
    const log = readFileSync(tracker.log, 'utf8')
    expect(log).toMatch(/^unlink file \d+ \d+ \d+ \d+ 1 \S*\/gone$/m)
    expect(log).toMatch(/^rename( \d+){8} \S*\/replaced\.tmp\t\S*\/replaced$/m)
    const report = tracker.cut()
    expect(bytes(join(work, 'synced')), 'fsync, then more').toBe('a'.repeat(100))
    expect(bytes(join(work, 'never')), 'never synced').toBe('')
    expect(bytes(join(work, 'async')), 'fdatasync on the libuv pool').toBe('d'.repeat(40))
    expect(bytes(join(work, 'worker')), 'fsync in a worker thread').toBe('w'.repeat(33))
    expect(bytes(join(work, 'replaced')), 'synced temp file renamed over').toBe('N'.repeat(25))
    expect(bytes(join(work, 'replaced.tmp'))).toBeNull()
    expect(bytes(join(work, 'existing')), 'durable at the start, appended to').toBe('E'.repeat(10))
    expect(bytes(join(work, 'overwritten')), 'O_TRUNC and rewritten, not synced').toBe('')
    expect(bytes(join(work, 'reused')), 'new file, maybe on a synced, deleted file’s inode').toBe('')
    expect(report.droppedBytes).toBe(50 + 70 + 10 + 7 + 20 + 5 + 64)
    // The cut is the new start: a second cut without new syncs drops nothing.
    expect(tracker.cut().droppedBytes).toBe(0)
  })

  it('does not let a new file inherit the synced size of a gone file whose inode it reuses', () => {
    const { dir, work } = fresh()
    mkdirSync(work)
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'))
    const file = join(work, 'reused')
    writeFileSync(file, 'r'.repeat(64))
    const st = statSync(file)
    // What the interposer logs when a synced file is deleted and a new one gets its inode.
    writeFileSync(tracker.log, `sync ${st.dev} ${st.ino} 64 0 ${join(work, 'old')}\ngone ${st.dev} ${st.ino} ${join(work, 'old')}\n`)
    expect(tracker.cut().droppedBytes).toBe(64)
    expect(bytes(file)).toBe('')
  })

  it('refuses what it does not model (sync(), syncfs(), O_SYNC) rather than getting it wrong', () => {
    const { dir, work } = fresh()
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'))
    writeFileSync(tracker.log, 'syncall\n')
    expect(() => tracker.cut()).toThrow(/not modelled/)
  })

  it('undoes every name change its directory never synced: a new file goes, a rename goes back (the file it replaced returns), an unlinked file returns', async () => {
    const { work, tracker } = namesFixture('synced')
    await killedChild('names', work, powercutEnv(tracker.log))
    const report = tracker.cut()
    const at = (sub: string, name: string) => bytes(join(work, sub, name))
    // No directory fsync.
    expect(at('nosync', 'fresh'), 'created, never synced').toBeNull()
    expect(at('nosync', 'synced'), 'created and fsynced: the fsync commits its own directory entry').toBe('s'.repeat(10))
    expect(at('nosync', 'doc'), 'temp, fsync, rename: the old content is back at the name').toBe('old')
    expect(at('nosync', 'doc.tmp'), 'and the temp file at its own').toBe('nnn')
    expect(at('nosync', 'deleted'), 'unlinked').toBe('D'.repeat(7))
    expect(existsSync(join(work, 'nosync', 'newdir')), 'mkdir').toBe(false)
    // The same changes, then an fsync of the directory.
    expect(at('dirsync', 'fresh'), 'created, its entry synced, its data not').toBe('')
    expect(at('dirsync', 'synced')).toBe('s'.repeat(10))
    expect(at('dirsync', 'doc'), 'temp, fsync, rename, directory fsync: the new content').toBe('nnn')
    expect(at('dirsync', 'doc.tmp')).toBeNull()
    expect(at('dirsync', 'deleted')).toBeNull()
    expect(existsSync(join(work, 'dirsync', 'newdir')), 'mkdir, directory fsync').toBe(true)
    expect(at('dirsync', 'newdir/inner'), 'but newdir itself was never synced').toBeNull()
    expect(report.undone.length).toBe(6)
    // The cut is the new start: a second cut undoes nothing.
    expect(tracker.cut().undone).toEqual([])
  })

  it('does not bring back the entries of a directory whose own removal became durable, nor of directories under it (rm -rf, then a new directory at its path)', async () => {
    const { dir, work } = fresh()
    mkdirSync(join(work, 'd', 'sub'), { recursive: true })
    writeFileSync(join(work, 'd', 'old'), 'o')
    writeFileSync(join(work, 'd', 'sub', 'deeper'), 'x')
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'))
    await killedChild('recreate', work, powercutEnv(tracker.log))
    tracker.cut()
    // The sibling's fsync commits d's removal and re-creation (ext4 likely gave the new d the old one's
    // inode number), not the new file in it; the old file went with the old d.
    expect(readdirSync(join(work, 'd'))).toEqual([])
    expect(bytes(join(work, 'sibling'))).toBe('sssss')
  })

  it('keeps names as they were at the cut with names: "kept" (the model before directory entries)', async () => {
    const { work, tracker } = namesFixture('kept')
    await killedChild('names', work, powercutEnv(tracker.log))
    expect(tracker.cut().undone).toEqual([])
    expect(bytes(join(work, 'nosync', 'fresh'))).toBe('')
    expect(bytes(join(work, 'nosync', 'doc'))).toBe('nnn')
    expect(bytes(join(work, 'nosync', 'deleted'))).toBeNull()
  })

  it('keeps what writeFileDurably wrote (temp, fsync, rename, directory fsync) through a power cut right after it returned', async () => {
    const { dir, work } = fresh()
    mkdirSync(work)
    writeFileSync(join(work, 'config'), 'old')
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'))
    await killedChild('durable', work, powercutEnv(tracker.log))
    tracker.cut()
    expect(bytes(join(work, 'config'))).toBe('new')
  })

  it('on a new volume map store: the store opens after a power cut right after it was created, nothing written (LevelDB renames CURRENT without a directory fsync)', async () => {
    const { dir } = fresh()
    const maps = join(dir, 'maps')
    const tracker = new PowerCutTracker(dir, join(dir, 'powercut.log'))
    await killedChild('maps', maps, powercutEnv(tracker.log))
    tracker.cut()
    await (await MapStore.open(maps)).close()
  })

  it('refuses a rename that swapped two names (RENAME_EXCHANGE) rather than getting it wrong', () => {
    const { dir, work } = fresh()
    const tracker = new PowerCutTracker(work, join(dir, 'powercut.log'))
    writeFileSync(tracker.log, `exchange ${join(work, 'a')}\t${join(work, 'b')}\n`)
    expect(() => tracker.cut()).toThrow(/not modelled/)
  })

  for (const crash of ['kill -9', 'power cut'] as const) {
    it(`on a LevelDB store: a logged write never synced is ${crash === 'kill -9' ? 'kept by a kill -9' : 'lost in a power cut'}, a synced one kept`, async () => {
      const { dir } = fresh()
      const store = join(dir, 's1')
      const open = (create: boolean) => StorageSystem.open({ sid: 1, name: 's1', path: store, capacity: 64 * 1024 * 1024, create })
      await (await open(true)).close()
      const tracker = new PowerCutTracker(store, join(dir, 'powercut.log'))
      await killedChild('store', store, powercutEnv(tracker.log))
      if (crash === 'power cut') expect(tracker.cut().droppedBytes).toBeGreaterThan(4 * 4096)
      const s = await open(false)
      try {
        const got = await s.readMany([0, 1, 2, 3, 4, 5, 6, 7])
        for (let pca = 0; pca < 4; pca++) expect(got[pca]?.equals(Buffer.alloc(4096, pca + 1)), `synced chunk ${pca}`).toBe(true)
        for (let pca = 4; pca < 8; pca++) {
          if (crash === 'kill -9') expect(got[pca]?.equals(Buffer.alloc(4096, pca + 1)), `unsynced chunk ${pca}`).toBe(true)
          else expect(got[pca], `unsynced chunk ${pca}`).toBeUndefined()
        }
      } finally {
        await s.close()
      }
    })
  }
  it('on a LevelDB store: logged writes a later sync covered survive a power cut, even those in a log LevelDB switched away from (memtable full)', async () => {
    const { dir } = fresh()
    const store = join(dir, 's1')
    const open = (create: boolean) => StorageSystem.open({ sid: 1, name: 's1', path: store, capacity: 1024 * 1024 * 1024, create })
    await (await open(true)).close()
    const tracker = new PowerCutTracker(store, join(dir, 'powercut.log'))
    await killedChild('switch', store, powercutEnv(tracker.log))
    const logs = readdirSync(store).filter((f) => f.endsWith('.log'))
    expect(logs.length, 'LevelDB switched to a second log').toBeGreaterThanOrEqual(2)
    tracker.cut()
    const n = Math.ceil((STORE_OPTIONS.writeBufferSize / 4096) * 1.02)
    const s = await open(false)
    try {
      const buf = Buffer.alloc(n * 4096)
      await s.readRun(0, n, buf)
      const lost = Array.from({ length: n }, (_, pca) => pca).filter((pca) => !buf.subarray(pca * 4096, (pca + 1) * 4096).equals(Buffer.alloc(4096, pca % 251)))
      expect(lost.length, `chunks lost, first ${lost[0]}`).toBe(0)
    } finally {
      await s.close()
    }
  })
})
