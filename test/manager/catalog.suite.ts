/**
 * The CatalogStore conformance suite: the promises of lib/manager/catalog.ts
 * every implementation keeps (FileCatalog, EtcdCatalog): an update commits
 * all of its change or none of it; two stores on one catalog (two
 * processes, two relays) never commit over each other — the loser runs its
 * change again on the winner's data, or fails with a code; a kill -9 of
 * writers at any point leaves a catalog that parses, a revision that only
 * grows and every commit whose promise resolved; watch reports each commit.
 *
 * Use, from a *.test.ts file:
 *
 *   catalogSuite('my store', async () => ({
 *     open: () => openMyStore(...),      // a store on this test's catalog (another process's, each call)
 *     stored: async () => ...,           // what is stored, read around the stores
 *     commitBehind: (change) => ...,     // another writer commits `change` now, synchronously
 *     writerTarget: '...',               // test/helpers/catalog-writer.mjs's TARGET for this catalog
 *     cleanup: async () => ...,          // closes what is open, removes what it made
 *   }), { freshRead: false })
 *
 * The factory runs once per test and gives a catalog nobody opened yet.
 * `freshRead`: read() follows other stores' commits without an update (the
 * etcd store's watch); without it they are seen at the next update.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { UPDATE_ATTEMPTS, type CatalogData, type CatalogSnapshot, type CatalogStore } from '../../lib/manager/catalog.js'

const ROOT = resolve(import.meta.dirname, '../..')

export interface CatalogUnderTest {
  open(): Promise<CatalogStore>
  /** The stored catalog, read directly (its revision, data, and raw text). */
  stored(): Promise<{ rev: number; data: CatalogData; text: string }>
  /** Another writer commits `change` on the stored catalog before this returns. */
  commitBehind(change: 'nextSid+1'): void
  writerTarget: string
  cleanup(): Promise<void>
}

export interface CatalogClaims {
  freshRead: boolean
}

export function addVolume(name: string) {
  return (d: CatalogData) => {
    if (d.volumes.some((v) => v.name === name)) throw new VvfsError('VOLUME_EXISTS', `volume ${name} already exists`)
    d.volumes.push({ name, id: name, no: d.nextVolumeNo++, size: 4096, hosts: [], createdAt: '2026-01-01T00:00:00.000Z', state: 'ready' })
    return d.nextVolumeNo - 1
  }
}

export async function rejection(p: Promise<unknown>): Promise<VvfsError> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(r).toBeInstanceOf(VvfsError)
  return r as VvfsError
}

/** Polls `check` until it passes or 5 s went by (a watch delivers within milliseconds). */
async function eventually(check: () => void): Promise<void> {
  const deadline = Date.now() + 5000
  for (;;) {
    try {
      check()
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, 10))
    }
  }
}

export function catalogSuite(label: string, factory: () => Promise<CatalogUnderTest>, claims: CatalogClaims): void {
  describe(`catalog store: ${label}`, () => {
    let current: CatalogUnderTest | undefined
    const stores: CatalogStore[] = []
    const setup = async () => {
      current = await factory()
      const open = current.open.bind(current)
      current.open = async () => {
        const s = await open()
        stores.push(s)
        return s
      }
      return current
    }
    afterEach(async () => {
      for (const s of stores.splice(0)) await s.close?.()
      await current?.cleanup()
      current = undefined
    })

    it('a new catalog starts at revision 1, and says it is new only to the store that created it', async () => {
      const t = await setup()
      const fresh = await t.open()
      expect(fresh.isNew).toBe(true)
      expect(fresh.read().rev).toBe(1)
      expect((await t.stored()).rev).toBe(1)
      const again = await t.open()
      expect(again.isNew).toBe(false)
      expect(again.read().rev).toBe(1)
    })

    it('committed data cannot be changed in place: only update() changes it', async () => {
      const t = await setup()
      const catalog = await t.open()
      await catalog.update(addVolume('a'))
      const data = catalog.read().data as unknown as CatalogData
      expect(() => data.volumes.push(data.volumes[0]!)).toThrow(TypeError)
      expect(() => (data.volumes[0]!.size = 1)).toThrow(TypeError)
      expect(catalog.read().data.volumes).toHaveLength(1)
    })

    it('an update whose fn throws changes nothing: not the revision, not the data, not what is stored', async () => {
      const t = await setup()
      const catalog = await t.open()
      await catalog.update(addVolume('a'))
      const before = catalog.read()
      const stored = (await t.stored()).text
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
      expect((await t.stored()).text).toBe(stored)
      expect(seen).toEqual([])
      // The next update goes on from the same revision.
      expect((await catalog.update(addVolume('b'))).rev).toBe(before.rev + 1)
    })

    it('two stores creating the same volume at once: one wins, the other runs its change again on the winner\'s data and fails with VOLUME_EXISTS', async () => {
      const t = await setup()
      const a = await t.open()
      const b = await t.open()
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
      const stored = await t.stored()
      expect(stored.data.volumes.map((v) => v.name)).toEqual(['shared'])
      expect(stored.data.nextVolumeNo).toBe(2)
      expect(stored.rev).toBe(2)
    })

    it('a store that read an older revision commits on top of the newer one, not over it', async () => {
      const t = await setup()
      const a = await t.open()
      const b = await t.open()
      await b.update(addVolume('from-b'))
      if (claims.freshRead) await eventually(() => expect(a.read().rev).toBe(2))
      else expect(a.read().rev).toBe(1)
      const { rev, result: no } = await a.update(addVolume('from-a'))
      expect(rev).toBe(3)
      expect(no).toBe(2)
      expect((await t.stored()).data.volumes.map((v) => v.name)).toEqual(['from-b', 'from-a'])
    })

    it('an update that loses the race every time fails with CATALOG_CONFLICT after a bounded number of tries, leaving the winner\'s data', async () => {
      const t = await setup()
      const catalog = await t.open()
      let runs = 0
      const err = await rejection(
        catalog.update((d) => {
          runs++
          // Another writer commits between this fn and the compare-and-swap.
          t.commitBehind('nextSid+1')
          d.volumes.push({ name: 'mine', id: 'mine', no: 1, size: 4096, hosts: [], createdAt: 'now', state: 'ready' })
        }),
      )
      expect(err.code).toBe('CATALOG_CONFLICT')
      expect(runs).toBe(UPDATE_ATTEMPTS)
      const stored = await t.stored()
      expect(stored.data.volumes).toEqual([])
      expect(stored.data.nextSid).toBe(1 + UPDATE_ATTEMPTS)
      expect(stored.rev).toBe(1 + UPDATE_ATTEMPTS)
      expect(catalog.read().rev).toBe(stored.rev)
    }, 30_000)

    it('watch reports every commit after a revision, in order, and the latest at once when behind; other stores\' commits too', async () => {
      const t = await setup()
      const catalog = await t.open()
      const seen: CatalogSnapshot[] = []
      const stop = catalog.watch(catalog.read().rev, (s) => seen.push(s))
      await catalog.update(addVolume('a'))
      await catalog.update(addVolume('b'))
      expect(seen.map((s) => s.rev)).toEqual([2, 3])
      expect(seen[1]!.data.volumes.map((v) => v.name)).toEqual(['a', 'b'])

      const late: number[] = []
      catalog.watch(1, (s) => late.push(s.rev))
      expect(late).toEqual([3])

      // Another store's commit: reported by the watch (etcd), or when this store next reads (the file).
      const other = await t.open()
      await other.update(addVolume('c'))
      if (claims.freshRead) await eventually(() => expect(seen.map((s) => s.rev)).toEqual([2, 3, 4]))
      await catalog.update(addVolume('d'))
      expect(seen.map((s) => s.rev)).toEqual([2, 3, 4, 5])
      expect(seen[2]!.data.volumes.map((v) => v.name)).toEqual(['a', 'b', 'c'])

      stop()
      await catalog.update(addVolume('e'))
      expect(seen).toHaveLength(4)
      expect(late).toEqual([3, 4, 5, 6])
    })

    it('kill -9 of processes committing in a loop, several rounds: the catalog parses, the revision only grows, every promised commit is there, none half-applied', async () => {
      expect(existsSync(join(ROOT, 'dist/lib/manager/etcd-catalog.js'))).toBe(true)
      const t = await setup()
      const acked = new Map<string, number>()
      let lastRev = 0
      for (let round = 0; round < 6; round++) {
        // Two writers at once from round 2 on: the compare-and-swap under kill -9.
        const tags = round < 2 ? [`r${round}`] : [`r${round}a`, `r${round}b`]
        const children = tags.map((tag) => {
          const child = spawn(process.execPath, [join(ROOT, 'test/helpers/catalog-writer.mjs'), t.writerTarget, tag], { stdio: ['ignore', 'pipe', 'inherit'] })
          let out = ''
          child.stdout.on('data', (b: Buffer) => {
            out += b.toString()
            for (const line of out.split('\n').slice(0, -1)) acked.set(tag, Number(line))
          })
          const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
          return { child, exited }
        })
        try {
          // Once each writer is committing (node's start takes a while on a loaded machine), anywhere in a commit.
          for (let i = 0; i < 1000 && tags.some((tag) => !acked.has(tag)); i++) await new Promise((r) => setTimeout(r, 10))
          for (const tag of tags) expect(acked.has(tag), `${tag} committed`).toBe(true)
          await new Promise((r) => setTimeout(r, Math.random() * 300))
        } finally {
          for (const { child } of children) child.kill('SIGKILL')
          await Promise.all(children.map((c) => c.exited))
        }

        const stored = await t.stored()
        const reopened = await t.open()
        expect(reopened.read().rev).toBe(stored.rev)
        expect(stored.rev).toBeGreaterThanOrEqual(lastRev)
        lastRev = stored.rev
        // Each commit added exactly one volume and took exactly one number.
        expect(stored.rev).toBe(1 + stored.data.volumes.length)
        expect(stored.data.nextVolumeNo).toBe(1 + stored.data.volumes.length)
        expect(stored.data.volumes.map((v) => v.no)).toEqual(stored.data.volumes.map((_, i) => i + 1))
        const names = new Set(stored.data.volumes.map((v) => v.name))
        for (const [tag, n] of acked) for (let i = 1; i <= n; i++) expect(names.has(`${tag}-${i}`), `${tag}-${i}`).toBe(true)
      }
      expect(acked.size).toBeGreaterThanOrEqual(6)
    }, 60_000)
  })
}
