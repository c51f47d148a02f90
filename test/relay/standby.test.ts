/**
 * What a standby relay needs (claims 11–12): every change of the volume maps
 * is a versioned, checksummed record it can fetch by sequence number and
 * apply; the maps it rebuilds that way equal the live ones, also after a
 * migration switched extents.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { decodeExtentRecord, type ExtentEntry } from '../../lib/relay/extent-entry.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openManager, withSystems } from '../helpers/manager.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

/** A standby's copy of the maps: key → newest record. */
function apply(standby: Map<string, { seq: number; entry: ExtentEntry | null }>, records: { key: string; seq: number; value: string }[]) {
  for (const r of records) {
    if (!r.key.startsWith('65')) continue
    const { seq, entry } = decodeExtentRecord(Buffer.from(r.value, 'base64'))
    expect(seq).toBe(r.seq)
    const had = standby.get(r.key)
    if (!had || had.seq < seq) standby.set(r.key, { seq, entry })
  }
}

describe('relay records for a standby', () => {
  it('lets a standby rebuild the volume map from the changes since the last sequence number it saw', async () => {
    const dir = tempDir('vvfs-standby-')
    dirs.push(dir)
    const m = await openManager(dir)
    try {
      await withSystems(m, [['s1', '64M'], ['s2', '64M']])
      await m.createVolume({ name: 'v', size: 16 * EXTENT_SIZE })
      const v = m.volumeNamed('v')
      await v.write(0, Buffer.alloc(6 * EXTENT_SIZE, 1))
      await v.write(10 * EXTENT_SIZE + 5, Buffer.from('small'))
      // Records follow the data into storage (write-behind answers first).
      await v.drain()
      const standby = new Map<string, { seq: number; entry: ExtentEntry | null }>()
      const first = await m.relayChanges(0, 10_000)
      apply(standby, first.records)
      // A corrupted record is refused, not applied.
      const bad = Buffer.from(first.records[0]!.value, 'base64')
      bad[bad.length - 1]! ^= 1
      expect(() => decodeExtentRecord(bad)).toThrow(/corrupt/)

      // More changes: a discard releases two extents, a migration switches the rest to s2.
      await v.discard(4 * EXTENT_SIZE, 2 * EXTENT_SIZE)
      await v.thin.settle()
      const job = await m.migrate({ volume: 'v', to: 's2' })
      await m.jobs.settled(job.id)
      const next = await m.relayChanges(first.last, 10_000)
      expect(next.records.every((r) => r.seq > first.last)).toBe(true)
      apply(standby, next.records)

      const live = [...v.thin.extentIndexes()].map((e) => JSON.stringify([e, v.thin.entry(e), [...((v.thin.entry(e) as { frags?: Map<number, unknown> }).frags ?? [])]]))
      const rebuilt = [...standby.entries()]
        .filter(([, r]) => r.entry !== null)
        .map(([key, r]) => [Buffer.from(key, 'hex').readUIntBE(5, 6), r.entry] as const)
        .sort((a, b) => a[0] - b[0])
        .map(([e, entry]) => JSON.stringify([e, entry, [...((entry as { frags?: Map<number, unknown> }).frags ?? [])]]))
      expect(rebuilt).toEqual(live)
      expect(m.showVolume('v').allocatedBySystem.map((s) => s.storage)).toEqual(['s2'])
    } finally {
      await m.close()
    }
  })
})
