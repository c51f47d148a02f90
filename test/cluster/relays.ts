/**
 * Relays as daemons for a test file of issue 15: a real etcd started before
 * the file's tests, `vvfs daemon --etcd URL --relay-id ID --lease-ttl TTL`
 * processes, and after the file (also after a failure) etcd resumed if a
 * test paused it, every mount, loop device and daemon cleaned up, the
 * storage servers of test/remote/servers.ts stopped, etcd stopped.
 */
import { afterAll, beforeAll } from 'vitest'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { startEtcd, stopAllEtcd, type EtcdServer } from '../helpers/etcd.js'
import { cleanup } from '../remote/servers.js'

export function relaysForFile(ttlMs: number) {
  let etcd: EtcdServer | undefined
  const daemons: DaemonHandle[] = []
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 30_000)
  afterAll(async () => {
    etcd?.resume()
    await cleanupAll()
    for (const d of daemons) removeDir(d.dir)
    await cleanup()
    await stopAllEtcd()
  })
  return {
    etcd: () => etcd!,
    async relay(id: string, extra: string[] = []): Promise<DaemonHandle> {
      const d = await startDaemon({ extraArgs: ['--etcd', etcd!.url, '--relay-id', id, '--lease-ttl', `${ttlMs / 1000}s`, ...extra] })
      daemons.push(d)
      return d
    },
  }
}
