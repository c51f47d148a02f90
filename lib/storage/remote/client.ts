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
 * of data.
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
 */
import { VvfsError } from '../../errors.js'
import { CHUNK_SIZE } from '../../layout.js'
import type { Logger } from '../../log.js'
import type { PeerKey } from '../../wire/auth.js'
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
  MAX_STORED,
  Op,
  STORAGE_MAX_BODY,
  STORAGE_PROTOCOL,
  STORAGE_SERVICE,
  type IdentityReply,
} from './protocol.js'

/** 5 s: a loaded LevelDB sync on this VM takes up to ~1 s (StorageSystem.sync's memtable flush), so five times that before a host sees EIO. */
export const DEFAULT_REMOTE_DEADLINE_MS = 5000

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
  /** The server's machine restarted while `unsynced`: the next sync fails with IO_ERROR. */
  private lostSinceSync = false
  /** Counts batches begun and answered: a sync covers `unsynced` only if none moved while it ran. */
  private applies = 0
  private connecting: Promise<void> | null = null
  private lastError: string | null = null
  private closed = false

  constructor(private readonly opts: RemoteStoreOptions) {
    this.identity = { sid: opts.sid, name: opts.name, format: 1, chunkSize: CHUNK_SIZE }
    const location = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`
    // No unlogged batches: a server killed (kill -9) while the relay lives on would lose an unlogged batch
    // from its memtable, and the relay's next sync would flush an empty one and succeed — an fsync'd write lost.
    // Every batch is logged, so it survives a crash of the server process (the page cache keeps its log).
    this.capabilities = { syncRead: false, unlogged: false, localPath: null, fencing: true, location }
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
      parts.push(this.call(Op.READ_RUN, encodeReadRun(first + done, n), end).then((b) => void decodeRun(b, n).copy(into, at)))
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
    const body = encodeApply({ ...batch, unlogged: false }, batch.token ?? this.epoch)
    if (body.length > STORAGE_MAX_BODY)
      throw new VvfsError('INVALID_ARGUMENT', `a batch of ${body.length} bytes is larger than one request (${STORAGE_MAX_BODY}); a remote batch holds at most one extent`)
    this.unsynced = true // before: a restart may come between the server's answer and ours
    this.applies++
    try {
      await this.call(Op.APPLY, body, Date.now() + this.deadlineMs)
    } finally {
      this.applies++ // a sync that began before this answer may not cover the batch
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
    await this.call(Op.SYNC, encodeSync(opts.flushUnlogged === true, opts.token ?? this.epoch), Date.now() + this.deadlineMs)
    if (this.applies === applies) this.unsynced = false
    if (this.lostSinceSync) {
      this.lostSinceSync = false
      throw new VvfsError('IO_ERROR', `remote storage ${this.opts.name}: the server's machine restarted; writes acknowledged before it and not synced may be lost`)
    }
  }

  /** Raises the server's fence to `token` (FENCED if it is already higher); returns the fence now. Mutations from here on carry it. */
  async fence(token: number): Promise<number> {
    const fence = decodeToken(await this.call(Op.FENCE, encodeToken(token), Date.now() + this.deadlineMs))
    this.epoch = Math.max(this.epoch, token)
    return fence
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
  private async call(op: Op, body: Buffer, end: number): Promise<Buffer> {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', `remote storage ${this.opts.name} is closed`)
    for (;;) {
      try {
        if (this.checkedSession === null || this.checkedSession !== this.client.sessionId) await this.check(end)
        return await this.client.request(op, body, { deadlineMs: Math.max(1, end - Date.now()) })
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
        .then((b) => {
          const reply = decodeIdentityReply(b)
          if (reply.identity.sid !== this.opts.sid || reply.identity.chunkSize !== CHUNK_SIZE)
            throw new VvfsError('STORAGE_PATH_IN_USE', `${this.capabilities.location} holds storage system ${reply.identity.name} (id ${reply.identity.sid}), not ${this.opts.name}`)
          if (this.lastReply && !this.lastReply.boot.equals(reply.boot) && this.unsynced) {
            // The server's machine restarted with batches no sync covered: they may be gone. The next sync says so.
            this.lostSinceSync = true
            this.opts.log.error({ event: 'storage.remote.rebooted', storage: this.opts.name }, `remote storage ${this.opts.name}: the server's machine restarted; writes since the last sync may be lost`)
          }
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
