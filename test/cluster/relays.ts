/**
 * Relays as daemons for a test file of issue 15: a real etcd started before
 * the file's tests, `vvfs daemon --etcd URL --relay-id ID --lease-ttl TTL`
 * processes, and after the file (also after a failure) etcd resumed if a
 * test paused it, every mount, loop device and daemon cleaned up, the
 * storage servers of test/remote/servers.ts stopped, etcd stopped.
 */
import { afterAll, beforeAll, expect } from 'vitest'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { cleanup, freePort, newKey, spawnServer, tempDir } from '../remote/servers.js'

export function relaysForFile(ttlMs: number) {
  let etcd: EtcdServer | undefined
  const daemons: DaemonHandle[] = []
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 30_000)
  afterAll(async () => {
    etcd?.resume()
    await cleanupAll()
    // No relay of the file found space it was about to hold already in use (one relay allocated over another's volume).
    const conflicts = daemons.flatMap((d) => d.log().split('\n').filter((l) => l.includes('"event":"relay.space_conflict"')))
    for (const d of daemons) removeDir(d.dir)
    await cleanup()
    await stopAllEtcd()
    expect(conflicts, 'a relay allocated over a volume served elsewhere').toEqual([])
  })
  const relay = async (id: string, extra: string[] = []): Promise<DaemonHandle> => {
    const d = await startDaemon({ extraArgs: ['--etcd', etcd!.url, '--relay-id', id, '--lease-ttl', `${ttlMs / 1000}s`, ...extra] })
    daemons.push(d)
    return d
  }
  return {
    etcd: () => etcd!,
    relay,
    /**
     * Relay `owner` with two storage servers added (`PREFIX0`, `PREFIX1`, `capacity` each) and volume
     * `volume` made on it, then relay `standby` (--standby: started after, it opens the servers at start).
     */
    async ownerAndStandby(p: { owner: string; standby: string; systems: string; capacity: string; volume: string; size: string }): Promise<{ a: DaemonHandle; b: DaemonHandle }> {
      const { keyFile, ports } = await storageServers(2)
      const a = await relay(p.owner)
      for (const [i, port] of ports.entries()) await a.client.call('storage.add', { name: `${p.systems}${i}`, remote: `127.0.0.1:${port}`, peerKey: keyFile, capacity: p.capacity })
      await a.client.call('volume.create', { name: p.volume, size: p.size })
      return { a, b: await relay(p.standby, ['--standby']) }
    },
  }
}

/** `n` storage servers (`vvfs storage serve`, own processes on 127.0.0.1) sharing one new key: the key file and their ports. */
export async function storageServers(n: number): Promise<{ keyFile: string; ports: number[] }> {
  const key = await newKey()
  const ports: number[] = []
  for (let i = 0; i < n; i++) {
    const port = await freePort()
    await spawnServer({ dir: await tempDir(), port, keyFile: key.file })
    ports.push(port)
  }
  return { keyFile: key.file, ports }
}
