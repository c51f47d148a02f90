/**
 * The daemon: opens the state directory, mounts the hosts, serves the control
 * socket, and on SIGINT/SIGTERM unmounts, flushes and closes everything.
 */
import { resolve, join } from 'node:path'
import { EventEmitter } from 'node:events'
import { ControlServer } from './control/server.js'
import { createLogger, type LogFormat, type Logger, type LogLevel } from './log.js'
import { managerHandlers } from './manager/api.js'
import { Manager } from './manager/manager.js'
import type { MountTimeouts } from './fuse/host-mount.js'
import { VERSION } from './version.js'
import { adaptHeapGrowth, startFlags } from './gc-tuning.js'
import { trimWhenIdle } from './malloc-tuning.js'
import { startLongRunningProcess } from './process-start.js'
import { VvfsError } from './errors.js'
import type { ClusterOptions } from './cluster/options.js'
import { checkHttpAccess, parseHttpAddress, readToken, WebServer, type HttpAddress } from './http/server.js'

export interface DaemonOptions {
  state: string
  mount: string
  socket?: string
  logLevel: LogLevel
  /** Default: pretty on a terminal, JSON otherwise (lib/log.ts). */
  logFormat?: LogFormat
  /** Set up the demo pool and volume when the state directory is new (`make run`). */
  demo?: boolean
  timeouts?: MountTimeouts
  /** Accept `vvfs fault …` (I/O-error injection, for tests). */
  allowFaults?: boolean
  /** Idle time before a bloated local store is compacted (issue 17; 0: never). */
  compactIdleMs?: number
  /** Issue 17: the budget for the local stores' memtables and block caches (`--memory`; default DEFAULT_MEMORY_BUDGET). */
  memoryBytes?: number
  /** Serve the read-only web view at HOST:PORT (off when absent). */
  http?: string
  /** File holding the token every web view request must carry (required off loopback). */
  httpToken?: string
  /** Issue 13: serve replication peers at ADDR:PORT (off when absent; needs peerKey). */
  listen?: string
  /** Issue 13: the pre-shared key file of replication peers (the listener's, and `replicate start`'s default). */
  peerKey?: string
  /** Issue 15: join a cluster — the catalog in etcd, leases, ownership (absent: alone, the file catalog). */
  cluster?: ClusterOptions
}

export interface RunningDaemon {
  manager: Manager
  server: ControlServer
  web?: WebServer
  stop(): Promise<void>
}

export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  const log = createLogger(opts.logLevel, opts.logFormat)
  const state = resolve(opts.state)
  const socketPath = resolve(opts.socket ?? join(state, 'control.sock'))
  // The web view's address and token are checked before anything is opened.
  const httpAddress = opts.http === undefined ? undefined : parseHttpAddress(opts.http)
  const httpToken = opts.httpToken === undefined ? undefined : await readToken(opts.httpToken)
  if (httpAddress) checkHttpAccess(httpAddress, httpToken)
  else if (httpToken !== undefined) throw new VvfsError('INVALID_ARGUMENT', '--http-token is the web view\'s token: give --http HOST:PORT too')
  if (opts.listen !== undefined && opts.peerKey === undefined) throw new VvfsError('INVALID_ARGUMENT', '--listen needs --peer-key FILE (the replication peers\' pre-shared key)')
  log.info({ event: 'daemon.starting', version: VERSION, state, mount: resolve(opts.mount), socket: socketPath, allowFaults: opts.allowFaults === true }, 'vvfs daemon starting')
  const manager = await Manager.open({ stateDir: state, mountDir: opts.mount, log, timeouts: opts.timeouts, allowFaults: opts.allowFaults, compactIdleMs: opts.compactIdleMs, memoryBytes: opts.memoryBytes, peerKey: opts.peerKey === undefined ? undefined : resolve(opts.peerKey), cluster: opts.cluster })
  // Before the control socket: a client that reaches the daemon finds its web view up too.
  const web = httpAddress ? await startWebView(manager, httpAddress, httpToken, log) : undefined
  let server: ControlServer
  try {
    if (opts.demo && manager.isNew) await manager.bootstrapDemo()
    // Issue 13: the replication listener, once the secondaries are open (Manager.open).
    if (opts.listen !== undefined) await manager.replication.listen(opts.listen, resolve(opts.peerKey!))
    server = new ControlServer(socketPath, managerHandlers(manager, socketPath), manager.events as EventEmitter, log)
    await server.listen()
  } catch (err) {
    await web?.close()
    await manager.close()
    throw err
  }
  let stopping: Promise<void> | null = null
  const stop = () =>
    (stopping ??= (async () => {
      log.info({ event: 'daemon.stopping' }, 'stopping')
      await web?.close()
      await server.close()
      await manager.close()
    })())
  log.info({ event: 'daemon.ready', pid: process.pid }, 'vvfs daemon ready')
  return { manager, server, web, stop }
}

/** Serves the web view; if it cannot (the port is taken), closes the manager and throws. */
async function startWebView(manager: Manager, address: HttpAddress, token: string | undefined, log: Logger): Promise<WebServer> {
  try {
    const web = new WebServer(manager, address, token, log, VERSION)
    await web.listen()
    return web
  } catch (err) {
    await manager.close()
    throw err
  }
}

/**
 * Runs in the foreground until a signal; returns the exit code. First the
 * process starts itself again with the malloc arena limit (malloc-tuning.ts;
 * a SIGTERM before that, while the CLI loads, kills it: nothing is open
 * yet). Then the signal handlers are in place before the daemon starts: a
 * SIGTERM that arrives while it starts (a test or a service manager
 * stopping it right after its socket answers) stops it cleanly once
 * started, instead of killing it.
 */
export async function runDaemon(opts: DaemonOptions): Promise<number> {
  const log = startLongRunningProcess(() => createLogger(opts.logLevel, opts.logFormat), startFlags(opts.listen !== undefined || opts.peerKey !== undefined)) // first: nothing opened yet
  let signalled: NodeJS.Signals | null = null
  let onStarted: ((running: RunningDaemon) => void) | null = null
  const exit = new Promise<number>((resolveExit) => {
    const stop = (running: RunningDaemon) =>
      running.stop().then(
        () => resolveExit(0),
        (err) => {
          log.error({ event: 'daemon.stop_failed', err: (err as Error).message }, 'clean stop failed')
          resolveExit(1)
        },
      )
    let started: RunningDaemon | null = null
    onStarted = (running) => {
      started = running
      if (signalled) void stop(running)
    }
    const onSignal = (signal: NodeJS.Signals) => {
      log.info({ event: 'daemon.signal', signal }, `received ${signal}`)
      signalled = signal
      if (started) void stop(started)
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
  })
  process.on('unhandledRejection', (err) => log.error({ event: 'daemon.unhandled', err: String((err as Error)?.stack ?? err) }, 'unhandled rejection'))
  const running = await startDaemon(opts)
  onStarted!(running)
  const stopTrimming = trimWhenIdle(log)
  const stopAdapting = adaptHeapGrowth(() => running.manager.replicating())
  return exit.finally(() => {
    stopTrimming()
    stopAdapting()
  })
}
