/**
 * The catalog store's promises (lib/manager/catalog.ts): an update commits
 * all of its change or none of it; two stores on one state directory (two
 * processes, or two daemons) never commit over each other — the loser runs
 * its change again on the winner's data, or fails with a code; a kill -9
 * at any point leaves a file that parses, a revision that only grows and
 * every commit whose promise resolved; watch reports each commit.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { FileCatalog, UPDATE_ATTEMPTS, type CatalogData, type CatalogSnapshot } from '../../lib/manager/catalog.js'
import { removeDir, tempDir } from '../helpers/daemon.js'

const ROOT = resolve(import.meta.dirname, '../..')

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d)
})

function stateDir(): string {
  const d = tempDir('vvfs-catalog-')
  dirs.push(d)
  return d
}

function addVolume(name: string) {
  return (d: CatalogData) => {
    if (d.volumes.some((v) => v.name === name)) throw new VvfsError('VOLUME_EXISTS', `volume ${name} already exists`)
    d.volumes.push({ name, id: name, no: d.nextVolumeNo++, size: 4096, hosts: [], createdAt: '2026-01-01T00:00:00.000Z', state: 'ready' })
    return d.nextVolumeNo - 1
  }
}

function onDisk(dir: string): CatalogData & { rev: number } {
  return JSON.parse(readFileSync(join(dir, 'catalog.json'), 'utf8')) as CatalogData & { rev: number }
}

async function rejection(p: Promise<unknown>): Promise<VvfsError> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(r).toBeInstanceOf(VvfsError)
  return r as VvfsError
}

describe('catalog store', () => {
  it('a new state directory starts at revision 1; a catalog written before revisions reads as revision 0', async () => {
    const dir = stateDir()
    const fresh = await FileCatalog.open(dir)
    expect(fresh.isNew).toBe(true)
    expect(fresh.read().rev).toBe(1)
    expect(onDisk(dir).rev).toBe(1)

    const { rev: _rev, ...old } = onDisk(dir)
    writeFileSync(join(dir, 'catalog.json'), JSON.stringify(old))
    const reopened = await FileCatalog.open(dir)
    expect(reopened.isNew).toBe(false)
    expect(reopened.read().rev).toBe(0)
    const { rev } = await reopened.update(addVolume('a'))
    expect(rev).toBe(1)
    expect(onDisk(dir).rev).toBe(1)
  })

  it('committed data cannot be changed in place: only update() changes it', async () => {
    const catalog = await FileCatalog.open(stateDir())
    await catalog.update(addVolume('a'))
    const data = catalog.read().data as unknown as CatalogData
    expect(() => data.volumes.push(data.volumes[0]!)).toThrow(TypeError)
    expect(() => (data.volumes[0]!.size = 1)).toThrow(TypeError)
    expect(catalog.read().data.volumes).toHaveLength(1)
  })

  it('an update whose fn throws changes nothing: not the revision, not the data, not the file', async () => {
    const dir = stateDir()
    const catalog = await FileCatalog.open(dir)
    await catalog.update(addVolume('a'))
    const before = catalog.read()
    const file = readFileSync(join(dir, 'catalog.json'), 'utf8')
    const seen: number[] = []
    catalog.watch(before.rev, (s) => seen.push(s.rev))

    const err = await rejection(
      catalog.update((d) => {
        d.nextVolumeNo += 10
        d.hosts.push({ name: 'h', mount: '/x', createdAt: 'now' })
        return addVolume('a')(d)
      }),
    )
    expect(err.code).toBe('VOLUME_EXISTS')
    expect(catalog.read()).toBe(before)
    expect(catalog.read().data.nextVolumeNo).toBe(2)
    expect(catalog.read().data.hosts).toHaveLength(0)
    expect(readFileSync(join(dir, 'catalog.json'), 'utf8')).toBe(file)
    expect(seen).toEqual([])
    // The next update goes on from the same revision.
    expect((await catalog.update(addVolume('b'))).rev).toBe(before.rev + 1)
  })

  it('two stores creating the same volume at once: one wins, the other runs its change again on the winner\'s data and fails with VOLUME_EXISTS', async () => {
    const dir = stateDir()
    const a = await FileCatalog.open(dir)
    const b = await FileCatalog.open(dir)
    const runs = { a: 0, b: 0 }
    const counted = (who: 'a' | 'b') => (d: CatalogData) => {
      runs[who]++
      return addVolume('shared')(d)
    }
    const [ra, rb] = await Promise.allSettled([a.update(counted('a')), b.update(counted('b'))])
    const won = [ra, rb].filter((r) => r.status === 'fulfilled')
    const lost = [ra, rb].filter((r) => r.status === 'rejected')
    expect(won).toHaveLength(1)
    expect(lost).toHaveLength(1)
    expect(((lost[0] as PromiseRejectedResult).reason as VvfsError).code).toBe('VOLUME_EXISTS')
    // Both saw an empty catalog first: the loser's fn ran twice.
    expect(runs.a + runs.b).toBe(3)
    const disk = onDisk(dir)
    expect(disk.volumes.map((v) => v.name)).toEqual(['shared'])
    expect(disk.nextVolumeNo).toBe(2)
    expect(disk.rev).toBe(2)
  })

  it('a store that read an older revision commits on top of the newer one, not over it', async () => {
    const dir = stateDir()
    const a = await FileCatalog.open(dir)
    const b = await FileCatalog.open(dir)
    await b.update(addVolume('from-b'))
    expect(a.read().rev).toBe(1)
    const { rev, result: no } = await a.update(addVolume('from-a'))
    expect(rev).toBe(3)
    expect(no).toBe(2)
    expect(onDisk(dir).volumes.map((v) => v.name)).toEqual(['from-b', 'from-a'])
  })

  it('an update that loses the race every time fails with CATALOG_CONFLICT after a bounded number of tries, leaving the winner\'s data', async () => {
    const dir = stateDir()
    const catalog = await FileCatalog.open(dir)
    let runs = 0
    const err = await rejection(
      catalog.update((d) => {
        runs++
        // Another process commits between this fn and the compare-and-swap.
        const disk = onDisk(dir)
        writeFileSync(join(dir, 'catalog.json'), JSON.stringify({ ...disk, rev: disk.rev + 1, nextSid: disk.nextSid + 1 }))
        d.volumes.push({ name: 'mine', id: 'mine', no: 1, size: 4096, hosts: [], createdAt: 'now', state: 'ready' })
      }),
    )
    expect(err.code).toBe('CATALOG_CONFLICT')
    expect(runs).toBe(UPDATE_ATTEMPTS)
    const disk = onDisk(dir)
    expect(disk.volumes).toEqual([])
    expect(disk.rev).toBe(1 + UPDATE_ATTEMPTS)
    expect(catalog.read().rev).toBe(disk.rev)
  })

  it('watch reports every commit after a revision, in order, and the latest at once when behind', async () => {
    const dir = stateDir()
    const catalog = await FileCatalog.open(dir)
    const seen: CatalogSnapshot[] = []
    const stop = catalog.watch(catalog.read().rev, (s) => seen.push(s))
    await catalog.update(addVolume('a'))
    await catalog.update(addVolume('b'))
    expect(seen.map((s) => s.rev)).toEqual([2, 3])
    expect(seen[1]!.data.volumes.map((v) => v.name)).toEqual(['a', 'b'])

    const late: number[] = []
    catalog.watch(1, (s) => late.push(s.rev))
    expect(late).toEqual([3])

    // Another process's commit is reported when this store next reads the file.
    const other = await FileCatalog.open(dir)
    await other.update(addVolume('c'))
    await catalog.update(addVolume('d'))
    expect(seen.map((s) => s.rev)).toEqual([2, 3, 4, 5])
    expect(seen[2]!.data.volumes.map((v) => v.name)).toEqual(['a', 'b', 'c'])

    stop()
    await catalog.update(addVolume('e'))
    expect(seen).toHaveLength(4)
    expect(late).toEqual([3, 4, 5, 6])
  })

  it('kill -9 of processes committing in a loop, several rounds: the file parses, the revision only grows, every promised commit is there, none half-applied', async () => {
    expect(existsSync(join(ROOT, 'dist/lib/manager/catalog.js'))).toBe(true)
    const dir = stateDir()
    const acked = new Map<string, number>()
    let lastRev = 0
    for (let round = 0; round < 6; round++) {
      // Two writers at once from round 2 on: the lock and the compare-and-swap under kill -9.
      const tags = round < 2 ? [`r${round}`] : [`r${round}a`, `r${round}b`]
      const children = tags.map((tag) => {
        const child = spawn(process.execPath, [join(ROOT, 'test/helpers/catalog-writer.mjs'), dir, tag], { stdio: ['ignore', 'pipe', 'inherit'] })
        let out = ''
        child.stdout.on('data', (b: Buffer) => {
          out += b.toString()
          for (const line of out.split('\n').slice(0, -1)) acked.set(tag, Number(line))
        })
        const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
        return { child, exited }
      })
      // Once each writer is committing (node's start takes a while on a loaded machine), anywhere in a commit.
      for (let i = 0; i < 1000 && tags.some((t) => !acked.has(t)); i++) await new Promise((r) => setTimeout(r, 10))
      for (const t of tags) expect(acked.has(t), `${t} committed`).toBe(true)
      await new Promise((r) => setTimeout(r, Math.random() * 300))
      for (const { child } of children) child.kill('SIGKILL')
      await Promise.all(children.map((c) => c.exited))

      const disk = onDisk(dir)
      const reopened = await FileCatalog.open(dir)
      expect(reopened.read().rev).toBe(disk.rev)
      expect(disk.rev).toBeGreaterThanOrEqual(lastRev)
      lastRev = disk.rev
      // Each commit added exactly one volume and took exactly one number.
      expect(disk.rev).toBe(1 + disk.volumes.length)
      expect(disk.nextVolumeNo).toBe(1 + disk.volumes.length)
      expect(disk.volumes.map((v) => v.no)).toEqual(disk.volumes.map((_, i) => i + 1))
      const names = new Set(disk.volumes.map((v) => v.name))
      for (const [tag, n] of acked) for (let i = 1; i <= n; i++) expect(names.has(`${tag}-${i}`), `${tag}-${i}`).toBe(true)
    }
    expect(acked.size).toBeGreaterThanOrEqual(6)
  })
})
