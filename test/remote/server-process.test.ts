import { connect } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'
import { chunkOf, cleanup, freePort, newKey, openStore, spawnServer, tempDir } from './servers.js'

afterEach(cleanup)

/** A key, a directory and a port, and a server process on them (to be killed and started again on the same ones). */
async function serverToKill(): Promise<{ key: Awaited<ReturnType<typeof newKey>>['key']; restart: () => Promise<unknown>; kill: () => Promise<unknown>; port: number }> {
  const { key, file } = await newKey()
  const dir = `${await tempDir()}/server`
  const port = await freePort()
  let proc = await spawnServer({ dir, port, keyFile: file })
  return {
    key,
    port,
    kill: async () => {
      proc.proc.kill('SIGKILL')
      await proc.exited
    },
    restart: async () => (proc = await spawnServer({ dir, port, keyFile: file })),
  }
}

describe('vvfs storage serve, a process of its own', { timeout: 40_000 }, () => {
  it('stops cleanly on SIGTERM (exit 0) and serves what it was given after a restart', async () => {
    const { key, file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const first = await spawnServer({ dir, port, keyFile: file })
    const store = openStore(key, port, { deadlineMs: 2000 })
    // Unlogged and not synced by the relay: the clean stop syncs it.
    await store.apply({ unlogged: true, writes: Array.from({ length: 32 }, (_, i) => ({ pca: i, data: chunkOf(i) })) })
    first.proc.kill('SIGTERM')
    expect(await first.exited).toBe(0)
    expect(first.log()).toContain('"storage.server_closed"')
    await spawnServer({ dir, port, keyFile: file })
    const into = Buffer.alloc(32 * CHUNK_SIZE)
    await store.readRun(0, 32, into)
    for (let i = 0; i < 32; i++) expect(into.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(chunkOf(i)), `chunk ${i}`).toBe(true)
  })

  it('the test helper restarting a server on the same directory waits for the new process to listen (regression: the previous process\'s line in the shared log made it return at once)', async () => {
    const { file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const first = await spawnServer({ dir, port, keyFile: file })
    first.proc.kill('SIGKILL')
    await first.exited
    await spawnServer({ dir, port, keyFile: file })
    const socket = connect({ host: '127.0.0.1', port })
    const answer = await new Promise<string>((resolve) => {
      socket.once('connect', () => resolve('connected'))
      socket.once('error', (err) => resolve(err.message))
    })
    socket.destroy()
    expect(answer).toBe('connected')
  })

  it('refuses a key file others can read with exit 1', async () => {
    const { file } = await newKey()
    const { chmod } = await import('node:fs/promises')
    await chmod(file, 0o644)
    const dir = `${await tempDir()}/server`
    await expect(spawnServer({ dir, port: await freePort(), keyFile: file })).rejects.toThrow(/exited with 1[\s\S]*chmod 600/)
  })

  it('after kill -9 mid-write and a restart, holds every write it acknowledged as synced; the relay reconnects by itself', async () => {
    const { key, file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const first = await spawnServer({ dir, port, keyFile: file })
    const store = openStore(key, port, { deadlineMs: 2000 })
    await store.readMany([0]) // claimed
    const acked = new Map<number, number>() // pca → the version acknowledged last
    const sent = new Map<number, Set<number>>() // pca → versions sent
    let version = 0
    let stop = false
    const writer = async (lane: number) => {
      while (!stop) {
        const v = ++version
        const pcas = Array.from({ length: 8 }, (_, i) => (lane * 64 + ((v * 8 + i) % 64)) * 1)
        for (const p of pcas) (sent.get(p) ?? sent.set(p, new Set()).get(p)!).add(v)
        try {
          await store.apply({ sync: v % 2 === 0, writes: pcas.map((pca) => ({ pca, data: chunkOf(v * 100_000 + pca) })) })
          if (v % 2 === 1) await store.sync({})
          for (const p of pcas) if ((acked.get(p) ?? 0) < v) acked.set(p, v)
        } catch {
          return // the server is gone: this write's fate is unknown
        }
      }
    }
    const lanes = [0, 1, 2, 3].map(writer)
    while (acked.size < 200) await new Promise((r) => setTimeout(r, 5))
    first.proc.kill('SIGKILL')
    await first.exited
    stop = true
    await Promise.all(lanes)
    expect(acked.size).toBeGreaterThan(0)
    await spawnServer({ dir, port, keyFile: file })
    const pcas = [...sent.keys()].sort((a, b) => a - b)
    const chunks = await store.readMany(pcas)
    pcas.forEach((pca, i) => {
      const got = chunks[i]
      const floor = acked.get(pca) ?? 0
      // What is there is a whole chunk of one version sent, never older than the last acknowledged one.
      const versions = [...(sent.get(pca) ?? [])].filter((v) => v >= floor)
      const match = versions.find((v) => got?.equals(chunkOf(v * 100_000 + pca)))
      expect(match !== undefined || (floor === 0 && got === undefined), `chunk ${pca}: acknowledged version ${floor}`).toBe(true)
    })
  })

  it('a server killed (kill -9) and restarted within the deadline costs the caller nothing: calls lost with the connection are sent again', async () => {
    const { key, file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const first = await spawnServer({ dir, port, keyFile: file })
    const store = openStore(key, port, { deadlineMs: 8000 })
    await store.readMany([0])
    let written = 0
    let stop = false
    let failed: unknown = null
    const writes = (async () => {
      for (let v = 1; !stop; v++) {
        await store.apply({ writes: [{ pca: v % 512, data: chunkOf(v) }], sync: true })
        written = v
      }
    })().catch((err: unknown) => (failed = err))
    while (written < 50) await new Promise((r) => setTimeout(r, 5))
    first.proc.kill('SIGKILL')
    await first.exited
    const before = written
    await spawnServer({ dir, port, keyFile: file })
    while (written < before + 50 && failed === null) await new Promise((r) => setTimeout(r, 5))
    stop = true
    await writes
    expect(failed).toBeNull() // no call failed
    const last = written
    expect((await store.readMany([last % 512]))[0]?.equals(chunkOf(last))).toBe(true)
  })

  it('a write the relay may leave unlogged survives a kill -9 of the server: the sync after the restart covers it (regression: it was lost from the memtable and the sync succeeded)', async () => {
    const { key, file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const first = await spawnServer({ dir, port, keyFile: file })
    const system = StorageSystem.over(openStore(key, port, { deadlineMs: 8000 }), { capacity: 64 * 1024 * 1024 })
    const data = Buffer.concat(Array.from({ length: 32 }, (_, i) => chunkOf(i)))
    // A bulk write the relay allows to skip the log (a host write in place, not yet fsynced).
    await system.write(Array.from({ length: 32 }, (_, i) => ({ pca: i, data: data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) })), { unlogged: true })
    first.proc.kill('SIGKILL')
    await first.exited
    await spawnServer({ dir, port, keyFile: file })
    await system.sync() // the host's fsync: it must cover the write, or fail
    const into = Buffer.alloc(32 * CHUNK_SIZE)
    await system.readRun(0, 32, into)
    expect(into.equals(data)).toBe(true)
  })

  it('unlogged batches are sent again to a restarted server in the order they were acknowledged: a logged overwrite after an unlogged write of the same chunk stays the newest', async () => {
    const server = await serverToKill()
    const store = openStore(server.key, server.port, { deadlineMs: 8000 })
    const run = (seed: number) => Array.from({ length: 16 }, (_, i) => ({ pca: i, data: chunkOf(seed + i) }))
    await store.apply({ writes: run(100), unlogged: true }) // lives in the server's memtable only
    await store.apply({ writes: run(200) }) // logged: the server's log brings it back by itself
    await store.apply({ writes: [{ pca: 40, data: chunkOf(40) }] }) // logged, of another chunk
    expect(store.retainedBytes).toBeGreaterThan(32 * CHUNK_SIZE)
    await server.kill()
    await server.restart()
    await store.sync({ flushUnlogged: true })
    expect(store.retainedBytes).toBe(0) // the flushing sync covered them
    const into = Buffer.alloc(16 * CHUNK_SIZE)
    await store.readRun(0, 16, into)
    expect(into.equals(Buffer.concat(run(200).map((w) => w.data)))).toBe(true)
    expect((await store.readMany([40]))[0]?.equals(chunkOf(40))).toBe(true)
  })

  it('keeps at most about twice its bound of unflushed batches (it asks the server for a flush itself), and a kill -9 loses none of them', async () => {
    const server = await serverToKill()
    const bound = 64 * 32 * CHUNK_SIZE // 8 MiB, 64 batches of 32 chunks
    const store = openStore(server.key, server.port, { deadlineMs: 8000, retainFlushBytes: bound })
    let most = 0
    for (let b = 0; b < 256; b++) {
      await store.apply({ writes: Array.from({ length: 32 }, (_, i) => ({ pca: b * 32 + i, data: chunkOf(b * 32 + i) })), unlogged: true })
      most = Math.max(most, store.retainedBytes)
    }
    expect(most).toBeLessThanOrEqual(2 * bound + 32 * CHUNK_SIZE + 4096)
    await server.kill()
    await server.restart()
    await store.sync({ flushUnlogged: true })
    const into = Buffer.alloc(256 * CHUNK_SIZE)
    for (let x = 0; x < 32; x++) {
      await store.readRun(x * 256, 256, into)
      for (let i = 0; i < 256; i++) expect(into.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE).equals(chunkOf(x * 256 + i)), `chunk ${x * 256 + i}`).toBe(true)
    }
  })

  it('a restart of the server machine (a new boot id) with writes or map records no sync covered is counted (writeLosses, for each writer\'s next fsync to hear); a process restart alone, or one after a sync, is not', async () => {
    const { key, file } = await newKey()
    const dir = `${await tempDir()}/server`
    const port = await freePort()
    const boot = (n: number) => ({ VVFS_BOOT_ID: String(n).repeat(32) })
    const first = await spawnServer({ dir, port, keyFile: file, env: boot(1) })
    const store = openStore(key, port, { deadlineMs: 8000 })
    await store.apply({ writes: [{ pca: 1, data: chunkOf(1) }] })
    first.proc.kill('SIGKILL')
    await first.exited
    const second = await spawnServer({ dir, port, keyFile: file, env: boot(1) }) // the same boot: a process crash keeps the page cache
    await store.sync({})
    expect(store.writeLosses).toBe(0)
    await store.apply({ writes: [{ pca: 2, data: chunkOf(2) }] })
    second.proc.kill('SIGKILL')
    await second.exited
    const third = await spawnServer({ dir, port, keyFile: file, env: boot(2) })
    await store.sync({}) // the store's sync does not report it: the writers do (test/relay/lost-writes.test.ts)
    expect(store.writeLosses).toBe(1)
    // Synced before the machine restarts: nothing lost.
    third.proc.kill('SIGKILL')
    await third.exited
    const fourth = await spawnServer({ dir, port, keyFile: file, env: boot(3) })
    await store.sync({})
    expect(store.writeLosses).toBe(1)
    // Map records appended and not synced (the map log): a machine restart counts for them too.
    await store.appendMapRecords(1, [{ key: Buffer.from('k'), value: Buffer.from('v') }], false)
    fourth.proc.kill('SIGKILL')
    await fourth.exited
    await spawnServer({ dir, port, keyFile: file, env: boot(4) })
    await store.sync({})
    expect(store.writeLosses).toBe(2)
  })
})
