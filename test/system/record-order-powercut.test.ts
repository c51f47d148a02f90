/**
 * A power cut must never leave a record pointing at data that is not its own
 * (issue 11), end to end under the powercut interposer: volume B writes a
 * recognisable pattern into fragments and fsyncs, B is deleted (its
 * fragments' deletions are logged, nobody syncs them), volume A then writes
 * small writes nobody fsyncs into the freed space while volume C's fsync
 * syncs the map store, which makes A's records durable. After the cut A must
 * read zeros or its own data, never B's: before the fix A's records survived
 * while A's data and B's deletions did not, so A read B's data.
 */
import { open, type FileHandle } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const CHUNK = 4096
const EXTENT = 1024 * 1024
/** Fragments: one 4 KiB write per extent, in this many extents. */
const WRITES = 64

/** A chunk of volume `who`'s pattern: its name and the chunk's index over and over. */
function chunkOf(who: string, i: number): Buffer {
  return Buffer.from(`${who}${String(i).padStart(6, '0')}|`.repeat(CHUNK / 8).slice(0, CHUNK))
}

describe('a power cut after another volume’s fsync', () => {
  let d: DaemonHandle
  beforeAll(async () => {
    d = await startDaemon({ powerLoss: true })
    // One storage system: A's fragments reuse the chunks B freed.
    await d.client.call('storage.add', { name: 's1', capacity: '256M' })
    for (const name of ['a', 'b', 'c']) await d.client.call('volume.create', { name, size: '128M' })
  })
  afterAll(async () => {
    await cleanupAll()
    removeDir(d.dir)
  })

  it('a record could become durable before its fragment’s data: a volume never reads the data another volume released, only zeros or its own', async () => {
    const b = await open(d.file('b'), 'r+')
    for (let i = 0; i < WRITES; i++) await b.write(chunkOf('B', i), 0, CHUNK, i * EXTENT)
    await b.sync()
    await b.close()
    // The kernel sends the file's release after close() returns: until the
    // daemon has it, the volume is still open (VOLUME_BUSY).
    for (let tries = 0; ; tries++) {
      try {
        await d.client.call('volume.delete', { name: 'b' })
        break
      } catch (err) {
        if ((err as { code?: string }).code !== 'VOLUME_BUSY' || tries >= 100) throw err
        await new Promise((r) => setTimeout(r, 50))
      }
    }

    // A writes into the freed space and keeps its file open (a close would sync).
    const a: FileHandle = await open(d.file('a'), 'r+')
    for (let i = 0; i < WRITES; i++) await a.write(chunkOf('A', i), 0, CHUNK, i * EXTENT + CHUNK)
    const listed = await d.client.call('volume.list', {})
    expect(listed.volumes.find((v) => v.name === 'a')?.allocated).toBe(WRITES * CHUNK)
    // C's fsync syncs the map store, with A's records in it.
    const c = await open(d.file('c'), 'r+')
    await c.sync()
    await c.close()

    await d.powerCut()
    await a.close().catch(() => {})
    await d.restart()

    const after = await open(d.file('a'), 'r')
    try {
      const zeros = Buffer.alloc(CHUNK)
      const seen = { own: 0, zeros: 0 }
      const buf = Buffer.alloc(CHUNK)
      for (let i = 0; i < WRITES; i++) {
        await after.read(buf, 0, CHUNK, i * EXTENT + CHUNK)
        if (buf.equals(chunkOf('A', i))) seen.own++
        else if (buf.equals(zeros)) seen.zeros++
        else throw new Error(`volume a, chunk ${i}: neither its own data nor zeros but ${JSON.stringify(buf.subarray(0, 16).toString('latin1'))}`)
      }
      expect(seen.own + seen.zeros).toBe(WRITES)
      // A's records survived the cut (C's fsync made them durable): the case this is about.
      expect(seen.own).toBeGreaterThan(0)
    } finally {
      await after.close()
    }
  })
})
