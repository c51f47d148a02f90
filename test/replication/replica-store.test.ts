/**
 * The secondary's ReplicaStore (lib/replication/secondary.ts) refuses a batch
 * with a change past its volume's end before any of it is stored. It used to
 * store the batch's redo records first and fail while applying them: the
 * record stayed, every open redid it and failed, and the pair could not be
 * opened again — a poison record (the primary's resync sent such writes after
 * a grow while behind; a peer holding the key could send one on purpose).
 */
import { afterEach, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import type { Volume } from '../../lib/relay/volume.js'
import type { SecondaryState } from '../../lib/replication/applier.js'
import { genesis } from '../../lib/replication/epoch.js'
import { ReplicaStore, type PairConfig, type ReplicaHost } from '../../lib/replication/secondary.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { codeOf } from '../helpers/errors.js'

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d)
})

/** A volume of `size` bytes that refuses writes past its end, as Volume does; records what it was given. */
function fakeVolume(size: number) {
  const writes: number[] = []
  const v = {
    size,
    write: async (offset: number, data: Buffer) => {
      if (offset + data.length > v.size) throw new VvfsError('OUT_OF_RANGE', 'past the end')
      writes.push(offset)
      return data.length
    },
    discard: async () => undefined,
    flush: async () => undefined,
  }
  return { volume: v as unknown as Volume, writes }
}

it('refuses a batch with a write past the end before storing any of it, and the pair opens again', async () => {
  const dir = tempDir('vvfs-replica-store-')
  dirs.push(dir)
  const { volume, writes } = fakeVolume(1 << 20)
  const host: ReplicaHost = { replica: () => volume, createReplica: async () => volume, resizeReplica: async () => undefined }
  const config: PairConfig = { pair: 'p', group: null, volumes: [{ no: 1, name: 'v', size: 1 << 20 }], peer: '127.0.0.1:1', createdAt: new Date().toISOString(), chain: [genesis('a')] }
  const state = (appliedSeq: number): SecondaryState => ({ appliedSeq, chain: [genesis('a')], resyncing: false, consistentAt: null })
  let store = await ReplicaStore.open(dir, config, host)
  const fits = { volume: 1, kind: 'write' as const, offset: 0, length: 4096, data: Buffer.alloc(4096, 1) }
  const past = { volume: 1, kind: 'write' as const, offset: (1 << 20) - 4096, length: 8192, data: Buffer.alloc(8192, 2) }
  expect(await codeOf(store.apply([fits, past], state(2)))).toBe('OUT_OF_RANGE')
  expect(writes).toEqual([]) // nothing of the batch
  // A resize earlier in the same batch makes room: that batch is whole and is applied.
  const grow = { volume: 1, kind: 'resize' as const, offset: 0, length: 2 << 20, data: null }
  host.resizeReplica = async (_name, size) => {
    ;(volume as unknown as { size: number }).size = size
  }
  await store.close()
  store = await ReplicaStore.open(dir, config, host) // no poison record to redo
  expect(await store.load()).toBeNull()
  await store.apply([fits, grow, past], state(3))
  expect(writes).toEqual([0, (1 << 20) - 4096])
  await store.close()
})
