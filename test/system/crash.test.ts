/**
 * kill -9 of the daemon in the middle of writes, and a power cut (the state
 * directory also loses every byte not synced, test/helpers/powercut.ts):
 * after a restart every write that fsync acknowledged reads back intact, and
 * the space allocated equals what the volume maps reference.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cleanupAll, removeDir, startDaemon, type DaemonHandle } from '../helpers/daemon.js'
import { blockData } from '../helpers/block-data.mjs'

const WRITER = resolve(import.meta.dirname, '../helpers/crash-writer.mjs')

async function verifyDurable(d: DaemonHandle, log: string): Promise<number> {
  if (!existsSync(log)) return 0
  const writes = readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { id: number; offset: number; length: number })
  const fh = await open(d.file('crash'), 'r')
  try {
    for (const w of writes) {
      const buf = Buffer.alloc(w.length)
      await fh.read(buf, 0, w.length, w.offset)
      if (!buf.equals(blockData(w.id, w.length))) throw new Error(`fsync'ed write ${w.id} (${w.length} bytes at ${w.offset}) did not survive`)
    }
  } finally {
    await fh.close()
  }
  return writes.length
}

async function allocationMatchesMaps(d: DaemonHandle) {
  const pool = await d.client.call('pool.status', {})
  const volumes = await d.client.call('volume.list', {})
  const referenced = volumes.volumes.reduce((s, v) => s + v.allocated, 0)
  expect(pool.allocated).toBe(referenced)
  const bySystem = await d.client.call('storage.list', {})
  expect(bySystem.storage.reduce((s, x) => s + x.allocated, 0)).toBe(referenced)
}

describe.each([
  { crash: 'kill -9 of the daemon', powerLoss: false },
  { crash: 'a power cut under the daemon', powerLoss: true },
])('$crash during writes', ({ powerLoss }) => {
  let d: DaemonHandle
  beforeAll(async () => {
    d = await startDaemon({ powerLoss })
    for (const name of ['s1', 's2', 's3']) await d.client.call('storage.add', { name, capacity: '256M' })
    await d.client.call('volume.create', { name: 'crash', size: '384M' })
  })
  afterAll(async () => {
    await cleanupAll()
    removeDir(d.dir)
  })

  for (const round of [1, 2, 3]) {
    it(`keeps every fsync-acknowledged write (round ${round})`, async () => {
      const log = join(d.dir, `durable-${round}.log`)
      const writer = spawn(process.execPath, [WRITER, d.file('crash'), log, String(round * 7919), '20'], { stdio: ['ignore', 'pipe', 'pipe'] })
      let said = ''
      writer.stdout.on('data', (b) => (said += String(b)))
      writer.stderr.on('data', (b) => (said += String(b)))
      const writerDone = new Promise((r) => writer.once('exit', r))
      // Let it run long enough to have fsync'ed a few hundred writes, then kill at a random moment.
      await new Promise((r) => setTimeout(r, 1500 + Math.floor(Math.random() * 1500)))
      await d.crash()
      await writerDone
      await d.restart()
      const n = await verifyDurable(d, log)
      expect(n, `writer: ${said}`).toBeGreaterThan(10)
      await allocationMatchesMaps(d)
    })
  }
})
