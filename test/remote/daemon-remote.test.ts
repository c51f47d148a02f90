/**
 * Remote storage systems in a real daemon (built dist/, FUSE, loop
 * devices): two `vvfs storage serve` processes on loopback beside a local
 * system. Added with `storage add --remote`, listed with their link, used
 * by placement and migration like a local one, reconnected at a restart,
 * fenced through the daemon, and a server killed mid-write under ext4.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { attachLoop, detachLoop, fsck, mountExt4, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { sha, verifyTree, writeTree } from '../helpers/files.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'
import { chunkOf, cleanupWithDaemon, freePort, newKey, openStore, placement, spawnServer, tempDir, waitForJob, whyJob, type ServerProcess } from './servers.js'
import { codeOf } from '../helpers/errors.js'

const MiB = 1024 * 1024
let d: DaemonHandle
let key: Awaited<ReturnType<typeof newKey>>
const servers: Record<string, { dir: string; port: number; proc: ServerProcess }> = {}

async function serve(name: string, port?: number): Promise<void> {
  const prev = servers[name]
  const dir = prev?.dir ?? `${await tempDir()}/${name}`
  const p = port ?? prev?.port ?? (await freePort())
  servers[name] = { dir, port: p, proc: await spawnServer({ dir, port: p, keyFile: key.file, capacity: '128M' }) }
}

beforeAll(async () => {
  key = await newKey()
  await serve('far1')
  await serve('far2')
  // A deadline well past a server's restart even on a loaded machine: the kill -9 test restarts one within it.
  d = await startDaemon({ env: { VVFS_REMOTE_DEADLINE_MS: '15000' } })
  await d.client.call('storage.add', { name: 'near', capacity: '128M' })
  for (const name of ['far1', 'far2']) await d.client.call('storage.add', { name, remote: `127.0.0.1:${servers[name]!.port}`, peerKey: key.file })
}, 60_000)

afterAll(() => cleanupWithDaemon(d))

/** Deletes a volume once the kernel has released its file (the release comes after close returns: VOLUME_BUSY until then). */
async function deleteVolume(name: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await d.client.call('volume.delete', { name })
      return
    } catch (err) {
      if ((err as { code?: string }).code !== 'VOLUME_BUSY' || i >= 100) throw err
      await new Promise((r) => setTimeout(r, 50))
    }
  }
}

describe('remote storage systems in the daemon', { timeout: 60_000 }, () => {
  it('storage add --remote claims a server (capacity: the server’s); storage list shows where each system lives, its link and round trip', async () => {
    let list = (await d.client.call('storage.list', {})).storage
    for (let i = 0; i < 100 && list.some((s) => s.location !== 'local' && s.rttMs === null); i++) {
      await new Promise((r) => setTimeout(r, 50))
      list = (await d.client.call('storage.list', {})).storage
    }
    const by = Object.fromEntries(list.map((s) => [s.name, s]))
    expect(by.near).toMatchObject({ location: 'local', connection: 'local', rttMs: null, epoch: null })
    expect(by.far1).toMatchObject({ location: `127.0.0.1:${servers.far1!.port}`, connection: 'ready', capacity: 128 * MiB, epoch: 0 })
    expect(by.far1!.rttMs).toBeGreaterThan(0)
    const text = sh(process.execPath, [join(import.meta.dirname, '../../bin/vvfs'), '--socket', d.socket, 'storage', 'list'])
    expect(text).toMatch(/far2 .*127\.0\.0\.1:\d+ +ready +\d+\.\d\d ms/)
    // The same server twice, a wrong key, nothing listening: refused, nothing recorded.
    expect(await codeOf(d.client.call('storage.add', { name: 'again', remote: `127.0.0.1:${servers.far1!.port}`, peerKey: key.file }))).toBe('STORAGE_PATH_IN_USE')
    const wrong = await newKey()
    await serve('spare')
    expect(await codeOf(d.client.call('storage.add', { name: 'spare', remote: `127.0.0.1:${servers.spare!.port}`, peerKey: wrong.file }))).toBe('PEER_AUTH_FAILED')
    expect(await codeOf(d.client.call('storage.add', { name: 'nobody', remote: `127.0.0.1:${await freePort()}`, peerKey: key.file }))).toBe('PEER_UNAVAILABLE')
    expect((await d.client.call('storage.list', {})).storage.map((s) => s.name).sort()).toEqual(['far1', 'far2', 'near'])
  })

  it('migrates a volume from the local system to a remote one and back under a verified writer: no wrong byte', async () => {
    await d.client.call('volume.create', { name: 'raw', size: '8M' })
    const model = new VolumeModel(8 * MiB)
    const r = rng(14)
    const fd = openSync(d.file('raw'), 'r+')
    try {
      for (let off = 0; off < model.size; off += 512 * 1024) {
        const data = payload(r, 512 * 1024)
        writeSync(fd, data, 0, data.length, off)
        model.write(off, data)
      }
      let rounds = 0
      const round = () => {
        rounds++
        for (let i = 0; i < 10; i++) {
          const [offset, len] = range(r, model.size, 128 * 1024)
          if (r.next() < 0.5) {
            const data = payload(r, len)
            writeSync(fd, data, 0, len, offset)
            model.write(offset, data)
          } else {
            const buf = Buffer.alloc(len)
            readSync(fd, buf, 0, len, offset)
            if (!buf.equals(model.read(offset, len))) throw new Error(`read of ${len} at ${offset} differs during migration`)
          }
        }
      }
      // Both jobs within the test's time, leaving room to say why when they are not done.
      const end = Date.now() + 50_000
      for (const to of ['far1', 'near']) {
        // 4 MiB/s: each job lasts about 2 s, so the writer's rounds overlap it however fast the machine is
        // (at 48M a job took ~170 ms and a loaded run saw only 2 rounds in both).
        const job = await d.client.call('migrate.start', { volume: 'raw', to, rate: '4M' })
        // Room between rounds (150 ms): a migration steps back while hosts do I/O.
        const done = await waitForJob(d, job.id, { ms: end - Date.now(), during: round, pollMs: 150 })
        console.log(`migration to ${to} under the writer: ${Date.parse(done.finishedAt!) - Date.parse(done.startedAt!)} ms, ${rounds} rounds so far`)
        expect(done.result, `job to ${to}: ${whyJob(d, done)}`).toBe('completed')
        const where = await placement(d, 'raw')
        if (where.join() !== to) {
          const show = await d.client.call('volume.show', { name: 'raw', extents: true })
          expect.fail(`after the job to ${to} the volume lies on ${where.join(', ')}: ${JSON.stringify(show.extentMap)}\n${whyJob(d, done)}`)
        }
      }
      expect(rounds).toBeGreaterThan(2)
      const all = Buffer.alloc(model.size)
      readSync(fd, all, 0, model.size, 0)
      expect(all.equals(model.data)).toBe(true)
    } finally {
      closeSync(fd)
    }
    await deleteVolume('raw')
  })

  it('ext4 over two remote servers and a local system: kill -9 a server mid-write, restart it, sync, unmount — e2fsck clean, checksums match', async () => {
    await d.client.call('volume.create', { name: 'fs', size: '96M' })
    const dev = attachLoop(d.file('fs'))
    const at = join(d.dir, 'fs')
    sh('mkfs.ext4', ['-q', '-F', dev])
    mountExt4(dev, at)
    const base = writeTree(join(at, 'base'), { files: 40, maxSize: 256 * 1024 })
    sh('sync', [])
    expect(await placement(d, 'fs')).toEqual(['far1', 'far2', 'near'])
    // A writer of its own, so the test can kill a server while it writes.
    const dir = join(at, 'during')
    sh('mkdir', ['-p', dir])
    const writer = spawn('sh', ['-c', `for i in $(seq 1 120); do head -c $((($i % 7) * 60000 + 4096)) /dev/urandom > ${dir}/f$i; done; sync`], { stdio: 'ignore' })
    const wrote = new Promise<number | null>((res) => writer.once('exit', (c) => res(c)))
    await new Promise((r) => setTimeout(r, 300))
    servers.far2!.proc.proc.kill('SIGKILL')
    await servers.far2!.proc.exited
    await new Promise((r) => setTimeout(r, 300))
    await serve('far2')
    expect(await wrote).toBe(0)
    const sums = new Map(readdirSync(dir).map((f) => [f, sha(readFileSync(join(dir, f)))]))
    expect(sums.size).toBe(120)
    sh('sync', [])
    umount(at)
    expect(fsck(dev)).toMatchObject({ code: 0 })
    mountExt4(dev, at)
    expect(verifyTree(join(at, 'base'), base)).toEqual([])
    for (const [f, sum] of sums) expect(sha(readFileSync(join(dir, f))), f).toBe(sum)
    umount(at)
  })

  it('reconnects its remote systems at a restart; storage fence raises a server’s token: an old epoch is refused and not stored, the daemon keeps writing', async () => {
    await d.restart()
    let far2 = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 'far2')!
    expect(far2.connection).not.toBe('local')
    const fenced = await d.client.call('storage.fence', { name: 'far2', epoch: 3 })
    expect(fenced).toMatchObject({ fence: 3, epoch: 3, connection: 'ready' })
    far2 = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 'far2')!
    expect(far2.epoch).toBe(3)
    expect(await codeOf(d.client.call('storage.fence', { name: 'near', epoch: 3 }))).toBe('NOT_SUPPORTED')
    // An old relay of epoch 2 (the daemon's sid and name for far2) is refused and stores nothing.
    const old = openStore(key.key, servers.far2!.port, { sid: far2.id, name: 'far2', claim: false, epoch: 2 })
    const pca = 127 * 256 // the last extent slot of the server's 128 MiB
    expect(await codeOf(old.apply({ writes: [{ pca, data: chunkOf(1) }] }))).toBe('FENCED')
    expect(await old.stored(pca, 256)).toEqual([])
    // The daemon's own writes carry epoch 3 and go on.
    const dev = attachLoop(d.file('fs'))
    const at = join(d.dir, 'fs')
    mountExt4(dev, at)
    const more = writeTree(join(at, 'after-fence'), { files: 20, maxSize: 128 * 1024 })
    sh('sync', [])
    expect(verifyTree(join(at, 'after-fence'), more)).toEqual([])
    umount(at)
    expect(fsck(dev)).toMatchObject({ code: 0 })
    detachLoop(dev)
  })

  it('pool status counts the remote systems’ capacity and space; reclaim of a file deleted on ext4 releases space on the remote servers', async () => {
    const remoteAllocated = async () => {
      const pool = await d.client.call('pool.status', {})
      return pool.systems.filter((s) => s.name !== 'near').reduce((sum, s) => sum + s.allocated, 0)
    }
    const pool = await d.client.call('pool.status', {})
    expect(pool.capacity).toBe(3 * 128 * MiB)
    for (const name of ['far1', 'far2']) expect(pool.systems.find((s) => s.name === name)).toMatchObject({ capacity: 128 * MiB })
    const fs = (await d.client.call('volume.show', { name: 'fs' })).allocatedBySystem
    for (const s of pool.systems) expect(s.allocated, s.name).toBe(fs.find((a) => a.storage === s.name)?.allocated ?? 0)
    // A big file on a mount that sends no discard: deleting it frees nothing until reclaim reads ext4's bitmaps.
    const dev = attachLoop(d.file('fs'))
    const at = join(d.dir, 'fs')
    mountExt4(dev, at, ['nodiscard'])
    writeFileSync(join(at, 'big.bin'), randomBytes(24 * MiB))
    sh('sync', [])
    rmSync(join(at, 'big.bin'))
    umount(at)
    detachLoop(dev)
    const before = await remoteAllocated()
    const r = await d.client.call('volume.reclaim', { name: 'fs' })
    expect(r.releasedBytes).toBeGreaterThanOrEqual(0.9 * 24 * MiB)
    const after = await remoteAllocated()
    console.log(`reclaim over remote servers: released ${r.releasedBytes} bytes, ${before - after} of them on far1/far2`)
    expect(after).toBeLessThan(before)
  })
})
