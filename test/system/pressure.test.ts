/**
 * Pool pressure: the warning threshold raises one event per upward crossing;
 * a full pool in `error` mode gives ENOSPC at once; in `queue` mode a writer
 * waits, adding a storage system lets it finish with nothing lost, and the
 * queue timeout turns the wait into ENOSPC.
 */
import { randomBytes } from 'node:crypto'
import { open } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { VvfsEvent } from '../../lib/control/schema.js'
import { ControlClient } from '../../lib/control/client.js'
import { cleanupAll, removeDir, sh, startDaemon, type DaemonHandle } from '../helpers/daemon.js'

const MiB = 1024 * 1024
let d: DaemonHandle
beforeAll(async () => {
  d = await startDaemon()
  await d.client.call('storage.add', { name: 's1', capacity: '8M' })
  await d.client.call('storage.add', { name: 's2', capacity: '8M' })
  await d.client.call('volume.create', { name: 'v', size: '64M' })
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

/** Writes all of `data` (a short write is retried, so a full pool surfaces as an error). */
async function writeAt(offset: number, data: Buffer): Promise<void> {
  const fh = await open(d.file('v'), 'r+')
  try {
    for (let done = 0; done < data.length; ) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done)
      done += bytesWritten
    }
  } finally {
    await fh.close()
  }
}

async function errorOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
  } catch (err) {
    return (err as NodeJS.ErrnoException).code
  }
  return undefined
}

describe('pool pressure', () => {
  it('raises pool.threshold exactly once per upward crossing of the warning threshold', async () => {
    await d.client.call('pool.set', { warnPercent: 50 })
    const watcher = await ControlClient.connect(d.socket)
    const events: VvfsEvent[] = []
    watcher.onEvent((e) => events.push(e))
    await watcher.call('events.subscribe', { types: ['pool.threshold'] })

    await writeAt(0, randomBytes(6 * MiB)) // 37.5%: below
    await writeAt(6 * MiB, randomBytes(3 * MiB)) // 56%: crosses
    await writeAt(9 * MiB, randomBytes(3 * MiB)) // 75%: still above, no event
    await new Promise((r) => setTimeout(r, 100))
    expect(events).toHaveLength(1)
    expect(events[0]).toMatchObject({ type: 'pool.threshold', warnPercent: 50 })

    sh('fallocate', ['--punch-hole', '--keep-size', '-o', String(4 * MiB), '-l', String(8 * MiB), d.file('v')]) // back to 25%
    await new Promise((r) => setTimeout(r, 300))
    expect((await d.client.call('pool.status', {})).usedPercent).toBeLessThan(50)
    await writeAt(4 * MiB, randomBytes(6 * MiB)) // 62.5%: crosses again
    await new Promise((r) => setTimeout(r, 100))
    expect(events).toHaveLength(2)
    watcher.close()
  })

  it('gives ENOSPC at once when the pool is full in error mode', async () => {
    await d.client.call('pool.set', { fullMode: 'error' })
    const start = Date.now()
    expect(await errorOf(writeAt(0, randomBytes(24 * MiB)))).toBe('ENOSPC')
    expect(Date.now() - start).toBeLessThan(5000)
  })

  it('holds a writer in queue mode until a storage system is added, losing nothing', async () => {
    await d.client.call('pool.set', { fullMode: 'queue', queueTimeoutMs: 60_000 })
    const data = randomBytes(8 * MiB)
    let done = false
    const writer = writeAt(16 * MiB, data).then(() => (done = true))
    // Wait until the writer is queued.
    for (let i = 0; i < 100 && (await d.client.call('pool.status', {})).queuedWriters === 0; i++) await new Promise((r) => setTimeout(r, 50))
    expect((await d.client.call('pool.status', {})).queuedWriters).toBeGreaterThan(0)
    await new Promise((r) => setTimeout(r, 500))
    expect(done).toBe(false)
    await d.client.call('storage.add', { name: 's3', capacity: '16M' })
    await writer
    expect(done).toBe(true)
    const back = Buffer.alloc(data.length)
    const fh = await open(d.file('v'), 'r')
    await fh.read(back, 0, back.length, 16 * MiB)
    await fh.close()
    expect(back.equals(data)).toBe(true)
  })

  it('turns the wait into ENOSPC when the queue timeout passes', async () => {
    await d.client.call('pool.set', { fullMode: 'queue', queueTimeoutMs: 1000 })
    const start = Date.now()
    expect(await errorOf(writeAt(24 * MiB, randomBytes(24 * MiB)))).toBe('ENOSPC')
    const waited = Date.now() - start
    expect(waited).toBeGreaterThanOrEqual(900)
    expect(waited).toBeLessThan(20_000)
    await d.client.call('pool.set', { fullMode: 'error' })
  })
})
