/**
 * Issue 15, `vvfs volume move NAME --relay R` (real etcd, storage servers
 * and relays as processes): the owner stops acknowledging, drains, syncs the
 * map log and releases the volume to R, which takes it over: the volume is
 * not served for at most 1 s, every fsync'd byte reads back through R's
 * mount, and the owner no longer serves it. Moved back, the first relay
 * serves it again (its free-space tables gave the space back at the move).
 */
import { existsSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { cliFor } from '../helpers/cli.js'
import { writeAndFsync } from '../helpers/synced-write.js'
import { relaysForFile } from './relays.js'

const TTL_MS = 3000
const { ownerAndStandby } = relaysForFile(TTL_MS)

async function readBack(file: string, length: number): Promise<Buffer> {
  const fh = await open(file, 'r')
  try {
    const b = Buffer.alloc(length)
    await fh.read(b, 0, length, 0)
    return b
  } finally {
    await fh.close()
  }
}

describe('volume move', () => {
  it('hands a volume to another relay with a gap of at most 1 s; every fsync\'d byte reads back there; moved back, the first relay serves it again', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'left', standby: 'right', systems: 'far', capacity: '64M', volume: 'v', size: '8M' })
    const image = Buffer.alloc(8 * 1024 * 1024)
    for (let i = 0; i < image.length; i += 4) image.writeUInt32LE((i * 40503) >>> 0, i)
    await writeAndFsync(a.file('v'), image, 0)

    const moved = cliFor(() => a.socket)('volume', 'move', 'v', '--relay', 'right', '--json')
    expect(moved.code, moved.err).toBe(0)
    const r = JSON.parse(moved.out) as { volume: string; from: string; to: string; token: number; gapMs: number }
    expect([r.volume, r.from, r.to]).toEqual(['v', 'left', 'right'])
    expect(r.gapMs).toBeLessThanOrEqual(1000)
    expect(existsSync(a.file('v'))).toBe(false)
    expect((await readBack(b.file('v'), image.length)).equals(image)).toBe(true)
    const relays = (await b.client.call('relay.list', {})).relays
    expect(relays.map((x) => [x.relay, x.volumes.map((v) => v.name)])).toEqual([
      ['left', []],
      ['right', ['v']],
    ])
    image.fill(7, 0, 65536)
    await writeAndFsync(b.file('v'), image.subarray(0, 65536), 0)

    const human = cliFor(() => b.socket)('volume', 'move', 'v', '--relay', 'left')
    expect(human.code, human.err).toBe(0)
    expect(human.out).toMatch(/volume v moved from relay right to relay left \(token \d+\); not served for \d+ ms/)
    expect((await readBack(a.file('v'), image.length)).equals(image)).toBe(true)
    // A relay that does not own the volume refuses; a relay nobody runs is refused.
    expect(cliFor(() => b.socket)('volume', 'move', 'v', '--relay', 'left').code).not.toBe(0)
    await expect(a.client.call('volume.move', { name: 'v', relay: 'nobody' })).rejects.toMatchObject({ code: 'RELAY_NOT_FOUND' })
    console.log(`volume move: gap ${r.gapMs} ms (8 MiB volume, two storage servers)`)
    expect(await a.stop()).toBe(0)
    expect(await b.stop()).toBe(0)
  })
})

describe('volume move of one of two volumes on the same storage servers', () => {
  it('writes to the moved volume on its new relay never land on its neighbour\'s data; the neighbour moves after it whole', async () => {
    const { a, b } = await ownerAndStandby({ owner: 'pair-left', standby: 'pair-right', systems: 'shared', capacity: '64M', volume: 'n1', size: '4M' })
    await a.client.call('volume.create', { name: 'n2', size: '4M' })
    const n2 = Buffer.alloc(4 * 1024 * 1024)
    for (let i = 0; i < n2.length; i += 4) n2.writeUInt32LE((i * 2246822519) >>> 0, i)
    await writeAndFsync(a.file('n1'), Buffer.alloc(1024 * 1024, 1), 0)
    await writeAndFsync(a.file('n2'), n2, 0)
    await a.client.call('volume.move', { name: 'n1', relay: 'pair-right' })
    // New extents of n1, allocated by the new relay: before the fix they took n2's slots (3 of its 4 MiB overwritten).
    await writeAndFsync(b.file('n1'), Buffer.alloc(3 * 1024 * 1024, 2), 1024 * 1024)
    await a.client.call('volume.move', { name: 'n2', relay: 'pair-right' })
    expect((await readBack(b.file('n2'), n2.length)).equals(n2)).toBe(true)
    expect((await readBack(b.file('n1'), 4 * 1024 * 1024)).subarray(1024 * 1024).every((x) => x === 2)).toBe(true)
    for (const d of [a, b]) expect(d.log()).not.toMatch(/relay.space_conflict|referenced twice/)
    expect(await b.stop()).toBe(0)
  })
})
