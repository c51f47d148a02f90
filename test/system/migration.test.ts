/**
 * Online migration through the real daemon (copy loop in its worker thread):
 * for every copy mode, ext4 on a loop device and a raw volume file both keep
 * being written and verified while their volumes move; afterwards e2fsck is
 * clean, every file reads back by checksum, the volumes sit wholly on the
 * destination and the sources are released. Then a drain empties a storage
 * system so it can be removed with every volume intact.
 */
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { JobInfo } from '../../lib/control/schema.js'
import { attachLoop, cleanupAll, mountExt4, removeDir, sh, startDaemon, umount, type DaemonHandle } from '../helpers/daemon.js'
import { verifyTree, writeTree, type Tree } from '../helpers/files.js'
import { payload, range, rng, VolumeModel } from '../helpers/model.js'

const MiB = 1024 * 1024
let d: DaemonHandle
let dev: string
const trees: [string, Tree][] = []
let raw: VolumeModel
const fsDir = () => join(d.dir, 'fs')

beforeAll(async () => {
  d = await startDaemon()
  for (const s of ['s1', 's2', 's3']) await d.client.call('storage.add', { name: s, capacity: '192M' })
  await d.client.call('storage.add', { name: 'r', capacity: '192M', reserve: true })
  await d.client.call('volume.create', { name: 'fs', size: '128M' })
  await d.client.call('volume.create', { name: 'raw', size: '48M' })
  dev = attachLoop(d.file('fs'))
  sh('mkfs.ext4', ['-q', '-F', dev])
  mountExt4(dev, fsDir())
  trees.push([join(fsDir(), 'base'), writeTree(join(fsDir(), 'base'), { files: 60, maxSize: 512 * 1024 })])
  raw = new VolumeModel(48 * MiB)
  const r = rng(3)
  const fd = openSync(d.file('raw'), 'r+')
  for (let off = 0; off < raw.size; off += 512 * 1024) {
    const data = payload(r, 512 * 1024)
    writeSync(fd, data, 0, data.length, off)
    raw.write(off, data)
  }
  closeSync(fd)
  sh('sync', [])
})
afterAll(async () => {
  await cleanupAll()
  removeDir(d.dir)
})

async function waitJob(id: number, during: () => Promise<void>): Promise<JobInfo> {
  for (;;) {
    const j = await d.client.call('job.show', { id })
    if (j.status === 'concluded' || j.status === 'ready') return j
    await during()
  }
}

function rawRound(seed: number, ops: number): void {
  const r = rng(seed)
  const fd = openSync(d.file('raw'), 'r+')
  try {
    for (let i = 0; i < ops; i++) {
      const [offset, len] = range(r, raw.size, 256 * 1024)
      if (r.next() < 0.5) {
        const data = payload(r, len)
        writeSync(fd, data, 0, len, offset)
        raw.write(offset, data)
      } else {
        const buf = Buffer.alloc(len)
        readSync(fd, buf, 0, len, offset)
        if (!buf.equals(raw.read(offset, len))) throw new Error(`raw read of ${len} at ${offset} differs during migration`)
      }
    }
  } finally {
    closeSync(fd)
  }
}

function rawDirectCheck(): void {
  const fd = openSync(d.file('raw'), constants.O_RDONLY | constants.O_DIRECT)
  try {
    const buf = Buffer.alloc(raw.size)
    expect(readSync(fd, buf, 0, raw.size, 0)).toBe(raw.size)
    expect(buf.equals(raw.data)).toBe(true)
  } finally {
    closeSync(fd)
  }
}

async function placement(name: string): Promise<string[]> {
  return (await d.client.call('volume.show', { name })).allocatedBySystem.map((s) => s.storage).sort()
}

async function allocationConsistent(): Promise<void> {
  const st = await d.client.call('storage.list', {})
  const vols = await d.client.call('volume.list', {})
  const pool = await d.client.call('pool.status', {})
  expect(pool.heldByJobs).toBe(0)
  expect(st.storage.reduce((a, s) => a + s.allocated, 0)).toBe(vols.volumes.reduce((a, v) => a + v.allocated, 0))
}

/** e2fsck clean, every file and the raw volume as written, allocation = what the maps reference. */
async function everythingIntact(): Promise<void> {
  sh('sync', [])
  umount(fsDir())
  expect(() => sh('e2fsck', ['-fn', dev])).not.toThrow()
  mountExt4(dev, fsDir())
  for (const [dir, tree] of trees) expect(verifyTree(dir, tree)).toEqual([])
  rawDirectCheck()
  await allocationConsistent()
}

/** Trees of new files kept (and verified) per job; later writes rewrite one directory. */
const TREES_PER_JOB = 16

describe('migration while hosts write', () => {
  const plan: [string, string][] = [
    ['direct', 's1'],
    ['staged', 's2'],
    ['free', 's3'],
    ['memory', 's1'],
  ]
  plan.forEach(([mode, to], round) => {
    it(`moves ext4-on-loop and a raw volume with --mode ${mode}, losing nothing`, async () => {
      const fsJob = await d.client.call('migrate.start', { volume: 'fs', to, mode: mode as 'direct', rate: '24M' })
      const rawJob = await d.client.call('migrate.start', { volume: 'raw', to, mode: mode as 'direct', rate: '16M' })
      let step = 0
      const during = async () => {
        const dir = join(fsDir(), `round${round}-${step++}`)
        // New files for the first rounds of writing only, then rewrites: the
        // 128 MiB file system must not fill however long a job runs.
        if (step <= TREES_PER_JOB) trees.push([dir, writeTree(dir, { files: 6, maxSize: 256 * 1024 })])
        else writeTree(join(fsDir(), `round${round}-rewrite`), { files: 6, maxSize: 256 * 1024 })
        const [someDir, someTree] = trees[step % trees.length]!
        expect(verifyTree(someDir, someTree)).toEqual([])
        rawRound(round * 1000 + step, 30)
      }
      const [a, b] = [await waitJob(fsJob.id, during), await waitJob(rawJob.id, during)]
      expect(step).toBeGreaterThanOrEqual(2)
      expect([a.result, b.result]).toEqual(['completed', 'completed'])
      expect(await placement('fs')).toEqual([to])
      expect(await placement('raw')).toEqual([to])
      await everythingIntact()
    })
  })

  it('keeps the sources with --keep, then rolls back with the writes made since the switch', async () => {
    const job = await d.client.call('migrate.start', { volume: 'raw', to: 's3', keep: '10m' })
    const ready = await waitJob(job.id, async () => new Promise((r) => setTimeout(r, 50)))
    expect(ready.status).toBe('ready')
    expect(await placement('raw')).toEqual(['s3'])
    expect((await d.client.call('pool.status', {})).heldByJobs).toBeGreaterThan(0)
    rawRound(4242, 60)
    await d.client.call('migrate.rollback', { id: job.id })
    const done = await waitJob(job.id, async () => new Promise((r) => setTimeout(r, 50)))
    expect(done.result).toBe('rolled-back')
    expect(await placement('raw')).toEqual(['s1'])
    rawDirectCheck()
    await allocationConsistent()
  })

  it('drains a storage system and removes it with every volume intact', async () => {
    const job = await d.client.call('storage.drain', { name: 's1' })
    const done = await waitJob(job.id, async () => {
      rawRound(777, 20)
    })
    expect(done.result).toBe('completed')
    const s1 = (await d.client.call('storage.list', {})).storage.find((s) => s.name === 's1')!
    expect(s1.allocated).toBe(0)
    expect(s1.role).toBe('draining')
    await d.client.call('storage.remove', { name: 's1' })
    await everythingIntact()
  })

  it('consolidates a spread volume on its own once the policy is on, while ext4 and the raw volume keep being written', async () => {
    // Written after s1 was drained and removed, new files and blocks spread over s2 and s3.
    for (const v of ['fs', 'raw']) {
      const d0 = join(fsDir(), `spread-${v}`)
      trees.push([d0, writeTree(d0, { files: 10, maxSize: 512 * 1024 })])
    }
    rawRound(9001, 100)
    sh('sync', [])
    const plan = await d.client.call('migrate.plan', {})
    expect(plan.moves.map((m) => m.trigger)).toContain('spanned')
    await d.client.call('migrate.policy', { enabled: true, interval: '1s' })
    let step = 0
    let auto: JobInfo[] = []
    const settled = async () => {
      auto = (await d.client.call('job.list', {})).jobs.filter((j) => j.auto)
      if (auto.length === 0 || auto.some((j) => j.status !== 'concluded')) return false
      return (await placement('fs')).length === 1 && (await placement('raw')).length === 1
    }
    for (let i = 0; i < 600 && !(await settled()); i++) {
      const dir = join(fsDir(), `consolidate-${step++}`)
      if (step <= 4 * TREES_PER_JOB) trees.push([dir, writeTree(dir, { files: 3, maxSize: 128 * 1024 })])
      else writeTree(join(fsDir(), 'consolidate-rewrite'), { files: 3, maxSize: 128 * 1024 })
      rawRound(5000 + step, 20)
      await new Promise((r) => setTimeout(r, 50))
    }
    await d.client.call('migrate.policy', { enabled: false })
    expect(auto.length).toBeGreaterThan(0)
    expect(auto.every((j) => j.kind === 'consolidate' && j.result === 'completed' && j.reason)).toBe(true)
    const findings = (await d.client.call('migrate.plan', {})).findings.join('; ')
    for (const v of ['fs', 'raw']) expect(await placement(v), `${v} still spread: ${findings}`).toHaveLength(1)
    await everythingIntact()
  })
})
