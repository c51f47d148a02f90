/**
 * The file catalog store (FileCatalog, STATE/catalog.json) against the
 * CatalogStore suite (catalog.suite.ts): two stores on one state directory
 * stand for two processes; plus what only the file has — a catalog written
 * before revisions.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { FileCatalog, type CatalogData } from '../../lib/manager/catalog.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { addVolume, catalogSuite } from './catalog.suite.js'

function onDisk(dir: string): CatalogData & { rev: number } {
  return JSON.parse(readFileSync(join(dir, 'catalog.json'), 'utf8')) as CatalogData & { rev: number }
}

catalogSuite(
  'file',
  async () => {
    const dir = tempDir('vvfs-catalog-')
    return {
      open: () => FileCatalog.open(dir),
      stored: async () => {
        const text = readFileSync(join(dir, 'catalog.json'), 'utf8')
        const { rev, ...data } = JSON.parse(text) as CatalogData & { rev: number }
        return { rev, data, text }
      },
      commitBehind: () => {
        const disk = onDisk(dir)
        writeFileSync(join(dir, 'catalog.json'), JSON.stringify({ ...disk, rev: disk.rev + 1, nextSid: disk.nextSid + 1 }))
      },
      writerTarget: dir,
      cleanup: async () => removeDir(dir),
    }
  },
  { freshRead: false },
)

describe('file catalog store', () => {
  it('a catalog written before revisions reads as revision 0, and its next commit is revision 1', async () => {
    const dir = tempDir('vvfs-catalog-')
    try {
      await FileCatalog.open(dir)
      const { rev: _rev, ...old } = onDisk(dir)
      writeFileSync(join(dir, 'catalog.json'), JSON.stringify(old))
      const reopened = await FileCatalog.open(dir)
      expect(reopened.isNew).toBe(false)
      expect(reopened.read().rev).toBe(0)
      const { rev } = await reopened.update(addVolume('a'))
      expect(rev).toBe(1)
      expect(onDisk(dir).rev).toBe(1)
    } finally {
      removeDir(dir)
    }
  })
})
