/**
 * `vvfs storage serve`: runs one StorageServer in the foreground until
 * SIGINT/SIGTERM, then stops it cleanly (connections dropped, mutations
 * under way finished, the store synced and closed) and exits 0. One process
 * per server; several may run on one machine (each its own --dir and port).
 *
 * The signal handlers are in place before the server starts, so a signal
 * during start stops it once started (as the daemon does).
 *
 * Failure modes: a bad --listen, --capacity or key file exits 1 with its code
 * before anything is opened; a store that cannot be opened, or a port in
 * use, exits 1.
 */
import { asVvfsError } from '../../errors.js'
import { createLogger, type LogFormat, type LogLevel } from '../../log.js'
import { loadPeerKey } from '../../wire/auth.js'
import { parseHostPort } from '../../wire/server.js'
import { LevelChunkStore } from '../level-store.js'
import { StorageServer, type StoreOpener } from './server.js'
import { trimWhenIdle } from '../../malloc-tuning.js'
import { startLongRunningProcess } from '../../process-start.js'

export interface ServeOptions {
  dir: string
  listen: string
  peerKey: string
  /** Bytes (already parsed); 0 or undefined: unlimited. */
  capacity?: number
  logLevel?: LogLevel
  logFormat?: LogFormat
}

/** The store the server keeps chunks in: the daemon's own LevelDB store code. */
const openStore: StoreOpener = (o) => LevelChunkStore.open(o)

export async function runStorageServer(opts: ServeOptions): Promise<number> {
  const log = startLongRunningProcess(() => createLogger(opts.logLevel ?? 'info', opts.logFormat)) // first: nothing opened yet
  let signalled = false
  let server: StorageServer | null = null
  let stopping: Promise<void> | null = null
  const stop = (): Promise<void> => (stopping ??= server ? server.close() : Promise.resolve())
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      log.info({ event: 'storage.signal', signal }, `received ${signal}`)
      signalled = true
      if (server) void stop().then(resolve, resolve)
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    process.on('unhandledRejection', (err) => log.error({ event: 'storage.unhandled', err: String((err as Error)?.stack ?? err) }, 'unhandled rejection'))
    void (async () => {
      try {
        const { host, port } = parseHostPort(opts.listen)
        const key = await loadPeerKey(opts.peerKey)
        const s = new StorageServer({ dir: opts.dir, host, port, key, log, capacity: opts.capacity, openStore })
        await s.start()
        server = s
        if (signalled) await stop()
        if (signalled) resolve()
      } catch (err) {
        const e = asVvfsError(err)
        log.fatal({ event: 'storage.start_failed', code: e.code, err: e.message }, 'storage server failed to start')
        process.stderr.write(`vvfs: ${e.code}: ${e.message}\n`)
        process.exitCode = 1
        resolve()
      }
    })()
  })
  const stopTrimming = trimWhenIdle(log)
  await stopped
  stopTrimming()
  return process.exitCode === 1 ? 1 : 0
}
