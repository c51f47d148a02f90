/**
 * Runs the vvfs command (bin/vvfs, the built dist/) against a test daemon's
 * socket, the way a person or a script would: exit status, stdout, stderr.
 */
import { spawnSync } from 'node:child_process'
import { afterAll, beforeAll } from 'vitest'
import { cleanupAll, removeDir, startDaemon, VVFS, type DaemonHandle } from './daemon.js'

export interface CliResult {
  code: number | null
  out: string
  err: string
}

/** A `vvfs …` runner bound to one control socket. */
export function cliFor(socket: () => string, env: NodeJS.ProcessEnv = {}) {
  return (...args: string[]): CliResult => {
    const r = spawnSync(process.execPath, [VVFS, ...args, '--socket', socket()], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...env } })
    return { code: r.status, out: r.stdout, err: r.stderr }
  }
}

/** One daemon for the whole test file (started before, cleaned up after), and a `vvfs` runner for it. */
export function daemonForFile(opts: Parameters<typeof startDaemon>[0] = {}) {
  let d: DaemonHandle | undefined
  beforeAll(async () => {
    d = await startDaemon(opts)
  })
  afterAll(async () => {
    await cleanupAll()
    if (d) removeDir(d.dir)
  })
  const daemon = () => d!
  return { daemon, vvfs: cliFor(() => daemon().socket) }
}
