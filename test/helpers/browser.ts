/**
 * Headless Chromium for the web view's tests: Debian's `chromium` (make setup
 * installs it) driven by playwright-core, which never downloads a browser.
 * Each launch gets a fresh profile directory, removed at close. Screenshots
 * go to test-artifacts/web/ (gitignored).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import { afterAll, afterEach } from 'vitest'
import { cleanupAll } from './daemon.js'

export const CHROMIUM = '/usr/bin/chromium'
export const ARTIFACTS = resolve(import.meta.dirname, '../../test-artifacts/web')

const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

export interface Browser {
  context: BrowserContext
  page: Page
  /** Saves a screenshot (the full page, or one element) as test-artifacts/web/NAME.png and returns its path. */
  screenshot(name: string, selector?: string): Promise<string>
  close(): Promise<void>
}

export async function openBrowser(): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'vvfs-chromium-'))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 1000 } })
  const page = context.pages()[0] ?? (await context.newPage())
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))
  // The page must work under its own Content-Security-Policy (inline code only by hash).
  page.on('console', (msg) => {
    if (msg.text().includes('Content Security Policy')) errors.push(msg.text())
  })
  return {
    context,
    page,
    async screenshot(name, selector) {
      mkdirSync(ARTIFACTS, { recursive: true })
      const path = join(ARTIFACTS, `${name}.png`)
      if (selector) await page.locator(selector).screenshot({ path })
      else await page.screenshot({ path, fullPage: true })
      return path
    },
    async close() {
      await context.close().catch(() => {})
      rmSync(profile, { recursive: true, force: true })
      if (errors.length) throw new Error(`the page threw: ${errors.join('; ')}`)
    },
  }
}

/**
 * For a test file: opens a browser per test, and after each test closes it
 * (failing the test if the page threw) and stops every daemon and mount.
 */
export function browserPerTest(): () => Promise<Browser> {
  let open: Browser | undefined
  afterEach(async () => {
    const b = open
    open = undefined
    await b?.close()
  })
  afterAll(cleanupAll)
  return async () => (open = await openBrowser())
}

/**
 * Waits until a JavaScript expression is truthy in the page. (Playwright's
 * waitForFunction evaluates strings with eval, which the view's CSP forbids;
 * page.evaluate goes through the debugger and is not subject to it.)
 */
export async function waitUntil(page: Page, expression: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await page.evaluate(expression))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${expression}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** A TCP port nobody listens on now (the daemon binds it; the same one after a restart). */
export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const { port } = server.address() as AddressInfo
  await new Promise((r) => server.close(r))
  return port
}

/**
 * A loopback TCP relay in front of the daemon's web port that counts the
 * bytes sent to the browser: what a page load really transfers (headers,
 * page, event stream), measured on the wire.
 */
export async function countingRelay(targetPort: number): Promise<{ port: number; received(): number; close(): Promise<void> }> {
  let received = 0
  const sockets = new Set<import('node:net').Socket>()
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    sockets.add(client).add(upstream)
    upstream.on('data', (chunk: Buffer) => {
      received += chunk.length
    })
    client.pipe(upstream)
    upstream.pipe(client)
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  return {
    port: (server.address() as AddressInfo).port,
    received: () => received,
    async close() {
      for (const s of sockets) s.destroy()
      await new Promise((r) => server.close(r))
    },
  }
}
