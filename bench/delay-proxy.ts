/**
 * A TCP relay that delivers what a server sends DELAY_MS late: the remote
 * bench's stand-in for `tc netem delay 1ms` on the server's interface when
 * the kernel has no sch_netem ("Specified qdisc kind is unknown").
 *
 *   node dist/bench/delay-proxy.js --listen HOST:PORT --to HOST:PORT [--delay-ms 1]
 *
 * It prints `listening HOST:PORT` once it accepts connections; SIGTERM stops it.
 *
 * What it delays: the server→relay direction only, as netem on the server's
 * egress does — every round trip gains DELAY_MS. Each chunk read from the
 * server is written to the relay DELAY_MS after it arrived (in order; a
 * timer per due time, so a chunk is never early, and late by what the event
 * loop is late).
 *
 * How it differs from netem: it delays chunks as the socket reads them, not
 * packets; it ends TCP on both sides, so the relay's segments are
 * acknowledged at once and no window stalls on the delayed ACKs (netem would
 * delay those too: the bandwidth-delay product does not limit a stream here);
 * it costs a process of its own, two more loopback hops and a copy per byte
 * on the same two cores the bench measures; and under load its timers fire
 * late, so the delay is at least DELAY_MS, not exactly.
 *
 * Failure modes: either side closing or failing closes the other (the relay
 * sees a lost connection and reconnects, as it would to the server);
 * backpressure: the server's socket is paused while the relay's is over its
 * mark.
 */
import { createConnection, createServer, type Socket } from 'node:net'

interface Args {
  listen: { host: string; port: number }
  to: { host: string; port: number }
  delayMs: number
}

function hostPort(s: string | undefined, what: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(s ?? '')
  if (!m) throw new Error(`${what}: HOST:PORT expected, got ${s ?? '(nothing)'}`)
  return { host: m[1]!, port: Number(m[2]) }
}

function parse(argv: string[]): Args {
  const get = (flag: string) => {
    const i = argv.indexOf(flag)
    return i >= 0 ? argv[i + 1] : undefined
  }
  const delayMs = Number(get('--delay-ms') ?? '1')
  if (!Number.isFinite(delayMs) || delayMs < 0) throw new Error(`--delay-ms: a number of milliseconds expected`)
  return { listen: hostPort(get('--listen'), '--listen'), to: hostPort(get('--to'), '--to'), delayMs }
}

/** Writes `from`'s data to `to` delayMs after it arrived, in order. */
function delayed(from: Socket, to: Socket, delayMs: number): void {
  const queue: { due: number; chunk: Buffer }[] = []
  let timer: NodeJS.Timeout | null = null
  const flush = () => {
    timer = null
    const now = performance.now()
    while (queue.length > 0 && queue[0]!.due <= now) {
      if (!to.write(queue.shift()!.chunk)) {
        from.pause()
        to.once('drain', () => from.resume())
      }
    }
    if (queue.length > 0) timer = setTimeout(flush, queue[0]!.due - now)
  }
  from.on('data', (chunk: Buffer) => {
    queue.push({ due: performance.now() + delayMs, chunk })
    timer ??= setTimeout(flush, delayMs)
  })
  from.on('end', () => {
    // What is still queued goes first, then the end.
    const finish = () => (queue.length > 0 ? setTimeout(finish, 1) : to.end())
    finish()
  })
}

function main(): void {
  const args = parse(process.argv.slice(2))
  const server = createServer((relay) => {
    const upstream = createConnection(args.to)
    relay.setNoDelay(true)
    upstream.setNoDelay(true)
    const close = () => {
      relay.destroy()
      upstream.destroy()
    }
    relay.on('error', close)
    upstream.on('error', close)
    relay.on('close', close)
    upstream.on('close', close)
    // relay → server as it comes; server → relay delayMs late (netem on the server's egress).
    relay.pipe(upstream)
    delayed(upstream, relay, args.delayMs)
  })
  server.listen(args.listen.port, args.listen.host, () => process.stdout.write(`listening ${args.listen.host}:${args.listen.port}\n`))
  process.on('SIGTERM', () => {
    server.close()
    process.exit(0)
  })
}

main()
