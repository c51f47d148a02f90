/**
 * The remote path alone (issue 14's bench targets, without FUSE): the same
 * store-level loads against a StorageSystem over a LevelDB store in this
 * process and over a RemoteChunkStore on a `vvfs storage serve` process on
 * loopback, alternating, in one run. The loads are what the relay sends a
 * store under bench/remote.ts's fio jobs:
 *
 *   seqwrite   32-chunk (128 KiB, one FUSE write) unlogged batches, 64 in
 *              flight (the volume's 8 MiB write-behind), then one sync
 *   seqread    256-chunk (one extent) runs, 4 in flight (ReadAhead's window)
 *   randwrite  1-chunk logged batches, 16 in flight
 *   randread   1-chunk reads one at a time (a reader at queue depth 1;
 *              libfuse 2 sent every O_DIRECT read so), through StorageSystem.readRun
 *
 *   node dist/bench/remote-store.js      BENCH_SECONDS=3 per load and side
 *   BENCH_ROUNDS=3 (medians)  BENCH_LOADS=randread,seqread (a subset)
 *   BENCH_PROF=DIR: the server runs with --cpu-prof into DIR
 *   BENCH_UNMERGED=1: seqwrite also on a second store on the same server
 *     without batch merging (applyWindow Infinity), with its CPU per MiB:
 *     what merging (RemoteChunkStore's APPLY_WINDOW) saves
 *
 * Prints per load local, remote and remote/local, the median over rounds,
 * and the server's peak RSS. Cleanup (server, temp dir) in every case.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CHUNK_SIZE, EXTENT_CHUNKS } from '../lib/layout.js'
import { processMemory } from '../lib/proc-memory.js'
import { silentLogger } from '../lib/log.js'
import { LevelChunkStore } from '../lib/storage/level-store.js'
import { RemoteChunkStore } from '../lib/storage/remote/client.js'
import { StorageSystem } from '../lib/storage/storage-system.js'
import { PeerKey } from '../lib/wire/auth.js'
import { cpuSeconds, freePort, sleep } from './proc.js'
import { VVFS_BIN } from './vvfs.js'

/** The span the loads run over (BENCH_SPAN_MB, default 512: beyond the block cache, as the fio jobs over 1 GiB). */
const SPAN_CHUNKS = (Number(process.env.BENCH_SPAN_MB ?? "512") * 1024 * 1024) / CHUNK_SIZE
const LOADS = ['seqwrite', 'seqread', 'randwrite', 'randread'] as const
type Load = (typeof LOADS)[number]

async function forSeconds(seconds: number, inFlight: number, op: (i: number) => Promise<number>): Promise<number> {
  const end = performance.now() + seconds * 1000
  let bytes = 0
  let next = 0
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) bytes += await op(next++)
    }),
  )
  return bytes / ((performance.now() - t0) / 1000)
}

async function runLoad(system: StorageSystem, load: Load, seconds: number, data: Buffer): Promise<number> {
  const rnd = () => Math.floor(Math.random() * SPAN_CHUNKS)
  switch (load) {
    case 'seqwrite': {
      const rate = await forSeconds(seconds, 64, async (i) => {
        const first = (i * 32) % SPAN_CHUNKS
        const off = (i % 64) * 32 * CHUNK_SIZE
        await system.write(Array.from({ length: 32 }, (_, k) => ({ pca: first + k, data: data.subarray(off + k * CHUNK_SIZE, off + (k + 1) * CHUNK_SIZE) })), { unlogged: true })
        return 32 * CHUNK_SIZE
      })
      await system.sync()
      return rate
    }
    case 'seqread': {
      const bufs = Array.from({ length: 4 }, () => Buffer.allocUnsafe(EXTENT_CHUNKS * CHUNK_SIZE))
      let k = 0
      return forSeconds(seconds, 4, async (i) => {
        const into = bufs[k++ % 4]
        await system.readRun((i * EXTENT_CHUNKS) % SPAN_CHUNKS, EXTENT_CHUNKS, into)
        return into.length
      })
    }
    case 'randwrite':
      return forSeconds(seconds, 16, async (i) => {
        await system.write([{ pca: rnd(), data: data.subarray((i % 256) * CHUNK_SIZE, (i % 256 + 1) * CHUNK_SIZE) }])
        return CHUNK_SIZE
      })
    case 'randread': {
      const into = Buffer.allocUnsafe(CHUNK_SIZE)
      return forSeconds(seconds, 1, async () => {
        await system.readRun(rnd(), 1, into)
        return CHUNK_SIZE
      })
    }
  }
}

/** Bytes a process has had written to storage so far (/proc/PID/io write_bytes; 0 if unreadable). */
async function writtenBytes(pid: number): Promise<number> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => '')
  const m = /^write_bytes:\s+(\d+)/m.exec(io)
  return m ? Number(m[1]) : 0
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? '3')
  const rounds = Number(process.env.BENCH_ROUNDS ?? '3')
  const dir = await mkdtemp(join(process.env.BENCH_TMP || '/var/tmp', 'vvfs-bench-remote-store-'))
  const secret = randomBytes(32).toString('base64')
  const keyFile = join(dir, 'peer.key')
  await writeFile(keyFile, secret + '\n', { mode: 0o600 })
  const port = await freePort()
  const prof = process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : []
  const server = spawn(process.execPath, [...prof, VVFS_BIN, 'storage', 'serve', '--dir', join(dir, 'server'), '--listen', `127.0.0.1:${port}`, '--peer-key', keyFile, '--log-level', 'warn'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const exited = new Promise((r) => server.once('exit', r))
  const systems: StorageSystem[] = []
  try {
    const log = silentLogger()
    const key = new PeerKey(Buffer.from(secret))
    let remote: RemoteChunkStore | null = null
    for (let tries = 0; !remote; tries++) {
      try {
        remote = (await RemoteChunkStore.connect({ host: '127.0.0.1', port, key, log, sid: 2, name: 'far', claim: true })).store
      } catch (err) {
        if (tries > 100) throw err
        await sleep(100)
      }
    }
    // BENCH_UNMERGED=1: the same server through a store that merges no batches (every batch its own request).
    const unmerged = process.env.BENCH_UNMERGED === '1' ? (await RemoteChunkStore.connect({ host: '127.0.0.1', port, key, log, sid: 2, name: 'far', applyWindow: Infinity })).store : null
    const local = StorageSystem.over(await LevelChunkStore.open({ sid: 1, name: 'near', path: join(dir, 'near'), create: true }), { capacity: 1 << 30 })
    const far = StorageSystem.over(remote, { capacity: 1 << 30 })
    const farUnmerged = unmerged ? StorageSystem.over(unmerged, { capacity: 1 << 30 }) : null
    systems.push(local, far, ...(farUnmerged ? [farUnmerged] : []))
    const data = randomBytes(64 * 32 * CHUNK_SIZE)
    // Fill the span on both, so reads find data (the fio jobs read a volume written whole).
    for (const s of [local, far]) await runLoad(s, 'seqwrite', (SPAN_CHUNKS * CHUNK_SIZE) / 150e6, data)
    const ratios: Record<Load, number[]> = { seqwrite: [], seqread: [], randwrite: [], randread: [] }
    const loads = process.env.BENCH_LOADS ? LOADS.filter((l) => process.env.BENCH_LOADS!.split(',').includes(l)) : LOADS
    for (let r = 0; r < rounds; r++) {
      for (const load of loads) {
        // CPU per MiB moved, of this process and of the server: under a shared machine's load, throughput follows it.
        const c0 = process.cpuUsage()
        const l = await runLoad(local, load, seconds, data)
        const c1 = process.cpuUsage()
        const s1 = await cpuSeconds(server.pid!)
        const w1 = await writtenBytes(server.pid!)
        const f = await runLoad(far, load, seconds, data)
        const c2 = process.cpuUsage()
        const s2 = await cpuSeconds(server.pid!)
        const w2 = await writtenBytes(server.pid!)
        const cpu = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) => (b.user + b.system - a.user - a.system) / 1e6
        const perMiB = (s: number, rate: number) => ((s * 1000) / ((rate * seconds) / 2 ** 20)).toFixed(1)
        ratios[load].push(f / l)
        const unit = load.startsWith('seq') ? `${(l / 1e6).toFixed(0)} vs ${(f / 1e6).toFixed(0)} MB/s` : `${(l / CHUNK_SIZE).toFixed(0)} vs ${(f / CHUNK_SIZE).toFixed(0)} IOPS`
        if (farUnmerged && load === 'seqwrite') {
          const u = await runLoad(farUnmerged, load, seconds, data)
          const s3 = await cpuSeconds(server.pid!)
          const c3 = process.cpuUsage()
          process.stdout.write(
            `round ${r + 1} seqwrite  unmerged ${(u / 1e6).toFixed(0)} MB/s (merged/unmerged ${(f / u).toFixed(2)})   CPU ms/MiB unmerged: relay ${perMiB(cpu(c2, c3), u)} + server ${perMiB(s3 - s2, u)}\n`,
          )
        }
        process.stdout.write(
          `round ${r + 1} ${load.padEnd(9)} local vs remote ${unit.padEnd(24)} ratio ${(f / l).toFixed(2)}   CPU ms/MiB: local ${perMiB(cpu(c0, c1), l)}, remote relay ${perMiB(cpu(c1, c2), f)} + server ${perMiB(s2 - s1, f)}; server wrote ${((w2 - w1) / (f * seconds)).toFixed(2)} bytes per byte\n`,
        )
      }
    }
    const { peakRss } = await processMemory(server.pid)
    process.stdout.write(`medians: ${loads.map((l) => `${l} ${median(ratios[l]).toFixed(2)}`).join(', ')}; server peak RSS ${peakRss ? (peakRss / 1024 / 1024).toFixed(0) : '?'} MiB\n`)
  } finally {
    for (const s of systems) await s.close().catch(() => {})
    server.kill('SIGTERM')
    await exited
    await rm(dir, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`remote-store bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
