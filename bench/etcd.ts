/**
 * A real etcd server for a test or a benchmark (Debian's etcd-server, `make setup`): on
 * 127.0.0.1 with free ports and a temporary data directory, single member.
 * `stop()` kills it and removes its directory; it is safe to call twice, and
 * every server started is stopped by `stopAllEtcd()` (call it in afterAll)
 * even when the test failed (tests: test/helpers/etcd.ts re-exports this). `pause()`/`resume()` (SIGSTOP/SIGCONT) make
 * etcd unreachable without closing connections; `restart()` kills it
 * (kill -9) and starts it again on the same data and port.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from './proc.js'

export interface EtcdServer {
  url: string
  dir: string
  proc(): ChildProcess
  log(): string
  pause(): void
  resume(): void
  restart(): Promise<void>
  stop(): Promise<void>
}

const live = new Set<EtcdServer>()

/** `logFrom`: where this launch's part of the log starts (a retry must not be judged by an earlier attempt's lines). */
async function waitHealthy(url: string, proc: ChildProcess, logPath: string, logFrom: number, timeoutMs = 15_000): Promise<void> {
  const start = Date.now()
  const log = () => readFileSync(logPath).subarray(logFrom).toString('utf8')
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`etcd exited:\n${log()}`)
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) }) // whoever took the port may never answer
      if (r.ok && ((await r.json()) as { health?: string }).health === 'true') return
    } catch {
      // not listening yet
    }
    if (Date.now() - start > timeoutMs) throw new Error(`etcd at ${url} not healthy in ${timeoutMs} ms:\n${log()}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** `host`: the address its client URL listens on (default 127.0.0.1; a test's network namespace reaches another). */
export async function startEtcd(opts: { host?: string } = {}): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'vvfs-etcd-'))
  const logPath = join(dir, 'etcd.log')
  let url = ''
  let args: string[] = []
  const choosePorts = async () => {
    const clientPort = await freePort()
    const peerPort = await freePort()
    url = `http://${opts.host ?? '127.0.0.1'}:${clientPort}`
    args = [
      '--name', 'test',
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', url,
      '--advertise-client-urls', url,
      '--listen-peer-urls', `http://127.0.0.1:${peerPort}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
      '--initial-cluster', `test=http://127.0.0.1:${peerPort}`,
      '--log-level', 'warn',
    ]
  }
  const launchOnce = async (): Promise<ChildProcess> => {
    const fd = openSync(logPath, 'a')
    const logFrom = fstatSync(fd).size
    let p: ChildProcess
    try {
      p = spawn('etcd', args, { stdio: ['ignore', fd, fd], env: { ...process.env, ETCD_UNSUPPORTED_ARCH: process.arch === 'x64' ? '' : process.arch } })
    } finally {
      closeSync(fd)
    }
    await waitHealthy(url, p, logPath, logFrom)
    return p
  }
  /**
   * A port checked free can still be taken before etcd binds it (by a parallel test's
   * server): on "address already in use" a first start picks new ports; a restart must
   * keep its URL, so it waits and tries the same ports again.
   */
  const launch = async (first: boolean): Promise<ChildProcess> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await launchOnce()
      } catch (e) {
        if (attempt >= 5 || !/address already in use/.test(String(e))) throw e
        if (first) {
          rmSync(join(dir, 'data'), { recursive: true, force: true }) // it may hold the old peer URL
          await choosePorts()
        }
        else await new Promise((r) => setTimeout(r, 200 * attempt))
      }
    }
  }
  await choosePorts()
  const kill = async (p: ChildProcess) => {
    if (p.exitCode !== null || p.signalCode !== null) return
    const exited = new Promise<void>((r) => p.once('exit', () => r()))
    p.kill('SIGCONT')
    p.kill('SIGKILL')
    await exited
  }
  let proc = await launch(true)
  let stopped = false
  const server: EtcdServer = {
    url,
    dir,
    proc: () => proc,
    log: () => readFileSync(logPath, 'utf8'),
    pause: () => void proc.kill('SIGSTOP'),
    resume: () => void proc.kill('SIGCONT'),
    restart: async () => {
      await kill(proc)
      proc = await launch(false)
    },
    stop: async () => {
      if (stopped) return
      stopped = true
      live.delete(server)
      await kill(proc)
      rmSync(dir, { recursive: true, force: true })
    },
  }
  live.add(server)
  return server
}

export async function stopAllEtcd(): Promise<void> {
  for (const s of [...live]) await s.stop()
}
