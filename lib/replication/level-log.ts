/**
 * LevelDurableLog: a journal's DurableLog in a LevelDB directory of its own
 * (classic-level). Where the directory lives is the caller's choice; issue
 * 13 puts it on the volume's home storage system.
 *
 * Keys: 'e' + u64 seq → the encoded entry; 'd' + u32 volume + u32 extent →
 * a dirty mark (empty value); 'm/trim' → u64; 'm/mode' → 'journaling' |
 * 'bitmap'.
 *
 * Durability: every commit is one LevelDB batch written with `sync: true`,
 * so it is atomic and durable when it resolves; LevelDB's log is sequential,
 * so batches become durable in order. The journal groups many appends into
 * one commit (group commit), so the cost is one fsync per group, not per
 * entry. A trim writes 'm/trim' in the batch and deletes the trimmed entries
 * afterwards in an unsynced range delete: entries at or below 'm/trim' are
 * ignored wherever they are found, and load() clears leftovers.
 *
 * Opening recovers LevelDB's log into a table that is synced before open
 * returns (LevelDB's recovery writes a level-0 table and a synced MANIFEST),
 * and open() then writes one synced batch, so what load() reports is
 * durable — even entries a killed process wrote without a sync and the page
 * cache kept (a later power cut must not lose something already shipped).
 *
 * Concurrency: one journal commits at a time; reads may run beside a commit
 * (LevelDB iterators see a snapshot).
 */
import { ClassicLevel } from 'classic-level'
import { mkdir, open, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { VvfsError } from '../errors.js'
import { readU53, writeU53 } from './entry.js'
import type { DirtyMark, DurableLog, JournalMode, LogBatch, LogContents, LogRecord } from './durable-log.js'

const ENTRY = 0x65 // 'e'
const DIRTY = 0x64 // 'd'
const TRIM_KEY = Buffer.from('m/trim')
const MODE_KEY = Buffer.from('m/mode')
const OPENED_KEY = Buffer.from('m/opened')
const SYNC_KEY = Buffer.from('m/sync')

function entryKey(seq: number): Buffer {
  const k = Buffer.alloc(9)
  k[0] = ENTRY
  writeU53(k, 1, seq)
  return k
}

function markKeyBytes(m: DirtyMark): Buffer {
  const k = Buffer.alloc(9)
  k[0] = DIRTY
  k.writeUInt32BE(m.volume, 1)
  k.writeUInt32BE(m.extent, 5)
  return k
}

function u53(n: number): Buffer {
  const b = Buffer.alloc(8)
  writeU53(b, 0, n)
  return b
}

function corrupt(why: string): VvfsError {
  return new VvfsError('STATE_CORRUPT', `journal log: ${why}`)
}

export class LevelDurableLog implements DurableLog {
  private constructor(
    private readonly db: ClassicLevel<Buffer, Buffer>,
    readonly path: string,
  ) {}

  static async open(path: string): Promise<LevelDurableLog> {
    await mkdir(path, { recursive: true })
    // Chunk data is incompressible. A 64 MiB write buffer: at 4 MiB, 1 MiB sequential host writes filled it
    // 15 times a second and the journal's flushes and compactions held them to 0.29 of unreplicated (bench/replication.ts);
    // entries trimmed before a flush never reach a table at all.
    const db = new ClassicLevel<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer', compression: false, writeBufferSize: 64 * 1024 * 1024 })
    try {
      await db.open()
      await db.put(OPENED_KEY, Buffer.from(new Date().toISOString()), { sync: true })
    } catch (err) {
      await db.close().catch(() => undefined)
      const locked = /lock/i.test(String(err)) || (err as { code?: string }).code === 'LEVEL_LOCKED'
      throw new VvfsError(locked ? 'STATE_LOCKED' : 'IO_ERROR', `cannot open the journal log at ${path}: ${(err as Error).message}`, { cause: err })
    }
    return new LevelDurableLog(db, path)
  }

  async load(): Promise<LogContents> {
    return this.io('load', async () => {
      const trimRaw = await this.db.get(TRIM_KEY)
      const modeRaw = await this.db.get(MODE_KEY)
      const trimmedThrough = trimRaw ? readU53(trimRaw, 0, corrupt) : 0
      const mode = modeRaw ? modeRaw.toString('utf8') : null
      if (mode !== null && mode !== 'journaling' && mode !== 'bitmap') throw corrupt(`unknown mode '${mode}'`)
      await this.db.clear({ gte: entryKey(0), lte: entryKey(trimmedThrough) })
      const retained: { seq: number; bytes: number }[] = []
      for await (const [k, v] of this.db.iterator({ gt: entryKey(trimmedThrough), lt: Buffer.from([ENTRY + 1]) })) {
        if (k.length !== 9) throw corrupt(`an entry key of ${k.length} bytes`)
        retained.push({ seq: readU53(k, 1, corrupt), bytes: v.length })
      }
      const dirty: DirtyMark[] = []
      for await (const k of this.db.keys({ gte: Buffer.from([DIRTY]), lt: Buffer.from([DIRTY + 1]) })) {
        if (k.length !== 9) throw corrupt(`a dirty mark key of ${k.length} bytes`)
        dirty.push({ volume: k.readUInt32BE(1), extent: k.readUInt32BE(5) })
      }
      return { mode: mode as JournalMode | null, trimmedThrough, retained, dirty }
    })
  }

  async commit(batch: LogBatch, sync = true): Promise<void> {
    const ops: ({ type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer })[] = []
    for (const e of batch.entries ?? []) ops.push({ type: 'put', key: entryKey(e.seq), value: e.record })
    for (const m of batch.addDirty ?? []) ops.push({ type: 'put', key: markKeyBytes(m), value: Buffer.alloc(0) })
    for (const m of batch.removeDirty ?? []) ops.push({ type: 'del', key: markKeyBytes(m) })
    if (batch.trimThrough !== undefined) ops.push({ type: 'put', key: TRIM_KEY, value: u53(batch.trimThrough) })
    if (batch.mode) ops.push({ type: 'put', key: MODE_KEY, value: Buffer.from(batch.mode) })
    // A sync with nothing else to write still needs a write for LevelDB to sync its log.
    if (ops.length === 0 && sync) ops.push({ type: 'put', key: SYNC_KEY, value: Buffer.alloc(0) })
    await this.io('commit', () => this.db.batch(ops, { sync }))
    if (batch.trimThrough !== undefined) {
      // Unsynced and after the commit: entries at or below the trim point are dead whether or not this lands.
      await this.io('trim', () => this.db.clear({ gte: entryKey(0), lte: entryKey(batch.trimThrough as number) }))
    }
  }

  async read(from: number, through: number, maxBytes: number): Promise<LogRecord[]> {
    return this.io('read', async () => {
      const out: LogRecord[] = []
      let bytes = 0
      for await (const [k, v] of this.db.iterator({ gte: entryKey(from), lte: entryKey(through) })) {
        out.push({ seq: readU53(k, 1, corrupt), record: v })
        bytes += v.length
        if (bytes >= maxBytes) break
      }
      return out
    })
  }

  /**
   * fdatasync of LevelDB's log files, beside LevelDB rather than through it:
   * a sync write would hold every later write in LevelDB's writer queue for
   * the fsync, and the journal layer acknowledges host writes once logged —
   * a sync per write cut 1 MiB sequential writes to 0.06 of unreplicated.
   * A batch that completed is in a log file by then (LevelDB writes each
   * record through to the kernel); a log that is gone was written to a
   * synced table first. Files that appear while syncing are synced too.
   */
  async syncLogged(): Promise<void> {
    const synced = new Set<string>()
    for (;;) {
      const logs = (await readdir(this.path)).filter((n) => n.endsWith('.log') && !synced.has(n))
      if (logs.length === 0) return
      for (const name of logs) {
        synced.add(name)
        let file
        try {
          file = await open(join(this.path, name), 'r')
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
          throw new VvfsError('IO_ERROR', `journal log sync failed: ${(err as Error).message}`, { cause: err })
        }
        try {
          await file.datasync()
        } catch (err) {
          throw new VvfsError('IO_ERROR', `journal log sync failed: ${(err as Error).message}`, { cause: err })
        } finally {
          await file.close()
        }
      }
    }
  }

  async close(): Promise<void> {
    await this.db.close()
  }

  private async io<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof VvfsError) throw err
      if (this.db.status !== 'open') throw new VvfsError('SHUTTING_DOWN', `the journal log is closed (${what})`, { cause: err })
      throw new VvfsError('IO_ERROR', `journal log ${what} failed: ${(err as Error).message}`, { cause: err })
    }
  }
}
