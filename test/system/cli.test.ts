/**
 * The vvfs CLI as a script would use it: tables for people, --json for
 * programs, exit status 1 with the error code when the daemon refuses,
 * 2 for bad usage.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { codeOf } from '../helpers/errors.js'
import { DEFAULT_MEMORY_BUDGET, shareOf } from '../../lib/storage/memory-budget.js'
import { cliFor, daemonForFile } from '../helpers/cli.js'

const { daemon, vvfs } = daemonForFile()

describe('the vvfs CLI', () => {
  it('adds storage systems and lists them as an aligned table', () => {
    expect(vvfs('storage', 'add', 'fast', '--capacity', '256M').code).toBe(0)
    expect(vvfs('storage', 'add', 'slow', '--capacity', '1G').code).toBe(0)
    const r = vvfs('storage', 'list')
    expect(r.code).toBe(0)
    const lines = r.out.trim().split('\n')
    expect(lines[0]).toMatch(/^NAME\s+ROLE\s+CAPACITY\s+ALLOCATED\s+FREE/)
    expect(lines[1]).toMatch(/^fast\s+normal\s+256 MiB\s+0 B\s+256 MiB/)
    // Columns line up: every row starts its second column at the same place.
    const col = lines[0]!.indexOf('CAPACITY')
    for (const l of lines.slice(1)) expect(l[col - 1]).toBe(' ')
  })

  it("status shows the daemon's memory and how the storage systems' budget is divided among them", () => {
    const s = JSON.parse(vvfs('status', '--json').out)
    const m = s.memory
    expect(m.heapUsed).toBeGreaterThan(0)
    expect(m.heapTotal).toBeGreaterThanOrEqual(m.heapUsed)
    expect(m.rss).toBeGreaterThan(m.heapUsed)
    expect(m.peakRss).toBeGreaterThanOrEqual(m.rss)
    expect(m.held).toBeGreaterThan(0)
    expect(m.held).toBeLessThanOrEqual(m.budget)
    const share = shareOf(DEFAULT_MEMORY_BUDGET, 2)
    expect(m).toMatchObject({ budget: DEFAULT_MEMORY_BUDGET, stores: 2, writeBufferSize: share.writeBufferSize, cacheSize: share.cacheSize, overBudget: false })
    expect(vvfs('status').out).toMatch(/memory\s+\d+(\.\d)? MiB resident \(peak \d+(\.\d)? MiB\), JS heap .+; storage budget 192 MiB over 2 local systems, \d+(\.\d)? (B|KiB|MiB) held \(36 MiB write buffers, 16 MiB caches\)/)
  })

  it('creates a volume and prints its id and size', () => {
    const r = vvfs('volume', 'create', 'web', '--size', '512M')
    expect(r.code).toBe(0)
    expect(r.out).toMatch(/id\s+[0-9a-f-]{36}/)
    expect(r.out).toMatch(/size\s+512 MiB \(536870912 bytes\)/)
  })

  it('prints results as JSON with --json', () => {
    const r = vvfs('volume', 'show', 'web', '--json')
    expect(r.code).toBe(0)
    const v = JSON.parse(r.out)
    expect(v).toMatchObject({ name: 'web', size: 536870912, allocated: 0, hosts: ['local'] })
    const list = JSON.parse(vvfs('volume', 'list', '--json').out)
    expect(list.map((x: { name: string }) => x.name)).toEqual(['web'])
  })

  it('resizes, maps and deletes', () => {
    expect(vvfs('volume', 'resize', 'web', '--size', '1G').out).toMatch(/1 GiB/)
    expect(vvfs('host', 'add', 'h2', '--mount', `${daemon().dir}/h2`).code).toBe(0)
    expect(vvfs('volume', 'map', 'web', '--host', 'h2').code).toBe(0)
    expect(vvfs('host', 'list').out).toMatch(/h2\s+\S+\s+yes\s+web/)
    expect(vvfs('volume', 'unmap', 'web', '--host', 'h2').code).toBe(0)
    expect(vvfs('pool', 'status').out).toMatch(/TOTAL\s+1\.3 GiB/)
    expect(vvfs('volume', 'delete', 'web').out).toMatch(/deleted volume web/)
  })

  it('exits 1 and names the error code when the daemon refuses', () => {
    const r = vvfs('volume', 'create', '../evil', '--size', '1G')
    expect(r.code).toBe(1)
    expect(r.err).toMatch(/INVALID_NAME/)
    const j = vvfs('volume', 'show', 'nope', '--json')
    expect(j.code).toBe(1)
    expect(JSON.parse(j.out).error.code).toBe('VOLUME_NOT_FOUND')
  })

  it('exits 2 on bad usage, and 1 with CONNECTION_FAILED when no daemon answers', () => {
    expect(vvfs('volume', 'create').code).toBe(2)
    expect(vvfs('frobnicate').code).toBe(2)
    const r = cliFor(() => `${daemon().dir}/nobody.sock`)('status')
    expect(r.code).toBe(1)
    expect(r.err).toMatch(/CONNECTION_FAILED/)
  })

  it('refuses names starting with a dash (-rf, --state) with INVALID_NAME, and the CLI says to put such a name after --', async () => {
    expect(await codeOf(daemon().client.call('volume.create', { name: '-rf', size: '1M' }))).toBe('INVALID_NAME')
    expect(await codeOf(daemon().client.call('storage.add', { name: '--state', capacity: '64M' }))).toBe('INVALID_NAME')
    expect(await codeOf(daemon().client.call('host.add', { name: '-x', mount: `${daemon().dir}/x` }))).toBe('INVALID_NAME')
    const created = vvfs('volume', 'create', '--size', '1M', '--', '-rf')
    expect(created.code).toBe(1)
    expect(created.err).toMatch(/INVALID_NAME: .*name "-rf" is not valid: .*not starting with a dot or a dash/)
    const bare = vvfs('volume', 'delete', '-rf')
    expect(bare.code).toBe(2)
    expect(bare.err).toMatch(/a name starting with '-' goes after '--'/)
    expect((await daemon().client.call('volume.list', {})).volumes.map((v) => v.name)).not.toContain('-rf')
  })

  it('takes a name after -- and still manages a volume named -rf that an older state holds', async () => {
    expect(vvfs('volume', 'create', '--size', '1M', '--', 'plain').code).toBe(0)
    expect(vvfs('volume', 'create', '--size', '1M', '--', 'older').code).toBe(0)
    await daemon().stop()
    // A state made before such names were refused: rename the volume in the catalog.
    const path = join(daemon().state, 'catalog.json')
    const catalog = JSON.parse(readFileSync(path, 'utf8')) as { volumes: { name: string }[] }
    catalog.volumes.find((v) => v.name === 'older')!.name = '-rf'
    writeFileSync(path, JSON.stringify(catalog))
    await daemon().restart()
    expect(vvfs('volume', 'list').out).toMatch(/^-rf\s/m)
    const shown = vvfs('volume', 'show', '--json', '--', '-rf')
    expect(shown.code).toBe(0)
    expect(JSON.parse(shown.out).name).toBe('-rf')
    expect(vvfs('volume', 'resize', '--size', '2M', '--', '-rf').out).toMatch(/volume -rf is now 2 MiB/)
    expect(vvfs('volume', 'delete', '--', '-rf').out).toMatch(/deleted volume -rf/)
    expect(vvfs('volume', 'delete', '--', 'plain').out).toMatch(/deleted volume plain/)
    expect((await daemon().client.call('volume.list', {})).volumes.map((v) => v.name)).toEqual([])
  })
})
