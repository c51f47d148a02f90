/**
 * The journal layer in a volume's stack (lib/replication/journal-layer.ts):
 * a host write is answered only once its entry is durable; changes are
 * numbered in the order they are applied; the primary never trims past its
 * own durable data; and at open the retained entries are replayed into the
 * volume (a write the secondary may hold is never missing at the primary),
 * except over extents marked dirty.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import { MemoryDurableLog } from '../../lib/replication/durable-log.js'
import { VvfsError } from '../../lib/errors.js'
import { Journal } from '../../lib/replication/journal.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { memorySystems, openStack, type Stack, type SystemFactory } from '../helpers/stack.js'
import { RestartingStore } from '../helpers/restarting-store.js'
import { MemoryChunkStore } from '../../lib/storage/memory-store.js'
import { StorageSystem } from '../../lib/storage/storage-system.js'

let open: { stack: Stack; dir: string }[] = []
afterEach(async () => {
  for (const { stack, dir } of open) {
    await stack.close().catch(() => undefined)
    removeDir(dir)
  }
  open = []
})

async function stack(): Promise<Stack> {
  const dir = tempDir('vvfs-jlayer-')
  const s = await openStack({ dir, systems: 1, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE, systemsFrom: memorySystems }, true)
  open.push({ stack: s, dir })
  return s
}

const block = (fill: number) => Buffer.alloc(CHUNK_SIZE, fill)

/** A stack over one in-memory store on a "server machine" that can restart under it (unsynced writes gone). */
async function restartableStack(): Promise<{ s: Stack; store: RestartingStore }> {
  const dir = tempDir('vvfs-jlayer-')
  let store!: RestartingStore
  const systemsFrom: SystemFactory = async (o) => {
    store = new RestartingStore(MemoryChunkStore.create({ sid: o.sid, name: o.name }))
    return StorageSystem.over(store, { capacity: o.capacity })
  }
  const s = await openStack({ dir, systems: 1, capacity: 16 * EXTENT_SIZE, size: 8 * EXTENT_SIZE, systemsFrom }, true)
  open.push({ stack: s, dir })
  return { s, store }
}

describe('the journal layer', () => {
  it('answers a host write only once its entry is durable, numbering changes in the order they are applied', async () => {
    const s = await stack()
    const log = new MemoryDurableLog()
    const journal = await Journal.open(log, { epoch: 1 })
    s.layers.journal.attach(journal)
    log.hold()
    let answered = false
    const w = s.volume.write(0, block(1)).then(() => (answered = true))
    await new Promise((r) => setTimeout(r, 50))
    expect(answered).toBe(false)
    log.release()
    await w
    await s.volume.write(0, block(2))
    await s.volume.discard(0, CHUNK_SIZE)
    await s.volume.flush()
    const entries = await journal.read(1, 1 << 20)
    expect(entries.map((e) => [e.seq, e.kind, e.data?.[0] ?? null])).toEqual([
      [1, 'write', 1],
      [2, 'write', 2],
      [3, 'discard', null],
      [4, 'flush', null],
    ])
  })

  it('reports lag as the age of the oldest unapplied change: 0 when none, never low, at most 10 ms high', async () => {
    const s = await stack()
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    s.layers.journal.attach(journal)
    const layer = s.layers.journal
    const t0 = Date.now()
    const now = vi.spyOn(Date, 'now')
    try {
      expect(layer.lagSeconds(0)).toBe(0)
      const at = [0, 4, 50, 51, 200] // ms after t0: the first two share a 10 ms bucket, so do the next two
      for (const [i, ms] of at.entries()) {
        now.mockReturnValue(t0 + ms)
        await s.volume.write(i * CHUNK_SIZE, block(i + 1))
      }
      now.mockReturnValue(t0 + 1000)
      // The oldest unapplied change was accepted at t0 + 0, + 4, + 50, + 51, + 200 as more are applied.
      const truth = [1000, 996, 950, 949, 800]
      for (let applied = 0; applied < at.length; applied++) {
        const lagMs = layer.lagSeconds(applied) * 1000
        expect(lagMs).toBeGreaterThanOrEqual(truth[applied]! - 0.001)
        expect(lagMs).toBeLessThanOrEqual(truth[applied]! + 10)
      }
      expect(layer.lagSeconds(at.length)).toBe(0)
      now.mockReturnValue(t0 + 5000)
      expect(layer.lagSeconds(at.length)).toBe(0)
    } finally {
      now.mockRestore()
    }
  })

  it('holds changes until released; a release called again does not let go of a later hold', async () => {
    const s = await stack()
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    s.layers.journal.attach(journal)
    const first = s.layers.journal.holdChanges()
    first()
    const second = s.layers.journal.holdChanges()
    first() // a takeover's cleanup after its jobs were adopted, say
    let written = false
    const w = s.volume.write(0, block(1)).then(() => (written = true))
    await new Promise((r) => setTimeout(r, 50))
    expect(written).toBe(false)
    second()
    await w
    expect((await journal.read(1, 1 << 20)).map((e) => e.kind)).toEqual(['write'])
  })

  it('gives a flush an entry only when a change came since the last one: a promoted volume that was only read (each close a flush) must not look written in the epoch comparison', async () => {
    const s = await stack()
    const log = new MemoryDurableLog()
    const journal = await Journal.open(log, { epoch: 1, syncEveryCommit: false })
    s.layers.journal.attach(journal)
    await s.volume.flush()
    await s.volume.flush()
    expect(journal.positions.lastAccepted).toBe(0) // nothing numbered: nothing changed
    await s.volume.write(0, block(1))
    await s.volume.flush()
    await s.volume.flush()
    expect((await journal.read(1, 1 << 20)).map((e) => e.kind)).toEqual(['write', 'flush'])
    // The flush without an entry still makes what was logged durable: a power cut keeps it.
    await s.volume.write(CHUNK_SIZE, block(2))
    await s.volume.flush()
    await s.volume.flush()
    expect(journal.positions.lastDurable).toBe(4)
    const reopened = await Journal.open(log.powerCut(), { epoch: 1, syncEveryCommit: false })
    expect(reopened.positions.lastAccepted).toBe(4)
  })

  it('never lets a change reach the data before its entry is synced (a crash between them would leave the primary a write the secondary never gets)', async () => {
    const s = await stack()
    const log = new MemoryDurableLog()
    // As the primary runs it: answered once logged, synced later.
    const journal = await Journal.open(log, { epoch: 1, syncEveryCommit: false })
    s.layers.journal.attach(journal)
    // What reaches the storage system (the space is taken at once; the data must wait).
    const reached: string[] = []
    const system = s.pool.get(1)
    const write = system.write.bind(system)
    system.write = (chunks, opts) => (reached.push(`data of ${chunks.length} chunk(s)`), write(chunks, opts))
    const thin = s.layers.thin
    const discard = thin.discard.bind(thin)
    thin.discard = (first, count) => (reached.push(`discard ${first}`), discard(first, count))
    await s.volume.write(0, block(1))
    await s.volume.drain()
    expect(reached).toEqual(['data of 1 chunk(s)'])
    log.hold() // syncs wait; logging goes on
    let d: Promise<void> | undefined
    try {
      // The write is answered (logged, its space taken) but its data waits for the sync; so does the discard.
      await s.volume.write(EXTENT_SIZE, block(2))
      d = s.volume.discard(0, CHUNK_SIZE)
      await new Promise((r) => setTimeout(r, 50))
      expect(reached).toEqual(['data of 1 chunk(s)'])
      expect(journal.positions).toMatchObject({ lastLogged: 3, lastDurable: 1 })
    } finally {
      log.release()
    }
    await d
    await s.volume.drain()
    // Then the write's data, then the discard (which may zero its chunk with a write of its own).
    expect(reached.slice(0, 3)).toEqual(['data of 1 chunk(s)', 'data of 1 chunk(s)', 'discard 0'])
  })

  it('says the data is durable only through changes stored before its flush', async () => {
    const s = await stack()
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    s.layers.journal.attach(journal)
    await s.volume.write(0, block(1))
    await s.volume.flush()
    const through = await s.layers.journal.dataDurableThrough()
    expect(through).toBe(journal.positions.lastAccepted)
    // A write whose store is still under way holds the point back.
    const below = s.layers.thin
    const original = below.write.bind(below)
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    below.write = (first, data) => {
      const w = original(first, data)
      return { accepted: w.accepted, stored: gate.then(() => w.stored) }
    }
    let held: number
    try {
      await s.volume.write(EXTENT_SIZE, block(2))
      held = journal.positions.lastAccepted
      expect(await s.layers.journal.dataDurableThrough()).toBe(held - 1)
    } finally {
      release()
    }
    await s.volume.drain()
    expect(await s.layers.journal.dataDurableThrough()).toBe(held)
  })

  it('replays retained entries into a stack that lost their data, but not over extents marked dirty', async () => {
    const log = new MemoryDurableLog()
    const journal = await Journal.open(log, { epoch: 1 })
    journal.append({ kind: 'write', volume: 1, offset: 0, data: block(7) })
    journal.append({ kind: 'write', volume: 1, offset: 2 * EXTENT_SIZE, data: block(8) })
    await journal.addMarks([{ volume: 1, extent: 2 }])
    await journal.drain()
    // A fresh stack: the primary crashed before either write reached its data.
    const s = await stack()
    const reopened = await Journal.open(log.powerCut(), { epoch: 1 })
    expect(await s.layers.journal.replay(reopened)).toBe(1)
    const out = Buffer.alloc(CHUNK_SIZE)
    await s.volume.read(0, CHUNK_SIZE, out)
    expect(out.equals(block(7))).toBe(true)
    await s.volume.read(2 * EXTENT_SIZE, CHUNK_SIZE, out)
    expect(out.equals(block(0))).toBe(true)
  })

  it('applies again the retained entries whose data a storage server\'s machine restart took, before the trim, whoever\'s flush met the loss', async () => {
    for (const firstToMeetIt of ['trim', 'host fsync'] as const) {
      const { s, store } = await restartableStack()
      const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
      s.layers.journal.attach(journal)
      await s.volume.write(0, block(1))
      await s.volume.write(EXTENT_SIZE + CHUNK_SIZE, block(2))
      await s.volume.drain() // stored, not synced: the journal still holds both (nothing is trimmed before the data is durable)
      store.restartMachine()
      if (firstToMeetIt === 'trim') {
        // The bug: this round refused, the next trimmed entries 1–2 while the data was gone.
        expect(await s.layers.journal.dataDurableThrough()).toBe(journal.positions.lastAccepted)
      } else {
        await expect(s.volume.flush()).rejects.toMatchObject({ details: { reason: 'writes-lost' } })
        await new Promise((r) => setTimeout(r, 50)) // redone at once, not only at the next trim round
      }
      const out = Buffer.alloc(CHUNK_SIZE)
      await s.volume.read(0, CHUNK_SIZE, out)
      expect(out.equals(block(1)), firstToMeetIt).toBe(true)
      await s.volume.read(EXTENT_SIZE + CHUNK_SIZE, CHUNK_SIZE, out)
      expect(out.equals(block(2)), firstToMeetIt).toBe(true)
      // Durable now: a restart after the trim round takes nothing.
      expect(await s.layers.journal.dataDurableThrough()).toBe(journal.positions.lastAccepted)
      store.restartMachine()
      await s.volume.read(EXTENT_SIZE + CHUNK_SIZE, CHUNK_SIZE, out)
      expect(out.equals(block(2)), firstToMeetIt).toBe(true)
    }
  })

  it('a trim round that comes while the redo runs waits for it: nothing is trimmed before it was applied again', async () => {
    const { s, store } = await restartableStack()
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    const layer = s.layers.journal
    layer.attach(journal)
    await s.volume.write(0, block(1))
    await s.volume.drain()
    store.restartMachine()
    let redone = false
    const replay = layer.replay.bind(layer)
    layer.replay = async (j) => {
      await new Promise((r) => setTimeout(r, 100)) // a long journal
      const n = await replay(j)
      redone = true
      return n
    }
    await expect(s.volume.flush()).rejects.toMatchObject({ details: { reason: 'writes-lost' } })
    await new Promise((r) => setImmediate(r)) // the redo has started
    await layer.dataDurableThrough()
    // The bug: the trim's own flush succeeded (the loss was reported already) and it answered at once.
    expect(redone).toBe(true)
  })

  it('the redo applies every epoch\'s retained entries (a handoff\'s predecessor still kept), and tries again after a failure or a loss meanwhile, with no trim round', async () => {
    const { s, store } = await restartableStack()
    const layer = s.layers.journal
    // Epoch 1's journal still holds an entry of this volume (not trimmed yet) beside epoch 2's, the current one.
    const older = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    const current = await Journal.open(new MemoryDurableLog(), { epoch: 2, firstSeq: 2 })
    await s.volume.write(2 * EXTENT_SIZE, block(5))
    older.append({ kind: 'write', volume: 1, offset: 2 * EXTENT_SIZE, data: block(5) })
    await older.drain()
    layer.attach(current, () => [older, current])
    await s.volume.write(0, block(6))
    await s.volume.drain()
    store.restartMachine()
    let calls = 0
    const replay = layer.replay.bind(layer)
    layer.replay = async (j) => {
      calls++
      if (calls === 1) throw new VvfsError('IO_ERROR', 'the journal\'s store did not answer') // retried after a pause
      if (calls === 2) layer.dataLost() // a host's flush met another loss while this redo ran: one more at once
      return replay(j)
    }
    await expect(s.volume.flush()).rejects.toMatchObject({ details: { reason: 'writes-lost' } })
    await new Promise((r) => setTimeout(r, 1500))
    // 1 failed; then [older, current] twice.
    expect(calls).toBe(5)
    const out = Buffer.alloc(CHUNK_SIZE)
    await s.volume.read(2 * EXTENT_SIZE, CHUNK_SIZE, out)
    expect(out.equals(block(5))).toBe(true)
    await s.volume.read(0, CHUNK_SIZE, out)
    expect(out.equals(block(6))).toBe(true)
  })

  it('a redo that keeps failing is tried again less and less often (each try locks the whole volume)', async () => {
    const { s, store } = await restartableStack()
    const layer = s.layers.journal
    layer.attach(await Journal.open(new MemoryDurableLog(), { epoch: 1 }))
    await s.volume.write(0, block(1))
    await s.volume.drain()
    store.restartMachine()
    let calls = 0
    layer.replay = async () => {
      calls++
      throw new VvfsError('PEER_UNAVAILABLE', 'the journal\'s store does not answer')
    }
    vi.useFakeTimers({ toFake: ['setTimeout'] })
    try {
      await expect(s.volume.flush()).rejects.toMatchObject({ details: { reason: 'writes-lost' } })
      const after = async (ms: number) => {
        await vi.advanceTimersByTimeAsync(ms)
        return calls
      }
      expect(await after(10)).toBe(1) // at once
      expect(await after(1000)).toBe(2) // then after 1 s
      expect(await after(1500)).toBe(2)
      expect(await after(500)).toBe(3) // 2 s
      expect(await after(4000)).toBe(4) // 4 s
    } finally {
      vi.useRealTimers()
      layer.detach() // no more tries
    }
  })

  it('acknowledges once logged, ships only what a sync made durable, and a host flush syncs (syncEveryCommit false)', async () => {
    const s = await stack()
    const log = new MemoryDurableLog()
    const journal = await Journal.open(log, { epoch: 1, syncEveryCommit: false })
    s.layers.journal.attach(journal)
    log.hold() // a sync would wait: acknowledgements must not
    await s.volume.write(0, block(1))
    await s.volume.write(CHUNK_SIZE, block(2))
    expect(journal.positions).toMatchObject({ lastAccepted: 2, lastLogged: 2, lastDurable: 0 })
    expect(await journal.read(1, 1 << 20)).toEqual([]) // nothing ships before a sync
    log.release()
    const flushed = s.volume.flush()
    await flushed
    expect(journal.positions.lastDurable).toBe(3) // the flush entry and everything before it
    expect((await journal.read(1, 1 << 20)).map((e) => e.kind)).toEqual(['write', 'write', 'flush'])
    // Logged and never synced: a power cut loses it (a process crash would not).
    await s.volume.write(2 * CHUNK_SIZE, block(3))
    expect(journal.positions.lastLogged).toBe(4)
    const reopened = await Journal.open(log.powerCut(), { epoch: 1, syncEveryCommit: false })
    expect(reopened.positions.lastAccepted).toBe(3)
  })
})
