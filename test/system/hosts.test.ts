/**
 * LUN masking: a volume mapped to host A is visible in A's mount only; after
 * `volume map` it is visible in B's as well, after `volume unmap` no more.
 */
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cleanupAll, isMounted, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

let d: DaemonHandle
const hostB = () => join(d.dir, 'hostB')
beforeAll(async () => {
  d = await startDaemon()
  await d.client.call('storage.add', { name: 's1', capacity: '64M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

describe('hosts', () => {
  it('shows a volume only in the mounts of the hosts it is mapped to', async () => {
    await d.client.call('host.add', { name: 'b', mount: hostB() })
    expect(isMounted(hostB())).toBe(true)
    await d.client.call('volume.create', { name: 'onlyA', size: '4M', hosts: ['local'] })
    expect(readdirSync(d.mount)).toContain('onlyA')
    expect(readdirSync(hostB())).not.toContain('onlyA')
    expect(existsSync(join(hostB(), 'onlyA'))).toBe(false)

    await d.client.call('volume.map', { name: 'onlyA', host: 'b' })
    expect(readdirSync(hostB())).toContain('onlyA')
    expect(existsSync(join(hostB(), 'onlyA'))).toBe(true)

    await d.client.call('volume.unmap', { name: 'onlyA', host: 'local' })
    expect(readdirSync(d.mount)).not.toContain('onlyA')
    expect(readdirSync(hostB())).toContain('onlyA')
  })

  it('keeps hosts and mappings across a restart', async () => {
    await d.restart()
    expect(isMounted(hostB())).toBe(true)
    expect(readdirSync(hostB())).toContain('onlyA')
    expect(readdirSync(d.mount)).not.toContain('onlyA')
  })

  it('removes a host: unmounts it and unmaps its volumes', async () => {
    await d.client.call('host.remove', { name: 'b' })
    expect(isMounted(hostB())).toBe(false)
    const v = await d.client.call('volume.show', { name: 'onlyA' })
    expect(v.hosts).toEqual([])
  })
})
