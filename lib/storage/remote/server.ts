/**
 * StorageServer: one storage system served over the peer wire (service
 * 'storage', lib/storage/remote/protocol.ts) — `vvfs storage serve`. It
 * keeps chunks in the ChunkStore its opener gives it (the daemon's own
 * LevelDB store code) and answers the relay's operations; it never knows
 * volumes, placement or space accounting (the relay keeps those).
 *
 * Its directory holds `server.json` (the identity the store was claimed as:
 * until a relay's `storage add --remote` claims it the server serves nothing
 * but IDENTITY), `fence` (the highest fencing token seen) and `store/`.
 *
 * Concurrency: requests of all connections run concurrently on the store
 * (the relay keeps writers of one chunk apart). Fencing is the one ordering
 * the server itself enforces: a token is admitted when it is at least the
 * fence; a higher one raises the fence first. A raise (FENCE, or a mutation
 * with a higher token) takes effect in memory at once — later mutations
 * with lower tokens are refused from then on — then waits for mutations
 * admitted before it to finish, then persists the fence (file synced and
 * renamed, directory synced), and only then is acknowledged. So once a raise
 * to N is acknowledged, no mutation with a token below N is ever applied, and
 * after a crash the fence is at least every acknowledged raise.
 *
 * Bounded memory: the wire's caps (STORAGE_LIMITS: 8 relays, 16 requests in
 * flight each, bodies ≤ STORAGE_MAX_BODY, 32 pending handshakes dropped
 * after 3 s, idle connections after 30 s) bound what peers can make it hold
 * to about maxConnections × maxInFlight × 2 × STORAGE_MAX_BODY (≈ 260 MiB)
 * plus the store's own caches.
 *
 * Failure modes: a request before the connection's IDENTITY check, or for an
 * unclaimed store, is refused (INVALID_REQUEST); a lower token is FENCED and
 * nothing of that request is stored; a store error goes back as the
 * request's coded error; a fence that cannot be persisted fails the request
 * (IO_ERROR) and the raise stays in memory (refusing is always safe). A bad
 * peer is the wire's business: it drops that connection only.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { writeFileDurably } from '../../durable-file.js'
import { join } from 'node:path'
import { VvfsError } from '../../errors.js'
import { CHUNK_SIZE } from '../../layout.js'
import type { Logger } from '../../log.js'
import type { PeerKey } from '../../wire/auth.js'
import { BufferPool } from '../../buffer-pool.js'
import { WireServer, type RequestContext, type ServerLimits } from '../../wire/server.js'
import type { ChunkStore, StoreIdentity } from '../chunk-store.js'
import {
  decodeApply,
  decodeIdentityRequest,
  decodeReadMany,
  decodeReadRun,
  decodeStored,
  decodeSync,
  decodeToken,
  encodeAddresses,
  encodeChunkSet,
  encodeIdentityReply,
  encodeToken,
  BOOT_BYTES,
  INCARNATION_BYTES,
  MAX_READ_CHUNKS,
  Op,
  STORAGE_MAX_BODY,
  STORAGE_PROTOCOL,
  STORAGE_PROTOCOL_MIN,
  STORAGE_SERVICE,
} from './protocol.js'
import { decodeMapAppend, decodeMapRead, encodeMapRecords, ServerMapLog } from './map-log.js'
import { encodeFenceStatus } from './protocol.js' // issue 15

/**
 * Request bodies (a relay's batches) and READ_RUN replies of 64 KiB or more
 * are reused, up to 32 MiB idle — a relay's 16 requests in flight of an
 * extent each, both ways — which also bounds what they add to the RSS: a new
 * 1 MiB buffer cost 1.3–2.6 ms of page faults on this VM against 0.04–0.24
 * ms to fill a reused one (BufferPool).
 */
const POOLED_MIN_BYTES = 64 * 1024
const BUFFER_POOL_BYTES = 2 * 16 * (MAX_READ_CHUNKS * CHUNK_SIZE)

/** Opens (create: makes) the store of a claimed identity in `path`. */
export type StoreOpener = (opts: { sid: number; name: string; path: string; create: boolean }) => Promise<ChunkStore>

/** The wire's limits for a storage server: see the file comment for the memory they bound. */
export const STORAGE_LIMITS: Partial<ServerLimits> = {
  maxBodyBytes: STORAGE_MAX_BODY,
  maxConnections: 8,
  maxInFlight: 16,
}

export interface StorageServerOptions {
  dir: string
  host: string
  port: number
  key: PeerKey
  log: Logger
  /** Bytes this server may hold (0: unlimited); addresses beyond it are refused. */
  capacity?: number
  openStore: StoreOpener
  limits?: Partial<ServerLimits>
}

interface ServerState {
  format: 1
  identity: { sid: number; name: string } | null
}


/** The machine's boot id as 16 bytes (VVFS_BOOT_ID replaces it: tests simulate a reboot with it). */
async function machineBoot(): Promise<Buffer> {
  const text = process.env.VVFS_BOOT_ID ?? (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => ''))
  const hex = text.trim().replace(/-/g, '')
  return /^[0-9a-f]{32}$/i.test(hex) ? Buffer.from(hex, 'hex') : createHash('sha256').update(text).digest().subarray(0, BOOT_BYTES)
}

export class StorageServer {
  private readonly wire: WireServer
  private store: ChunkStore | null = null
  private state: ServerState = { format: 1, identity: null }
  /** Request bodies and extent replies to reuse (see BUFFER_POOL_BYTES). */
  private readonly buffers = new BufferPool(POOLED_MIN_BYTES, BUFFER_POOL_BYTES)
  /** The highest token admitted (in memory: raised before it is persisted). */
  private fence = 0
  /** Serializes fence persistence and claims. */
  private persisting: Promise<unknown> = Promise.resolve()
  /** Mutations admitted and not finished: a raise waits for them. */
  private readonly mutations = new Set<Promise<unknown>>()
  /** Sessions whose IDENTITY matched. */
  private readonly checked = new Set<string>()
  private claiming: Promise<void> | null = null
  /** This machine's boot (see IdentityReply.boot), read at start. */
  private boot: Buffer = Buffer.alloc(BOOT_BYTES)
  /** This process's incarnation (IdentityReply.incarnation): unlogged batches live no longer than it. */
  private readonly incarnation = randomBytes(INCARNATION_BYTES)
  /** Issue 15: the relays' map records (map-log.ts), opened at start in DIR/maplog. */
  private mapLog: ServerMapLog | null = null
  /** Issue 15: mutations refused FENCED since start (`refused` in stats). */
  private refusedFenced = 0

  constructor(private readonly opts: StorageServerOptions) {
    this.wire = new WireServer({
      host: opts.host,
      port: opts.port,
      key: opts.key,
      service: STORAGE_SERVICE,
      log: opts.log,
      limits: { ...STORAGE_LIMITS, ...opts.limits },
      // The handlers keep no body past their answer: an APPLY's data is in LevelDB's memtable once applied.
      requestBodies: this.buffers,
    })
    this.wire.handle(Op.IDENTITY, (b, ctx) => this.identity(b, ctx))
    this.wire.handle(Op.READ_RUN, async (b, ctx) => {
      const { first, count } = decodeReadRun(b)
      const store = this.storeFor(ctx)
      const into = this.replyBuffer(count * CHUNK_SIZE, ctx)
      // One chunk (a host's random 4 KiB read) on this thread when the store can (LevelDB getSync):
      // the thread pool's two hand-offs were most of the server's part of the round trip on a loaded
      // machine. bench/remote-store.js randread over 64 MiB: server CPU per read 26-46 -> 17-27 ms per MiB (0.10-0.18 -> 0.07-0.11 ms).
      if (count === 1 && store.capabilities.syncRead && store.readOneSync) store.readOneSync(first, into, 0)
      else await store.readRun(first, count, into, 0)
      return into
    })
    this.wire.handle(Op.READ_MANY, async (b, ctx) => {
      const pcas = decodeReadMany(b)
      return encodeChunkSet(await this.storeFor(ctx).readMany(pcas))
    })
    this.wire.handle(Op.STORED, async (b, ctx) => {
      const { first, count, limit } = decodeStored(b)
      return encodeAddresses(await this.storeFor(ctx).stored(first, count, limit))
    })
    this.wire.handle(Op.APPLY, async (b, ctx) => {
      const { batch, token } = decodeApply(b)
      const store = this.storeFor(ctx)
      this.checkCapacity(batch.writes?.map((w) => w.pca) ?? [], batch.clears ?? [])
      await this.mutate(token, () => store.apply({ ...batch, token }))
      return Buffer.alloc(0)
    })
    this.wire.handle(Op.SYNC, async (b, ctx) => {
      const { flushUnlogged, token } = decodeSync(b)
      const store = this.storeFor(ctx)
      await this.mutate(token, () => store.sync({ flushUnlogged, token }))
      return Buffer.alloc(0)
    })
    this.wire.handle(Op.FENCE, async (b, ctx) => {
      this.storeFor(ctx)
      const token = decodeToken(b)
      this.admit(token)
      await this.raise(token)
      return encodeToken(this.fence)
    })
    // Issue 15: map records, fenced like data (map-log.ts).
    this.wire.handle(Op.MAP_APPEND, async (b, ctx) => {
      this.storeFor(ctx)
      const append = decodeMapAppend(b)
      const log = this.openMapLog()
      await this.mutate(append.token, () => log.append(append))
      return Buffer.alloc(0)
    })
    this.wire.handle(Op.MAP_READ, async (b, ctx) => {
      this.storeFor(ctx)
      const { prefix, after, maxBytes } = decodeMapRead(b)
      const { records, more } = await this.openMapLog().read(prefix, after, maxBytes)
      return encodeMapRecords(records, more)
    })
    // Issue 15: the fence and the FENCED refusals, for operators and tests (a stale owner's writes counted).
    this.wire.handle(Op.FENCE_STATUS, async (_b, ctx) => {
      this.storeFor(ctx)
      return encodeFenceStatus({ fence: this.fence, refused: this.refusedFenced })
    })
  }

  private openMapLog(): ServerMapLog {
    if (!this.mapLog) throw new VvfsError('SHUTTING_DOWN', 'the storage server holds no open map log')
    return this.mapLog
  }

  /** Issue 15: mutations (data, syncs, map records) refused FENCED since the server started. */
  get refused(): number {
    return this.refusedFenced
  }

  /** The fence now (for tests and logs). */
  get fenceToken(): number {
    return this.fence
  }

  get stats(): { authenticated: number; pending: number; inFlight: number } {
    return this.wire.stats
  }

  get log(): Logger {
    return this.opts.log
  }

  /** Reads the directory's state, opens a claimed store, listens. */
  async start(): Promise<{ host: string; port: number }> {
    await mkdir(this.opts.dir, { recursive: true, mode: 0o700 })
    const raw = await readFile(join(this.opts.dir, 'server.json'), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw new VvfsError('IO_ERROR', `cannot read ${this.opts.dir}/server.json: ${err.message}`, { cause: err })
    })
    if (raw !== null) {
      const state = JSON.parse(raw) as ServerState
      if (state.format !== 1) throw new VvfsError('STATE_CORRUPT', `${this.opts.dir}/server.json has format ${String(state.format)}`)
      this.state = state
    }
    const fence = await readFile(join(this.opts.dir, 'fence'), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return '0'
      throw new VvfsError('IO_ERROR', `cannot read ${this.opts.dir}/fence: ${err.message}`, { cause: err })
    })
    this.fence = Number(fence.trim())
    if (!Number.isSafeInteger(this.fence) || this.fence < 0) throw new VvfsError('STATE_CORRUPT', `${this.opts.dir}/fence holds '${fence.trim()}'`)
    this.boot = await machineBoot()
    if (this.state.identity) this.store = await this.opts.openStore({ ...this.state.identity, path: this.storePath, create: false })
    this.mapLog = await ServerMapLog.open(join(this.opts.dir, 'maplog'))
    let addr: { host: string; port: number }
    try {
      addr = await this.wire.listen()
    } catch (err) {
      await this.store?.close().catch(() => {})
      this.store = null
      await this.mapLog?.close().catch(() => {})
      this.mapLog = null
      throw err
    }
    this.log.info({ event: 'storage.serving', dir: this.opts.dir, identity: this.state.identity, fence: this.fence, ...addr }, 'storage server ready')
    return addr
  }

  /** Stops listening, drops every connection, waits for the mutations under way, closes the store (syncing it). */
  async close(): Promise<void> {
    await this.wire.close()
    await Promise.allSettled([...this.mutations])
    await this.persisting.catch(() => {})
    const store = this.store
    this.store = null
    const mapLog = this.mapLog
    this.mapLog = null
    await mapLog?.close()
    if (store) {
      // Unlogged batches live only in the store's memory until a flushing sync: a clean stop keeps them (a kill -9 may not).
      await store.sync({ flushUnlogged: true }).finally(() => store.close())
    }
    this.log.info({ event: 'storage.server_closed', dir: this.opts.dir }, 'storage server closed')
  }

  private get storePath(): string {
    return join(this.opts.dir, 'store')
  }

  private async identity(body: Buffer, ctx: RequestContext): Promise<Buffer> {
    const req = decodeIdentityRequest(body)
    if (req.protocol < STORAGE_PROTOCOL_MIN || req.protocol > STORAGE_PROTOCOL)
      throw new VvfsError('PEER_PROTOCOL', `storage protocol ${req.protocol} asked; this server speaks ${STORAGE_PROTOCOL_MIN}–${STORAGE_PROTOCOL}`)
    if (!this.state.identity) {
      if (!req.claim) throw new VvfsError('STATE_CORRUPT', `the server at ${this.opts.dir} holds no storage system (it was never added)`)
      this.claiming ??= this.claim(req.sid, req.name).finally(() => (this.claiming = null))
      await this.claiming
    }
    const id = this.state.identity as { sid: number; name: string }
    if (id.sid !== req.sid || (req.claim && id.name !== req.name))
      throw new VvfsError('STORAGE_PATH_IN_USE', `this server holds storage system ${id.name} (id ${id.sid}), not ${req.name} (id ${req.sid})`)
    const store = this.store as ChunkStore
    // A session already gone (its connection dropped while this ran) is not remembered: its abort has fired and would never clear it.
    if (!this.checked.has(ctx.sessionId) && !ctx.signal.aborted) {
      this.checked.add(ctx.sessionId)
      ctx.signal.addEventListener('abort', () => this.checked.delete(ctx.sessionId), { once: true })
    }
    const identity: StoreIdentity = store.identity
    const incarnation = req.protocol >= 2 ? this.incarnation : null
    return encodeIdentityReply({ identity, capacity: this.opts.capacity ?? 0, fence: this.fence, unlogged: store.capabilities.unlogged, boot: this.boot, incarnation })
  }

  /** Makes the new store, then records the claim durably (a crash between leaves a store nobody claimed, claimed again on retry). */
  private async claim(sid: number, name: string): Promise<void> {
    const store = await this.opts.openStore({ sid, name, path: this.storePath, create: true })
    try {
      await writeFileDurably(join(this.opts.dir, 'server.json'), JSON.stringify({ format: 1, identity: { sid, name } } satisfies ServerState) + '\n')
    } catch (err) {
      await store.close().catch(() => {})
      throw new VvfsError('IO_ERROR', `cannot record the claim in ${this.opts.dir}: ${(err as Error).message}`, { cause: err })
    }
    this.state = { format: 1, identity: { sid, name } }
    this.store = store
    this.log.info({ event: 'storage.claimed', sid, name }, 'storage server claimed')
  }

  /** A buffer for a READ_RUN reply of `bytes`, reused once the wire has handed the reply to the kernel (BufferPool). */
  private replyBuffer(bytes: number, ctx: RequestContext): Buffer {
    const b = this.buffers.take(bytes)
    ctx.afterAnswer?.(() => this.buffers.give(b))
    return b
  }

  private storeFor(ctx: RequestContext): ChunkStore {
    if (!this.store) throw new VvfsError('SHUTTING_DOWN', 'the storage server holds no open store')
    if (!this.checked.has(ctx.sessionId)) throw new VvfsError('INVALID_REQUEST', 'IDENTITY must come first on a connection')
    return this.store
  }

  private checkCapacity(pcas: number[], clears: { first: number; count: number }[]): void {
    const cap = this.opts.capacity ?? 0
    if (cap === 0) return
    const limit = Math.floor(cap / CHUNK_SIZE)
    for (const p of pcas) if (p >= limit) throw new VvfsError('STORAGE_FULL', `chunk ${p} lies beyond this server's capacity (${cap} bytes)`)
    for (const c of clears) if (c.first + c.count > limit && c.first >= limit) throw new VvfsError('STORAGE_FULL', `clear at ${c.first} lies beyond this server's capacity`)
  }

  /** Refuses a token below the fence; raises the fence in memory for a higher one. */
  private admit(token: number): void {
    if (token < this.fence) {
      this.refusedFenced++
      this.log.warn({ event: 'storage.refused', code: 'FENCED', token, fence: this.fence, refused: this.refusedFenced }, 'a mutation with a token below the fence was refused')
    }
    if (token < this.fence) throw new VvfsError('FENCED', `fencing token ${token} is below ${this.fence}: another relay owns this storage system now`, { details: { token, fence: this.fence } })
  }

  /** Admits the token (raising the fence durably first if it is higher), then runs the mutation counted as in flight. */
  private async mutate(token: number, op: () => Promise<void>): Promise<void> {
    this.admit(token)
    if (token > this.fence) {
      await this.raise(token)
      this.admit(token) // a higher raise may have come meanwhile
    }
    const running = op()
    this.mutations.add(running)
    try {
      await running
    } finally {
      this.mutations.delete(running)
    }
  }

  /** Raises the fence to `token` (no-op if not higher): in memory now, durable before it resolves, after the mutations admitted before it. */
  private raise(token: number): Promise<void> {
    if (token > this.fence) {
      this.fence = token
      this.log.info({ event: 'storage.fence_raised', fence: token }, 'fence raised')
    }
    const before = [...this.mutations]
    const step = this.persisting.then(async () => {
      await Promise.allSettled(before)
      const value = this.fence
      try {
        await writeFileDurably(join(this.opts.dir, 'fence'), `${value}\n`)
      } catch (err) {
        throw new VvfsError('IO_ERROR', `cannot persist the fence ${value}: ${(err as Error).message}`, { cause: err })
      }
    })
    this.persisting = step.catch(() => {})
    return step
  }
}
