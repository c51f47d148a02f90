/**
 * Runs the vvfs command (bin/vvfs, the built dist/) against a test daemon's
 * socket, the way a person or a script would: exit status, stdout, stderr.
 */
import { spawn, spawnSync } from 'node:child_process'
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
    // Options go before `--`: what follows it is operands.
    const end = args.includes('--') ? args.indexOf('--') : args.length
    const r = spawnSync(process.execPath, [VVFS, ...args.slice(0, end), '--socket', socket(), ...args.slice(end)], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...env } })
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

/**
 * `script(1)` arguments that run `line` on a pseudo-terminal. script runs it
 * with `$SHELL -c`, or /bin/sh when SHELL is unset (CI): `exec` makes the
 * command the terminal's foreground process itself, or dash would stay its
 * parent, take a Ctrl-C and exit 130.
 */
export function onTerminal(line: string): [string, string[]] {
  return ['script', ['-qfec', `exec ${line}`, '/dev/null']]
}

/** Runs `cmd`, collecting stdout, until `until(out)` holds; then `stop` and the exit status. */
export async function runUntil(cmd: string, args: string[], until: (out: string) => boolean, stop: (p: ReturnType<typeof spawn>) => void, step?: (out: string) => Promise<void>) {
  const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  p.stdout!.on('data', (b: Buffer) => (out += b.toString()))
  p.stderr!.on('data', (b: Buffer) => (err += b.toString()))
  const exited = new Promise<number | null>((resolve) => p.once('exit', (code, signal) => resolve(signal ? -1 : code)))
  const deadline = Date.now() + 20_000
  try {
    while (!until(out)) {
      if (Date.now() > deadline || p.exitCode !== null) throw new Error(`gave up waiting; exit ${p.exitCode}; stdout:\n${out}\nstderr:\n${err}`)
      if (step) await step(out)
      await new Promise((r) => setTimeout(r, 50))
    }
    stop(p)
    return { code: await exited, out, err }
  } finally {
    if (p.exitCode === null) p.kill('SIGKILL')
  }
}
