/**
 * The power-loss order of host writes (issue 11): a map record that points at
 * data becomes durable only after the logged writes it depends on — a new
 * slot's clear, a fragment's data, the deletions made before an earlier
 * owner freed the space — are durable. The MapStore can make a batch durable
 * without any sync of this volume (another volume's fsync, a memtable switch,
 * a table), so the order must hold at the moment each batch is written into
 * it, not only at fsync. Checked by watching every storage system's logged
 * writes and sync writes (the only thing that makes a logged write survive a
 * power cut), and every batch the map store writes: each record in it must
 * find every logged write into its systems that had ended when the record's
 * value was read synced. (A record is read after its data, its clear, and
 * the deletions made before its space was freed have ended.)
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_CHUNKS, EXTENT_SIZE } from '../../lib/layout.js'
import { decodeExtentRecord, type ExtentEntry } from '../../lib/relay/extent-entry.js'
import { RangeLock } from '../../lib/relay/range-lock.js'
import { ThinVolume } from '../../lib/relay/thin.js'
import { BULK_CHUNKS } from '../../lib/storage/storage-system.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { rng } from '../helpers/model.js'
import { openStack, type Stack } from '../helpers/stack.js'
import { watchStoreSyncs, watchSyncWrites } from '../helpers/sync-writes.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

type Op = { type: 'put' | 'del'; key: Buffer; value?: Buffer }

/** Per storage system: logged writes ended, how many a finished sync write covers; records written too early. */
class OrderLedger {
  private readonly ended = new Map<number, number>()
  private readonly synced = new Map<number, number>()
  /** Per record key: the logged writes ended when its value was read. */
  private readonly readAt = new Map<string, Map<number, number>>()
  readonly early: string[] = []
  records = 0
  /** Map-store batches written, and how many of them a finished sync write covers. */
  private batches = 0
  private batchesSynced = 0
  /** Per record key: the batch that wrote its latest record; per address (whole slot or fragment): the key whose record named it last. */
  private readonly keyWrittenIn = new Map<string, number>()
  private readonly namedBy = new Map<string, string>()
  readonly freedEarly: string[] = []
  freed = 0

  constructor(stack: Stack) {
    for (const s of stack.pool.list()) {
      watchStoreSyncs(
        s,
        () => this.ended.get(s.sid) ?? 0,
        (covered) => this.synced.set(s.sid, Math.max(covered, this.synced.get(s.sid) ?? 0)),
      )
      // Logged writes only: an unlogged bulk write over a whole slot may be
      // lost (the slot then shows its own earlier data or its clear).
      const write = s.write.bind(s)
      s.write = (chunks, opts) => write(chunks, opts).finally(() => opts?.unlogged && chunks.length >= BULK_CHUNKS ? undefined : this.wrote(s.sid))
      const clearRange = s.clearRange.bind(s)
      s.clearRange = (first, count) => clearRange(first, count).finally(() => this.wrote(s.sid))
    }
    const putMany = stack.maps.putMany.bind(stack.maps)
    stack.maps.putMany = (items) =>
      putMany(
        items.map((item) => ({
          ...item,
          produce: () => {
            this.readAt.set(item.key.toString('hex'), new Map(this.ended))
            return item.produce()
          },
        })),
      )
    const db = (stack.maps as unknown as { db: { batch(ops: Op[]): Promise<void> } }).db
    const batch = db.batch.bind(db)
    db.batch = async (ops: Op[]) => {
      const n = ++this.batches
      for (const op of ops) if (op.type === 'put' && op.key[0] === 0x65) this.check(op.key, decodeExtentRecord(op.value!).entry)
      await batch(ops)
      for (const op of ops) if (op.key[0] === 0x65) this.keyWrittenIn.set(op.key.toString('hex'), n)
    }
    watchSyncWrites(
      db,
      () => this.batches,
      (covered) => (this.batchesSynced = Math.max(this.batchesSynced, covered)),
    )
    const releaseSlot = stack.pool.releaseSlot.bind(stack.pool)
    stack.pool.releaseSlot = (sid, slot) => {
      this.freeing(`w${sid}:${slot}`)
      releaseSlot(sid, slot)
    }
    const releaseFragment = stack.pool.releaseFragment.bind(stack.pool)
    stack.pool.releaseFragment = (sid, pca) => {
      this.freeing(`f${sid}:${pca}`)
      releaseFragment(sid, pca)
    }
  }

  /** Space is freed: the record that stopped naming it must be durable. */
  private freeing(address: string): void {
    const key = this.namedBy.get(address)
    if (key === undefined) return
    this.freed++
    const writtenIn = this.keyWrittenIn.get(key) ?? 0
    if (writtenIn > this.batchesSynced) this.freedEarly.push(`${address} freed while record ${key} (batch ${writtenIn}) was not durable (${this.batchesSynced} synced)`)
  }

  private wrote(sid: number): void {
    this.ended.set(sid, (this.ended.get(sid) ?? 0) + 1)
  }

  private check(key: Buffer, entry: ExtentEntry | null): void {
    if (!entry) return
    this.records++
    if (entry.kind === 'whole') this.namedBy.set(`w${entry.sid}:${entry.slot}`, key.toString('hex'))
    else for (const f of entry.frags.values()) this.namedBy.set(`f${f.sid}:${f.pca}`, key.toString('hex'))
    const sids = entry.kind === 'whole' ? [entry.sid] : [...entry.frags.values()].map((f) => f.sid)
    for (const sid of new Set(sids)) {
      const ended = this.readAt.get(key.toString('hex'))?.get(sid) ?? 0
      const synced = this.synced.get(sid) ?? 0
      if (ended > synced) this.early.push(`record ${key.toString('hex')} (${entry.kind}) written with ${ended - synced} logged writes on system ${sid} not durable`)
    }
  }
}

/** `chunks` chunks of a recognisable non-zero pattern (never a zero chunk). */
function pattern(mark: number, chunks: number): Buffer {
  const buf = Buffer.alloc(chunks * CHUNK_SIZE, mark)
  for (let c = 0; c < chunks; c++) buf.writeUInt32LE(c + 1, c * CHUNK_SIZE)
  return buf
}

async function stackIn(prefix: string, systems: number): Promise<Stack> {
  const dir = tempDir(prefix)
  dirs.push(dir)
  return openStack({ dir, systems, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE }, true)
}

describe('a record becomes durable only after the logged writes it depends on', () => {
  it('a fragment’s record could become durable before its logged data write: every fragment record is written after a log sync covering its data', async () => {
    const stack = await stackIn('vvfs-order-frag-', 2)
    try {
      const ledger = new OrderLedger(stack)
      const r = rng(11)
      // Random 4 KiB writes into fresh space, a few at a time, never fsynced:
      // each one allocates a fragment (one record per extent and batch).
      const chunks = 8 * EXTENT_CHUNKS
      for (let round = 0; round < 20; round++) {
        await Promise.all(Array.from({ length: 4 }, () => stack.thin.write(r.int(0, chunks - 1), pattern(round + 1, 1))))
      }
      expect(stack.thin.extentCount()).toBeGreaterThan(4)
      expect(ledger.records).toBeGreaterThan(20)
      expect(ledger.early).toEqual([])
    } finally {
      await stack.close()
    }
  })

  it('a new slot’s record could become durable before the clear of the stale data another volume released there: the release’s clear is synced before the new owner’s record', async () => {
    const stack = await stackIn('vvfs-order-slot-', 1)
    try {
      const ledger = new OrderLedger(stack)
      // Volume 2 fills extent 0 with a whole slot, then is deleted: its
      // release clears the slot (a logged clear) and frees it.
      const other = new ThinVolume(2, stack.pool, stack.maps, new RangeLock())
      await other.write(0, pattern(0xb2, EXTENT_CHUNKS))
      const released = other.entry(0)
      expect(released?.kind).toBe('whole')
      await other.truncate(0)
      await other.settle()
      expect(other.entry(0)).toBeUndefined()
      // Volume 1 gets the same slot for a small write (a new whole slot:
      // the slot looks empty now, so it is not cleared again).
      await stack.thin.write(0, pattern(0xa1, EXTENT_CHUNKS / 4))
      expect(stack.thin.entry(0)).toEqual(released)
      // And a fragment over a chunk another volume dropped and freed.
      await other.write(EXTENT_CHUNKS, pattern(0xb2, 1))
      const dropped = other.locate(EXTENT_CHUNKS)
      expect(dropped.kind).toBe('fragment')
      await other.write(EXTENT_CHUNKS, Buffer.alloc(CHUNK_SIZE))
      await stack.thin.write(3 * EXTENT_CHUNKS, pattern(0xa1, 1))
      expect(stack.thin.locate(3 * EXTENT_CHUNKS)).toMatchObject({ kind: 'fragment', sid: dropped.sid, pca: dropped.pca })
      expect(ledger.records).toBeGreaterThan(2)
      expect(ledger.early).toEqual([])
    } finally {
      await stack.close()
    }
  })

  it('released space could get a new owner while the record that named it was not durable: a slot or fragment is freed only once the record that stopped naming it is durable', async () => {
    const stack = await stackIn('vvfs-order-free-', 1)
    try {
      const ledger = new OrderLedger(stack)
      const v = stack.thin
      // A whole slot released by a discard, one emptied by zeros (released in
      // the background), and fragments dropped by zeros.
      await v.write(0, pattern(0xc1, EXTENT_CHUNKS))
      await v.discard(0, EXTENT_CHUNKS)
      await v.write(EXTENT_CHUNKS, pattern(0xc2, EXTENT_CHUNKS))
      await v.write(EXTENT_CHUNKS, Buffer.alloc(EXTENT_SIZE))
      await v.settle()
      await v.write(2 * EXTENT_CHUNKS, pattern(0xc3, 4))
      await v.write(2 * EXTENT_CHUNKS, Buffer.alloc(4 * CHUNK_SIZE))
      expect(v.extentCount()).toBe(0)
      expect(ledger.freed).toBe(2 + 4)
      expect(ledger.freedEarly).toEqual([])
    } finally {
      await stack.close()
    }
  })
})
