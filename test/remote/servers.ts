/**
 * Storage servers and remote stores for the tests of issue 14: a server in
 * this process on 127.0.0.1 over a LevelDB store in a temporary directory
 * (the same opener `vvfs storage serve` uses), a key file, and a
 * RemoteChunkStore on it. Everything made here is undone by `cleanup()`,
 * which each test file calls in afterEach (also after a failure).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, openSync, readFileSync, statSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../../lib/log.js'
import { PeerKey } from '../../lib/wire/auth.js'
import type { ServerLimits } from '../../lib/wire/server.js'
import type { JobInfo } from '../../lib/control/schema.js'
import { RemoteChunkStore, type RemoteStoreOptions } from '../../lib/storage/remote/client.js'
import { LevelChunkStore } from '../../lib/storage/level-store.js'
import { StorageServer } from '../../lib/storage/remote/server.js'
import { cleanupAll, removeDir, VVFS, type DaemonHandle } from '../helpers/daemon.js'
import { capturedLog } from '../wire/peers.js'

const undo: (() => Promise<unknown>)[] = []

export async function cleanup(): Promise<void> {
  for (const u of undo.splice(0).reverse()) await u().catch(() => {})
}

/** After a daemon test file: mounts, loops and daemons (the helpers' cleanup), the daemon's directory, then the servers. */
export async function cleanupWithDaemon(d: DaemonHandle | undefined): Promise<void> {
  await cleanupAll()
  if (d) removeDir(d.dir)
  await cleanup()
}

/**
 * Polls a job until `until` holds (default: concluded), calling `during`
 * between polls. A job that pauses when the caller waits for something
 * else (a storage error paused it) or that takes longer than `ms` fails at
 * once, with the job and the daemon's log tail: a wait that can only end
 * in the test's timeout says nothing of why.
 */
export async function waitForJob(
  d: DaemonHandle,
  id: number,
  opts: { ms: number; until?: (j: JobInfo) => boolean; what?: string; during?: () => void; pollMs?: number },
): Promise<JobInfo> {
  const until = opts.until ?? ((j: JobInfo) => j.status === 'concluded')
  const end = Date.now() + opts.ms
  for (;;) {
    const j = await d.client.call('job.show', { id })
    if (until(j)) return j
    const why = j.status === 'paused' ? 'paused' : Date.now() > end ? `still ${j.status} after ${opts.ms} ms` : null
    if (why) throw new Error(`job ${id} ${why} (waiting for it to be ${opts.what ?? 'concluded'}): ${whyJob(d, j)}`)
    opts.during?.()
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 50))
  }
}

/** A job and the daemon's last log lines: what a failed expectation on a job should print. */
export function whyJob(d: DaemonHandle, j: JobInfo): string {
  return `${JSON.stringify(j)}\ndaemon log tail:\n${d.log().split('\n').slice(-40).join('\n')}`
}

/** The storage systems a volume has space on, sorted. */
export async function placement(d: DaemonHandle, volume: string): Promise<string[]> {
  return (await d.client.call('volume.show', { name: volume })).allocatedBySystem.map((s) => s.storage).sort()
}

export async function tempDir(prefix = 'vvfs-remote-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  undo.push(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A fresh key and its 0600 file. */
export async function newKey(): Promise<{ key: PeerKey; file: string; secret: string }> {
  const secret = randomBytes(32).toString('base64')
  const file = join(await tempDir('vvfs-key-'), 'peer.key')
  await writeFile(file, secret + '\n', { mode: 0o600 })
  return { key: new PeerKey(Buffer.from(secret)), file, secret }
}

export interface TestServer {
  server: StorageServer
  port: number
  dir: string
  logs: ReturnType<typeof capturedLog>
  stop(): Promise<void>
}

/** A storage server on 127.0.0.1 (port 0 unless given) serving `dir` (a new one unless given). */
export async function startServer(key: PeerKey, opts: { dir?: string; port?: number; capacity?: number; limits?: Partial<ServerLimits> } = {}): Promise<TestServer> {
  const dir = opts.dir ?? (await tempDir())
  const logs = capturedLog()
  const server = new StorageServer({
    dir,
    host: '127.0.0.1',
    port: opts.port ?? 0,
    key,
    log: logs.log,
    capacity: opts.capacity,
    limits: opts.limits,
    openStore: (o) => LevelChunkStore.open(o),
  })
  const { port } = await server.start()
  let stopped = false
  const stop = async () => {
    if (stopped) return
    stopped = true
    await server.close()
  }
  undo.push(stop)
  return { server, port, dir, logs, stop }
}

const quiet = createLogger(process.env.VVFS_TEST_LOG ? 'debug' : 'silent')

/** A remote store on `port`, claiming the server as storage system `sid` unless told otherwise. */
export function openStore(key: PeerKey, port: number, opts: Partial<RemoteStoreOptions> = {}): RemoteChunkStore {
  const store = new RemoteChunkStore({ host: '127.0.0.1', port, key, log: quiet, sid: 7, name: 'far', claim: true, backoff: { initialMs: 20, maxMs: 200 }, ...opts })
  undo.push(() => store.close())
  return store
}

export function chunkOf(seed: number): Buffer {
  const b = Buffer.alloc(4096)
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i)
  return b
}

export { freePort } from '../../bench/proc.js'

export interface ServerProcess {
  proc: ChildProcess
  log(): string
  /** Resolves with the exit code (null if killed by a signal) when it exits. */
  exited: Promise<number | null>
}

/** `vvfs storage serve` as its own process (the built dist/), ready when it logged storage.serving. */
export function spawnServer(opts: { dir: string; port: number; keyFile: string; capacity?: string; env?: NodeJS.ProcessEnv }): Promise<ServerProcess> {
  return spawnServerIn(null, { ...opts, host: '127.0.0.1' })
}

/** The same, in network namespace `ns` (null: this one), listening on `host`. */
export async function spawnServerIn(ns: string | null, opts: { dir: string; host: string; port: number; keyFile: string; capacity?: string; env?: NodeJS.ProcessEnv }): Promise<ServerProcess> {
  const logPath = join(opts.dir + '.log')
  // A restart on the same directory appends to the same log: only what this process wrote says it is ready.
  const from = existsSync(logPath) ? statSync(logPath).size : 0
  const fd = openSync(logPath, 'a')
  const args = ['storage', 'serve', '--dir', opts.dir, '--listen', `${opts.host}:${opts.port}`, '--peer-key', opts.keyFile, '--log-format', 'json']
  if (opts.capacity) args.push('--capacity', opts.capacity)
  const command = ns ? ['ip', ['netns', 'exec', ns, process.execPath, VVFS, ...args]] as const : [process.execPath, [VVFS, ...args]] as const
  let proc: ChildProcess
  try {
    proc = spawn(command[0], [...command[1]], { stdio: ['ignore', fd, fd], env: { ...process.env, ...opts.env } })
  } finally {
    closeSync(fd)
  }
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)))
  undo.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await exited
    }
    await rm(logPath, { force: true })
  })
  const log = () => (existsSync(logPath) ? readFileSync(logPath, 'utf8') : '')
  const ours = () => (existsSync(logPath) ? readFileSync(logPath).subarray(from).toString('utf8') : '')
  const end = Date.now() + 15_000
  while (!ours().includes('"storage.serving"')) {
    if (proc.exitCode !== null) throw new Error(`storage server exited with ${proc.exitCode}:\n${log()}`)
    if (Date.now() > end) throw new Error(`storage server not ready in 15 s:\n${log()}`)
    await new Promise((r) => setTimeout(r, 25))
  }
  return { proc, log, exited }
}
