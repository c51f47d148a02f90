/**
 * Runs a real vvfs daemon (the built dist/, as `vvfs daemon` runs it) in a
 * fresh temporary state directory, and always cleans up: the mount is
 * unmounted and every loop device the test attached is detached, even when
 * the test fails or the daemon was killed.
 *
 * With `powerLoss: true` the daemon runs under the powercut interposer
 * (test/helpers/powercut.ts) and `crash()` is a power cut: SIGKILL, then
 * every file of the state directory loses what was not synced. Without it
 * `crash()` is a kill -9 (a process crash: the page cache survives).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { ControlClient } from '../../lib/control/client.js'
import { PowerCutTracker, powercutEnv, type CutReport } from './powercut.js'

const ROOT = resolve(import.meta.dirname, '../..')
export const VVFS = join(ROOT, 'bin/vvfs')

export interface DaemonHandle {
  dir: string
  state: string
  mount: string
  socket: string
  proc: ChildProcess
  client: ControlClient
  log(): string
  file(volume: string, mount?: string): string
  /** SIGTERM and wait for a clean exit. */
  stop(): Promise<number | null>
  /** SIGKILL, no cleanup by the daemon. */
  kill9(): Promise<void>
  /** SIGKILL (if still running), then the state directory loses every byte not synced. Power-loss mode only. */
  powerCut(): Promise<CutReport>
  /** The crash this daemon is tested under: powerCut() in power-loss mode, else kill9(). */
  crash(): Promise<void>
  restart(env?: NodeJS.ProcessEnv): Promise<void>
  /** Resolves when the daemon process exits (e.g. at an injected crash point). */
  exited(): Promise<number | null>
}

/** How long a clean stop may take: a loaded CI machine stops a daemon in well under 5 s. */
const STOP_MS = 45_000

const live = new Set<DaemonHandle>()
const loops = new Set<string>()
const mounts = new Set<string>()

/** Every directory tempDir made in this test file: removed after it (test/setup.ts), whoever else removes them first. */
const made = new Set<string>()

export function tempDir(prefix = 'vvfs-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  made.add(dir)
  return dir
}

/** After a test file: stops what it left running and removes every directory tempDir made for it. */
export async function removeTempDirs(): Promise<void> {
  await cleanupAll()
  for (const dir of made) removeDir(dir)
  made.clear()
}

async function waitForSocket(path: string, proc: ChildProcess, logPath: string, timeoutMs = 20_000): Promise<ControlClient> {
  const start = Date.now()
  for (;;) {
    // A daemon killed by a signal (a crash point's SIGKILL) has no exit code, only a signal.
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`daemon exited with ${proc.exitCode ?? proc.signalCode}:\n${existsSync(logPath) ? readFileSync(logPath, 'utf8') : ''}`)
    if (existsSync(path)) {
      try {
        return await ControlClient.connect(path)
      } catch {
        // not listening yet
      }
    }
    if (Date.now() - start > timeoutMs) throw new Error(`daemon did not open ${path} in ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** `netns`: run it in that network namespace only (nsenter --net: its FUSE mounts stay visible here). */
export function spawnDaemon(args: string[], logPath: string, env: NodeJS.ProcessEnv = {}, netns?: string): ChildProcess {
  const fd = openSync(logPath, 'a')
  try {
    const [cmd, argv] = netns ? ['nsenter', [`--net=/run/netns/${netns}`, process.execPath, VVFS, 'daemon', ...args]] : [process.execPath, [VVFS, 'daemon', ...args]]
    return spawn(cmd, argv, { stdio: ['ignore', fd, fd], env: { ...process.env, ...env } })
  } finally {
    closeSync(fd)
  }
}

export async function startDaemon(opts: { dir?: string; extraArgs?: string[]; env?: NodeJS.ProcessEnv; powerLoss?: boolean; netns?: string } = {}): Promise<DaemonHandle> {
  const dir = opts.dir ?? tempDir()
  const state = join(dir, 'state')
  const mount = join(dir, 'mnt')
  const socket = join(state, 'control.sock')
  const logPath = join(dir, 'daemon.log')
  mounts.add(mount)
  // The sync log lives outside the state directory, which is what a cut truncates.
  const tracker = opts.powerLoss ? new PowerCutTracker(state, join(dir, 'powercut.log')) : undefined
  const underInterposer = (env: NodeJS.ProcessEnv = {}) => (tracker ? { ...env, ...powercutEnv(tracker.log) } : env)
  const args = ['--state', state, '--mount', mount, '--log-level', 'info', ...(opts.extraArgs ?? [])]
  const handle: DaemonHandle = {
    dir,
    state,
    mount,
    socket,
    proc: null as unknown as ChildProcess,
    client: null as unknown as ControlClient,
    log: () => (existsSync(logPath) ? readFileSync(logPath, 'utf8') : ''),
    file: (volume, m = mount) => join(m, volume),
    async stop() {
      handle.client?.close()
      const proc = handle.proc
      if (proc.exitCode !== null) return proc.exitCode
      const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)))
      proc.kill('SIGTERM')
      // A daemon that ignores SIGTERM is a failure with its log, not a test that hangs to its timeout.
      let timer: NodeJS.Timeout | undefined
      const stuck = new Promise<'stuck'>((r) => (timer = setTimeout(() => r('stuck'), STOP_MS)))
      const code = await Promise.race([exited, stuck])
      clearTimeout(timer)
      if (code === 'stuck') {
        const tail = handle.log().split('\n').slice(-25).join('\n')
        await handle.kill9()
        throw new Error(`the daemon did not exit within ${STOP_MS / 1000} s of SIGTERM (killed); its log ends:\n${tail}`)
      }
      live.delete(handle)
      return code
    },
    async kill9() {
      handle.client?.close()
      const proc = handle.proc
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r))
        proc.kill('SIGKILL')
        await exited
      }
      live.delete(handle)
      unmountUnder(dir)
    },
    async powerCut() {
      if (!tracker) throw new Error('powerCut() needs startDaemon({ powerLoss: true })')
      await handle.kill9()
      return tracker.cut()
    },
    async crash() {
      if (tracker) await handle.powerCut()
      else await handle.kill9()
    },
    exited() {
      const proc = handle.proc
      if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode)
      return new Promise((r) => proc.once('exit', (code) => r(code)))
    },
    async restart(env) {
      if (handle.proc.exitCode === null && handle.proc.signalCode === null) await handle.stop()
      else {
        handle.client?.close()
        unmountUnder(dir)
      }
      handle.proc = spawnDaemon(args, logPath, underInterposer(env ?? opts.env), opts.netns)
      live.add(handle)
      handle.client = await waitForSocket(socket, handle.proc, logPath)
    },
  }
  handle.proc = spawnDaemon(args, logPath, underInterposer(opts.env), opts.netns)
  live.add(handle)
  handle.client = await waitForSocket(socket, handle.proc, logPath)
  return handle
}

export function lazyUnmount(path: string): void {
  try {
    execFileSync('fusermount', ['-uz', path], { stdio: 'ignore' })
  } catch {
    // not mounted
  }
}

export function sh(cmd: string, args: string[], opts: { input?: string | Buffer; timeout?: number } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input: opts.input, timeout: opts.timeout ?? 120_000, stdio: ['pipe', 'pipe', 'pipe'] })
}

export function attachLoop(file: string): string {
  const dev = sh('losetup', ['--find', '--show', file]).trim()
  loops.add(dev)
  return dev
}

export function detachLoop(dev: string): void {
  try {
    sh('losetup', ['-d', dev])
  } catch {
    // already gone
  }
  loops.delete(dev)
}

export function mountExt4(dev: string, at: string, options: string[] = []): void {
  sh('mkdir', ['-p', at])
  sh('mount', ['-t', 'ext4', ...(options.length ? ['-o', options.join(',')] : []), dev, at])
  mounts.add(at)
}

/** `e2fsck -fn`: a forced, read-only check; code 0 is clean. */
export function fsck(dev: string): { code: number; out: string } {
  try {
    return { code: 0, out: sh('e2fsck', ['-fn', dev]) }
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string }
    return { code: e.status, out: e.stdout + e.stderr }
  }
}

export function umount(at: string): void {
  try {
    sh('umount', [at])
  } catch {
    try {
      sh('umount', ['-l', at])
    } catch {
      // not mounted
    }
  }
}

/** Unmounts, detaches and stops everything a test left; call from afterEach/afterAll. */
export async function cleanupAll(): Promise<void> {
  for (const m of [...mounts]) {
    if (isMounted(m)) umount(m)
  }
  for (const dev of [...loops]) detachLoop(dev)
  for (const d of [...live]) {
    try {
      await d.kill9()
    } catch {
      // already gone
    }
  }
  for (const m of [...mounts]) {
    lazyUnmount(m)
    mounts.delete(m)
  }
}

/** Lazily unmounts every mount below `dir` (FUSE mounts of a killed daemon, hosts it added). */
export function unmountUnder(dir: string): void {
  const root = resolve(dir) + '/'
  const points = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[1]?.startsWith(root))
  for (const [, point, type] of points.reverse()) {
    if (type?.startsWith('fuse')) lazyUnmount(point!)
    else umount(point!)
  }
}

export function isMounted(path: string): boolean {
  const target = resolve(path)
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === target)
}

export function removeDir(dir: string): void {
  unmountUnder(dir)
  // VVFS_KEEP_TEST_DIRS=1 keeps state and daemon logs for a post-mortem.
  if (!process.env.VVFS_KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true })
}

/** The process's exit code, or null if it had not exited within `ms` (it is then killed: a hung process ignores SIGTERM). */
export function exitWithin(proc: ChildProcess, ms: number): Promise<number | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      resolve(null)
    }, ms)
    proc.once('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
  })
}
