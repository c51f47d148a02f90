/**
 * SegmentDurableLog: a journal's DurableLog (durable-log.ts) as append-only
 * segment files in a directory of its own (issue 13 puts it on the volume's
 * home storage system). Each byte of an entry is written once, to the
 * segment, and the whole segment is deleted once every entry in it is
 * trimmed — no memtable, no tables, no compaction. It replaced a LevelDB
 * store, which wrote each entry to its log, again to a level-0 table at every
 * 64 MiB and again in compactions: with the peer stopped (nothing trimmed)
 * 1 MiB sequential writes ran at 0.23–0.30 of unreplicated, and the journal
 * layer's acknowledgement waited for a LevelDB write on the thread pool
 * (bench/replication.ts, 2026-12-04; figures in the report of that day).
 *
 * Files: DIR/<segment number, 16 hex digits>.seg. A segment is a run of
 * frames: u32 payload length | u32 crc32 of the frame's metadata | payload.
 * The CRC covers the payload except the entry records, which carry their own
 * crc32 (entry.ts) — the data is checksummed once, when the change is
 * accepted. Payload kinds:
 *   1 batch:      u8 flags (1 trim, 2 mode, 4 meta) | u64 trim | u8 mode
 *                 | u32 entries | u32 marks added | u32 marks removed | marks
 *                 (u32 volume, u32 extent each) | [u32 bytes | meta, flag 4]
 *                 | entries (u64 seq | u32 bytes | record)
 *   2 checkpoint: u8 mode (0 none, 1 journaling, 2 bitmap) | u64 trim
 *                 | u32 marks | marks | [u32 bytes | meta, when the owner
 *                 committed one] — the whole state but the entries, the
 *                 first frame of every segment.
 *
 * Durability: a commit appends its frame with one writev — on the calling
 * thread when small (a 4 KiB write's frame: cheaper than a thread-pool round
 * trip), on the pool from POOL_APPEND_BYTES — so "logged" (it survives a
 * kill -9) holds when commit resolves; `sync` adds an fdatasync. syncLogged() is an
 * fdatasync of the segment being appended, beside later appends (it covers
 * what was written before it began). A segment is synced before the next is
 * created, and a new segment's checkpoint is synced and its directory entry
 * fsynced before any batch goes into it, so frames become durable in order:
 * a later batch never survives a power cut that loses an earlier one.
 *
 * Trim: the trim point is a field of a batch; a segment is deleted only once
 * a sync covered a trim point at or past its last entry, and only the oldest
 * segments (never the one being appended). Loading starts from the oldest
 * segment's checkpoint and replays every frame after it.
 *
 * Crash order and failure modes: a kill -9 or power cut inside an append
 * leaves a torn last frame — short, or failing its CRC or a record's — only
 * at the end of the last segment (earlier ones were synced whole): load()
 * drops it by truncating the segment there, and a last segment left without
 * its checkpoint (a crash while creating it) is deleted. A bad frame
 * anywhere else is STATE_CORRUPT. open() fdatasyncs the last segment, so
 * everything load() reports is durable, even frames a killed process wrote
 * without a sync (a later power cut must not lose something already shipped
 * or replayed into the data). A failed append or sync is IO_ERROR; the
 * journal then treats the batch as lost-or-not (journal.ts).
 *
 * Concurrency: one journal commits at a time; reads and syncs may run beside
 * a commit (reads use positional reads of frames already written). A deleted
 * segment's file descriptor is closed once no read or sync is in flight.
 */
import { close, fdatasync, fstat, ftruncate, open, read, unlink, writev, writevSync } from 'node:fs'
import { constants, mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { crc32 } from 'node:zlib'
import { syncDirectory } from '../durable-file.js'
import { VvfsError } from '../errors.js'
import { entryChecksumOk, readU53, writeU53 } from './entry.js'
import { markKey, type DirtyMark, type DurableLog, type JournalMode, type LogBatch, type LogContents, type LogRecord } from './durable-log.js'

const openAsync = promisify(open)
const closeAsync = promisify(close)
const fdatasyncAsync = promisify(fdatasync)
const fstatAsync = promisify(fstat)
const ftruncateAsync = promisify(ftruncate)
const readAsync = promisify(read)
const unlinkAsync = promisify(unlink)
const writevAsync = promisify(writev)

/**
 * 64 MiB: a new segment (a checkpoint, two fdatasyncs and a directory fsync)
 * every half second of 1 MiB sequential writes at most, and a trimmed
 * journal frees space in steps no larger than this.
 */
export const SEGMENT_BYTES = 64 * 1024 * 1024
const FRAME_HEADER = 8
const BATCH = 1
const CHECKPOINT = 2
const MODES: (JournalMode | null)[] = [null, 'journaling', 'bitmap']
/** At most this many buffers per writev (Linux's IOV_MAX is 1024). */
const IOV_CHUNK = 1000
/** Entries read in one positional read, at most (bytes): a shipping batch is ~1 MiB. */
const READ_SPAN = 4 * 1024 * 1024

const SEGMENT_NAME = /^([0-9a-f]{16})\.seg$/

function segmentName(no: number): string {
  return `${no.toString(16).padStart(16, '0')}.seg`
}

function corrupt(why: string): VvfsError {
  return new VvfsError('STATE_CORRUPT', `journal log: ${why}`)
}

function ioError(what: string, err: unknown): VvfsError {
  return new VvfsError('IO_ERROR', `journal log ${what} failed: ${(err as Error).message}`, { cause: err })
}

interface Segment {
  no: number
  fd: number
  /** Bytes of whole frames in it (where the next frame goes, for the last one). */
  bytes: number
  /** The highest entry number in it; 0 when it holds none. */
  lastSeq: number
}

interface Located {
  seq: number
  segment: Segment
  /** Where the record starts in the segment, and its length. */
  at: number
  bytes: number
}

interface State {
  mode: JournalMode | null
  trimmedThrough: number
  dirty: Map<string, DirtyMark>
  meta: Buffer | null
}

function writeMarks(b: Buffer, at: number, marks: DirtyMark[]): number {
  for (const m of marks) {
    b.writeUInt32BE(m.volume, at)
    b.writeUInt32BE(m.extent, at + 4)
    at += 8
  }
  return at
}

function readMarks(b: Buffer, at: number, n: number): DirtyMark[] {
  const out: DirtyMark[] = []
  for (let i = 0; i < n; i++, at += 8) out.push({ volume: b.readUInt32BE(at), extent: b.readUInt32BE(at + 4) })
  return out
}

/** Bytes the owner's meta takes in a frame: u32 length and the bytes, or nothing. */
function metaBytes(meta: Buffer | null | undefined): number {
  return meta ? 4 + meta.length : 0
}

/** Writes the owner's meta at `at` (when there is one). */
function writeMeta(b: Buffer, at: number, meta: Buffer | null | undefined): void {
  if (!meta) return
  b.writeUInt32BE(meta.length, at)
  meta.copy(b, at + 4)
}

/** A frame's metadata CRC: the payload with the entry records left out (each has its own). */
function frameCrc(parts: Buffer[]): number {
  let c = 0
  for (const p of parts) c = crc32(p, c)
  return c
}

/** The buffers of one frame, header first, and its length. */
function checkpointFrame(s: State): Buffer[] {
  const marks = [...s.dirty.values()]
  const payload = Buffer.alloc(1 + 1 + 8 + 4 + marks.length * 8 + metaBytes(s.meta))
  payload[0] = CHECKPOINT
  payload[1] = MODES.indexOf(s.mode)
  writeU53(payload, 2, s.trimmedThrough)
  payload.writeUInt32BE(marks.length, 10)
  writeMeta(payload, writeMarks(payload, 14, marks), s.meta)
  const head = Buffer.alloc(FRAME_HEADER)
  head.writeUInt32BE(payload.length, 0)
  head.writeUInt32BE(frameCrc([payload]), 4)
  return [head, payload]
}

function batchFrame(batch: LogBatch): { parts: Buffer[]; bytes: number; recordAt: number[]; recordBytes: number[] } {
  const entries = batch.entries ?? []
  const add = batch.addDirty ?? []
  const remove = batch.removeDirty ?? []
  const owner = batch.meta
  // Pooled buffers (Buffer.allocUnsafe), every byte written: one batch per commit, no new ArrayBuffers.
  const meta = Buffer.allocUnsafe(1 + 1 + 8 + 1 + 12 + (add.length + remove.length) * 8 + metaBytes(owner))
  meta[0] = BATCH
  meta[1] = (batch.trimThrough !== undefined ? 1 : 0) | (batch.mode ? 2 : 0) | (owner ? 4 : 0)
  writeU53(meta, 2, batch.trimThrough ?? 0)
  meta[10] = MODES.indexOf(batch.mode ?? null)
  meta.writeUInt32BE(entries.length, 11)
  meta.writeUInt32BE(add.length, 15)
  meta.writeUInt32BE(remove.length, 19)
  writeMeta(meta, writeMarks(meta, writeMarks(meta, 23, add), remove), owner)
  const heads = Buffer.allocUnsafe(entries.length * 12)
  const parts: Buffer[] = [Buffer.allocUnsafe(FRAME_HEADER), meta]
  const recordAt: number[] = []
  let bytes = FRAME_HEADER + meta.length
  const recordBytes: number[] = []
  entries.forEach((e, i) => {
    const h = heads.subarray(i * 12, i * 12 + 12)
    const n = e.parts.reduce((sum, b) => sum + b.length, 0)
    writeU53(h, 0, e.seq)
    h.writeUInt32BE(n, 8)
    parts.push(h, ...e.parts)
    recordAt.push(bytes + 12)
    recordBytes.push(n)
    bytes += 12 + n
  })
  if (bytes - FRAME_HEADER > 0xffffffff) throw new VvfsError('INVALID_ARGUMENT', `a journal batch of ${bytes} bytes`)
  parts[0].writeUInt32BE(bytes - FRAME_HEADER, 0)
  parts[0].writeUInt32BE(frameCrc([meta, heads]), 4)
  return { parts, bytes, recordAt, recordBytes }
}

/**
 * Frames of this many bytes or more are written on the thread pool: the
 * page-cache copy of a 128 KiB entry was a third of the event loop's time in
 * 1 MiB sequential writes (perf, BENCH_PERF_PHASE=end-to-end); smaller ones
 * (4 KiB writes) are written here, where a thread-pool round trip would
 * cost more than the copy.
 */
const POOL_APPEND_BYTES = 64 * 1024

/** Writes every buffer at `position` (on the thread pool when `pool`), in IOV_CHUNK groups, finishing short writes. */
async function writeAll(fd: number, parts: Buffer[], position: number, pool: boolean): Promise<void> {
  for (let i = 0; i < parts.length; ) {
    const group = parts.slice(i, i + IOV_CHUNK)
    const want = group.reduce((n, b) => n + b.length, 0)
    const wrote = pool ? (await writevAsync(fd, group, position)).bytesWritten : writevSync(fd, group, position)
    position += wrote
    if (wrote === want) {
      i += group.length
      continue
    }
    // A short write: go on after the bytes that landed.
    let skip = wrote
    while (skip >= parts[i].length) skip -= parts[i++].length
    parts = [...parts.slice(0, i), parts[i].subarray(skip), ...parts.slice(i + 1)]
  }
}

export class SegmentDurableLog implements DurableLog {
  private readonly segments: Segment[] = []
  /** Retained entries in number order. */
  private located: Located[] = []
  private readonly state: State = { mode: null, trimmedThrough: 0, dirty: new Map(), meta: null }
  /** A sync covered every frame through this trim point: segments wholly at or below it may go. */
  private durableTrim = 0
  private inFlight = 0
  /** The last append queued (commit): appends run one at a time. */
  private appending: Promise<unknown> = Promise.resolve()
  private readonly retired: number[] = []
  private closed = false

  private constructor(
    readonly path: string,
    private readonly segmentBytes: number,
  ) {}

  /**
   * Opens (creating when new) the log in `path`; everything load() will
   * report is durable when it returns. `segmentBytes`: where a segment ends
   * (tests make it small to see many).
   */
  static async open(path: string, opts: { segmentBytes?: number } = {}): Promise<SegmentDurableLog> {
    const log = new SegmentDurableLog(path, opts.segmentBytes ?? SEGMENT_BYTES)
    try {
      await mkdir(path, { recursive: true })
      await log.recover()
    } catch (err) {
      await log.close().catch(() => undefined)
      if (err instanceof VvfsError) throw err
      throw new VvfsError('IO_ERROR', `cannot open the journal log at ${path}: ${(err as Error).message}`, { cause: err })
    }
    return log
  }

  async load(): Promise<LogContents> {
    this.check()
    return {
      mode: this.state.mode,
      trimmedThrough: this.state.trimmedThrough,
      retained: this.located.map((l) => ({ seq: l.seq, bytes: l.bytes })),
      dirty: [...this.state.dirty.values()],
      meta: this.state.meta,
    }
  }

  async commit(batch: LogBatch, sync = true): Promise<void> {
    this.check()
    // One append at a time, in call order: each frame goes where the last ended (callers need not serialize, 2026-12-04 review).
    const appended = this.appending.then(() => this.append(batch))
    this.appending = appended.catch(() => undefined)
    const seg = await appended
    if (sync) await this.syncSegment(seg, this.state.trimmedThrough)
  }

  /** Appends the batch's frame (if it has content) to the segment being written; answers that segment. */
  private async append(batch: LogBatch): Promise<Segment> {
    this.check()
    let seg = this.segments[this.segments.length - 1]
    if (seg.bytes >= this.segmentBytes) seg = await this.startSegment()
    if (!hasContent(batch)) return seg
    const frame = batchFrame(batch)
    const at = seg.bytes
    try {
      await writeAll(seg.fd, frame.parts, at, frame.bytes >= POOL_APPEND_BYTES)
    } catch (err) {
      throw ioError('append', err)
    }
    seg.bytes += frame.bytes
    this.apply(batch.entries?.map((e, i) => ({ seq: e.seq, bytes: frame.recordBytes[i] })) ?? [], batch, seg, frame.recordAt.map((r) => at + r))
    return seg
  }

  async read(from: number, through: number, maxBytes: number): Promise<LogRecord[]> {
    this.check()
    const out: LogRecord[] = []
    let i = this.firstAtOrAfter(from)
    let total = 0
    this.inFlight++
    try {
      while (i < this.located.length && this.located[i].seq <= through && total < maxBytes) {
        // One positional read for a run of records that lie together in one segment.
        const first = this.located[i]
        let last = i
        let want = first.bytes
        total += first.bytes
        while (
          last + 1 < this.located.length &&
          this.located[last + 1].seq <= through &&
          this.located[last + 1].segment === first.segment &&
          total < maxBytes &&
          this.located[last + 1].at + this.located[last + 1].bytes - first.at <= READ_SPAN
        ) {
          last++
          total += this.located[last].bytes
        }
        // The run is taken out before the read waits: a trim committed meanwhile splices `located` (its segments stay open while inFlight).
        const run = this.located.slice(i, last + 1)
        want = run[run.length - 1].at + run[run.length - 1].bytes - first.at
        const span = Buffer.allocUnsafe(want)
        const { bytesRead } = await readAsync(first.segment.fd, span, 0, want, first.at).catch((err: unknown) => {
          throw ioError('read', err)
        })
        if (bytesRead !== want) throw corrupt(`segment ${segmentName(first.segment.no)} ends inside entry ${first.seq}`)
        for (const l of run) out.push({ seq: l.seq, record: span.subarray(l.at - first.at, l.at - first.at + l.bytes) })
        i = this.firstAtOrAfter(run[run.length - 1].seq + 1)
        // A trim past the run leaves a gap: the answer stays a run of consecutive numbers.
        if (i < this.located.length && this.located[i].seq !== run[run.length - 1].seq + 1) break
      }
    } finally {
      this.release()
    }
    return out
  }

  /** The segment files' numbers, oldest first (for tests and status). */
  get segmentNumbers(): number[] {
    return this.segments.map((s) => s.no)
  }

  /** An fdatasync of the segment being appended: earlier segments were synced before it was created. */
  async syncLogged(): Promise<void> {
    this.check()
    await this.syncSegment(this.segments[this.segments.length - 1], this.state.trimmedThrough)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    // A read or sync still under way (a predecessor dropped while the shipper reads it) keeps its descriptor until it ends.
    this.retired.push(...this.segments.map((s) => s.fd))
    this.segments.length = 0
    this.located = []
    if (this.inFlight > 0) return
    for (const fd of this.retired.splice(0)) await closeAsync(fd).catch(() => undefined)
  }

  // --- internals -----------------------------------------------------------

  private check(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', 'the journal log is closed')
  }

  /** The index of the first retained entry numbered `seq` or more. */
  private firstAtOrAfter(seq: number): number {
    let lo = 0
    let hi = this.located.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.located[mid].seq < seq) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Applies a batch that is in `seg` (its `entries` at `recordAt`) to the state and the index. */
  private apply(entries: { seq: number; bytes: number }[], batch: Omit<LogBatch, 'entries'>, seg: Segment, recordAt: number[]): void {
    const s = this.state
    if (batch.trimThrough !== undefined && batch.trimThrough > s.trimmedThrough) {
      s.trimmedThrough = batch.trimThrough
      this.located.splice(0, this.firstAtOrAfter(s.trimmedThrough + 1))
    }
    entries.forEach((e, i) => {
      if (e.seq <= s.trimmedThrough) return
      const prev = this.located[this.located.length - 1]
      if (prev && prev.seq >= e.seq) throw corrupt(`entry ${e.seq} follows entry ${prev.seq}`)
      this.located.push({ seq: e.seq, segment: seg, at: recordAt[i], bytes: e.bytes })
      if (e.seq > seg.lastSeq) seg.lastSeq = e.seq
    })
    for (const m of batch.addDirty ?? []) s.dirty.set(markKey(m), m)
    for (const m of batch.removeDirty ?? []) s.dirty.delete(markKey(m))
    if (batch.mode) s.mode = batch.mode
    if (batch.meta) s.meta = batch.meta
  }

  /** fdatasync of `seg`; then the trim point it covered lets fully trimmed old segments go. */
  private async syncSegment(seg: Segment, trim: number): Promise<void> {
    this.inFlight++
    try {
      await fdatasyncAsync(seg.fd)
    } catch (err) {
      throw ioError('sync', err)
    } finally {
      this.release()
    }
    if (trim > this.durableTrim) this.durableTrim = trim
    await this.dropTrimmed()
  }

  private async dropTrimmed(): Promise<void> {
    while (this.segments.length > 1 && !this.closed && this.segments[0].lastSeq <= this.durableTrim && this.segments[1].bytes > 0) {
      const seg = this.segments.shift() as Segment
      this.retired.push(seg.fd)
      // Its unlink need not be durable: a segment that comes back is replayed consistently.
      await unlinkAsync(join(this.path, segmentName(seg.no))).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError('delete', err)
      })
      this.closeRetired()
    }
  }

  /** A read or sync ended. */
  private release(): void {
    this.inFlight--
    this.closeRetired()
  }

  /** Closes retired descriptors once no read or sync may still use them. */
  private closeRetired(): void {
    if (this.inFlight > 0) return
    for (const fd of this.retired.splice(0)) close(fd, () => undefined)
  }

  /** Syncs the last segment whole, then starts the next with a synced checkpoint of the state and a synced directory entry. */
  private async startSegment(): Promise<Segment> {
    const last = this.segments[this.segments.length - 1]
    if (last) await this.syncSegment(last, this.state.trimmedThrough)
    const no = last ? last.no + 1 : 1
    let fd: number
    try {
      fd = await openAsync(join(this.path, segmentName(no)), constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600)
    } catch (err) {
      throw ioError('segment create', err)
    }
    const seg: Segment = { no, fd, bytes: 0, lastSeq: 0 }
    this.segments.push(seg)
    const frame = checkpointFrame(this.state)
    try {
      await writeAll(fd, frame, 0, false)
      await fdatasyncAsync(fd)
      await syncDirectory(this.path)
    } catch (err) {
      throw ioError('segment create', err)
    }
    seg.bytes = frame.reduce((n, b) => n + b.length, 0)
    return seg
  }

  /** Reads every segment, drops a torn tail, and makes what remains durable (see the file comment). */
  private async recover(): Promise<void> {
    const names = await readdir(this.path)
    if (names.includes('CURRENT'))
      throw corrupt(`${this.path} holds a LevelDB journal of an earlier vvfs: stop the pair (replicate stop) and start it again`)
    const numbers = names
      .map((n) => SEGMENT_NAME.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => parseInt(m[1], 16))
      .sort((a, b) => a - b)
    for (let k = 0; k < numbers.length; k++) {
      const no = numbers[k]
      const isLast = k === numbers.length - 1
      const fd = await openAsync(join(this.path, segmentName(no)), constants.O_RDWR)
      const seg: Segment = { no, fd, bytes: 0, lastSeq: 0 }
      this.segments.push(seg)
      const size = (await fstatAsync(fd)).size
      const data = Buffer.allocUnsafe(size)
      if (size > 0 && (await readAsync(fd, data, 0, size, 0)).bytesRead !== size) throw corrupt(`segment ${segmentName(no)} is shorter than its size`)
      const whole = this.replaySegment(seg, data)
      // An empty segment is torn too: every segment opens with its checkpoint (a power cut empties one never synced).
      if (whole === size && whole > 0) continue
      if (!isLast) throw corrupt(`segment ${segmentName(no)} has a bad frame at byte ${whole} and is not the last`)
      if (whole === 0) {
        // Its checkpoint never landed (a crash while the segment was created): it holds nothing.
        this.segments.pop()
        await closeAsync(fd)
        await unlinkAsync(join(this.path, segmentName(no)))
        break
      }
      await ftruncateAsync(fd, whole) // the torn tail: a frame whose write did not complete
    }
    const last = this.segments[this.segments.length - 1]
    if (!last) await this.startSegment()
    else await this.syncSegment(last, this.state.trimmedThrough)
    await syncDirectory(this.path)
  }

  /** Applies the frames of one segment; returns the bytes of whole, intact frames from its start. */
  private replaySegment(seg: Segment, data: Buffer): number {
    let at = 0
    while (at + FRAME_HEADER <= data.length) {
      const len = data.readUInt32BE(at)
      const end = at + FRAME_HEADER + len
      if (len < 1 || end > data.length) break
      const payload = data.subarray(at + FRAME_HEADER, end)
      const parsed = parseFrame(payload, data.readUInt32BE(at + 4))
      if (!parsed) break
      if (at === 0 && parsed.kind !== CHECKPOINT) throw corrupt(`segment ${segmentName(seg.no)} does not open with a checkpoint`)
      if (parsed.kind === CHECKPOINT) {
        // Only the oldest segment's checkpoint is needed; later ones say the same as the frames before them.
        if (this.segments.length === 1) {
          this.state.mode = parsed.mode
          this.state.trimmedThrough = parsed.trim
          for (const m of parsed.marks) this.state.dirty.set(markKey(m), m)
          this.state.meta = parsed.meta
        }
      } else {
        this.apply(parsed.entries, parsed.batch, seg, parsed.recordAt.map((r) => at + FRAME_HEADER + r))
      }
      at = end
    }
    seg.bytes = at
    return at
  }
}

function hasContent(b: LogBatch): boolean {
  return (b.entries?.length ?? 0) > 0 || (b.addDirty?.length ?? 0) > 0 || (b.removeDirty?.length ?? 0) > 0 || b.trimThrough !== undefined || b.mode !== undefined || b.meta !== undefined
}

type Parsed =
  | { kind: typeof CHECKPOINT; mode: JournalMode | null; trim: number; marks: DirtyMark[]; meta: Buffer | null }
  | { kind: typeof BATCH; batch: Omit<LogBatch, 'entries'>; entries: { seq: number; bytes: number }[]; recordAt: number[] }

/** One frame's payload, or null when it is torn or altered (its CRC or a record's checksum fails, or a length runs past it). */
function parseFrame(p: Buffer, crc: number): Parsed | null {
  const never = (): null => null
  try {
    if (p[0] === CHECKPOINT) {
      if (p.length < 14) return never()
      const n = p.readUInt32BE(10)
      const marksEnd = 14 + n * 8
      // The owner's meta follows the marks when there is one (a journal's checkpoints end with them).
      const metaBytes = p.length > marksEnd && marksEnd + 4 <= p.length ? p.readUInt32BE(marksEnd) : -1
      if (p.length !== (metaBytes < 0 ? marksEnd : marksEnd + 4 + metaBytes) || frameCrc([p]) !== crc) return never()
      const mode = MODES[p[1]]
      if (mode === undefined) return never()
      const meta = metaBytes < 0 ? null : Buffer.from(p.subarray(marksEnd + 4))
      return { kind: CHECKPOINT, mode, trim: readU53(p, 2, corrupt), marks: readMarks(p, 14, n), meta }
    }
    if (p[0] !== BATCH || p.length < 23) return never()
    const entries = p.readUInt32BE(11)
    const added = p.readUInt32BE(15)
    const removed = p.readUInt32BE(19)
    const marksEnd = 23 + (added + removed) * 8
    if (marksEnd > p.length) return never()
    let metaEnd = marksEnd
    if (p[1] & 4) {
      if (marksEnd + 4 > p.length) return never()
      metaEnd = marksEnd + 4 + p.readUInt32BE(marksEnd)
      if (metaEnd > p.length) return never()
    }
    const heads = Buffer.alloc(entries * 12)
    const batch: Omit<LogBatch, 'entries'> = {}
    const found: { seq: number; bytes: number }[] = []
    const recordAt: number[] = []
    let at = metaEnd
    for (let i = 0; i < entries; i++) {
      if (at + 12 > p.length) return never()
      p.copy(heads, i * 12, at, at + 12)
      const seq = readU53(p, at, corrupt)
      const bytes = p.readUInt32BE(at + 8)
      if (at + 12 + bytes > p.length) return never()
      const record = p.subarray(at + 12, at + 12 + bytes)
      if (!entryChecksumOk(record)) return never()
      found.push({ seq, bytes })
      recordAt.push(at + 12)
      at += 12 + bytes
    }
    if (at !== p.length || frameCrc([p.subarray(0, metaEnd), heads]) !== crc) return never()
    const mode = MODES[p[10]]
    if (mode === undefined) return never()
    if (p[1] & 1) batch.trimThrough = readU53(p, 2, corrupt)
    if (p[1] & 2) {
      if (mode === null) return never()
      batch.mode = mode
    }
    batch.addDirty = readMarks(p, 23, added)
    batch.removeDirty = readMarks(p, 23 + added * 8, removed)
    if (p[1] & 4) batch.meta = Buffer.from(p.subarray(marksEnd + 4, metaEnd))
    return { kind: BATCH, batch, entries: found, recordAt }
  } catch {
    return never()
  }
}
