/**
 * LUN masking: a volume mapped to host A is visible in A's mount only; after
 * `volume map` it is visible in B's as well, after `volume unmap` no more.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ControlClient } from '../../lib/control/client.js'
import type { VvfsEvent } from '../../lib/control/schema.js'
import { cleanupAll, isMounted, removeDir, sh, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'

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

  it('shows a mount someone else unmounted as unmounted (no file listed), and host remount brings the file back', async () => {
    await d.client.call('volume.create', { name: 'back', size: '1M' })
    const data = Buffer.alloc(64 * 1024, 7)
    writeFileSync(d.file('back'), data)
    const watcher = await ControlClient.connect(d.socket)
    const events: VvfsEvent[] = []
    watcher.onEvent((e) => events.push(e))
    await watcher.call('events.subscribe', { types: ['host.unmounted', 'host.mounted'] })
    try {
      sh('umount', [d.mount])
      const until = Date.now() + 5000
      const local = async () => (await d.client.call('host.list', {})).hosts.find((h) => h.name === 'local')!
      while ((await local()).mounted && Date.now() < until) await new Promise((r) => setTimeout(r, 100))
      expect((await local()).mounted).toBe(false)
      expect((await d.client.call('volume.show', { name: 'back' })).files).toEqual([])
      expect(d.log()).toMatch(/"event":"host\.lost","host":"local"/)

      const info = await d.client.call('host.remount', { name: 'local' })
      expect(info.mounted).toBe(true)
      expect(isMounted(d.mount)).toBe(true)
      expect(readFileSync(d.file('back')).equals(data)).toBe(true)
      expect((await d.client.call('volume.show', { name: 'back' })).files).toEqual([d.file('back')])
      // Mounted already: nothing to do.
      expect((await d.client.call('host.remount', { name: 'local' })).mounted).toBe(true)
      expect(await codeOf(d.client.call('host.remount', { name: 'nope' }))).toBe('HOST_NOT_FOUND')
      await new Promise((r) => setTimeout(r, 100))
      expect(events.map((e) => `${e.type}:${(e as { name?: string }).name ?? (e as { host?: { name: string } }).host?.name}`)).toEqual(['host.unmounted:local', 'host.mounted:local'])
    } finally {
      watcher.close()
    }
  })

  it('refuses host remount with HOST_BUSY while a file stays open on a lazily detached mount, and remounts once it is closed', async () => {
    const { open } = await import('node:fs/promises')
    const fh = await open(d.file('back'), 'r')
    const local = async () => (await d.client.call('host.list', {})).hosts.find((h) => h.name === 'local')!
    try {
      sh('fusermount', ['-uz', d.mount])
      const until = Date.now() + 5000
      while ((await local()).mounted && Date.now() < until) await new Promise((r) => setTimeout(r, 100))
      expect((await local()).mounted).toBe(false)
      // The open file is still served through the detached mount.
      const { bytesRead } = await fh.read(Buffer.alloc(4096), 0, 4096, 0)
      expect(bytesRead).toBe(4096)
      expect(await codeOf(d.client.call('host.remount', { name: 'local' }))).toBe('HOST_BUSY')
    } finally {
      await fh.close()
    }
    // The kernel sends release asynchronously after close.
    const until = Date.now() + 10_000
    let remount = await codeOf(d.client.call('host.remount', { name: 'local' }))
    while (remount === 'HOST_BUSY' && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100))
      remount = await codeOf(d.client.call('host.remount', { name: 'local' }))
    }
    expect(remount).toBe('no error')
    expect((await local()).mounted).toBe(true)
    expect(readdirSync(d.mount)).toContain('back')
  })
})
