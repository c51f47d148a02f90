/**
 * bench-ha (issue 15): relays in a cluster, measured.
 *
 * 1. Failover: an owner process (bench/ha-owner.ts) holds volume `vol`'s
 *    ownership under a lease (TTL 5 s); the bench kills it with SIGKILL and
 *    times until a standby (this process, lib/cluster) has taken the volume
 *    (the owner key went with the lease), raised a storage server's fence
 *    to its token and had a write accepted there. RUNS runs (default 20),
 *    p50/p95/max; target p95 ≤ TTL + 2 s. This is ownership and fencing
 *    only (the daemon's whole takeover, map included, is timed in
 *    test/cluster/crash-takeover.test.ts).
 * 2. Write throughput of a volume owned through etcd (`vvfs daemon --etcd`)
 *    vs the file catalog: SECONDS of 1 MiB sequential writes + fsync each
 *    16 MiB through the FUSE file, alternating three times; target ≥ 0.95.
 * 3. Graceful `vvfs volume move` between two daemons over one storage
 *    server, BENCH_HA_MOVES (10) moves back and forth: the gap the daemon
 *    reports and the host's (request → first write accepted through the new
 *    owner's file); target ≤ 1 s.
 *
 * Env: BENCH_HA_RUNS (20), BENCH_HA_TTL_MS (5000), BENCH_SECONDS (5 per
 * throughput round), BENCH_HA_MOVES (10). Owns: its etcd, storage server, daemons and temp
 * directories, all undone at the end or on Ctrl-C.
 */
import { closeSync, constants, fsyncSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createWriteStream } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { Ownership, type Owner } from '../lib/cluster/ownership.js'
import { RelayLease } from '../lib/cluster/relay-lease.js'
import { ControlClient } from '../lib/control/client.js'
import { createLogger } from '../lib/log.js'
import { etcdClient } from '../lib/manager/etcd-catalog.js'
import { LevelChunkStore } from '../lib/storage/level-store.js'
import { RemoteChunkStore } from '../lib/storage/remote/client.js'
import { StorageServer } from '../lib/storage/remote/server.js'
import { PeerKey } from '../lib/wire/auth.js'
import { startEtcd } from './etcd.js'
import { Cleanup, freePort, onInterrupt, say, sleep, startService, stopService, waitFor } from './proc.js'
import { ROOT, VVFS_BIN } from './vvfs.js'
import { fusermountUz } from './mounts.js'

const RUNS = Number(process.env.BENCH_HA_RUNS ?? 20)
const TTL_MS = Number(process.env.BENCH_HA_TTL_MS ?? 5000)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
/** Graceful moves measured (alternating between two relays). */
const MOVES = Number(process.env.BENCH_HA_MOVES ?? 10)
const MOVE_KEY = randomBytes(32).toString('base64')
const quiet = createLogger('silent')

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

async function failover(cleanup: Cleanup, etcdUrl: string, dir: string): Promise<number[]> {
  const key = new PeerKey(randomBytes(32))
  const server = new StorageServer({ dir: join(dir, 'server'), host: '127.0.0.1', port: 0, key, log: quiet, openStore: (o) => LevelChunkStore.open(o) })
  const { port } = await server.start()
  cleanup.add('stop the storage server', () => server.close())
  const client = etcdClient([etcdUrl])
  cleanup.add('close the standby\'s etcd client', async () => client.close())
  const chunk = Buffer.alloc(4096, 7)
  const times: number[] = []
  for (let run = 1; run <= RUNS; run++) {
    const prefix = `ha${run}/`
    const lease = await RelayLease.start({ client, prefix, relayId: 'standby', ttlMs: TTL_MS, log: quiet })
    const standby = new Ownership(client, prefix, lease)
    let tokenLine = ''
    const owner = startService(process.execPath, [join(ROOT, 'dist/bench/ha-owner.js'), etcdUrl, prefix, String(TTL_MS)], {
      logFile: createWriteStream(join(dir, `owner-${run}.log`)),
      onStdoutLine: (l) => (tokenLine = l),
    })
    await waitFor('the owner to claim the volume', 30_000, async () => (tokenLine ? true : undefined), 20)
    let took: (o: Owner) => void = () => {}
    const taken = new Promise<Owner>((r) => (took = r))
    const watcher = await standby.watchOwners((id) => void standby.take(id, 'vol').then(took))
    // Kill anywhere in the keep-alive cycle.
    await sleep(Math.random() * TTL_MS * 0.5)
    const killedAt = Date.now()
    owner.child.kill('SIGKILL')
    await owner.exited
    const o = await taken
    const store = new RemoteChunkStore({ host: '127.0.0.1', port, key, log: quiet, sid: 1, name: 'far', claim: true, epoch: 0 })
    await store.fence(o.token)
    await store.apply({ writes: [{ pca: run, data: chunk }], token: o.token, sync: true })
    const ms = Date.now() - killedAt
    times.push(ms)
    say(`failover run ${run}/${RUNS}: ${ms} ms (old token ${tokenLine}, new ${o.token})`)
    await store.close()
    await watcher.cancel()
    await lease.close(true)
  }
  return times
}

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.VVFS_SOCKET
  return env
}

/** A `vvfs daemon` with `extra` flags (and `logLevel`) in `dir` (state, mount, log there), stopped by the returned `stop` (and by the cleanup). */
async function daemon(cleanup: Cleanup, dir: string, extra: string[], logLevel = 'warn'): Promise<{ c: ControlClient; mount: string; dir: string; stop: () => Promise<void> }> {
  const state = join(dir, 'state')
  const mount = join(dir, 'mnt')
  const svc = startService(process.execPath, [VVFS_BIN, 'daemon', '--state', state, '--mount', mount, '--log-level', logLevel, ...extra], {
    logFile: createWriteStream(join(dir, 'daemon.log')),
    env: cleanEnv(),
  })
  const stop = cleanup.add(`stop vvfs daemon (pid ${svc.pid})`, async () => {
    await stopService(svc, 'SIGTERM', 60_000)
    await fusermountUz(mount)
  })
  const c = await waitFor('the daemon', 60_000, async () => ControlClient.connect(join(state, 'control.sock')).catch(() => undefined), 100)
  return {
    c,
    mount,
    dir,
    stop: async () => {
      c.close()
      await stop()
    },
  }
}

/** MiB/s of 1 MiB writes (fsync every 16 MiB) for SECONDS into a fresh volume of a daemon started with `extra`. */
async function throughput(cleanup: Cleanup, dir: string, extra: string[]): Promise<number> {
  const { c, mount, stop } = await daemon(cleanup, dir, extra)
  try {
    await c.call('storage.add', { name: 's1', capacity: '2G' })
    await c.call('volume.create', { name: 'v', size: '1G' })
    const fd = openSync(join(mount, 'v'), constants.O_RDWR)
    const buf = randomBytes(1 << 20)
    let written = 0
    const t0 = Date.now()
    while (Date.now() - t0 < SECONDS * 1000) {
      writeSync(fd, buf, 0, buf.length, written % (1 << 30))
      written += buf.length
      if (written % (16 << 20) === 0) fsyncSync(fd)
    }
    fsyncSync(fd)
    closeSync(fd)
    return written / (1 << 20) / ((Date.now() - t0) / 1000)
  } finally {
    await stop()
  }
}

/** write + fsync of 4 KiB at 0 through a host file: undefined once it worked, else the errno. */
function writeOnce(file: string): string | undefined {
  try {
    const fd = openSync(file, constants.O_RDWR)
    try {
      writeSync(fd, Buffer.alloc(4096, 5), 0, 4096, 0)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    return undefined
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'error'
  }
}

/**
 * Graceful `volume move` between two relays (`vvfs daemon --etcd`) over one
 * storage server, MOVES times back and forth: the gap the daemon reports
 * (from when the owner stopped acknowledging to when the other relay serves
 * the volume) and the host's: from the move request to the first write +
 * fsync accepted through the new owner's file.
 */
async function moveGaps(cleanup: Cleanup, etcdUrl: string, dir: string): Promise<{ reported: number[]; host: number[] }> {
  // Its own process: the host writes below are synchronous and would stall a server in this one.
  const keyFile = join(dir, 'move.key')
  writeFileSync(keyFile, MOVE_KEY, { mode: 0o600 })
  const port = await freePort()
  const server = startService(process.execPath, [VVFS_BIN, 'storage', 'serve', '--dir', join(dir, 'move-server'), '--listen', `127.0.0.1:${port}`, '--peer-key', keyFile], {
    logFile: createWriteStream(join(dir, 'move-server.log')),
    env: cleanEnv(),
  })
  cleanup.add(`stop the move storage server (pid ${server.pid})`, async () => void (await stopService(server, 'SIGTERM', 30_000)))
  const flags = (id: string) => ['--etcd', etcdUrl, '--relay-id', id, '--lease-ttl', `${TTL_MS / 1000}s`]
  const a = await daemon(cleanup, mkdtempSync(join(dir, 'move-a-')), flags('move-a'), 'info')
  await waitFor('the move storage server', 30_000, () =>
    a.c.call('storage.add', { name: 'far', remote: `127.0.0.1:${port}`, peerKey: keyFile, capacity: '1G' }).then(
      () => true,
      () => undefined,
    ),
  )
  await a.c.call('volume.create', { name: 'moved', size: '64M' })
  const b = await daemon(cleanup, mkdtempSync(join(dir, 'move-b-')), [...flags('move-b'), '--standby'], 'info')
  const relays = [
    { id: 'move-a', d: a },
    { id: 'move-b', d: b },
  ]
  const reported: number[] = []
  const host: number[] = []
  try {
    const first = writeOnce(join(a.mount, 'moved'))
    if (first) throw new Error(`the first write to the volume failed: ${first} (${join(a.dir, 'daemon.log')})`)
    for (let i = 0; i < MOVES; i++) {
      const from = relays[i % 2]!
      const to = relays[(i + 1) % 2]!
      const t0 = Date.now()
      const r = await from.d.c.call('volume.move', { name: 'moved', relay: to.id })
      await waitFor('the first write through the new owner', 10_000, async () => (writeOnce(join(to.d.mount, 'moved')) === undefined ? true : undefined), 5)
      host.push(Date.now() - t0)
      reported.push(r.gapMs)
      say(`volume move ${i + 1}/${MOVES} ${from.id} → ${to.id}: gap ${r.gapMs} ms (daemon), ${host[host.length - 1]} ms request → first write accepted`)
    }
  } finally {
    await b.stop()
    await a.stop()
  }
  return { reported, host }
}

async function main(): Promise<void> {
  const cleanup = new Cleanup()
  onInterrupt(cleanup)
  const dir = mkdtempSync(join(tmpdir(), 'vvfs-bench-ha-'))
  cleanup.add('remove the bench directory', async () => rmSync(dir, { recursive: true, force: true }))
  try {
    const etcd = await startEtcd()
    cleanup.add('stop etcd', () => etcd.stop())
    say(`etcd at ${etcd.url}; failover: ${RUNS} runs, TTL ${TTL_MS} ms`)
    const times = (await failover(cleanup, etcd.url, dir)).sort((a, b) => a - b)
    const p95 = percentile(times, 95)
    say(`failover kill -9 → first write accepted by the new owner: p50 ${percentile(times, 50)} ms, p95 ${p95} ms, max ${times[times.length - 1]} ms (target p95 ≤ ${TTL_MS + 2000} ms: ${p95 <= TTL_MS + 2000 ? 'met' : 'MISSED'})`)

    const ratios: number[] = []
    for (let round = 1; round <= 3; round++) {
      const fileRun = () => throughput(cleanup, mkdtempSync(join(dir, 'file-')), [])
      const etcdRun = async () => {
        // A fresh etcd each round: the catalog in etcd outlives a daemon, as it should.
        const fresh = await startEtcd()
        const stopFresh = cleanup.add('stop etcd', () => fresh.stop())
        try {
          return await throughput(cleanup, mkdtempSync(join(dir, 'etcd-')), ['--etcd', fresh.url, '--relay-id', 'bench', '--lease-ttl', `${TTL_MS / 1000}s`])
        } finally {
          await stopFresh()
        }
      }
      // Alternating which goes first, so a warm cache or a busy neighbour does not favour one.
      const [file, etcdRate] = round % 2 === 1 ? [await fileRun(), await etcdRun()] : (([e, f]) => [f, e])([await etcdRun(), await fileRun()])
      ratios.push(etcdRate / file)
      say(`throughput round ${round}: file catalog ${file.toFixed(0)} MiB/s, etcd ${etcdRate.toFixed(0)} MiB/s, ratio ${(etcdRate / file).toFixed(3)}`)
    }
    const median = ratios.sort((a, b) => a - b)[1]!
    say(`write throughput etcd / file catalog: median ratio ${median.toFixed(3)} (target ≥ 0.95: ${median >= 0.95 ? 'met' : 'MISSED'})`)
    const gaps = await moveGaps(cleanup, etcd.url, dir)
    const reported = gaps.reported.sort((a, b) => a - b)
    const hostGaps = gaps.host.sort((a, b) => a - b)
    const worst = reported[reported.length - 1]!
    say(`graceful volume move (${MOVES} moves): gap p50 ${percentile(reported, 50)} ms, max ${worst} ms (target ≤ 1000 ms: ${worst <= 1000 ? 'met' : 'MISSED'}); request → first write through the new owner p50 ${percentile(hostGaps, 50)} ms, max ${hostGaps[hostGaps.length - 1]} ms`)
  } finally {
    await cleanup.all()
  }
}

await main()
