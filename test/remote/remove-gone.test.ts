import { writeFileSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'
import { cleanupWithDaemon, freePort, newKey, spawnServer, tempDir } from './servers.js'

let d: DaemonHandle | undefined

afterAll(() => cleanupWithDaemon(d))

describe('a remote storage system whose server is gone', { timeout: 40_000 }, () => {
  it('shows as down, a fence fails with IO_ERROR, and it can still be removed once empty (no final sync possible)', async () => {
    const key = await newKey()
    const port = await freePort()
    const server = await spawnServer({ dir: `${await tempDir()}/gone`, port, keyFile: key.file, capacity: '64M' })
    d = await startDaemon({ env: { VVFS_REMOTE_DEADLINE_MS: '1000' } })
    await d.client.call('storage.add', { name: 'gone', remote: `127.0.0.1:${port}`, peerKey: key.file })
    // Writes the server took and no sync covered yet: the system's close would sync them.
    await d.client.call('volume.create', { name: 'v', size: '4M' })
    writeFileSync(d.file('v'), Buffer.alloc(1024 * 1024, 7), { flag: 'r+' })
    for (let i = 0; ; i++) {
      // The kernel releases the file after writeFileSync returned: VOLUME_BUSY until then.
      const code = await codeOf(d.client.call('volume.delete', { name: 'v' }))
      if (code === 'no error') break
      if (code !== 'VOLUME_BUSY' || i >= 100) throw new Error(`volume.delete: ${code}`)
      await new Promise((r) => setTimeout(r, 50))
    }
    server.proc.kill('SIGKILL')
    await server.exited
    let gone = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 'gone')!
    for (let i = 0; i < 50 && gone.connection === 'ready'; i++) {
      await new Promise((r) => setTimeout(r, 100))
      gone = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 'gone')!
    }
    expect(['down', 'connecting']).toContain(gone.connection)
    expect(await codeOf(d.client.call('storage.fence', { name: 'gone', epoch: 1 }))).toBe('IO_ERROR')
    expect(await d.client.call('storage.remove', { name: 'gone' })).toEqual({ removed: 'gone' })
    expect((await d.client.call('storage.list', {})).storage).toEqual([])
  })
})
