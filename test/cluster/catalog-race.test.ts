/**
 * Issue 15, "catalog races": two relays on one etcd catalog create the same
 * volume name at once — exactly one succeeds, the other gets VOLUME_EXISTS,
 * and the catalog holds the volume once. Shown with two Managers in this
 * process (many rounds) and with two `vvfs daemon --etcd --relay-id`
 * processes through their control sockets.
 */
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { VvfsError } from '../../lib/errors.js'
import { silentLogger } from '../../lib/log.js'
import { Manager } from '../../lib/manager/manager.js'
import { cleanupAll, removeDir, startDaemon, tempDir } from '../helpers/daemon.js'
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
})
