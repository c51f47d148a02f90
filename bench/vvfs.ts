/**
 * The vvfs daemon under test, driven the way a user drives it: `vvfs daemon`
 * as a child process and every change through the `vvfs` CLI over the
 * control socket.
 *
 * Owns: the daemon process and its temp state. Must never: talk to another
 * vvfs daemon on the machine (the socket is always passed explicitly and
 * VVFS_SOCKET is stripped from the environment), or stop the daemon while a
 * loop device still uses one of its files (cleanup order sees to that).
 */
import { createWriteStream } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { processMemory } from '../lib/proc-memory.js'
import { detachLoop, fusermountUz, loopsUnder } from './mounts.js'
import { must, run, sleep, startService, stopService, waitFor, type Cleanup, type Service } from './proc.js'

/** The repository: where bin/vvfs is, above dist/bench/ (compiled) or bench/ (sources). */
export const ROOT = (() => {
  const up = resolve(dirname(fileURLToPath(import.meta.url)), '..')
  return basename(up) === 'dist' ? resolve(up, '..') : up
})()

export const VVFS_BIN = join(ROOT, 'bin', 'vvfs')

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.VVFS_SOCKET
  return env
}

/**
 * BENCH_NODE_FLAGS: more node flags for the daemons and storage servers a
 * bench starts, e.g. `--trace-gc` (its output lands in each one's log) or
 * `--heap-growing-percent=0` (V8's own heap growth, for a before/after of
 * lib/gc-tuning.ts).
 */
export function benchNodeFlags(): string[] {
  return (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)
}

/**
 * BENCH_DAEMON_ARGS: more arguments for `vvfs daemon`, e.g. `--memory 128M`
 * (the storage systems' memory budget, for a before/after of its default).
 */
export function benchDaemonArgs(): string[] {
  return (process.env.BENCH_DAEMON_ARGS ?? '').split(' ').filter(Boolean)
}

/**
 * BENCH_DAEMON_ENV: more environment for the vvfs daemon only, as
 * space-separated NAME=VALUE, e.g. `MALLOC_ARENA_MAX=2` (glibc's allocator,
 * read at process start) for a before/after that leaves fio and the
 * reference servers as they are.
 */
export function benchDaemonEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const pair of (process.env.BENCH_DAEMON_ENV ?? '').split(' ').filter(Boolean)) {
    const at = pair.indexOf('=')
    if (at <= 0) throw new Error(`BENCH_DAEMON_ENV: ${JSON.stringify(pair)} is not NAME=VALUE`)
    env[pair.slice(0, at)] = pair.slice(at + 1)
  }
  return env
}

export class Vvfs {
  readonly socket: string
  /** How the daemon ended, once stopped: exit code or signal, and how long SIGTERM took. */
  exit: { code: number | string; seconds: number } | undefined
  private stopStep: () => Promise<void> = async () => {}

  private constructor(
    readonly stateDir: string,
    readonly mountDir: string,
    readonly logPath: string,
    private readonly svc: Service,
  ) {
    this.socket = join(stateDir, 'control.sock')
  }

  get pid(): number {
    return this.svc.pid
  }

  get storageDir(): string {
    return join(this.stateDir, 'storage')
  }

  /** Starts `vvfs daemon` and waits until it answers `status`; registers its stop. */
  static async start(dir: string, cleanup: Cleanup, extraArgs: string[] = []): Promise<Vvfs> {
    const stateDir = join(dir, 'state')
    const mountDir = join(dir, 'mnt')
    const logPath = join(dir, 'vvfs-daemon.log')
    const logFile = createWriteStream(logPath)
    // BENCH_DAEMON_PROF=DIR: the daemon writes a CPU profile there when it stops.
    const prof = process.env.BENCH_DAEMON_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_DAEMON_PROF}`] : []
    // BENCH_PERF (bench/replication.ts): JIT symbols for `perf record`.
    if (process.env.BENCH_PERF) prof.push('--perf-basic-prof-only-functions')
    prof.push(...benchNodeFlags())
    const svc = startService(process.execPath, [...prof, VVFS_BIN, 'daemon', '--state', stateDir, '--mount', mountDir, '--log-level', 'warn', ...extraArgs, ...benchDaemonArgs()], { logFile, env: { ...cleanEnv(), ...benchDaemonEnv() }, cwd: dir })
    const vvfs = new Vvfs(stateDir, mountDir, logPath, svc)
    vvfs.stopStep = cleanup.add(`stop vvfs daemon (pid ${svc.pid})`, async () => {
      await vvfs.quiesce()
      const t0 = Date.now()
      const code = await stopService(svc, 'SIGTERM', 120_000)
      vvfs.exit = { code, seconds: (Date.now() - t0) / 1000 }
      if (code !== 0) process.stdout.write(`  vvfs daemon exited with ${code} (its log is copied to bench/out/logs/)\n`)
      await fusermountUz(mountDir)
    }, 300_000)
    await waitFor('the vvfs daemon to answer on its control socket', 60_000, async () => {
      if (svc.hasExited()) throw new Error(`vvfs daemon exited (${await svc.exited}): ${await vvfs.logTail()}`)
      if (!(await stat(vvfs.socket).catch(() => null))) return undefined
      const r = await run(process.execPath, [VVFS_BIN, 'status', '--json', '--socket', vvfs.socket], { env: cleanEnv(), timeoutMs: 30_000 })
      return r.code === 0 ? true : undefined
    }, 250)
    return vvfs
  }

  /** Stops the daemon now (SIGTERM, after quiesce) and returns how it ended. */
  async stop(): Promise<{ code: number | string; seconds: number } | undefined> {
    await this.stopStep()
    return this.exit
  }

  /**
   * Before a stop: no loop device may still use a volume file, and no volume
   * may be open — a daemon stopped under live I/O fails those writes, and
   * has been seen to crash (see the bench report).
   */
  async quiesce(): Promise<void> {
    for (const dev of await loopsUnder(this.mountDir)) await detachLoop(dev)
    if (!this.running) return
    const t0 = Date.now()
    for (;;) {
      const r = await run(process.execPath, [VVFS_BIN, 'volume', 'list', '--json', '--socket', this.socket], { env: cleanEnv(), timeoutMs: 30_000 })
      const open = r.code === 0 ? (JSON.parse(r.stdout) as { name: string; state: string }[]).filter((v) => v.state === 'open').map((v) => v.name) : []
      if (open.length === 0) return
      if (Date.now() - t0 > 30_000) {
        process.stdout.write(`  vvfs volumes still open after 30 s: ${open.join(', ')}; stopping the daemon anyway\n`)
        return
      }
      await sleep(500)
    }
  }

  /** Runs `vvfs ARGS --socket S`; throws with the CLI's error if it fails. */
  async cli(args: string[], timeoutMs = 120_000): Promise<string> {
    if (this.svc.hasExited()) throw new Error(`the vvfs daemon is gone (exit ${await this.svc.exited}): ${await this.logTail()}`)
    return must(process.execPath, [VVFS_BIN, ...args, '--socket', this.socket], { env: cleanEnv(), timeoutMs })
  }

  async json<T>(args: string[]): Promise<T> {
    return JSON.parse(await this.cli([...args, '--json'])) as T
  }

  get running(): boolean {
    return !this.svc.hasExited()
  }

  /** VmHWM of the daemon process, in bytes (0 if it is gone). */
  async peakRss(): Promise<number> {
    return (await processMemory(this.svc.pid)).peakRss
  }

  async rss(): Promise<number> {
    return (await processMemory(this.svc.pid)).rss
  }

  async logTail(lines = 5): Promise<string> {
    const text = await readFile(this.logPath, 'utf8').catch(() => '')
    return text.trim().split('\n').slice(-lines).join(' | ') || '(empty log)'
  }

  /** Warning and error lines of the daemon's log (pino JSON, level >= 40), counted, with the first few. */
  async logIssues(): Promise<{ count: number; first: string[] }> {
    const text = await readFile(this.logPath, 'utf8').catch(() => '')
    const issues: string[] = []
    for (const line of text.split('\n')) {
      if (!line.trim()) continue
      try {
        const rec = JSON.parse(line) as { level?: number; msg?: string; event?: string; err?: string }
        if ((rec.level ?? 0) >= 40) issues.push([rec.event, rec.msg, rec.err].filter(Boolean).join(': '))
      } catch {
        issues.push(line.slice(0, 200))
      }
    }
    return { count: issues.length, first: issues.slice(0, 3) }
  }

  /** Waits until `volume show NAME` reports the same allocation twice in a row (background promotion). */
  async settledAllocation(name: string, maxMs: number): Promise<number> {
    const t0 = Date.now()
    let last = (await this.json<{ allocated: number }>(['volume', 'show', name])).allocated
    while (Date.now() - t0 < maxMs) {
      await sleep(1000)
      const now = (await this.json<{ allocated: number }>(['volume', 'show', name])).allocated
      if (now === last) return now
      last = now
    }
    return last
  }
}

/** The part of `vvfs pool status --json` the bench reads. */
export interface PoolStatusJson {
  capacity: number
  allocated: number
  free: number
  systems: { name: string; allocated: number }[]
}

export interface VolumeShowJson {
  name: string
  size: number
  allocated: number
  extents: number
  allocatedBySystem: { storage: string; allocated: number }[]
}
