/**
 * Issue 15, "catalog races": two relays on one etcd catalog create the same
 * volume name at once — exactly one succeeds, the other gets VOLUME_EXISTS,
 * and the catalog holds the volume once. Shown with two Managers in this
 * process (many rounds) and with two `vvfs daemon --etcd --relay-id`
 * processes through their control sockets.
 */
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { VvfsError } from '../../lib/errors.js'
import { silentLogger } from '../../lib/log.js'
import { Manager } from '../../lib/manager/manager.js'
import { cleanupAll, removeDir, startDaemon, tempDir, VVFS } from '../helpers/daemon.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'

let etcd: EtcdServer
const dirs: string[] = []

beforeAll(async () => {
  etcd = await startEtcd()
}, 30_000)
afterAll(async () => {
  await cleanupAll()
  await stopAllEtcd()
  for (const d of dirs) removeDir(d)
})

async function relay(relayId: string, prefix: string): Promise<Manager> {
  const dir = tempDir(`vvfs-${relayId}-`)
  dirs.push(dir)
  return Manager.open({
    stateDir: join(dir, 'state'),
    mountDir: join(dir, 'mnt'),
    log: silentLogger(),
    mount: false,
    cluster: { endpoints: [etcd.url], relayId, prefix, standby: false },
  })
}

function outcome(results: PromiseSettledResult<unknown>[]) {
  const won = results.filter((r) => r.status === 'fulfilled').length
  const codes = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as VvfsError).code)
  return { won, codes }
}

describe('catalog races between relays', () => {
  it('two Managers on one etcd catalog create the same volume name at once, 20 times: exactly one succeeds each time', async () => {
    const a = await relay('ra', 'race1/')
    const b = await relay('rb', 'race1/')
    try {
      for (let i = 0; i < 20; i++) {
        const name = `v${i}`
        const results = await Promise.allSettled([a.createVolume({ name, size: 1 << 20 }), b.createVolume({ name, size: 1 << 20 })])
        expect(outcome(results)).toEqual({ won: 1, codes: ['VOLUME_EXISTS'] })
      }
      // Each relay serves the volumes it created; the catalog has each name once.
      const names = [...a.listVolumes(), ...b.listVolumes()].map((v) => v.name).sort()
      expect(names).toEqual(Array.from({ length: 20 }, (_, i) => `v${i}`).sort())
    } finally {
      await a.close()
      await b.close()
    }
  })

  it('two daemons started with --etcd URL --relay-id NAME: the same volume created through both sockets at once exists once', async () => {
    const args = (id: string) => ['--etcd', etcd.url, '--relay-id', id]
    const a = await startDaemon({ extraArgs: args('relay-a') })
    const b = await startDaemon({ extraArgs: args('relay-b') })
    const results = await Promise.allSettled([a.client.call('volume.create', { name: 'same', size: '16M' }), b.client.call('volume.create', { name: 'same', size: '16M' })])
    expect(outcome(results)).toEqual({ won: 1, codes: ['VOLUME_EXISTS'] })
    // A second create through either relay is refused too: both read the one catalog.
    for (const d of [a, b]) await expect(d.client.call('volume.create', { name: 'same', size: '16M' })).rejects.toMatchObject({ code: 'VOLUME_EXISTS' })
    expect(await a.stop()).toBe(0)
    expect(await b.stop()).toBe(0)
  })

  it('daemon flags: --relay-id without --etcd, --etcd without --relay-id, an etcd nobody answers at: refused with a code, nothing started', () => {
    const dir = tempDir('vvfs-flags-')
    dirs.push(dir)
    const daemon = (...args: string[]) => spawnSync(process.execPath, [VVFS, 'daemon', '--state', join(dir, 'state'), '--mount', join(dir, 'mnt'), ...args], { encoding: 'utf8', timeout: 30_000 })
    const alone = daemon('--relay-id', 'x')
    expect(alone.status).not.toBe(0)
    expect(alone.stderr).toMatch(/INVALID_ARGUMENT: --relay-id and --standby need --etcd/)
    const nameless = daemon('--etcd', etcd.url)
    expect(nameless.stderr).toMatch(/INVALID_ARGUMENT: --etcd needs --relay-id/)
    const unreachable = daemon('--etcd', 'http://127.0.0.1:1', '--relay-id', 'x', '--log-level', 'error')
    expect(unreachable.status).not.toBe(0)
    expect(unreachable.stderr).toMatch(/PEER_UNAVAILABLE: etcd http:\/\/127.0.0.1:1/)
  })
})
