/**
 * A full pool: the writer gets ENOSPC (at once in `error` mode), the daemon
 * keeps serving, what was written before is intact, and deleting a volume
 * gives its space back.
 */
import { randomBytes } from 'node:crypto'
import { open } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const MiB = 1024 * 1024
let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  await d.client.call('storage.add', { name: 's1', capacity: '8M' })
  await d.client.call('storage.add', { name: 's2', capacity: '8M' })
  await d.client.call('volume.create', { name: 'big', size: '64M' })
  await d.client.call('volume.create', { name: 'other', size: '8M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

async function fill(name: string, from: number, data: Buffer): Promise<{ written: number; error?: string; ms: number }> {
  const fh = await open(d.file(name), 'r+')
  let pos = from
  const start = Date.now()
  try {
    for (;;) {
      await fh.write(data, 0, data.length, pos)
      pos += data.length
    }
  } catch (err) {
    return { written: pos - from, error: (err as NodeJS.ErrnoException).code, ms: Date.now() - start }
  } finally {
    await fh.close()
  }
}

describe('a full pool', () => {
  const first = randomBytes(4 * MiB)

  it('gives the writer ENOSPC at once, keeps serving, and keeps earlier data', async () => {
    const fh = await open(d.file('other'), 'r+')
    await fh.write(first, 0, first.length, 0)
    await fh.sync()
    await fh.close()

    const r = await fill('big', 0, randomBytes(MiB))
    expect(r.error).toBe('ENOSPC')
    expect(r.written).toBe(12 * MiB)
    expect(r.ms).toBeLessThan(10_000)

    const pool = await d.client.call('pool.status', {})
    expect(pool.free).toBe(0)
    const back = Buffer.alloc(first.length)
    const rh = await open(d.file('other'), 'r')
    await rh.read(back, 0, back.length, 0)
    await rh.close()
    expect(back.equals(first)).toBe(true)
  })

  it('takes writes again after a volume is deleted and its space returned', async () => {
    const before = await d.client.call('pool.status', {})
    const del = await d.client.call('volume.delete', { name: 'other' })
    expect(del.released).toBe(4 * MiB)
    const after = await d.client.call('pool.status', {})
    expect(after.allocated).toBe(before.allocated - 4 * MiB)
    const r = await fill('big', 12 * MiB, randomBytes(MiB))
    expect(r.error).toBe('ENOSPC')
    expect(r.written).toBe(4 * MiB)
  })

  it('still serves reads and management after ENOSPC', async () => {
    const status = await d.client.call('status', {})
    expect(status.volumes).toBe(1)
    const fh = await open(d.file('big'), 'r')
    const buf = Buffer.alloc(MiB)
    const { bytesRead } = await fh.read(buf, 0, MiB, 0)
    await fh.close()
    expect(bytesRead).toBe(MiB)
  })
})
