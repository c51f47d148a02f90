/**
 * The control socket fuzzed from its own schema: for every method, requests
 * whose params are drawn at random from values that break types, ranges,
 * names and sizes (keys dropped, keys added, params not an object at all).
 * The claim: every request gets one answer with its id — a result or an
 * error with a stable code, never INTERNAL (an INTERNAL answer is a bug we
 * did not foresee) — and the daemon keeps serving.
 *
 * Reproducible: the seed is printed and taken from VVFS_FUZZ_SEED; the count
 * per method from VVFS_FUZZ_COUNT (make soak can raise it).
 * Path-like params only ever get strings under this test's directory, so no
 * request can mount or create anything elsewhere.
 */
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { METHODS } from '../../lib/control/schema.js'
import { isErrorCode } from '../../lib/errors.js'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { rng } from '../helpers/model.js'

const SEED = Number(process.env.VVFS_FUZZ_SEED ?? Date.now() % 1_000_000)
const PER_METHOD = Number(process.env.VVFS_FUZZ_COUNT ?? 60)
/** Keys whose strings name files or directories on the daemon's machine. */
const PATH_KEYS = new Set(['mount', 'path', 'peerKey', 'dir'])

let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon({ extraArgs: ['--allow-faults'] })
  await d.client.call('storage.add', { name: 's1', capacity: '64M' })
  await d.client.call('storage.add', { name: 's2', capacity: '64M' })
  await d.client.call('volume.create', { name: 'v1', size: '16M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

type Reply = { id?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; data?: { code?: unknown } } }

/** One connection, one request at a time: each line sent gets the next reply line (events are not subscribed to, except by the fuzzer's own events.subscribe, whose notifications are skipped). */
class RawConnection {
  private buf = ''
  private waiting: ((r: Reply) => void) | null = null
  private readonly socket: Socket
  constructor(path: string) {
    this.socket = createConnection(path)
    this.socket.setEncoding('utf8')
    this.socket.on('data', (chunk: string) => {
      this.buf += chunk
      let nl
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl)
        this.buf = this.buf.slice(nl + 1)
        const reply = JSON.parse(line) as Reply & { method?: string }
        if (reply.method === 'event') continue
        const w = this.waiting
        this.waiting = null
        w?.(reply)
      }
    })
  }
  ask(line: string, ms = 30_000): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms to ${line.slice(0, 300)}`)), ms)
      this.waiting = (r) => {
        clearTimeout(timer)
        resolve(r)
      }
      this.socket.write(line + '\n')
    })
  }
  close(): void {
    this.socket.destroy()
  }
}

/** The keys a method's params object declares (zod object shape), or none. */
function keysOf(method: keyof typeof METHODS): string[] {
  const shape = (METHODS[method].params as unknown as { shape?: Record<string, unknown> }).shape
  return shape ? Object.keys(shape) : []
}

function values(random: () => number, dir: string): unknown[] {
  const big = 'x'.repeat(5000)
  return [
    null, true, false, 0, -1, 1, 0.5, -0.0, 1e308, -1e308, 2 ** 53, 2 ** 53 + 2, 2 ** 64, Number.MAX_SAFE_INTEGER,
    '', ' ', 'v1', 's1', 's2', 'nope', '-v1', '.v1', 'v1/../s1', big, '\u0000', 'ü', '%s%n', '1G', '-1G', '0', '16M', '1P', '99999999999T',
    '1x', 'NaN', 'Infinity', '127.0.0.1:1', '[::1]:0', 'host:99999', '5s', '-5s', 'staged', 'direct', 'EIO', 'write',
    [], ['v1'], [1, 2], {}, { name: 'v1' }, { __proto__: { polluted: true } }, { constructor: { prototype: { x: 1 } } },
    join(dir, `fuzz-${Math.floor(random() * 1e6)}`),
  ]
}

/** Values that pass a key's type, so requests also reach the code behind validation (and change state, which the next ones meet). */
const PLAUSIBLE: Record<string, unknown[]> = {
  name: ['v1', 's1', 's2', 'h1', 'f1', 'f2'],
  volume: ['v1', 'f1', 'f2'],
  storage: ['s1', 's2'],
  host: ['h1'],
  pair: ['v1', 'p1', 'g1'],
  group: ['g1'],
  size: ['1M', '4M', '32M', 4096, 0],
  capacity: ['8M', '64M', '1G'],
  offset: [0, '1M', '15M', 4096],
  length: [4096, '1M', 0],
  rate: ['1M', '50M', 0],
  journalLimit: ['1M', '1G'],
  to: ['s1', 's2', '127.0.0.1:1', 'r1'],
  from: ['s1', 's2'],
  mode: ['staged', 'direct', 'memory', 'free', 'copy', 'move'],
  job: [1, 2, 3, 4],
  id: [1, 2, 3],
  epoch: [1, 2, 1000],
  relay: ['r1'],
  keep: ['10s', 0],
  interval: ['1s'],
  op: ['read', 'write', 'sync'],
  error: ['EIO', 'ENOSPC', 'delay'],
  force: [true, false],
  wait: [true, false],
  volumes: [['v1'], ['v1', 'f1']],
  types: [['job.progress'], []],
}

function pick<T>(random: () => number, xs: T[]): T {
  return xs[Math.floor(random() * xs.length)]
}

/** Params for one request: mostly the method's own keys with wrong or edge values, sometimes not an object. */
function paramsFor(method: keyof typeof METHODS, random: () => number, dir: string): unknown {
  const pool = values(random, dir)
  const roll = random()
  if (roll < 0.05) return pick(random, [null, 5, 'v1', [], [{ name: 'v1' }]])
  const params: Record<string, unknown> = {}
  for (const key of keysOf(method)) {
    if (random() < 0.2) continue
    let value = PLAUSIBLE[key] && random() < 0.8 ? pick(random, PLAUSIBLE[key]) : pick(random, pool)
    if (PATH_KEYS.has(key) && typeof value === 'string') value = join(dir, `fuzz-${Math.floor(random() * 1e6)}`)
    params[key] = value
  }
  if (random() < 0.1) params[pick(random, ['colour', '__proto__', 'constructor', 'toString'])] = pick(random, pool)
  return params
}

describe('the control socket, fuzzed from its schema', () => {
  it(`answers every request with a result or a coded error (never INTERNAL) and keeps serving (seed ${SEED})`, async () => {
    const random = rng(SEED).next
    const conn = new RawConnection(d.socket)
    const fuzzDir = join(d.dir, 'fuzz')
    const internal: string[] = []
    const tally = new Map<string, number>()
    let id = 0
    try {
      const methods = Object.keys(METHODS) as (keyof typeof METHODS)[]
      for (let i = 0; i < methods.length * PER_METHOD; i++) {
        {
          const method = pick(random, methods)
          const params = paramsFor(method, random, fuzzDir)
          const line = JSON.stringify({ jsonrpc: '2.0', id: ++id, method, params })
          const reply = await conn.ask(line)
          expect(reply.id, line).toBe(id)
          if (reply.error === undefined) {
            expect(reply.result, line).toBeDefined()
            tally.set(`${method} ok`, (tally.get(`${method} ok`) ?? 0) + 1)
            continue
          }
          const code = reply.error.data?.code
          expect(isErrorCode(code), `${line} → ${JSON.stringify(reply.error)}`).toBe(true)
          if (code === 'INTERNAL') internal.push(`${line} → ${String(reply.error.message)}`)
          tally.set(`${method} ${String(code)}`, (tally.get(`${method} ${String(code)}`) ?? 0) + 1)
        }
      }
    } finally {
      conn.close()
    }
    if (process.env.VVFS_FUZZ_TALLY) console.log([...tally].sort().map(([k, n]) => `${k} ${n}`).join('\n'))
    expect(internal, `seed ${SEED}`).toEqual([])
    // Still serving (the fuzzer may well have removed what it found).
    expect(Array.isArray((await d.client.call('volume.list', {})).volumes)).toBe(true)
    expect(d.proc.exitCode).toBeNull()
  }, 600_000)
})
