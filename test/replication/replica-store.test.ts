/**
 * The secondary's ReplicaStore (lib/replication/secondary.ts) refuses a batch
 * with a change past its volume's end before any of it is stored. It used to
 * store the batch's redo records first and fail while applying them: the
 * record stayed, every open redid it and failed, and the pair could not be
 * opened again — a poison record (the primary's resync sent such writes after
 * a grow while behind; a peer holding the key could send one on purpose).
 * Then its redo log: records redone after a crash (a received entry's as it came), a store of the earlier
 * LevelDB format taken over, and a failed write failing the store for good.
 */
import { ClassicLevel } from 'classic-level'
import { join } from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import type { Volume } from '../../lib/relay/volume.js'
import type { SecondaryState } from '../../lib/replication/applier.js'
import { decodeEntry, encodeEntry, writeU53 } from '../../lib/replication/entry.js'
import { genesis } from '../../lib/replication/epoch.js'
import { SegmentDurableLog } from '../../lib/replication/journal-log.js'
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
  const host: ReplicaHost = { replica: () => volume, createReplica: async () => volume, checkReplica: () => undefined, resizeReplica: async () => undefined }
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

/** A pair whose one volume is a fakeVolume of 1 MiB. */
function pairOf() {
  const dir = tempDir('vvfs-replica-store-')
  dirs.push(dir)
  const { volume, writes } = fakeVolume(1 << 20)
  const host: ReplicaHost = { replica: () => volume, createReplica: async () => volume, checkReplica: () => undefined, resizeReplica: async () => undefined }
  const config: PairConfig = { pair: 'p', group: null, volumes: [{ no: 1, name: 'v', size: 1 << 20 }], peer: '127.0.0.1:1', createdAt: new Date().toISOString(), chain: [genesis('a')] }
  return { dir, host, config, writes }
}
const stateAt = (appliedSeq: number): SecondaryState => ({ appliedSeq, chain: [genesis('a')], resyncing: false, consistentAt: null })
const write = (offset: number, fill: number) => ({ volume: 1, kind: 'write' as const, offset, length: 4096, data: Buffer.alloc(4096, fill) })

it('a store of the LevelDB format redoes its records after the checkpoint at its first open and keeps its state, then opens without them', async () => {
  const { dir, host, config, writes } = pairOf()
  // A store as vvfs wrote it before the segment log: config, state, checkpoint 1, records 1..3 (1 already in the volume).
  const db = new ClassicLevel<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' })
  await db.open()
  const key = (n: number) => {
    const k = Buffer.alloc(9)
    k[0] = 0x72
    writeU53(k, 1, n)
    return k
  }
  const u53 = (n: number) => {
    const b = Buffer.alloc(8)
    writeU53(b, 0, n)
    return b
  }
  await db.batch([
    { type: 'put', key: Buffer.from('m/config'), value: Buffer.from(JSON.stringify(config)) },
    { type: 'put', key: Buffer.from('m/state'), value: Buffer.from(JSON.stringify(stateAt(3))) },
    { type: 'put', key: Buffer.from('m/checkpoint'), value: u53(1) },
    ...[1, 2, 3].map((n) => ({ type: 'put' as const, key: key(n), value: encodeEntry({ ...write(n * 4096, n), seq: n, epoch: 1 }) })),
  ])
  await db.close()
  let store = await ReplicaStore.open(dir, null, host)
  expect(writes).toEqual([2 * 4096, 3 * 4096])
  expect(await store.load()).toEqual(stateAt(3))
  await store.apply([write(0, 4)], stateAt(4))
  await store.close()
  writes.length = 0
  store = await ReplicaStore.open(dir, null, host)
  expect(writes).toEqual([]) // nothing of the old format redone again
  expect(await store.load()).toEqual(stateAt(4))
  await store.close()
  const after = new ClassicLevel<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' })
  await after.open()
  expect((await after.keys().all()).map((k) => k.toString('latin1'))).toEqual(['m/config'])
  await after.close()
})

it('redoes the records a crash left unflushed, in order, at the next open', async () => {
  const { dir, host, config, writes } = pairOf()
  const store = await ReplicaStore.open(dir, config, host)
  await store.apply([write(0, 1), write(4096, 2)], stateAt(2))
  await store.apply([write(0, 3)], stateAt(3))
  // The process dies: no checkpoint, the handles go with it.
  await (store as unknown as { log: { close(): Promise<void> } }).log.close()
  await (store as unknown as { db: ClassicLevel<Buffer, Buffer> }).db.close()
  writes.length = 0
  const again = await ReplicaStore.open(dir, null, host)
  expect(writes).toEqual([0, 4096, 0])
  expect(await again.load()).toEqual(stateAt(3))
  await again.close()
})

it('keeps a received entry in its redo log as it came, with the primary\'s number inside, and redoes it from there', async () => {
  const { dir, host, config, writes } = pairOf()
  const store = await ReplicaStore.open(dir, config, host)
  const sent = [encodeEntry({ ...write(8192, 7), seq: 1000, epoch: 3 }), encodeEntry({ volume: 1, kind: 'zero', offset: 0, length: 4096, data: null, seq: 1001, epoch: 3 })]
  const received = sent.map((r) => decodeEntry(r, 'PEER_PROTOCOL', { view: true }))
  await store.apply(received, stateAt(1001))
  // The process dies: no checkpoint.
  await (store as unknown as { log: { close(): Promise<void> } }).log.close()
  await (store as unknown as { db: ClassicLevel<Buffer, Buffer> }).db.close()
  const redo = await SegmentDurableLog.open(join(dir, 'redo'))
  expect((await redo.read(1, 2, 1 << 20)).map((r) => r.record)).toEqual(sent)
  await redo.close()
  writes.length = 0
  const again = await ReplicaStore.open(dir, null, host)
  expect(writes).toEqual([8192])
  expect(await again.load()).toEqual(stateAt(1001))
  await again.close()
})

it('after a failed redo log write the store refuses every later batch until it is opened again', async () => {
  const { dir, host, config, writes } = pairOf()
  let store = await ReplicaStore.open(dir, config, host)
  await store.apply([write(0, 1)], stateAt(1))
  const log = (store as unknown as { log: { commit: (...a: unknown[]) => Promise<void> } }).log
  const commit = log.commit.bind(log)
  log.commit = async () => {
    throw new VvfsError('IO_ERROR', 'injected: fdatasync failed')
  }
  expect(await codeOf(store.apply([write(4096, 2)], stateAt(2)))).toBe('IO_ERROR')
  log.commit = commit // the device answers again, but what the failed sync covered is unknown
  expect(await codeOf(store.apply([write(8192, 3)], stateAt(2)))).toBe('IO_ERROR')
  expect(await codeOf(store.load())).toBe('IO_ERROR')
  expect(writes).toEqual([0])
  await store.close()
  store = await ReplicaStore.open(dir, null, host)
  expect(await store.load()).toEqual(stateAt(1))
  await store.apply([write(4096, 2)], stateAt(2))
  await store.close()
})

it('a volume write that fails after its batch is durable fails the store, and the next open redoes it (no checkpoint trims it meanwhile)', async () => {
  const { dir, host, config, writes } = pairOf()
  const volume = host.replica('v', 'p') as unknown as { write: (offset: number, data: Buffer) => Promise<number> }
  const write0 = volume.write
  let failNext = false
  volume.write = async (offset, data) => {
    if (failNext) {
      failNext = false
      throw new VvfsError('POOL_FULL', 'injected: no room')
    }
    return write0(offset, data)
  }
  let store = await ReplicaStore.open(dir, config, host)
  await store.apply([write(0, 1)], stateAt(1))
  failNext = true
  expect(await codeOf(store.apply([write(4096, 2)], stateAt(2)))).toBe('POOL_FULL')
  // Failed for good: no later batch, and no checkpoint that would drop write 2's record as if it had landed.
  expect(await codeOf(store.apply([write(8192, 3)], stateAt(3)))).toBe('IO_ERROR')
  expect(await codeOf(store.makeCheckpoint())).toBe('IO_ERROR')
  await store.close().catch(() => undefined)
  expect(writes).toEqual([0])
  store = await ReplicaStore.open(dir, config, host) // redoes the records after its checkpoint
  expect((await store.load())?.appliedSeq).toBe(2)
  expect(writes).toContain(4096)
  await store.close()
})

