/**
 * The journal's handoff when the primary migrates from storage system A to
 * B (issue 13 build point 4, claims 1–7; lib/replication/journal-chain.ts),
 * in process: a volume stack with its journal layer, the journals on
 * in-memory logs, the secondary an Applier on an in-memory target.
 *
 *  - The secondary refuses an entry from A numbered at or past B's first
 *    number, and applies A's remainder then B's entries in one order.
 *  - A handoff cut before its epoch record is committed leaves the journal
 *    wholly at A (B's log deleted at the next open); cut after, wholly at B
 *    (A's remainder still shipped first) — no gap, no reorder, no resync.
 *  - A's log lost after the commit: the chain says so, and what it recorded
 *    at the handoff names the extents to resync (bounded).
 */
import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { silentLogger } from '../../lib/log.js'
import { Applier } from '../../lib/replication/applier.js'
import { MemoryDurableLog } from '../../lib/replication/durable-log.js'
import { decodeEntry, encodeEntry } from '../../lib/replication/entry.js'
import { genesis, type EpochChain, type Sender } from '../../lib/replication/epoch.js'
import { JournalChain, type ChainCommit, type JournalLogs } from '../../lib/replication/journal-chain.js'
import { stacksPerTest, memorySystems, type Stack } from '../helpers/stack.js'
import { MemoryApplyTarget } from './model-target.js'

const VOLUME = 1
const SIZE = 8 * EXTENT_SIZE
const openStack = stacksPerTest('vvfs-handoff-')
const stack = () => openStack({ systems: 1, capacity: 16 * EXTENT_SIZE, size: SIZE, systemsFrom: memorySystems })

/** Each epoch's log in memory; reopening one is a restart (what was synced stays). */
class MemoryJournalLogs implements JournalLogs {
  readonly logs = new Map<number, MemoryDurableLog>()
  async open(epoch: number): Promise<MemoryDurableLog> {
    const known = this.logs.get(epoch)
    if (known) return known.powerCut()
    const log = new MemoryDurableLog()
    this.logs.set(epoch, log)
    return log
  }
  async exists(epoch: number): Promise<boolean> {
    return this.logs.has(epoch)
  }
  async remove(epoch: number): Promise<void> {
    this.logs.delete(epoch)
  }
  async epochs(): Promise<number[]> {
    return [...this.logs.keys()].sort((a, b) => a - b)
  }
}

/** The catalog's one durable write of a handoff, in memory (fail: the next commit rejects). */
class Commits {
  chain: EpochChain
  made: ChainCommit[] = []
  fail = 0
  constructor(chain: EpochChain) {
    this.chain = chain
  }
  commit = async (c: ChainCommit): Promise<void> => {
    if (this.fail > 0) {
      this.fail--
      throw new VvfsError('IO_ERROR', 'injected catalog failure')
    }
    this.made.push(c)
    this.chain = c.chain
  }
}

/** Opens the chain's journals, replays them into the volume and attaches the current one (a start). */
async function openChain(s: Stack, logs: JournalLogs, commits: Commits): Promise<JournalChain> {
  const chain = await JournalChain.open({ logs, layer: s.layers.journal, chain: commits.chain, journal: {}, commit: commits.commit, log: silentLogger(), pair: 'p' })
  await chain.replay()
  return chain
}

/** A stack, its journals at A (epoch 1) on fresh in-memory logs, and the committed chain. */
async function fixture(): Promise<{ s: Stack; logs: MemoryJournalLogs; commits: Commits; chain: JournalChain }> {
  const s = await stack()
  const logs = new MemoryJournalLogs()
  const commits = new Commits([genesis('a')])
  return { s, logs, commits, chain: await openChain(s, logs, commits) }
}

/** Host writes: block i (4 KiB) of the volume gets `fill`. */
async function write(s: Stack, blocks: number[], fill: number): Promise<void> {
  for (const b of blocks) await s.volume.write(b * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, fill))
}

async function image(s: Stack): Promise<Buffer> {
  const out = Buffer.alloc(SIZE)
  await s.volume.read(0, SIZE, out)
  return out
}

function padded(b: Buffer | undefined): Buffer {
  const out = Buffer.alloc(SIZE)
  b?.copy(out)
  return out
}

/** Ships everything from the secondary's applied number on, as `sender`, in batches of at most `max` entries. */
async function shipAll(chain: JournalChain, applier: Applier, sender: Sender, max = 3): Promise<number[]> {
  const shipped: number[] = []
  for (;;) {
    const from = applier.status.appliedSeq + 1
    const records = await chain.readRecords(from, 1 << 20).catch(() => [])
    if (records.length === 0) return shipped
    const entries = records.slice(0, max).map((r) => decodeEntry(r.record, 'PEER_PROTOCOL'))
    const ack = await applier.receive(sender, entries)
    expect(ack.refused).toBeNull()
    shipped.push(...entries.map((e) => e.epoch))
  }
}

describe('the journal handoff A → B (claims 1–7)', () => {
  it('the secondary refuses an entry from A numbered at or past B first number, and applies A remainder then B entries in order', async () => {
    const { s, logs, commits, chain } = await fixture()
    const target = new MemoryApplyTarget()
    const applier = await Applier.open(target, { volumes: [VOLUME], chain: commits.chain })
    await write(s, [0, 1, 2, 3, 300], 1) // 1..5 at A
    const atA: Sender = { epoch: 1, home: 'a' }
    const first = (await chain.readRecords(1, 1 << 20)).slice(0, 2).map((r) => decodeEntry(r.record, 'PEER_PROTOCOL'))
    expect((await applier.receive(atA, first)).appliedSeq).toBe(2)

    const record = await chain.handoff('b', 2)
    expect(record).toEqual({ epoch: 2, home: 'b', firstSeq: 6, predecessor: { epoch: 1, home: 'a', lastSeq: 5 } })
    // One durable write: the chain and the management information (the extents of A's entries 3..5: blocks 2, 3 in extent 0, block 300 in extent 1).
    expect(commits.made).toHaveLength(1)
    expect(commits.made[0]!.pending).toEqual({ epoch: 2, since: 2, marks: expect.arrayContaining([{ volume: VOLUME, extent: 0 }, { volume: VOLUME, extent: Math.floor((300 * CHUNK_SIZE) / EXTENT_SIZE) }]) })
    await write(s, [2, 5], 2) // 6, 7 at B
    const atB: Sender = { epoch: 2, home: 'b' }
    expect((await applier.hello(atB, chain.chain)).refused).toBeNull()

    // A's entry numbered 6 (what A would have numbered next, had it not been sealed): refused from A and relayed by B.
    const stale = encodeEntry({ seq: 6, epoch: 1, volume: VOLUME, kind: 'write', offset: 7 * CHUNK_SIZE, length: CHUNK_SIZE, data: Buffer.alloc(CHUNK_SIZE, 9) })
    const forged = decodeEntry(stale, 'PEER_PROTOCOL')
    // The secondary has 3..5 still to apply: bring it to 5 first with A's real remainder, sent by A itself.
    const remainder = (await chain.readRecords(3, 1 << 20)).map((r) => decodeEntry(r.record, 'PEER_PROTOCOL'))
    expect(remainder.map((e) => [e.seq, e.epoch])).toEqual([
      [3, 1],
      [4, 1],
      [5, 1],
    ])
    expect((await applier.receive(atA, remainder)).appliedSeq).toBe(5)
    for (const sender of [atA, atB]) {
      const ack = await applier.receive(sender, [forged])
      expect(ack.refused?.code).toBe('EPOCH_STALE')
      expect(ack.refused?.details?.reason).toBe('stale-epoch')
      expect(ack.refused?.details?.takenOverAt).toBe(6)
      expect(ack.appliedSeq).toBe(5)
    }
    // And one numbered past it (A cannot own any number from 6 on).
    const later = decodeEntry(encodeEntry({ ...forged, seq: 7 }), 'PEER_PROTOCOL')
    expect((await applier.receive(atA, [later])).refused?.details?.reason).toBe('stale-epoch')
    // B's entries follow in order.
    expect(await shipAll(chain, applier, atB)).toEqual([2, 2])
    expect(applier.status.appliedSeq).toBe(7)
    expect(padded(target.image(VOLUME)).equals(await image(s))).toBe(true)
    // Trimmed through 7: A's journal is done and its log deleted.
    await chain.trim(7)
    expect(await logs.epochs()).toEqual([2])
    await chain.close()
  })

  it('ships A remainder before B entries through one reader, each stamped with its epoch, with no gap or resync', async () => {
    const { s, commits, chain } = await fixture()
    const target = new MemoryApplyTarget()
    const applier = await Applier.open(target, { volumes: [VOLUME], chain: commits.chain })
    await write(s, [0, 1, 2], 1)
    await chain.handoff('b', 0)
    await write(s, [1, 9], 2)
    await chain.handoff('a', 0) // and back: epoch 3 at A
    await write(s, [2], 3)
    expect(chain.chain.map((r) => [r.epoch, r.home, r.firstSeq])).toEqual([
      [1, 'a', 1],
      [2, 'b', 4],
      [3, 'a', 6],
    ])
    await applier.hello({ epoch: 3, home: 'a' }, chain.chain)
    expect(await shipAll(chain, applier, { epoch: 3, home: 'a' }, 2)).toEqual([1, 1, 1, 2, 2, 3])
    expect(padded(target.image(VOLUME)).equals(await image(s))).toBe(true)
    expect(target.state?.resyncing).toBe(false)
    await chain.close()
  })

  it('a handoff cut before its epoch record is committed leaves the journal wholly at A', async () => {
    const { s, logs, commits, chain } = await fixture()
    await write(s, [0, 1], 1)
    commits.fail = 1
    await expect(chain.handoff('b', 0)).rejects.toMatchObject({ code: 'IO_ERROR' })
    // The failed commit was undone (the old chain committed again), B's log is gone, A numbers on.
    expect(commits.chain.map((r) => r.home)).toEqual(['a'])
    expect(await logs.epochs()).toEqual([1])
    await write(s, [2], 2)
    expect(chain.current.positions.lastAccepted).toBe(3)
    expect(chain.current.epoch).toBe(1)
    await chain.close()

    // A kill between B's log and the commit: B's log exists, the chain ends at A — the next open deletes it.
    const { s: s2, logs: logs2, commits: commits2 } = await fixture()
    await write(s2, [0, 1], 1)
    await (await logs2.open(2)).commit({ mode: 'journaling', trimThrough: 2 })
    s2.layers.journal.detach()
    const reopened = await openChain(s2, logs2, commits2)
    expect(await logs2.epochs()).toEqual([1])
    expect(reopened.current.epoch).toBe(1)
    expect(reopened.current.positions.lastAccepted).toBe(2)
    await write(s2, [3], 2)
    expect(reopened.current.positions.lastAccepted).toBe(3)
  })

  it('a handoff cut after its commit leaves the journal wholly at B, A remainder shipped first after the restart', async () => {
    const { s, logs, commits, chain: live } = await fixture()
    await write(s, [0, 1, 2], 1)
    await live.handoff('b', 0)
    // The process dies right after the commit: nothing else of it survives but the logs and the committed chain.
    s.layers.journal.detach()
    const after = await openChain(s, logs, commits)
    expect(after.chain.map((r) => r.home)).toEqual(['a', 'b'])
    expect(after.epochs).toEqual([1, 2])
    expect(after.current.positions.trimmedThrough).toBe(3)
    await write(s, [4], 2)
    expect(after.current.positions.lastAccepted).toBe(4)
    const target = new MemoryApplyTarget()
    const applier = await Applier.open(target, { volumes: [VOLUME], chain: [genesis('a')] })
    await applier.hello({ epoch: 2, home: 'b' }, after.chain)
    expect(await shipAll(after, applier, { epoch: 2, home: 'b' })).toEqual([1, 1, 1, 2])
    expect(padded(target.image(VOLUME)).equals(await image(s))).toBe(true)
  })

  it('a change arriving while the handoff is under way waits for it and is numbered by B, never by A past its last number', async () => {
    const { s, chain, commits } = await fixture()
    await write(s, [0, 1], 1)
    const target = new MemoryApplyTarget()
    const applier = await Applier.open(target, { volumes: [VOLUME], chain: commits.chain })
    // Writes land at every turn of the handoff's steps.
    const handing = chain.handoff('b', 0)
    const during: Promise<void>[] = []
    for (let i = 0; i < 20; i++) {
      during.push(write(s, [10 + i], 3))
      await new Promise((r) => setImmediate(r))
    }
    const record = (await handing)!
    await Promise.all(during)
    expect(record.firstSeq).toBe(3)
    const a = (await chain.readRecords(1, 1 << 20)).map((r) => decodeEntry(r.record, 'PEER_PROTOCOL'))
    expect(a.map((e) => [e.seq, e.epoch])).toEqual([
      [1, 1],
      [2, 1],
    ])
    const b = (await chain.readRecords(3, 1 << 20)).map((r) => decodeEntry(r.record, 'PEER_PROTOCOL'))
    expect(b.map((e) => e.epoch)).toEqual(new Array(20).fill(2))
    await applier.hello({ epoch: 2, home: 'b' }, chain.chain)
    await shipAll(chain, applier, { epoch: 2, home: 'b' })
    expect(applier.status.appliedSeq).toBe(22)
    expect(padded(target.image(VOLUME)).equals(await image(s))).toBe(true)
    await chain.close()
  })

  it('a journal not in order at A (a copy under way) hands over its marks and its entries extents to B, which resyncs them', async () => {
    const { s, logs, chain } = await fixture()
    await write(s, [0], 1)
    // A sync under way at A: extent 5 still to copy.
    await chain.current.addMarks([{ volume: VOLUME, extent: 5 }])
    await write(s, [300], 2)
    await chain.handoff('b', 0)
    expect(await logs.epochs()).toEqual([2])
    expect(chain.current.positions.trimmedThrough).toBe(2)
    const marked = chain.current.dirtyMarks().map((m) => m.extent).sort((a, b) => a - b)
    expect(marked).toEqual([0, 1, 5])
    await chain.close()
  })

  it('A log lost after the handoff: the chain says so and the handoff recorded which extents to resync', async () => {
    const { s, logs, commits, chain } = await fixture()
    await write(s, [0, 600], 1)
    await chain.handoff('b', 0)
    s.layers.journal.detach()
    // A's log turns out corrupt at the restart (its storage is gone).
    logs.open = async (epoch) => {
      if (epoch === 1) throw new VvfsError('STATE_CORRUPT', 'injected: the log of epoch 1 is unreadable')
      return MemoryJournalLogs.prototype.open.call(logs, epoch)
    }
    const after = await openChain(s, logs, commits)
    expect(after.lost).toMatchObject({ epoch: 1, all: false })
    expect(after.epochs).toEqual([2])
    expect(after.retainedFrom).toBe(2)
    expect(commits.made[0]!.pending!.marks).toEqual(
      expect.arrayContaining([
        { volume: VOLUME, extent: 0 },
        { volume: VOLUME, extent: Math.floor((600 * CHUNK_SIZE) / EXTENT_SIZE) },
      ]),
    )
    expect(commits.made[0]!.pending!.marks).toHaveLength(2)
  })

  it('a trim that overtakes the handoff\'s listing of A\'s entries (the shipper runs on) leaves it to list the rest and commit (CI 2026-12-04)', async () => {
    const { s, logs, commits, chain } = await fixture()
    await write(s, [0, 1, 2, 3, 4, 5, 6, 7].map((x) => (x * EXTENT_SIZE) / CHUNK_SIZE), 1)
    // A's log answers the listing's first read with two entries, and the secondary's acknowledgement trims through 5 meanwhile.
    const a = logs.logs.get(1)!
    const read = a.read.bind(a)
    let first = true
    a.read = async (from, through, maxBytes) => {
      const records = await read(from, through, maxBytes)
      if (!first) return records
      first = false
      void chain.trim(5)
      return records.slice(0, 2)
    }
    await chain.handoff('b', 0)
    expect(commits.chain.map((r) => r.home)).toEqual(['a', 'b'])
    // Listed: entries 1–2 (read before the trim) and 6–8; 3–5 the secondary applied. Their extents are B's management information.
    expect(commits.made[0]!.pending!.marks!.map((m) => m.extent).sort()).toEqual([0, 1, 5, 6, 7])
  })
})
