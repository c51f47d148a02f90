/**
 * The web view in a real browser (headless Chromium): it shows every volume
 * and storage system, a volume's extent map shows where its extents really
 * are (as `volume.show` reports them), a migration's job appears and advances
 * without a reload, and the page carries on after the daemon restarts.
 */
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, writeSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import type { Page } from 'playwright-core'
import { startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { browserPerTest, freePort, waitUntil } from '../helpers/browser.js'

const openBrowser = browserPerTest()

const MiB = 1024 * 1024

function write(file: string, offset: number, data: Buffer): void {
  const fd = openSync(file, 'r+')
  try {
    writeSync(fd, data, 0, data.length, offset)
  } finally {
    closeSync(fd)
  }
}

/** Every cell of the selected volume's map: its tile, the systems it names, its marks. */
function mapCells(page: Page) {
  return page.$$eval('#volume-detail .grid .cell', (cells) =>
    cells.map((c, i) => ({ tile: i, systems: c.getAttribute('data-systems') ?? '', frag: c.classList.contains('frag'), copying: c.classList.contains('copying') })),
  )
}

/** What volume.show says each extent's cell must show (one cell per extent for volumes up to 1,024 extents). */
async function expectedCells(d: DaemonHandle, name: string) {
  const show = await d.client.call('volume.show', { name })
  const cells = Array.from({ length: Math.ceil(show.size / EXTENT_SIZE) }, (_, tile) => ({ tile, systems: '', frag: false }))
  for (const run of show.map) {
    for (let e = run.offset / EXTENT_SIZE; e < (run.offset + run.length) / EXTENT_SIZE; e++) {
      cells[e] = run.kind === 'fragments' ? { tile: e, systems: '', frag: true } : { tile: e, systems: run.storage, frag: false }
    }
  }
  return { show, cells }
}

describe('web view in a browser', () => {
  it('shows every volume and storage system, real extent placement, a live migration, and reconnects after a restart', async () => {
    const port = await freePort()
    const d = await startDaemon({ extraArgs: ['--http', `127.0.0.1:${port}`] })
    for (const name of ['ss1', 'ss2', 'ss3']) await d.client.call('storage.add', { name, capacity: '1G' })
    await d.client.call('volume.create', { name: 'alpha', size: '64M' })
    await d.client.call('volume.create', { name: 'beta', size: '32M' })
    await d.client.call('volume.create', { name: 'gamma', size: '1G' })
    // 40 MiB spread over the systems, and one 4 KiB write that is a fragment.
    write(d.file('alpha'), 0, randomBytes(40 * MiB))
    write(d.file('alpha'), 60 * MiB, randomBytes(4096))
    write(d.file('beta'), 8 * MiB, randomBytes(8 * MiB))

    const browser = await openBrowser()
    const page = browser.page
    await page.goto(`http://127.0.0.1:${port}/`)
    await page.waitForSelector('body[data-snapshots="1"]')
    // Set in the page once: a reload would lose it.
    await page.evaluate('window.sameDocument = true')

    // Every volume and every storage system.
    const volumes = (await d.client.call('volume.list', {})).volumes.map((v) => v.name)
    const systems = (await d.client.call('storage.list', {})).storage.map((s) => s.name)
    expect(await page.$$eval('#volumes tbody tr', (rows) => rows.map((r) => r.getAttribute('data-volume')))).toEqual(volumes)
    expect(await page.$$eval('#systems tbody tr', (rows) => rows.map((r) => r.getAttribute('data-storage')))).toEqual(systems)

    // alpha's map: one cell per extent, each on the system volume.show names.
    await page.click('tr[data-volume="alpha"]')
    await page.waitForSelector('#volume-detail .grid .cell')
    const before = await expectedCells(d, 'alpha')
    expect(new Set(before.show.map.map((r) => (r.kind === 'fragments' ? 'fragments' : r.storage)))).toEqual(new Set(['ss1', 'ss2', 'ss3', 'fragments']))
    expect((await mapCells(page)).map(({ tile, systems, frag }) => ({ tile, systems, frag }))).toEqual(before.cells)
    expect(await page.getAttribute('tr[data-volume="alpha"]', 'data-systems')).toBe('ss1 ss2 ss3')
    await browser.screenshot('volume-map')

    // A migration: its job appears and advances without a reload, its extents to copy are marked.
    const job = await d.client.call('migrate.start', { volume: 'alpha', to: 'ss1', rate: '4M' })
    const row = `#jobs tr[data-job="${job.id}"]`
    await page.waitForSelector(row)
    const percent = async () => Number(await page.getAttribute(row, 'data-percent'))
    const first = await percent()
    await page.waitForSelector('#volume-detail .cell.copying', { timeout: 15_000 })
    await waitUntil(page, `Number(document.querySelector('${row}')?.getAttribute('data-percent')) > ${first}`, 20_000)
    const middle = await percent()
    expect(middle).toBeGreaterThan(first)
    await browser.screenshot('migration-running')
    await browser.screenshot('migration-map', '#volume-detail')
    await page.waitForSelector(`${row}[data-status="concluded"]`, { timeout: 40_000 })
    expect(await percent()).toBe(100)
    expect((await d.client.call('job.show', { id: job.id })).result).toBe('completed')
    // After the job the map shows alpha's whole extents on ss1 (the fragment may stay where it is).
    const after = await expectedCells(d, 'alpha')
    const want = JSON.stringify(after.cells.map((c) => c.systems))
    await waitUntil(page, `JSON.stringify([...document.querySelectorAll('#volume-detail .grid .cell')].map((c) => c.getAttribute('data-systems') ?? '')) === ${JSON.stringify(want)}`, 10_000)
    expect(after.show.allocatedBySystem.filter((s) => s.storage !== 'ss1').reduce((a, s) => a + s.allocated, 0)).toBeLessThanOrEqual(4096)
    // The list's strip follows too, though the volume's allocated bytes did not change (a `usage` event).
    const onSystems = [...new Set(after.show.map.filter((r) => r.kind !== 'fragments').map((r) => r.storage))].sort().join(' ')
    expect(onSystems).toBe('ss1')
    await waitUntil(page, `document.querySelector('tr[data-volume="alpha"]').getAttribute('data-systems') === 'ss1'`, 5000)
    expect(await page.evaluate('window.sameDocument')).toBe(true)

    // The daemon restarts: the page reconnects, gets a fresh snapshot, and keeps following events.
    await d.restart()
    await waitUntil(page, "Number(document.body.dataset.snapshots) >= 2", 20_000)
    await page.waitForSelector('#conn[data-state="live"]')
    await d.client.call('volume.create', { name: 'delta', size: '16M' })
    await page.waitForSelector('tr[data-volume="delta"]', { timeout: 5000 })
    write(d.file('delta'), 0, randomBytes(2 * MiB))
    await waitUntil(page, `document.querySelector('tr[data-volume="delta"]')?.getAttribute('data-systems') !== ''`, 10_000)
    expect(await page.evaluate('window.sameDocument')).toBe(true)
    await browser.screenshot('after-restart')
    await d.stop()
  })
})
