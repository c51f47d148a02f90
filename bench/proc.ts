/**
 * Child processes and cleanup for the benchmark harness.
 *
 * Owns: every process the bench starts and the stack of undo steps (unmount,
 * detach, stop, remove). Must never: kill a process it did not start, or
 * leave a mount, loop device or daemon behind — each step that creates one
 * registers its undo before it goes on.
 *
 * Children run in their own process group (detached) so that a Ctrl-C in the
 * terminal reaches only the bench: the bench then undoes things in order
 * (ext4 before its loop device, the loop device before the FUSE daemon
 * serving its file), which a signal delivered to everyone at once would not.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { performance } from 'node:perf_hooks'

const started = performance.now()

/** A progress line, prefixed with the time since the bench started. */
export function say(line: string): void {
  const t = ((performance.now() - started) / 1000).toFixed(1).padStart(6)
  process.stdout.write(`[${t}s] ${line}\n`)
}

export class Aborted extends Error {
  constructor() {
    super('benchmark interrupted')
  }
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  seconds: number
}

export interface RunOptions {
  /** Kill the command (SIGTERM, then SIGKILL) after this many ms. */
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  cwd?: string
  input?: string
}

/** Short-lived commands still running, to be killed first on an abort. */
const active = new Set<ChildProcess>()
let aborting = false

/** Set while a cleanup step runs: its commands must run even during an abort. */
const inCleanup = new AsyncLocalStorage<true>()

export function isAborting(): boolean {
  return aborting
}

/** Whether the main flow must stop: interrupted, and not inside a cleanup step. */
function blocked(): boolean {
  return aborting && inCleanup.getStore() !== true
}

/** Runs a command to its end and collects its output; never throws for a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (blocked()) return Promise.reject(new Aborted())
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd })
    active.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.stdin!.on('error', () => {})
    child.stdin!.end(opts.input ?? '')
    let timer: NodeJS.Timeout | undefined
    if (opts.timeoutMs) {
      timer = setTimeout(() => {
        stderr += `\n(bench: killed after ${opts.timeoutMs} ms)`
        killGroup(child, 'SIGTERM')
        setTimeout(() => killGroup(child, 'SIGKILL'), 5000).unref()
      }, opts.timeoutMs)
    }
    child.on('error', (err) => {
      active.delete(child)
      if (timer) clearTimeout(timer)
      reject(new Error(`cannot run ${cmd}: ${err.message}`))
    })
    child.on('close', (code, signal) => {
      active.delete(child)
      if (timer) clearTimeout(timer)
      if (blocked()) return reject(new Aborted())
      resolve({ code, signal, stdout, stderr, seconds: (performance.now() - t0) / 1000 })
    })
  })
}

/** Runs a command and returns its stdout; throws with its stderr if it fails. */
export async function must(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) {
    const why = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-5).join(' | ')
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.code ?? r.signal}): ${why}`)
  }
  return r.stdout
}

/** Whether a command can be found on PATH. */
export async function have(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${cmd}`])
  return r.code === 0
}

/** A long-running child (a daemon): started detached, stopped by a cleanup step. */
export interface Service {
  child: ChildProcess
  pid: number
  /** Resolves with the exit code (or signal name) when the process has ended. */
  exited: Promise<number | string>
  hasExited(): boolean
}

export function startService(cmd: string, args: string[], opts: SpawnOptions & { logFile: NodeJS.WritableStream; onStdoutLine?: (line: string) => void }): Service {
  if (blocked()) throw new Aborted()
  const { logFile, onStdoutLine, ...spawnOpts } = opts
  const child = spawn(cmd, args, { ...spawnOpts, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  if (child.pid === undefined) throw new Error(`cannot start ${cmd}`)
  let done = false
  const exited = new Promise<number | string>((resolve) => {
    child.on('error', (err) => {
      done = true
      logFile.write(`(bench: cannot start ${cmd}: ${err.message})\n`)
      resolve('spawn-error')
    })
    child.on('exit', (code, signal) => {
      done = true
      resolve(code ?? signal ?? 'unknown')
    })
  })
  let pending = ''
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    logFile.write(d)
    if (!onStdoutLine) return
    pending += d
    let nl: number
    while ((nl = pending.indexOf('\n')) >= 0) {
      onStdoutLine(pending.slice(0, nl))
      pending = pending.slice(nl + 1)
    }
  })
  child.stderr!.setEncoding('utf8').on('data', (d: string) => logFile.write(d))
  return { child, pid: child.pid, exited, hasExited: () => done }
}

/** Sends `signal`, waits up to `graceMs`, then SIGKILL. Resolves when the process is gone. */
export async function stopService(svc: Service, signal: NodeJS.Signals, graceMs: number): Promise<number | string> {
  if (svc.hasExited()) return svc.exited
  try {
    process.kill(svc.pid, signal)
  } catch {
    return svc.exited
  }
  const timedOut = Symbol('timeout')
  const first = await Promise.race([svc.exited, sleep(graceMs).then(() => timedOut)])
  if (first !== timedOut) return first as number | string
  say(`  pid ${svc.pid} still running ${graceMs / 1000}s after ${signal}: SIGKILL`)
  try {
    process.kill(svc.pid, 'SIGKILL')
  } catch {
    // already gone
  }
  return svc.exited
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    try {
      child.kill(signal)
    } catch {
      // already gone
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Polls `check` every `everyMs` until it returns a value, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>, everyMs = 100): Promise<T> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (blocked()) throw new Aborted()
    const v = await check()
    if (v !== undefined) return v
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`)
    await sleep(everyMs)
  }
}

interface Step {
  label: string
  fn: () => Promise<void>
  done: boolean
  timeoutMs: number
}

/**
 * The undo stack. Steps run last-in first-out, each at most once, each
 * bounded by a timeout, and a failing step does not stop the others.
 */
export class Cleanup {
  private readonly steps: Step[] = []
  /** Undo steps the main flow is running itself (its finally blocks). */
  private readonly inflight = new Set<Promise<void>>()
  private running: Promise<void> | null = null

  /** Registers an undo step; the returned function runs it now (and removes it). */
  add(label: string, fn: () => Promise<void>, timeoutMs = 90_000): () => Promise<void> {
    const step: Step = { label, fn, done: false, timeoutMs }
    this.steps.push(step)
    return async () => {
      const i = this.steps.indexOf(step)
      if (i >= 0) this.steps.splice(i, 1)
      const p = this.runStep(step, true)
      this.inflight.add(p)
      try {
        await p
      } finally {
        this.inflight.delete(p)
      }
    }
  }

  /** Runs every remaining step, newest first. */
  all(): Promise<void> {
    this.running ??= (async () => {
      // An interrupted section unwinds through its finally blocks, which undo
      // their own steps (umount before losetup -d): let those finish first,
      // or the stack below them (the daemon's stop) would run beside them.
      await sleep(100)
      while (this.inflight.size) await Promise.allSettled([...this.inflight]).then(() => sleep(50))
      while (this.steps.length) {
        const step = this.steps.pop()!
        say(`cleanup: ${step.label}`)
        await this.runStep(step, false)
      }
    })()
    return this.running
  }

  private async runStep(step: Step, rethrow: boolean): Promise<void> {
    if (step.done) return
    step.done = true
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`step timed out after ${step.timeoutMs / 1000}s`)), step.timeoutMs)
    })
    try {
      await Promise.race([inCleanup.run(true, step.fn), timeout])
    } catch (err) {
      if (rethrow) throw err
      say(`  cleanup: ${step.label} failed: ${(err as Error).message}`)
    } finally {
      clearTimeout(timer)
    }
  }
}

/**
 * On SIGINT/SIGTERM/SIGHUP: stop starting things, kill the short-lived
 * commands in flight, run the cleanup stack, exit 130. A second signal while
 * cleaning up is ignored (with a note): half-done cleanup is what leaves
 * mounts behind.
 */
export function onInterrupt(cleanup: Cleanup): void {
  let count = 0
  const handler = (signal: NodeJS.Signals) => {
    count++
    if (count > 1) {
      process.stdout.write(`\n${signal} again: still cleaning up (each step is bounded), please wait\n`)
      return
    }
    aborting = true
    process.stdout.write(`\n${signal}: stopping and cleaning up\n`)
    // Undo only once the commands in flight are gone: a dying dd still holds its ext4 busy.
    const children = [...active]
    for (const child of children) killGroup(child, 'SIGTERM')
    const gone = Promise.all(children.map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('close', () => r())))))
    Promise.race([gone, sleep(15_000)])
      .then(() => cleanup.all())
      .finally(() => process.exit(130))
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  process.on('SIGHUP', handler)
}

let clockTicks: number | undefined

/** User + system CPU seconds a process has used so far (0 if it is gone). */
export async function cpuSeconds(pid: number): Promise<number> {
  clockTicks ??= Number((await run('getconf', ['CLK_TCK'])).stdout.trim()) || 100
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which may itself hold spaces and parentheses.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(rest[11]) + Number(rest[12])) / clockTicks
  } catch {
    return 0
  }
}

/**
 * A TCP port free on 127.0.0.1 now (for a server that must come back on the same port, or be told its port).
 *
 * Chosen at random below the kernel's ephemeral range (ip_local_port_range), not with
 * `listen(0)`: a port from that range can be taken by any outgoing connection's local end
 * between this check and the server's own bind — CI lost a run to exactly that (etcd:
 * "bind: address already in use" on 46707 while the other test files were connecting).
 * Below the range only another listener can collide, and a random pick over ~22,000 ports
 * makes two parallel test files picking the same one unlikely; `startEtcd` still retries.
 */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net')
  const ephemeralLow = await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
    .then((t) => Number(t.trim().split(/\s+/)[0]) || 32768)
    .catch(() => 32768)
  const low = 10_000
  const high = Math.max(low + 1000, Math.min(ephemeralLow, 65536)) // exclusive
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low))
    const s = createServer()
    const ok = await new Promise<boolean>((r) => {
      s.once('error', () => r(false))
      s.listen(port, '127.0.0.1', () => r(true))
    })
    if (ok) {
      await new Promise((r) => s.close(r))
      return port
    }
  }
  throw new Error(`no free TCP port found in ${low}..${high - 1}`)
}
