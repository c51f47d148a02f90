/**
 * The vvfs CLI as a script would use it: tables for people, --json for
 * programs, exit status 1 with the error code when the daemon refuses,
 * 2 for bad usage.
 */
import { describe, expect, it } from 'vitest'
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
})
