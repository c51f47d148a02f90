import { randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { Applier } from '../../lib/replication/applier.js'
import { MemoryDurableLog } from '../../lib/replication/durable-log.js'
import { endpointFixture } from './wire-fixture.js'
import { decodeEntry, encodeEntry, type JournalEntry } from '../../lib/replication/entry.js'
import { genesis, handoff } from '../../lib/replication/epoch.js'
import { Journal } from '../../lib/replication/journal.js'
import {
  decodeAck,
  decodeEntries,
  decodeHello,
  decodePairStatus,
  decodeStatusRequest,
  encodeAck,
  encodeEntries,
  encodeHello,
  encodePairStatus,
  encodeStatusRequest,
  entriesThatFit,
  MAX_MESSAGE_BYTES,
  ReplicationRequest,
  type Hello,
} from '../../lib/replication/messages.js'
import { rng } from '../helpers/model.js'
import { MemoryApplyTarget } from './model-target.js'

const chain = [genesis('storage-a'), handoff([genesis('storage-a')], 'storage-b', 10)]
const hello: Hello = {
  format: 1,
  pair: 'db-replica',
  group: null,
  volumes: [{ no: 3, name: 'db', size: 1 << 30 }],
  sender: { epoch: 2, home: 'storage-b' },
  chain,
}
const entries: JournalEntry[] = [
  { seq: 11, epoch: 2, volume: 3, kind: 'write', offset: 8192, length: 4096, data: Buffer.alloc(4096, 7) },
  { seq: 12, epoch: 2, volume: 3, kind: 'zero', offset: 0, length: 1 << 20, data: null },
  { seq: 13, epoch: 2, volume: 3, kind: 'resize', offset: 0, length: 2 * 2 ** 30, data: null },
  { seq: 14, epoch: 2, volume: 3, kind: 'flush', offset: 0, length: 0, data: null },
]

const decoders: [string, (b: Buffer) => unknown, Buffer][] = [
  ['hello', decodeHello, encodeHello(hello)],
  ['entries', decodeEntries, encodeEntries({ pair: 'db-replica', sender: hello.sender, entries })],
  ['ack', decodeAck, encodeAck({ appliedSeq: 12, applied: 2, duplicates: 0, refused: { code: 'OUT_OF_RANGE', message: 'gap', details: { reason: 'gap' } }, consistent: true })],
  ['status request', decodeStatusRequest, encodeStatusRequest({ format: 1, pair: 'db-replica' })],
  ['status', decodePairStatus, encodePairStatus({ pair: 'db-replica', appliedSeq: 12, chain, consistent: false, resyncing: false, consistentAt: 20 })],
]

/** Runs a decoder on untrusted bytes: it returns, or throws a VvfsError with a wire code — nothing else. */
function outcome(decode: (b: Buffer) => unknown, b: Buffer): string {
  try {
    decode(b)
    return 'ok'
  } catch (err) {
    if (!(err instanceof VvfsError)) throw new Error(`decoder threw a non-VvfsError: ${String(err)}`, { cause: err })
    expect(['PEER_PROTOCOL', 'FRAME_TOO_LARGE']).toContain(err.code)
    return err.code
  }
}

describe('replication messages round-trip', () => {
  it('every message decodes to what was encoded', () => {
    expect(decodeHello(encodeHello(hello))).toEqual(hello)
    const batch = decodeEntries(encodeEntries({ pair: 'db-replica', sender: hello.sender, entries }))
    // Each decoded entry also keeps the record it came from (the secondary's redo log stores it as it came).
    batch.entries.forEach((e, i) => expect(e.record).toEqual(encodeEntry(entries[i]!)))
    expect({ ...batch, entries: batch.entries.map((e) => ({ ...e, record: undefined })) }).toEqual({ pair: 'db-replica', sender: hello.sender, entries })
    // Records from the log travel as they are.
    const records = entries.map(encodeEntry)
    expect(encodeEntries({ pair: 'db-replica', sender: hello.sender, records })).toEqual(encodeEntries({ pair: 'db-replica', sender: hello.sender, entries }))
  })

  it("an ENTRIES body's writes decode as views of the body (no second copy of every replicated byte); a record from elsewhere decodes as a copy", () => {
    const body = encodeEntries({ pair: 'db-replica', sender: hello.sender, entries })
    const data = decodeEntries(body).entries[0]!.data!
    expect(data.buffer).toBe(body.buffer)
    expect(data.equals(entries[0]!.data!)).toBe(true)
    const record = encodeEntry(entries[0]!)
    expect(decodeEntry(record, 'STATE_CORRUPT').data!.buffer).not.toBe(record.buffer)
  })

  it('entriesThatFit packs a batch up to the frame limit and never past it', () => {
    const sizes = Array.from({ length: 600 }, () => 4096 + 40)
    const n = entriesThatFit('p', hello.sender, sizes)
    expect(n).toBeGreaterThan(200)
    const body = encodeEntries({ pair: 'p', sender: hello.sender, records: Array.from({ length: n }, (_, i) => encodeEntry({ ...entries[0], seq: i + 1 })) })
    expect(body.length).toBeLessThanOrEqual(MAX_MESSAGE_BYTES)
    expect(() => encodeEntries({ pair: 'p', sender: hello.sender, records: Array.from({ length: n + 1 }, (_, i) => encodeEntry({ ...entries[0], seq: i + 1 })) })).toThrow(
      expect.objectContaining({ code: 'FRAME_TOO_LARGE' }),
    )
  })
})

describe('strict decoding: garbage, oversized and wrong types are coded errors, never a crash', () => {
  it('refuses specific bad messages with the right code', () => {
    expect(outcome(decodeHello, Buffer.from('{"format":1'))).toBe('PEER_PROTOCOL')
    expect(outcome(decodeHello, encodeHello({ ...hello, sender: { epoch: '2', home: 'b' } } as unknown as Hello))).toBe('PEER_PROTOCOL')
    expect(outcome(decodeHello, Buffer.from(JSON.stringify({ ...hello, extra: 1 })))).toBe('PEER_PROTOCOL')
    expect(outcome(decodeHello, Buffer.from(JSON.stringify({ ...hello, chain: [chain[1]] })))).toBe('PEER_PROTOCOL') // a chain that does not start at its genesis
    expect(outcome(decodeHello, Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x20))).toBe('FRAME_TOO_LARGE')
    expect(outcome(decodeEntries, Buffer.alloc(MAX_MESSAGE_BYTES + 1))).toBe('FRAME_TOO_LARGE')
    const good = encodeEntries({ pair: 'db-replica', sender: hello.sender, entries })
    expect(outcome(decodeEntries, Buffer.concat([good, Buffer.from([0])]))).toBe('PEER_PROTOCOL') // trailing byte
    expect(outcome(decodeEntries, good.subarray(0, good.length - 1))).toBe('PEER_PROTOCOL') // short
    const lying = Buffer.from(good)
    lying.writeUInt32BE(0xffffffff, 1 + 1 + 10 + 4 + 1 + 9 + 2) // first record claims 4 GiB
    expect(outcome(decodeEntries, lying)).toBe('PEER_PROTOCOL')
    const altered = Buffer.from(good)
    altered[altered.length - 50] ^= 1 // inside an entry: its checksum catches it
    expect(outcome(decodeEntries, altered)).toBe('PEER_PROTOCOL')
  })

  it('fuzz: random bytes and mutated valid messages only ever give PEER_PROTOCOL or FRAME_TOO_LARGE', () => {
    const r = rng(1313)
    let refused = 0
    for (const [, decode, valid] of decoders) {
      // Every cut of the message's head (where the lengths and counts are), then random damage anywhere.
      for (let cut = 0; cut < Math.min(valid.length, 700); cut++) if (outcome(decode, valid.subarray(0, cut)) !== 'ok') refused++
      for (let i = 0; i < 400; i++) {
        outcome(decode, randomBytes(r.int(0, 300)))
        const m = Buffer.from(valid)
        const how = r.int(0, 3)
        if (how === 0) for (let k = 0; k < r.int(1, 4); k++) m[r.int(0, m.length - 1)] = r.int(0, 255)
        const mutated = how === 1 ? m.subarray(0, r.int(0, m.length - 1)) : how === 2 ? Buffer.concat([m, randomBytes(r.int(1, 8))]) : m
        if (outcome(decode, mutated) !== 'ok') refused++
      }
      // Wrong JSON types in every field of a JSON message.
      if (valid[0] === 0x7b) {
        const obj = JSON.parse(valid.toString()) as Record<string, unknown>
        for (const k of Object.keys(obj))
          for (const v of [null, 'x', -1, 1.5, [], {}, true, 2 ** 60]) if (JSON.stringify(obj[k]) !== JSON.stringify(v)) outcome(decode, Buffer.from(JSON.stringify({ ...obj, [k]: v })))
      }
    }
    expect(refused).toBeGreaterThan(1000)
  })
})

describe('over the peer wire: a journal ships to an applier', () => {
  const cleanups: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c()
  })

  it('hello, durable entries, ack and trim, status; bad peers refused and logged, both sides still serving', async () => {
    const target = new MemoryApplyTarget()
    const chainA = [genesis('storage-a')]
    const applier = await Applier.open(target, { volumes: [3], chain: chainA })
    const fx = await endpointFixture((pair) => (pair === 'db-replica' ? applier : undefined))
    cleanups.push(fx.close)
    const stream = fx.stream('db-replica', { epoch: 1, home: 'storage-a' })
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    expect(await stream.hello({ group: null, volumes: [{ no: 3, name: 'db', size: 1 << 20 }], chain: chainA })).toMatchObject({ appliedSeq: 0 })
    for (let i = 0; i < 20; i++) await journal.append({ kind: 'write', volume: 3, offset: i * 4096, data: Buffer.alloc(4096, i + 1) }).durable
    const ack = await stream.ship((await journal.readRecords(1, 1 << 20)).map((r) => r.record))
    expect(ack).toMatchObject({ appliedSeq: 20, applied: 20, refused: null })
    await journal.trim(ack.appliedSeq)
    expect(journal.positions).toMatchObject({ trimmedThrough: 20, retainedBytes: 0 })
    expect(await stream.status()).toMatchObject({ pair: 'db-replica', appliedSeq: 20, consistent: true })

    // A replayed old number: acknowledged, not applied.
    const before = target.batches
    const replay = await stream.ship([encodeEntry({ seq: 5, epoch: 1, volume: 3, kind: 'write', offset: 0, length: 4096, data: Buffer.alloc(4096, 0xee) })])
    expect(replay).toMatchObject({ appliedSeq: 20, duplicates: 1 })
    // An entry for a volume not in the pair.
    const unknown = await stream.ship([encodeEntry({ seq: 21, epoch: 1, volume: 99, kind: 'zero', offset: 0, length: 4096, data: null })])
    expect(unknown.refused).toMatchObject({ code: 'VOLUME_NOT_FOUND' })
    // Garbage in an authenticated frame, and a pair that does not exist.
    await expect(fx.client.request(ReplicationRequest.ENTRIES, randomBytes(64))).rejects.toMatchObject({ code: 'PEER_PROTOCOL' })
    await expect(fx.stream('nope', { epoch: 1, home: 'storage-a' }).status()).rejects.toMatchObject({ code: 'VOLUME_NOT_FOUND' })
    expect(target.batches).toBe(before)
    expect((target.images().get(3) as Buffer)[0]).toBe(1)
    expect(fx.logs.events('replication.refused').map((l) => l.code)).toEqual(['VOLUME_NOT_FOUND', 'PEER_PROTOCOL', 'VOLUME_NOT_FOUND'])
    // Still serving.
    await journal.append({ kind: 'write', volume: 3, offset: 0, data: Buffer.alloc(4096, 42) }).durable
    expect((await stream.ship((await journal.readRecords(21, 1 << 20)).map((r) => r.record))).appliedSeq).toBe(21)
  })
})
