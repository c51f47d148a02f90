/**
 * WebServer: the daemon's read-only web view (`vvfs daemon --http ADDR:PORT`).
 * node:http, GET only, no mutating endpoint:
 *   GET /                      the page (web/: html, css and js inlined into one response)
 *   GET /api/state             the snapshot (view.ts)
 *   GET /api/volume/NAME/map?tiles=N   one volume's extent map in at most N tiles
 *   GET /api/events            server-sent events: `snapshot` once per connection,
 *                              then `event` (the manager's events) and `usage` (changes, ~1/s)
 *
 * Access: bound to loopback unless told otherwise; any other address needs a
 * token (--http-token FILE), and with a token every request must carry it as
 * `Authorization: Bearer TOKEN` or `?token=TOKEN` (compared in constant time).
 * Without a token the Host header must name a loopback host, so a web page
 * elsewhere cannot reach the view through DNS rebinding.
 *
 * Concurrency: everything runs on the event loop and is synchronous per
 * request (the view reads in-memory state). A page that stops reading its
 * event stream is dropped once MAX_BUFFERED_EVENTS bytes wait for it; no
 * request can take the daemon down (a failing handler answers 500).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync, existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { isIP } from 'node:net'
import { fileURLToPath } from 'node:url'
import { asVvfsError, VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Manager } from '../manager/manager.js'
import type { VvfsEvent } from '../control/schema.js'
import { WebView } from './view.js'

/** How often changes (allocation, pool figures) are pushed to connected pages. */
export const USAGE_INTERVAL_MS = 1000
/** A page whose event stream has this much unread is dropped (it reconnects and gets a snapshot). */
const MAX_BUFFERED_EVENTS = 4 * 1024 * 1024
/** Connected pages at most; more get 503 (each costs a snapshot and a share of every tick). */
const MAX_STREAMS = 64
/** A comment line on idle streams, so proxies and the browser keep them open. */
const HEARTBEAT_MS = 15_000
/** Tokens shorter than this are refused: a guessable token is no protection. */
const MIN_TOKEN_LENGTH = 16

export interface HttpAddress {
  host: string
  port: number
}

/** Parses `HOST:PORT` (`[::1]:PORT` for IPv6), or a bare `PORT` on 127.0.0.1; port 0 picks a free one. */
export function parseHttpAddress(value: string): HttpAddress {
  const text = value.trim()
  const m = /^(?:(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):)?(\d{1,5})$/.exec(text)
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new VvfsError('INVALID_ARGUMENT', `--http wants HOST:PORT or PORT (e.g. 127.0.0.1:8620), not ${JSON.stringify(value)}`)
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port }
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  if (isIP(host) === 6) return host === '::1' || /^::ffff:127\./i.test(host)
  return false
}

/** Reads the token file; refuses an empty or short one. */
export async function readToken(file: string): Promise<string> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new VvfsError('INVALID_ARGUMENT', `cannot read --http-token file ${file}: ${(err as Error).message}`, { cause: err })
  }
  const token = text.trim()
  if (token.length < MIN_TOKEN_LENGTH) throw new VvfsError('INVALID_ARGUMENT', `the token in ${file} must be at least ${MIN_TOKEN_LENGTH} characters`)
  if (/\s/.test(token)) throw new VvfsError('INVALID_ARGUMENT', `the token in ${file} must be one line without spaces`)
  return token
}

/** Checks the binding rule before the daemon opens anything: elsewhere than loopback needs a token. */
export function checkHttpAccess(address: HttpAddress, token: string | undefined): void {
  if (!isLoopback(address.host) && token === undefined) {
    throw new VvfsError('INVALID_ARGUMENT', `--http ${address.host} is not a loopback address: give --http-token FILE so every request must carry the token`)
  }
}

/** The page: web/index.html with web/style.css and web/app.js inlined, and its CSP hashes. */
function loadPage(): { html: Buffer; csp: string } {
  const here = fileURLToPath(new URL('.', import.meta.url))
  // lib/http (sources under vitest) or dist/lib/http (built): web/ is at the package root.
  const dir = [`${here}../../web/`, `${here}../../../web/`].find((d) => existsSync(`${d}index.html`))
  if (!dir) throw new VvfsError('INTERNAL', `the web view's assets (web/index.html) are missing from ${here}`)
  const css = readFileSync(`${dir}style.css`, 'utf8')
  const js = readFileSync(`${dir}app.js`, 'utf8')
  const html = readFileSync(`${dir}index.html`, 'utf8')
    .replace('<link rel="stylesheet" href="style.css">', () => `<style>${css}</style>`)
    .replace('<script src="app.js"></script>', () => `<script>${js}</script>`)
  const hash = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`
  const csp = `default-src 'none'; script-src ${hash(js)}; style-src ${hash(css)}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`
  return { html: Buffer.from(html), csp }
}

function statusOf(code: string): number {
  if (code.endsWith('_NOT_FOUND')) return 404
  if (code.startsWith('INVALID_')) return 400
  if (code === 'SHUTTING_DOWN') return 503
  return 500
}

export class WebServer {
  private readonly view: WebView
  private readonly streams = new Set<ServerResponse>()
  private readonly page: { html: Buffer; csp: string }
  private readonly tokenDigest: Buffer | undefined
  private ticker: NodeJS.Timeout | null = null
  private heartbeat: NodeJS.Timeout | null = null
  private server: Server | null = null
  private readonly onEvent = (event: VvfsEvent) => {
    this.view.remember(event)
    this.broadcast('event', event)
  }
  url = ''

  constructor(
    private readonly manager: Manager,
    private readonly address: HttpAddress,
    token: string | undefined,
    private readonly log: Logger,
    version: string,
  ) {
    checkHttpAccess(address, token)
    this.view = new WebView(manager, version)
    this.page = loadPage()
    this.tokenDigest = token === undefined ? undefined : digest(token)
  }

  async listen(): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res))
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new VvfsError('IO_ERROR', `cannot listen on ${this.address.host}:${this.address.port}: ${err.message}`, { cause: err })))
      server.listen(this.address.port, this.address.host, () => resolve())
    })
    server.on('error', (err) => this.log.error({ event: 'http.error', err: err.message }, 'web view server error'))
    this.server = server
    const bound = server.address()
    const port = typeof bound === 'object' && bound ? bound.port : this.address.port
    const host = isIP(this.address.host) === 6 ? `[${this.address.host}]` : this.address.host
    this.url = `http://${host}:${port}/`
    this.manager.events.on('event', this.onEvent)
    this.log.info({ event: 'http.listening', url: this.url, token: this.tokenDigest !== undefined }, `web view at ${this.url}`)
  }

  async close(): Promise<void> {
    this.manager.events.off('event', this.onEvent)
    this.stopTimers()
    for (const s of this.streams) s.destroy()
    this.streams.clear()
    const server = this.server
    this.server = null
    if (!server) return
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    try {
      res.setHeader('X-Content-Type-Options', 'nosniff')
      res.setHeader('Referrer-Policy', 'no-referrer')
      res.setHeader('Cache-Control', 'no-store')
      const url = new URL(req.url ?? '/', 'http://vvfs.invalid')
      if (this.tokenDigest === undefined && !loopbackHost(req)) {
        return this.json(res, 403, { error: { code: 'FORBIDDEN', message: 'without a token the web view answers only requests for a loopback host (Host: 127.0.0.1, localhost, [::1])' } })
      }
      if (this.tokenDigest !== undefined && !this.hasToken(req, url, this.tokenDigest)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="vvfs"')
        return this.json(res, 401, { error: { code: 'UNAUTHORIZED', message: 'this web view needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN' } })
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD')
        return this.json(res, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'the web view is read-only' } })
      }
      const path = url.pathname
      if (path === '/' || path === '/index.html') {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': this.page.csp, 'X-Frame-Options': 'DENY' })
        res.end(req.method === 'HEAD' ? undefined : this.page.html)
        return
      }
      if (path === '/favicon.ico') return void res.writeHead(204).end()
      if (path === '/api/state') return this.json(res, 200, this.view.snapshot())
      if (path === '/api/events') return this.stream(req, res)
      const m = /^\/api\/volume\/([^/]+)\/map$/.exec(path)
      if (m) {
        const tiles = Number(url.searchParams.get('tiles') ?? 1024)
        if (!Number.isInteger(tiles) || tiles < 1) throw new VvfsError('INVALID_ARGUMENT', 'tiles must be a positive integer')
        return this.json(res, 200, this.view.volumeMap(decodeName(m[1]!), tiles))
      }
      this.json(res, 404, { error: { code: 'NOT_FOUND', message: `no page ${path}` } })
    } catch (err) {
      const e = asVvfsError(err)
      if (statusOf(e.code) === 500) this.log.error({ event: 'http.failed', url: req.url, code: e.code, err: e.message }, 'web view request failed')
      if (!res.headersSent) this.json(res, statusOf(e.code), { error: { code: e.code, message: e.message } })
      else res.destroy()
    }
  }

  private hasToken(req: IncomingMessage, url: URL, expected: Buffer): boolean {
    const auth = req.headers.authorization
    const given = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : (url.searchParams.get('token') ?? '')
    // Digests of equal length: the comparison takes the same time whatever was given.
    return timingSafeEqual(digest(given), expected)
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const data = Buffer.from(JSON.stringify(body))
    res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': data.length })
    res.end(data)
  }

  private stream(req: IncomingMessage, res: ServerResponse): void {
    if (this.streams.size >= MAX_STREAMS) return this.json(res, 503, { error: { code: 'BUSY', message: `${MAX_STREAMS} pages are connected already` } })
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'X-Accel-Buffering': 'no' })
    res.write('retry: 1000\n\n')
    // The first page: the change baseline starts with its snapshot.
    const first = this.streams.size === 0
    this.send(res, 'snapshot', this.view.snapshot(first))
    if (first) this.startTimers()
    this.streams.add(res)
    const gone = () => {
      this.streams.delete(res)
      if (this.streams.size === 0) this.stopTimers()
    }
    req.on('close', gone)
    res.on('error', gone)
  }

  private startTimers(): void {
    this.ticker = setInterval(() => {
      try {
        const usage = this.view.changes()
        if (usage) this.broadcast('usage', usage)
      } catch (err) {
        this.log.error({ event: 'http.usage_failed', err: (err as Error).message }, 'web view could not read usage')
      }
    }, USAGE_INTERVAL_MS)
    this.ticker.unref()
    this.heartbeat = setInterval(() => {
      for (const s of this.streams) s.write(': keep-alive\n\n')
    }, HEARTBEAT_MS)
    this.heartbeat.unref()
  }

  private stopTimers(): void {
    if (this.ticker) clearInterval(this.ticker)
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.ticker = this.heartbeat = null
  }

  private broadcast(type: string, body: unknown): void {
    if (!this.streams.size) return
    const frame = `event: ${type}\ndata: ${JSON.stringify(body)}\n\n`
    for (const s of this.streams) this.send(s, type, frame)
  }

  private send(res: ServerResponse, type: string, body: unknown): void {
    if (res.writableLength > MAX_BUFFERED_EVENTS) {
      this.log.warn({ event: 'http.slow_page' }, 'dropped a web page that stopped reading its events')
      this.streams.delete(res)
      res.destroy()
      return
    }
    res.write(typeof body === 'string' ? body : `event: ${type}\ndata: ${JSON.stringify(body)}\n\n`)
  }
}

function decodeName(encoded: string): string {
  try {
    return decodeURIComponent(encoded)
  } catch {
    throw new VvfsError('INVALID_NAME', `${JSON.stringify(encoded)} is not a URL-encoded volume name`)
  }
}

/** Loopback without a token serves only pages that asked for a loopback host (no DNS rebinding). */
function loopbackHost(req: IncomingMessage): boolean {
  const host = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1')
  return isLoopback(host)
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest()
}
