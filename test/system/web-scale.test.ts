/**
 * The web view at scale: a 16 TiB volume with extents written at 1,000
 * scattered places, and 1,000 small volumes. The page's first load (page,
 * event stream with its snapshot), counted on the wire, stays under 1 MiB,
 * the browser renders it in under 2 s, and the big volume's map arrives as
 * at most 1,024 tiles that account for all 1,000 extents.
 */
import { closeSync, openSync, writeSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { startDaemon } from '../helpers/daemon.js'
import { browserPerTest, countingRelay, freePort } from '../helpers/browser.js'

const openBrowser = browserPerTest()

const MiB = 1024 * 1024
const TiB = 1024 * 1024 * MiB

describe('web view at scale', () => {
  it('loads 1,000 volumes and a 16 TiB volume with 1,000 scattered extents in under 1 MiB and 2 s', async () => {
    const port = await freePort()
    const d = await startDaemon({ extraArgs: ['--http', `127.0.0.1:${port}`] })
    for (const name of ['ss1', 'ss2', 'ss3']) await d.client.call('storage.add', { name, capacity: '2G' })
    await d.client.call('volume.create', { name: 'big', size: 16 * TiB })
    // 1,000 writes of 128 KiB (enough for a whole extent each) at scattered places, through the mount.
    const fd = openSync(d.file('big'), 'r+')
    const data = Buffer.alloc(128 * 1024, 0xa5)
    const step = Math.floor((16 * TiB) / 1000 / MiB) * MiB
    try {
      for (let i = 0; i < 1000; i++) writeSync(fd, data, 0, data.length, i * step + 4096 * (i % 200))
    } finally {
      closeSync(fd)
    }
    // 16 at a time: a connection may have at most 32 unanswered requests (TOO_MANY_REQUESTS).
    for (let i = 0; i < 1000; i += 16) {
      await Promise.all(Array.from({ length: Math.min(16, 1000 - i) }, (_, k) => d.client.call('volume.create', { name: `small-${String(i + k).padStart(4, '0')}`, size: '16M' })))
    }
    const big = await d.client.call('volume.show', { name: 'big' })
    expect(big.extents).toBe(1000)

    const relay = await countingRelay(port)
    try {
      const browser = await openBrowser()
      const page = browser.page
      const started = Date.now()
      await page.goto(`http://127.0.0.1:${relay.port}/`)
      await page.waitForSelector('body[data-first-render-ms]', { timeout: 10_000 })
      const wall = Date.now() - started
      const transferred = relay.received()
      // performance.now() at the first full render, counted by the browser from the navigation's start.
      const rendered = Number(await page.evaluate('document.body.dataset.firstRenderMs'))
      const rows = await page.locator('#volumes tbody tr').count()
      console.log(`first load: ${transferred} bytes on the wire, rendered at ${rendered} ms (${wall} ms wall, browser start excluded), ${rows} rows`)
      expect(rows).toBe(1001)
      expect(transferred).toBeLessThan(MiB)
      expect(rendered).toBeLessThan(2000)
      expect(await page.getAttribute('tr[data-volume="big"]', 'data-systems')).toBe('ss1 ss2 ss3')

      // The big volume's map: tiles, not cells per extent, accounting for every extent.
      await page.click('tr[data-volume="big"]')
      await page.waitForSelector('#volume-detail .grid .cell')
      const cells = await page.locator('#volume-detail .grid .cell').count()
      expect(cells).toBeLessThanOrEqual(1024)
      expect(await page.textContent('#volume-detail h3')).toContain(`1000 of ${16 * 1024 * 1024} extents allocated`)
      await browser.screenshot('scale')
    } finally {
      await relay.close()
    }
    await d.stop()
  })
})
