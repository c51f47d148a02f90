/**
 * RemoteChunkStore: a ChunkStore whose chunks live on a storage server
 * (StorageServer, `vvfs storage serve`), reached over the peer wire. The
 * relay uses it like a local store; this file turns each call into requests
 * of the storage protocol (protocol.ts) on one WireClient.
 *
 * Connection: opened at once, connected in the background, reconnected
 * with backoff by the WireClient (state 'connecting' | 'ready' | 'down' |
 * 'closed', and the ping round trip, for `storage list`). On every new
 * session the first thing sent is IDENTITY: the server must hold the
 * storage system this store was opened as (or, with `claim`, become it);
 * until that check passed on the session, no other request is sent.
 *
 * Concurrency: calls are pipelined (up to the server's in-flight cap, the
 * rest queued by the WireClient) and answered in any order. A read longer
 * than MAX_READ_CHUNKS is several requests in flight at once. A batch is one
 * request (it must be atomic), so it must fit STORAGE_MAX_BODY — one extent
 * of data. At most APPLY_WINDOW batch requests are on the wire at once; the
 * batches that arrive meanwhile wait here, in order, and leave together: the
 * next request takes every waiting batch it can (puts and deletes only, of
 * one kind — logged or not — and one token, up to MAX_APPLY_CHUNKS chunks) as
 * ONE batch, their writes in arrival order (a later write of a chunk wins, as
 * in one batch). Merging keeps every order a caller can see: the relay's
 * locks never let two batches of one chunk be under way together, and a
 * merged batch is atomic, which is more than each asked for; a batch with
 * clears or `sync` goes alone. The batches of a request share its answer.
 *
 * Fencing: every mutation carries a token — the batch's own, else the
 * store's `epoch` (the relay's, `storage fence` raises it).
 *
 * Failure modes — answers, never hangs: every call has a deadline
 * (`deadlineMs`, default DEFAULT_DEADLINE_MS) over everything it waits for.
 * A server that does not answer in time, a lost connection, an unreachable
 * or misbehaving server are IO_ERROR (details.cause: TIMEOUT,
 * PEER_UNAVAILABLE, …): to the host that is EIO, as a disk that times out.
 * A request lost with its connection (the server was killed or
 * restarted) is sent again once a new session passed its IDENTITY check, as
 * long as the call's deadline allows: every operation of the protocol is
 * idempotent — a batch sets chunks to given contents (the relay's locks
 * keep a second writer of the same chunks from coming between), a sync
 * only syncs — so a server restarted within the deadline costs the host
 * nothing. A write that timed out may or may not have been applied; its
 * caller treats it as a failed write (reported at the next fsync). The server's own answers keep their codes (FENCED,
 * STORAGE_FULL, STORAGE_PATH_IN_USE, …). After close(): SHUTTING_DOWN.
 *
 * Unlogged batches (capabilities.unlogged) and a server crash — NFS's
 * unstable writes and write verifier: an unlogged batch lives only in the
 * server's memtable until a flushing sync, so a kill -9 of the server
 * would drop it while the relay lives on. The store therefore keeps the
 * body of every unlogged batch the server acknowledged, and of every batch
 * acknowledged after one (a logged batch may overwrite a chunk an earlier
 * unlogged one wrote, and must be applied after it again), until a
 * flushing sync sent after its acknowledgement succeeded. The server
 * reports its incarnation (a random id of the process) in IDENTITY; when a
 * new session shows another one, the kept batches are sent again, in the
 * order they were acknowledged and one at a time (the relay's locks let no
 * two batches of one chunk be in flight together, so that order is the
 * order of every chunk's writes), before anything else is sent on it. A
 * sync after the restart then covers them. Kept bytes are bounded: at
 * RETAIN_FLUSH_BYTES the store asks the server for a flushing sync itself,
 * and at twice that a batch waits for it. If the kept batches cannot be
 * sent again, the session's check fails and so does every call, the sync
 * included (IO_ERROR): a write acknowledged as synced is never lost.
 */
import { appendedBytes, decodeMapRecords, encodeMapAppend, encodeMapRead, MAP_APPEND_MAX_BYTES, MAP_READ_MAX_BYTES, type MapLogRecord, type StampedMapRecord } from './map-log.js'
import { decodeFenceStatus, type FenceStatus } from './protocol.js' // issue 15
import { VvfsError } from '../../errors.js'
import { CHUNK_SIZE } from '../../layout.js'
import type { Logger } from '../../log.js'
import type { PeerKey } from '../../wire/auth.js'
import { BufferPool } from '../../buffer-pool.js'
import { WireClient, type ClientState } from '../../wire/client.js'
import { checkBatch, checkRead, type ChunkBatch, type ChunkStore, type ChunkStoreCapabilities, type StoreIdentity } from '../chunk-store.js'
import {
  decodeAddresses,
  decodeChunkSet,
  decodeIdentityReply,
  decodeRun,
  decodeToken,
  encodeApply,
  encodeIdentityRequest,
  encodeReadMany,
  encodeReadRun,
  encodeStored,
  encodeSync,
  encodeToken,
  MAX_READ_CHUNKS,
  setApplyToken,
  MAX_STORED,
  Op,
  STORAGE_MAX_BODY,
  STORAGE_PROTOCOL,
  STORAGE_SERVICE,
  type IdentityReply,
} from './protocol.js'

/** 5 s: a loaded LevelDB sync on this VM takes up to ~1 s (StorageSystem.sync's memtable flush), so five times that before a host sees EIO. */
export const DEFAULT_REMOTE_DEADLINE_MS = 5000

/**
 * Bytes of acknowledged batches kept for a server restart before the store
 * asks for a flushing sync itself (a batch waits at twice this): the
 * server's memtable (STORE_OPTIONS.writeBufferSize, 64 MiB) is flushed at
 * about this much anyway, so the sync costs a round trip, not a flush more.
 */
export const RETAIN_FLUSH_BYTES = 64 * 1024 * 1024

/**
 * Batch requests on the wire at once; batches beyond wait and are merged
 * (see the file comment). 4: with the write-behind's 64 writes of 128 KiB
 * queued, a request then carries up to an extent, so the server does one
 * LevelDB write, one frame and one answer per MiB instead of eight —
 * bench/remote-store.js seqwrite (store level, remote alone), server CPU per
 * MB 4.0-5.1 ms unmerged; see bench/README for the merged figures.
 */
export const APPLY_WINDOW = 4
/** Chunks one merged batch holds at most: one extent, so its body fits STORAGE_MAX_BODY. */
export const MAX_APPLY_CHUNKS = MAX_READ_CHUNKS

/** A batch waiting for a place in the window (see APPLY_WINDOW). */
interface WaitingBatch {
  batch: ChunkBatch & { unlogged: boolean; token: number }
  end: number
  resolve: () => void
  reject: (err: unknown) => void
}

/** Reconnect attempts 50 ms apart doubling to 1 s: a restarted server is found within a second, well inside a request's deadline, and an attempt a second costs nothing. */
const DEFAULT_BACKOFF = { initialMs: 50, maxMs: 1000 }

export interface RemoteStoreOptions {
  host: string
  port: number
  key: PeerKey
  log: Logger
  /** The storage system this store is (the relay's catalog id and name). */
  sid: number
  name: string
  /** Let a new server become this storage system (`storage add --remote`); otherwise it must already be it. */
  claim?: boolean
  /** The fencing token put on mutations that carry none. */
  epoch?: number
  deadlineMs?: number
  backoff?: { initialMs: number; maxMs: number }
  /** RETAIN_FLUSH_BYTES unless given (tests). */
  retainFlushBytes?: number
  /** APPLY_WINDOW unless given (Infinity: every batch its own request, as before merging; bench/remote-store.js compares). */
  applyWindow?: number
}

/** What `storage list` shows of a remote store's link. */
export interface RemoteLinkStatus {
  location: string
  state: ClientState
  /** Smoothed ping round trip, ms (null before the first). */
  rttMs: number | null
  /** The last connection failure's message while not ready. */
  lastError: string | null
}

/** A buffer the address check of readMany reads against (never written). */
const ONE_CHUNK = Buffer.alloc(CHUNK_SIZE)

const PASS_THROUGH = new Set(['FENCED', 'STORAGE_FULL', 'STORAGE_PATH_IN_USE', 'STATE_CORRUPT', 'SHUTTING_DOWN', 'INVALID_ARGUMENT', 'OUT_OF_RANGE'])

export class RemoteChunkStore implements ChunkStore {
  readonly identity: StoreIdentity
  readonly capabilities: ChunkStoreCapabilities
  /** The fencing token this relay puts on its mutations. */
  epoch: number
  private readonly client: WireClient
  private readonly deadlineMs: number
  /** The session whose IDENTITY check passed, and the check under way. */
  private checkedSession: string | null = null
  private checking: { session: string; done: Promise<IdentityReply> } | null = null
  private lastReply: IdentityReply | null = null
  /** A batch was acknowledged that no sync has covered since. */
  private unsynced = false
  /** A map record was appended that no syncing append has covered since (counted like `applies`). */
  private mapUnsynced = false
  private mapAppends = 0
  /** ChunkStore.writeLosses: the server's machine restarted while `unsynced` or `mapUnsynced`. */
  private losses = 0
  /** Counts batches begun and answered: a sync covers `unsynced` only if none moved while it ran. */
  private applies = 0
  /**
   * Batch bodies to reuse: a new 128 KiB body per host write cost its page
   * faults (BufferPool). 16 MiB idle at most: two write-behinds' worth.
   */
  private readonly bodies = new BufferPool(64 * 1024, 16 * 1024 * 1024)
  /** Acknowledged batches a server restart would lose (see the file comment), in order of acknowledgement. */
  private readonly retained: { seq: number; body: Buffer }[] = []
  private retainedBytesNow = 0
  /** Counts acknowledged batches: a flushing sync covers the retained ones up to the count when it was sent. */
  private acked = 0
  /** Batch requests on the wire, and the batches waiting for a place among them (APPLY_WINDOW). */
  private appliesOnWire = 0
  private readonly waitingBatches: WaitingBatch[] = []
  /** The flushing sync the store asked for itself (retained bytes over the bound). */
  private flushing: Promise<void> | null = null
  private connecting: Promise<void> | null = null
  private lastError: string | null = null
  private closed = false

  constructor(private readonly opts: RemoteStoreOptions) {
    this.identity = { sid: opts.sid, name: opts.name, format: 1, chunkSize: CHUNK_SIZE }
    const location = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`
    // Unlogged batches: kept here until a flushing sync and sent again to a restarted server (see the file comment).
    // Logged ones cost the server a log write of every byte: bench/remote-store.js seqwrite, server bytes written per byte
    // stored 120 -> 64 (LevelDB compacting hard under the overwrites); bench/remote.js seq write remote/local 0.16-0.23 -> 0.26.
    this.capabilities = { syncRead: false, unlogged: true, localPath: null, fencing: true, location }
    this.epoch = opts.epoch ?? 0
    this.deadlineMs = opts.deadlineMs ?? DEFAULT_REMOTE_DEADLINE_MS
    this.client = new WireClient({
      host: opts.host,
      port: opts.port,
      key: opts.key,
      service: STORAGE_SERVICE,
      log: opts.log,
      deadlineMs: this.deadlineMs,
      connectTimeoutMs: Math.min(3000, this.deadlineMs),
      maxBodyBytes: STORAGE_MAX_BODY,
      backoff: opts.backoff ?? DEFAULT_BACKOFF,
    })
    this.client.on('state', (state: ClientState, err?: VvfsError) => {
      if (state !== 'ready') this.checkedSession = null
      if (err) this.lastError = err.message
      else if (state === 'ready') this.lastError = null
      this.opts.log.info({ event: 'storage.remote.state', storage: opts.name, location, state, err: err?.message }, `remote storage ${opts.name}: ${state}`)
    })
    this.client.start()
  }

  /**
   * Opens the store and waits until the server answered IDENTITY (for `storage
   * add --remote`: a wrong key, address or server is an error now, not later,
   * with the wire's own code: PEER_AUTH_FAILED, PEER_UNAVAILABLE, …).
   */
  static async connect(opts: RemoteStoreOptions): Promise<{ store: RemoteChunkStore; server: IdentityReply }> {
    const store = new RemoteChunkStore(opts)
    // The first failed attempt is the answer (nothing listening, a refused key): no waiting for reconnects.
    let onState: ((state: ClientState, err?: VvfsError) => void) | null = null
    const firstFailure = new Promise<never>((_, reject) => {
      onState = (state, err) => {
        if (state === 'down' && err) reject(err)
      }
      store.client.on('state', onState)
    })
    try {
      const server = await Promise.race([store.check(Date.now() + store.deadlineMs), firstFailure])
      return { store, server }
    } catch (err) {
      await store.close()
      throw err
    } finally {
      firstFailure.catch(() => {})
      if (onState) store.client.off('state', onState)
    }
  }

  get link(): RemoteLinkStatus {
    return { location: this.capabilities.location, state: this.client.state, rttMs: this.client.rtt, lastError: this.client.state === 'ready' ? null : this.lastError }
  }

  /** The server's last IDENTITY answer (its capacity and fence then), null before one. */
  get server(): IdentityReply | null {
    return this.lastReply
  }

  async readRun(first: number, count: number, into: Buffer, offset = 0): Promise<void> {
    this.checkOpen()
    checkRead(first, count, into, offset)
    const end = Date.now() + this.deadlineMs
    const parts: Promise<void>[] = []
    for (let done = 0; done < count; done += MAX_READ_CHUNKS) {
      const n = Math.min(MAX_READ_CHUNKS, count - done)
      const at = offset + done * CHUNK_SIZE
      // Received straight into the caller's buffer (a new 1 MiB buffer per extent cost page faults):
      // bench/remote-store.js seqread over 64 MiB, with the server reusing its reply buffers: remote/local 0.25-0.34 -> 0.44-0.83.
      const target = into.subarray(at, at + n * CHUNK_SIZE)
      const part = this.call(Op.READ_RUN, encodeReadRun(first + done, n), end, target).then((b) => {
        if (b.buffer !== target.buffer || b.byteOffset !== target.byteOffset) decodeRun(b, n).copy(into, at)
      })
      if (n === count) return await part
      parts.push(part)
    }
    await settleAll(parts)
  }

  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    this.checkOpen()
    for (const p of pcas) checkRead(p, 1, ONE_CHUNK, 0)
    const end = Date.now() + this.deadlineMs
    const parts: Promise<(Buffer | undefined)[]>[] = []
    for (let i = 0; i < pcas.length; i += MAX_READ_CHUNKS) {
      const slice = pcas.slice(i, i + MAX_READ_CHUNKS)
      // Copies: the chunks must not pin the whole reply body.
      parts.push(this.call(Op.READ_MANY, encodeReadMany(slice), end).then((b) => decodeChunkSet(b, slice.length).map((c) => (c ? Buffer.from(c) : undefined))))
    }
    return (await settleAll(parts)).flat()
  }

  async apply(batch: ChunkBatch): Promise<void> {
    this.checkOpen()
    checkBatch(batch)
    if ((batch.writes?.length ?? 0) === 0 && (batch.clears?.length ?? 0) === 0 && !batch.sync) return
    const unlogged = batch.unlogged === true && batch.sync !== true
    const end = Date.now() + this.deadlineMs
    // Kept bytes are bounded: past twice the bound a batch waits for the flush the store asked for.
    if (this.flushing && this.retainedBytesNow >= 2 * this.retainFlushBytes) await withDeadline(this.flushing, end, () => new VvfsError('TIMEOUT', 'the flush of retained batches took longer than the deadline'))
    this.unsynced = true // before: a restart may come between the server's answer and ours
    this.applies++
    try {
      await new Promise<void>((resolve, reject) => {
        this.waitingBatches.push({ batch: { ...batch, unlogged, token: batch.token ?? this.epoch }, end, resolve, reject })
        this.sendBatches()
      })
    } finally {
      this.applies++ // a sync that began before this answer may not cover the batch
    }
  }

  /** Sends waiting batches while the window has room, each request as many as merge (see the file comment). */
  private sendBatches(): void {
    while (this.appliesOnWire < (this.opts.applyWindow ?? APPLY_WINDOW) && this.waitingBatches.length > 0) {
      const group = [this.waitingBatches.shift() as WaitingBatch]
      const first = group[0].batch
      let chunks = first.writes?.length ?? 0
      if (mergeable(first)) {
        for (let next = this.waitingBatches[0]; next !== undefined; next = this.waitingBatches[0]) {
          const n = next.batch.writes?.length ?? 0
          if (!mergeable(next.batch) || next.batch.unlogged !== first.unlogged || next.batch.token !== first.token || chunks + n > MAX_APPLY_CHUNKS) break
          group.push(this.waitingBatches.shift() as WaitingBatch)
          chunks += n
        }
      }
      this.appliesOnWire++
      this.sendBatch(group).then(
        () => group.forEach((w) => w.resolve()),
        (err: unknown) => group.forEach((w) => w.reject(err)),
      ).finally(() => {
        this.appliesOnWire--
        this.sendBatches()
      })
    }
  }

  /** One APPLY request carrying the batches of `group` as one (a group of several holds puts and deletes only). */
  private async sendBatch(group: WaitingBatch[]): Promise<void> {
    const first = group[0].batch
    const batch = group.length === 1 ? first : { writes: group.flatMap((w) => w.batch.writes ?? []), unlogged: first.unlogged }
    const body = encodeApply(batch, first.token, this.bodies.take.bind(this.bodies))
    if (body.length > STORAGE_MAX_BODY) {
      this.bodies.give(body)
      throw new VvfsError('INVALID_ARGUMENT', `a batch of ${body.length} bytes is larger than one request (${STORAGE_MAX_BODY}); a remote batch holds at most one extent`)
    }
    await this.call(Op.APPLY, body, Math.min(...group.map((w) => w.end)))
    // Kept from its acknowledgement (a restart before it made call() send it again): see the file comment.
    // Else reused: acknowledged, so the socket has sent all of it (a failed call's body may still be queued there).
    if (first.unlogged || this.retained.length > 0) this.retain(body)
    else this.bodies.give(body)
  }

  /** Bytes of acknowledged batches kept for a server restart (bounded by twice retainFlushBytes, plus batches in flight). */
  get retainedBytes(): number {
    return this.retainedBytesNow
  }

  private get retainFlushBytes(): number {
    return this.opts.retainFlushBytes ?? RETAIN_FLUSH_BYTES
  }

  private retain(body: Buffer): void {
    this.retained.push({ seq: ++this.acked, body })
    this.retainedBytesNow += body.length
    if (this.retainedBytesNow >= this.retainFlushBytes && !this.flushing) {
      // A flushing sync of the store's own, beside its callers' syncs (a machine restart is theirs to hear: writeLosses).
      const acked = this.acked
      this.flushing = this.call(Op.SYNC, encodeSync(true, this.epoch), Date.now() + this.deadlineMs)
        .then(() => this.release(acked))
        .catch((err: unknown) => {
          // Nothing is lost: the batches stay kept, and the caller's next sync or batch meets the same failure.
          this.opts.log.warn({ event: 'storage.remote.flush_failed', storage: this.opts.name, err: (err as Error).message }, `remote storage ${this.opts.name}: flush of retained batches failed`)
        })
        .finally(() => (this.flushing = null))
    }
  }

  /** A flushing sync sent when `upTo` batches were acknowledged succeeded: those are durable on the server. */
  private release(upTo: number): void {
    let n = 0
    while (n < this.retained.length && this.retained[n].seq <= upTo) {
      const { body } = this.retained[n++]
      this.retainedBytesNow -= body.length
      this.bodies.give(body)
    }
    if (n > 0) this.retained.splice(0, n)
  }

  /** Sends the kept batches again, in order, on a session of a restarted server (before anything else is sent on it). */
  private async replay(end: number): Promise<void> {
    const batches = [...this.retained]
    this.opts.log.warn(
      { event: 'storage.remote.replay', storage: this.opts.name, batches: batches.length, bytes: this.retainedBytesNow },
      `remote storage ${this.opts.name}: the server restarted; sending ${batches.length} batches no flushing sync covered again`,
    )
    for (const b of batches) {
      setApplyToken(b.body, this.epoch) // this relay's current epoch: `storage fence` may have raised it since
      await this.client.request(Op.APPLY, b.body, { deadlineMs: Math.max(1, end - Date.now()) })
    }
  }

  async stored(first: number, count: number, limit = Infinity): Promise<number[]> {
    const end = Date.now() + this.deadlineMs
    const out: number[] = []
    let from = first
    const stop = first + count
    while (from < stop && out.length < limit) {
      const want = Math.min(limit - out.length, MAX_STORED)
      const got = decodeAddresses(await this.call(Op.STORED, encodeStored(from, stop - from, want), end))
      out.push(...got)
      if (got.length < want) break
      from = got[got.length - 1] + 1
    }
    return out
  }

  async sync(opts: { flushUnlogged?: boolean; token?: number } = {}): Promise<void> {
    const applies = this.applies
    const acked = this.acked
    await this.call(Op.SYNC, encodeSync(opts.flushUnlogged === true, opts.token ?? this.epoch), Date.now() + this.deadlineMs)
    // A retry of the sync on a restarted server went after the replay of the kept batches (call → check), so it covers them too.
    if (opts.flushUnlogged === true) this.release(acked)
    if (this.applies === applies) this.unsynced = false
  }

  /** See ChunkStore.writeLosses: each writer whose unsynced writes a machine restart may have taken hears of it at its own next sync, not only the first to sync. */
  get writeLosses(): number {
    return this.losses
  }

  /** Raises the server's fence to `token` (FENCED if it is already higher); returns the fence now. Mutations from here on carry it. */
  /** Issue 15: the server's fence and its count of mutations refused FENCED since it started. */
  async fenceStatus(): Promise<FenceStatus> {
    return decodeFenceStatus(await this.call(Op.FENCE_STATUS, Buffer.alloc(0), Date.now() + this.deadlineMs))
  }

  async fence(token: number): Promise<number> {
    const fence = decodeToken(await this.call(Op.FENCE, encodeToken(token), Date.now() + this.deadlineMs))
    this.epoch = Math.max(this.epoch, token)
    return fence
  }

  // ---- issue 15: the map log (map-log.ts)

  /**
   * Appends map records under this relay's epoch (FENCED once another relay
   * raised the fence): split at record boundaries into bodies of at most
   * MAP_APPEND_MAX_BYTES, sent one after another (each body is applied
   * atomically; a batch larger than one body is not). With `sync`, durable
   * before it returns, and so is every earlier append.
   */
  async appendMapRecords(seq: number, records: MapLogRecord[], sync: boolean): Promise<void> {
    this.checkOpen()
    const end = Date.now() + this.deadlineMs
    if (records.length > 0) {
      this.mapUnsynced = true // before: a restart may come between the server's answer and ours
      this.mapAppends++
    }
    const appends = this.mapAppends
    let part: MapLogRecord[] = []
    let bytes = 0
    for (const r of records) {
      if (part.length > 0 && bytes + appendedBytes(r) > MAP_APPEND_MAX_BYTES) {
        await this.call(Op.MAP_APPEND, encodeMapAppend({ token: this.epoch, seq, sync: false, records: part }), end)
        part = []
        bytes = 0
      }
      part.push(r)
      bytes += appendedBytes(r)
    }
    if (part.length > 0 || sync) await this.call(Op.MAP_APPEND, encodeMapAppend({ token: this.epoch, seq, sync, records: part }), end)
    // Counted again once answered (as `applies`): a syncing append answered between the parts of a long one must not clear it.
    if (records.length > 0) this.mapAppends++
    // A syncing append covers what was answered before it, if no other append began or ended meanwhile.
    if (sync && this.mapAppends === appends + (records.length > 0 ? 1 : 0)) this.mapUnsynced = false
  }

  /** Every map record under `prefix`, in key order (paged by MAP_READ_MAX_BYTES). */
  async readMapRecords(prefix: Buffer): Promise<StampedMapRecord[]> {
    const end = Date.now() + this.deadlineMs
    const out: StampedMapRecord[] = []
    let after: Buffer | null = null
    for (;;) {
      const page = decodeMapRecords(await this.call(Op.MAP_READ, encodeMapRead(prefix, after, MAP_READ_MAX_BYTES), end))
      out.push(...page.records)
      if (!page.more || page.records.length === 0) return out
      after = page.records[page.records.length - 1]!.key
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.client.close()
  }

  // ---- requests

  private checkOpen(): void {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `remote storage ${this.opts.name} is closed`)
  }

  /** One request after the session's IDENTITY check, within the deadline `end`; errors as the file comment says. */
  private async call(op: Op, body: Buffer, end: number, replyInto?: Buffer): Promise<Buffer> {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `remote storage ${this.opts.name} is closed`)
    for (;;) {
      try {
        if (this.checkedSession === null || this.checkedSession !== this.client.sessionId) await this.check(end)
        return await this.client.request(op, body, { deadlineMs: Math.max(1, end - Date.now()), replyInto })
      } catch (err) {
        // Lost with the connection: sent again on the next one while the deadline allows (see the file comment: every operation is idempotent).
        if (err instanceof VvfsError && err.code === 'PEER_UNAVAILABLE' && err.details?.sent === true && !this.closed && Date.now() < end) continue
        throw this.asStoreError(err)
      }
    }
  }

  /** The IDENTITY check of the current session (one per session, shared by the calls waiting for it). */
  private async check(end: number): Promise<IdentityReply> {
    if (this.client.state !== 'ready') {
      // One wait for the connection, shared by every call (each keeps its own deadline).
      this.connecting ??= this.untilReady().finally(() => (this.connecting = null))
      await withDeadline(this.connecting, end, () =>
        new VvfsError('PEER_UNAVAILABLE', `not connected to ${this.capabilities.location} within the deadline${this.lastError ? `: ${this.lastError}` : ''}`),
      )
    }
    const session = this.client.sessionId as string
    if (this.checking?.session !== session) {
      const done = this.client
        .request(Op.IDENTITY, encodeIdentityRequest({ protocol: STORAGE_PROTOCOL, sid: this.opts.sid, name: this.opts.name, claim: this.opts.claim === true }), {
          deadlineMs: this.deadlineMs,
        })
        .then(async (b) => {
          const reply = decodeIdentityReply(b)
          if (reply.identity.sid !== this.opts.sid || reply.identity.chunkSize !== CHUNK_SIZE)
            throw new VvfsError('STORAGE_PATH_IN_USE', `${this.capabilities.location} holds storage system ${reply.identity.name} (id ${reply.identity.sid}), not ${this.opts.name}`)
          if (this.lastReply && !this.lastReply.boot.equals(reply.boot) && (this.unsynced || this.mapUnsynced)) {
            // The server's machine restarted with batches or map records no sync covered: they may be gone. Each writer's next sync says so (writeLosses).
            this.losses++
            this.opts.log.error({ event: 'storage.remote.rebooted', storage: this.opts.name }, `remote storage ${this.opts.name}: the server's machine restarted; writes since the last sync may be lost`)
          }
          // A restarted server process (or one that does not say which it is) lost the unlogged batches no flushing sync covered.
          const restarted = this.lastReply !== null && (reply.incarnation === null || this.lastReply.incarnation === null || !reply.incarnation.equals(this.lastReply.incarnation))
          if (restarted && this.retained.length > 0) await this.replay(Date.now() + this.deadlineMs)
          this.lastReply = reply
          if (this.client.sessionId === session) this.checkedSession = session
          // A first round trip now, for `storage list` (the WireClient's own pings come every third of the idle timeout).
          this.client.ping().catch(() => {})
          return reply
        })
      this.checking = { session, done }
      done.catch(() => {
        if (this.checking?.done === done) this.checking = null
      })
    }
    const { done } = this.checking
    return await withDeadline(done, end, () => new VvfsError('TIMEOUT', `no IDENTITY answer from ${this.capabilities.location} within the deadline`))
  }

  /**
   * Resolves when the client is ready; fails at once when a connection
   * attempt ended in a way retrying will not fix (a wrong key, an
   * incompatible server). No timer of its own: one wait is shared by every
   * call, each under its own deadline (check).
   */
  private untilReady(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onState = (state: ClientState, err?: VvfsError) => {
        if (state === 'ready') resolve()
        else if (state === 'closed') reject(new VvfsError('SHUTTING_DOWN', `remote storage ${this.opts.name} is closed`))
        else if (err && (err.code === 'PEER_AUTH_FAILED' || err.code === 'PEER_PROTOCOL')) reject(err)
        else return
        this.client.off('state', onState)
      }
      this.client.on('state', onState)
      if (this.client.state === 'ready') onState('ready')
    })
  }

  private asStoreError(err: unknown): VvfsError {
    const e = err instanceof VvfsError ? err : new VvfsError('INTERNAL', String(err), { cause: err })
    if (PASS_THROUGH.has(e.code)) return e
    return new VvfsError('IO_ERROR', `remote storage ${this.opts.name} at ${this.capabilities.location}: ${e.message}`, {
      cause: e,
      details: { cause: e.code, ...(e.details ?? {}) },
    })
  }
}

/** Whether a batch may be merged with others: puts and deletes only, no sync, at most an extent. */
function mergeable(b: ChunkBatch): boolean {
  return b.sync !== true && (b.clears?.length ?? 0) === 0 && (b.writes?.length ?? 0) > 0 && (b.writes?.length ?? 0) <= MAX_APPLY_CHUNKS
}

/** Waits for every part (so none is left running unobserved), then throws the first failure. */
async function settleAll<T>(parts: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(parts)
  const failed = results.find((r) => r.status === 'rejected')
  if (failed) throw (failed as PromiseRejectedResult).reason
  return results.map((r) => (r as PromiseFulfilledResult<T>).value)
}

function withDeadline<T>(p: Promise<T>, end: number, error: () => VvfsError): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(error()), Math.max(1, end - Date.now()))
    p.then(
      (v) => {
        clearTimeout(timer)
        resolve(v)
      },
      (e: unknown) => {
        clearTimeout(timer)
        reject(e as Error)
      },
    )
  })
}
