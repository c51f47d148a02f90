/**
 * MapStore durability: an fsync returns only once the records it depends on
 * are synced, also when another caller's sync is already running.
 */
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { MapStore } from '../../lib/relay/map-store.js'
import { removeDir, tempDir } from '../helpers/daemon.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

describe('the map store', () => {
  it('MapStore.sync lets a second caller return early: it returns only after a sync write that covers its records has ended', async () => {
    const dir = tempDir('vvfs-maps-')
    dirs.push(dir)
    const maps = await MapStore.open(join(dir, 'maps'))
    try {
      // A slow disk: the sync write takes 200 ms.
      const db = (maps as unknown as { db: { put(k: Buffer, v: Buffer, o?: { sync?: boolean }): Promise<void> } }).db
      const put = db.put.bind(db)
      let syncsEnded = 0
      db.put = async (k, v, o) => {
        if (!o?.sync) return put(k, v, o)
        await new Promise((r) => setTimeout(r, 200))
        await put(k, v, o)
        syncsEnded++
      }
      await maps.put(Buffer.from('e-first'), () => Buffer.from('1'))
      await maps.put(Buffer.from('e-second'), () => Buffer.from('2'))
      // Two fsyncs at once, both depending on both records.
      const first = maps.sync()
      const second = maps.sync().then(() => syncsEnded)
      await first
      expect(await second).toBeGreaterThanOrEqual(1)
    } finally {
      await maps.close()
    }
  })
})
